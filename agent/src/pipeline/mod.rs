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
pub mod pending;
mod running;
pub mod source;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AuditTarget, Config},
    health::Readiness,
    identity::IdentitySources,
    kernel::{IgnoreSet, KernelProbes, cgroup},
    metrics::Metrics,
    outputs::{
        AuditQueue, Outputs,
        alert::Additions,
        audit::{self, AuditDestination, AuditSink},
        stdout_queue::StdoutQueue,
        webhook::{DEFAULT_SHUTDOWN_GRACE, WebhookSink},
    },
    ruleset::{
        self, RulePaths,
        reload::{KernelIgnore, Reloader, RuleSource},
    },
    watchdog::{self, Watchdog},
};
use enrich::{Enricher, process::ProcessCache};
use evaluate::{EvaluateStage, Evaluator};
pub use running::{Running, SHUTDOWN_BOUND, Summary, join_by};

/// Batches in flight between stages; with [`source::BATCH`] events each.
pub const STAGE_QUEUE: usize = 64;

/// The output field naming the node's control API.
pub const CONTROL_URL_FIELD: &str = "egret.control.url";

/// Process images kept (one per exec); about 300 bytes each.
const PROCESS_CACHE_CAP: usize = 65_536;

pub struct Pipeline;

impl Pipeline {
    /// Builds and starts every stage. `shutdown` is the agent's one token:
    /// cancelling it stops the source, the reloader, the identity worker and
    /// the watchdog, and [`Running::stop`] then drains the rest in order.
    /// The watchdog reports a wedged or stalled pipeline to `readiness`.
    pub async fn start(
        config: &Config,
        metrics: &Arc<Metrics>,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Running> {
        let source = RuleSource {
            paths: RulePaths(config.rules_files.clone()),
            options: ruleset::options(config.rule_matching, config.skip_unsupported_rules),
            allow_empty: config.rules_allow_empty,
        };
        let first = source
            .load(metrics)
            .with_context(|| format!("loading {}", source.describe()))?;
        tracing::info!(rules = first.ruleset.rules().len(), from = %source.describe(), "rules loaded");
        // Outputs that can be checked now are: an audit path that can never
        // be written fails start-up, not the first event.
        let audit_sink = open_audit(config, metrics)?;
        let stdout = StdoutQueue::stdout(metrics.clone()).context("starting the stdout writer")?;
        metrics.watch_queue_with("stdout_bytes", stdout.probe());

        // The node's control API in every alert, so a SOAR knows where to
        // call (docs/quarantine.md#alerts-name-the-control-api).
        let mut custom_fields = config.custom_fields.clone();
        if let Some(url) = config.control.advertised_url(&hostname(config)) {
            custom_fields.insert(CONTROL_URL_FIELD.to_owned(), url);
        }
        let additions = Arc::new(
            Additions::build(&config.append_output.0, &custom_fields)
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
        let flows = crate::kernel::flows::FlowSettings {
            enabled: config.kernel.flows,
            interim_ns: config.kernel.flow_interim_ms.saturating_mul(1_000_000),
            tcp_slots: config.kernel.flow_tcp_slots,
        };
        let mut probes = KernelProbes::load_with_flows(config.kernel.ringbuf_bytes, flows)?;
        if !config.kernel.dns_capture {
            probes.disable_dns();
        }
        if probes.dns_off().is_none() {
            probes.set_dns_ports(&config.kernel.dns_ports)?;
        }
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
        let flows_accounted = probes.flows_off().is_none();
        probes.attach(&cgroup_path)?;
        // After attaching, so a process born during the scan is either seen
        // by the tracker or by the scan (the seed never overwrites it).
        let mut processes = ProcessCache::new("/proc", PROCESS_CACHE_CAP);
        let seeded = processes.seed_from_proc();
        for (tgid, state) in &seeded {
            probes.seed_process(*tgid, *state)?;
        }
        if let Some(why) = probes.exe_hook_missing() {
            tracing::warn!(
                %why,
                "executables are not resolved in the kernel: proc.exepath is the execve path and proc.is_exe_* flags are absent"
            );
        }
        if !probes.captures_argv() {
            tracing::warn!(
                "no syscall tracepoints: command lines come from /proc and may be missed for short-lived processes"
            );
        }
        // Without result hooks nothing would ever arrive: evaluate result
        // rules at the attempt rather than at every deadline.
        let connect_result_wait = if probes.sees_connect_results() {
            config.connect_result_wait()
        } else {
            std::time::Duration::ZERO
        };
        let counters = probes.counter_reader();
        let watchdog_counters = probes.counter_reader();
        metrics.set_kernel_reader(move || counters.read().ok());
        if let Some(flows) = probes.flow_counter_reader() {
            metrics.set_flow_counter_reader(move || flows.read().ok());
        }

        let baseline = open_baseline(config)?;
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
        // Quarantines are re-applied before readiness, so a restarted agent
        // is never ready while a workload it had cut off is open again.
        let quarantine = if config.control.wanted() {
            let (programs, maps) = probes.take_quarantine()?;
            let containerd = identity
                .as_ref()
                .and_then(|s| s.resolver.containerd().cloned());
            Some(
                crate::quarantine::start(
                    config,
                    &cgroup_path,
                    programs,
                    maps,
                    containerd,
                    metrics,
                    shutdown,
                )
                .await?,
            )
        } else {
            None
        };

        let (quarantine, rule_actions) = match quarantine {
            Some(started) => (Some(started.tasks), started.rule_actions),
            None => (None, None),
        };

        let (records_tx, records_rx) = mpsc::channel(STAGE_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(STAGE_QUEUE);
        metrics.watch_queue("records", &records_tx);
        metrics.watch_queue("events", &events_tx);
        let mut dog = Watchdog::new(readiness.clone(), watchdog::Bounds::default());
        dog.queue("records", watchdog::queue_probe(&records_tx));
        dog.queue("events", watchdog::queue_probe(&events_tx));
        dog.ringbuf_drops(move || {
            let counters = watchdog_counters.read().ok()?;
            Some(
                egret_common::Hook::EGRESS
                    .iter()
                    .filter_map(|h| counters.get(*h as usize))
                    .map(|c| c.ringbuf_full)
                    .sum(),
            )
        });
        let progress = metrics.clone();
        dog.progress(
            move || Some(progress.events_evaluated()),
            watchdog::queue_probe(&events_tx),
        );
        let watchdog_task = tokio::spawn(dog.run(shutdown.clone()));
        let source_task = tokio::spawn(source::run(
            ring,
            records_tx,
            metrics.clone(),
            shutdown.clone(),
        ));
        let mut enricher = Enricher::new(processes, identity)
            .with_metrics(metrics.clone())
            .with_dns_ports(config.kernel.dns_ports.clone());
        if flows_accounted {
            enricher = enricher.with_flow_owners();
        }
        if let Some(baseline) = baseline {
            enricher = enricher.with_baseline(baseline);
        }
        let enrich_task = tokio::spawn(enrich::run(enricher, records_rx, events_tx));
        let audit = audit_sink.map(|sink| audit_queue(sink, metrics));
        let stage = EvaluateStage {
            rules,
            evaluator: Evaluator::new(hostname(config).into(), additions, metrics.clone()),
            outputs: Outputs::new(stdout.clone(), audit, webhooks, metrics.clone()),
            rule_actions,
            pending: pending::Pending::new(
                connect_result_wait,
                pending::PENDING_CAP,
                Some(metrics.clone()),
            ),
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
            watchdog: watchdog_task,
            containerd: containerd_task,
            quarantine,
            stdout,
        })
    }
}

/// The learned profile, when baselines are on; a profile that cannot be
/// read is an error (deleting it is the documented reset).
fn open_baseline(config: &Config) -> anyhow::Result<Option<crate::baseline::Baseline>> {
    let section = &config.baseline;
    if !section.enabled {
        return Ok(None);
    }
    let baseline = crate::baseline::Baseline::open(
        section.to_config(),
        crate::advise::model::LabelPolicy::default(),
    )
    .map_err(anyhow::Error::msg)
    .context("loading the baseline profile (delete it to start learning again)")?;
    tracing::info!(
        path = %section.path.display(),
        workloads = baseline.workloads(),
        learning_seconds = section.learning_seconds,
        "workload baselines on"
    );
    Ok(Some(baseline))
}

/// The audit sink, opened (and so checked) now; `None` when it is off.
fn open_audit(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<AuditSink<std::io::Stdout>>> {
    let destination = match &config.audit.path {
        AuditTarget::Off => return Ok(None),
        AuditTarget::Stdout => AuditDestination::Writer(std::io::stdout()),
        AuditTarget::File(path) => AuditDestination::File {
            path: path.clone(),
            max_bytes: config.audit.max_bytes,
            max_files: config.audit.max_files,
        },
    };
    Ok(Some(AuditSink::open(destination, metrics.clone())?))
}

fn audit_queue(sink: AuditSink<std::io::Stdout>, metrics: &Metrics) -> AuditQueue {
    let (tx, rx) = mpsc::channel(STAGE_QUEUE);
    metrics.watch_queue("audit", &tx);
    let task = tokio::spawn(audit::run(rx, sink));
    AuditQueue { tx, task }
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
