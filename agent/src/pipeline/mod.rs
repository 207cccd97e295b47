//! The event pipeline, in the order a record flows through it: the source
//! drains the kernel ring buffer, decode turns records into typed values,
//! enrich attaches identity, and evaluate matches rules and hands alerts and
//! events to the outputs' one fan-out.
//!
//! Building is separate from running: [`Pipeline::start`] loads and checks
//! everything (rules first, so a broken rule file fails before anything
//! touches the kernel), attaches the hooks and spawns the stages; the
//! [`Running`] it returns is stopped with [`Running::stop`], in order and
//! within bounds. Stages are joined by bounded channels: a slow stage slows
//! the one before it, back to the kernel ring buffer, whose overflows the
//! kernel counts.
pub mod decode;
pub mod enrich;
pub mod evaluate;
mod running;
pub mod source;

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AuditTarget, Config},
    identity::IdentitySources,
    kernel::{IgnoreSet, KernelProbes, cgroup},
    metrics::Metrics,
    outputs::{
        AuditQueue, Outputs,
        alert::Additions,
        audit::{self, AuditOutput},
        webhook::{DEFAULT_SHUTDOWN_GRACE, WebhookSink},
    },
    ruleset::{
        self, RulePaths,
        reload::{KernelIgnore, Reloader, RuleSource},
    },
};
use enrich::{Enricher, process::ProcessCache};
use evaluate::{EvaluateStage, Evaluator};
pub use running::{Running, STAGE_GRACE, Summary};

/// Batches in flight between stages; with [`source::BATCH`] events each.
pub const STAGE_QUEUE: usize = 64;

/// Process images kept (one per exec); about 300 bytes each.
const PROCESS_CACHE_CAP: usize = 65_536;

pub struct Pipeline;

impl Pipeline {
    /// Builds and starts every stage. `shutdown` is the agent's one token:
    /// cancelling it stops the source, the reloader and the identity worker,
    /// and [`Running::stop`] then drains the rest in order.
    pub async fn start(
        config: &Config,
        metrics: &Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Running> {
        let source = RuleSource {
            paths: RulePaths(config.rules_files.clone()),
            options: ruleset::options(config.rule_matching),
        };
        let first = source
            .load(metrics)
            .with_context(|| format!("loading {}", source.describe()))?;
        tracing::info!(rules = first.rules().len(), from = %source.describe(), "rules loaded");

        let additions = Arc::new(
            Additions::build(&config.append_output.0, &config.custom_fields)
                .map_err(anyhow::Error::msg)
                .context("append_output / custom_fields")?,
        );
        let mut endpoints = config.webhooks.clone();
        // Custom fields are labels too where an output has labels.
        for endpoint in &mut endpoints {
            endpoint.label_fields = config.custom_fields.keys().cloned().collect();
        }
        let webhooks = if endpoints.is_empty() {
            None
        } else {
            let sink = WebhookSink::start(
                &endpoints,
                Some(metrics),
                shutdown.clone(),
                DEFAULT_SHUTDOWN_GRACE,
            )
            .context("webhooks")?;
            Some(sink)
        };

        let cgroup_path = match &config.kernel.cgroup {
            Some(path) => {
                cgroup::ensure_cgroup2(path)?;
                path.clone()
            }
            None => cgroup::cgroup2_root()?,
        };
        let mut probes = KernelProbes::load(config.kernel.ringbuf_bytes)?;
        let mut base = if config.kernel.builtin_ignore {
            IgnoreSet::builtin()
        } else {
            IgnoreSet::default()
        };
        base.extend(config.kernel.ignore_networks.iter().copied());
        let ignore = KernelIgnore {
            map: probes.take_ignore_map()?,
            base,
            rules_drive: config.audit.path == AuditTarget::Off,
        };
        let (reloader, rules) = Reloader::new(source, first, ignore, metrics.clone());
        let ignored_networks = reloader.ignored_networks();
        let ring = probes.take_events()?;
        probes.attach(&cgroup_path)?;
        // After attaching, so a process born during the scan is either seen
        // by the tracker or by the scan (the seed never overwrites it).
        let mut processes = ProcessCache::new("/proc", PROCESS_CACHE_CAP);
        let seeded = processes.seed_from_proc();
        for (tgid, state) in &seeded {
            probes.seed_process(*tgid, *state)?;
        }
        if !probes.captures_argv() {
            tracing::warn!(
                "no syscall tracepoints: command lines come from /proc and may be missed for short-lived processes"
            );
        }
        let counters = probes.counter_reader();
        metrics.set_kernel_reader(move || counters.read().ok());

        let (identity, containerd_task) = if config.identity.enabled {
            let (sources, worker) = IdentitySources::from_config(&config.identity)?;
            (
                Some(sources),
                Some(tokio::spawn(worker.run(shutdown.clone()))),
            )
        } else {
            (None, None)
        };
        let reload_task = tokio::spawn(reloader.run(shutdown.clone()));

        let (records_tx, records_rx) = mpsc::channel(STAGE_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(STAGE_QUEUE);
        metrics.watch_queue("records", &records_tx);
        metrics.watch_queue("events", &events_tx);
        let source_task = tokio::spawn(source::run(
            ring,
            records_tx,
            metrics.clone(),
            shutdown.clone(),
        ));
        let enrich_task = tokio::spawn(enrich::run(
            Enricher::new(processes, identity).with_metrics(metrics.clone()),
            records_rx,
            events_tx,
        ));
        let audit = audit_queue(config, metrics, shutdown);
        let stage = EvaluateStage {
            rules,
            evaluator: Evaluator {
                hostname: hostname(config).into(),
                additions,
                metrics: metrics.clone(),
            },
            outputs: Outputs::new(tokio::io::stdout(), audit, webhooks, metrics.clone()),
        };
        let evaluate_task = tokio::spawn(running::stop_on_error(
            "evaluate",
            stage.run(events_rx),
            shutdown.clone(),
        ));

        Ok(Running {
            started: running::Started {
                cgroup: cgroup_path,
                ignored_networks,
                seeded_processes: seeded.len(),
            },
            probes,
            metrics: metrics.clone(),
            source: source_task,
            enrich: enrich_task,
            evaluate: evaluate_task,
            reload: reload_task,
            containerd: containerd_task,
        })
    }
}

fn audit_queue(
    config: &Config,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Option<AuditQueue> {
    let output = match &config.audit.path {
        AuditTarget::Off => return None,
        AuditTarget::Stdout => AuditOutput::Writer(tokio::io::stdout()),
        AuditTarget::File(path) => AuditOutput::File {
            path: PathBuf::from(path),
            max_bytes: config.audit.max_bytes,
            max_files: config.audit.max_files,
        },
    };
    let (tx, rx) = mpsc::channel(STAGE_QUEUE);
    metrics.watch_queue("audit", &tx);
    let task = tokio::spawn(running::stop_on_error(
        "audit",
        audit::run(rx, output),
        shutdown.clone(),
    ));
    Some(AuditQueue { tx, task })
}

/// Alert `hostname`: configured, else the node name Kubernetes passes in
/// (`NODE_NAME` from the downward API), else the kernel's host name.
pub fn hostname(config: &Config) -> String {
    if let Some(name) = config.hostname.clone().filter(|n| !n.is_empty()) {
        return name;
    }
    if let Some(name) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|n| n.trim().to_string())
        .unwrap_or_default()
}
