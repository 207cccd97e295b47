//! `egret run`: wires kernel → source → enrich → rules → sinks with bounded
//! channels and one shutdown token, and tears everything down in order on
//! SIGINT/SIGTERM.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    health::{self, Readiness},
    kernel::{IgnoreSet, KernelProbes, cgroup},
    metrics::{self, Metrics},
    outputs::{
        alert::Additions,
        audit::{self, AuditOutput},
        webhook::{DEFAULT_SHUTDOWN_GRACE, WebhookSink},
    },
    pipeline::{
        enrich::{self, Enricher, IdentitySources, process::ProcessCache},
        evaluate::RulesStage,
        source,
    },
    ruleset::{self as rules, RulePaths, reload::Reloader},
};

/// Batches in flight between stages; with [`source::BATCH`] events each.
const STAGE_QUEUE: usize = 64;
/// Process images kept (one per exec); about 300 bytes each.
const PROCESS_CACHE_CAP: usize = 65_536;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let metrics = Metrics::new(&config.metrics);
    let readiness = Readiness::default();
    let health = match config.listen {
        Some(addr) => Some(serve_http(addr, &readiness, &metrics, &shutdown).await?),
        None => None,
    };

    // Rules first: a broken rule file should fail before anything loads.
    let rule_paths = RulePaths(config.rules_files.clone());
    let rule_options = rules::options(config.rule_matching);
    let ruleset = rules::load(&rule_paths, &rule_options)
        .with_context(|| format!("loading {}", rules::describe(&rule_paths)))?;
    tracing::info!(rules = ruleset.rules().len(), from = %rules::describe(&rule_paths), "rules loaded");
    // The first load is a load too: without this the rule gauges read 0
    // ("last reload failed") until the first reload, and
    // EgretRuleReloadFailed pages for every healthy agent.
    metrics.rules_reloaded(ruleset.rules().len());

    let additions = Arc::new(
        Additions::build(&config.append_output.0, &config.custom_fields)
            .map_err(anyhow::Error::msg)
            .context("append_output / custom_fields")?,
    );
    let mut webhook_endpoints = config.webhooks.clone();
    // Custom fields are labels too where an output has labels.
    for endpoint in &mut webhook_endpoints {
        endpoint.label_fields = config.custom_fields.keys().cloned().collect();
    }
    let webhooks = if webhook_endpoints.is_empty() {
        None
    } else {
        Some(
            WebhookSink::start(
                &webhook_endpoints,
                Some(&metrics),
                shutdown.clone(),
                DEFAULT_SHUTDOWN_GRACE,
            )
            .context("webhooks")?,
        )
    };

    let cgroup_path = match &config.kernel.cgroup {
        Some(path) => {
            cgroup::ensure_cgroup2(path)?;
            path.clone()
        }
        None => cgroup::cgroup2_root()?,
    };
    let mut probes = KernelProbes::load(config.kernel.ringbuf_bytes)?;
    let mut base_ignore = if config.kernel.builtin_ignore {
        IgnoreSet::builtin()
    } else {
        IgnoreSet::default()
    };
    base_ignore.extend(config.kernel.ignore_networks.iter().copied());
    let audit_path = config.audit.path.clone().filter(|p| !p.is_empty());
    let (rules_tx, rules_rx) = tokio::sync::watch::channel(Arc::new(ruleset));
    let mut reloader = Reloader {
        paths: rule_paths,
        options: rule_options,
        rules: rules_tx,
        ignore_map: probes.take_ignore_map()?,
        base_ignore,
        rules_drive_ignore: audit_path.is_none(),
        metrics: metrics.clone(),
    };
    let initial = rules_rx.borrow().clone();
    reloader.apply_ignore(&initial);
    let ignored_networks = reloader.ignore_map.current().len();
    let ring = probes.take_events()?;
    probes.attach(&cgroup_path)?;
    // After attaching, so a process born during the scan is either seen by
    // the tracker or by the scan (the seed never overwrites the tracker).
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
    let probes = Arc::new(std::sync::Mutex::new(probes));
    let reader = probes.clone();
    metrics.set_kernel_reader(move || reader.lock().ok()?.counters().ok());

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

    // The stages. Each channel is bounded: a slow stage slows the one before
    // it, back to the kernel ring buffer, whose overflows are counted.
    let source_stats = Arc::new(source::SourceStats::default());
    let (records_tx, records_rx) = mpsc::channel(STAGE_QUEUE);
    let (events_tx, events_rx) = mpsc::channel(STAGE_QUEUE);
    metrics.watch_queue("records", &records_tx);
    metrics.watch_queue("events", &events_tx);
    let source_task = tokio::spawn(source::run(
        ring,
        records_tx,
        source_stats.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let enrich_task = tokio::spawn(enrich::run(
        Enricher::new(processes, identity).with_metrics(metrics.clone()),
        records_rx,
        events_tx,
    ));
    let audit_dropped = Arc::new(AtomicU64::new(0));
    let (audit_tx, audit_task) = match &audit_path {
        Some(path) => {
            let (tx, rx) = mpsc::channel(STAGE_QUEUE);
            metrics.watch_queue("audit", &tx);
            let output = if path == "-" {
                AuditOutput::Writer(tokio::io::stdout())
            } else {
                AuditOutput::File {
                    path: path.into(),
                    max_bytes: config.audit.max_bytes,
                    max_files: config.audit.max_files,
                }
            };
            let task = audit::run(rx, output);
            (
                Some(tx),
                Some(tokio::spawn(stop_on_error("audit", task, shutdown.clone()))),
            )
        }
        None => (None, None),
    };
    let stage = RulesStage {
        rules: rules_rx,
        hostname: hostname(&config).into(),
        additions: additions.clone(),
        metrics: metrics.clone(),
        webhooks,
        alerts_out: tokio::io::stdout(),
        audit: audit_tx,
        audit_dropped: audit_dropped.clone(),
    };
    let rules_task = tokio::spawn(stop_on_error(
        "rules",
        stage.run(events_rx),
        shutdown.clone(),
    ));

    readiness.set(true);
    let program_ids = lock(&probes).attached_program_ids().to_vec();
    tracing::info!(
        cgroup = %cgroup_path.display(),
        ignored_networks,
        seeded_processes = seeded.len(),
        program_ids = ?program_ids,
        "egret ready"
    );

    shutdown.cancelled().await;
    readiness.set(false);
    tracing::info!("shutting down");
    // Stop the hooks first so nothing new arrives, then let stages drain.
    let counters = lock(&probes).counters();
    drop(probes);
    metrics.set_kernel_reader(|| None);
    tracing::info!(program_ids = ?program_ids, "detached kernel programs");

    join("source", source_task)
        .await?
        .context("reading the ring buffer")?;
    join("enrich", enrich_task).await?;
    let alerts = join("rules", rules_task).await?.context("writing alerts")?;
    let audited = match audit_task {
        Some(task) => join("audit", task)
            .await?
            .context("writing the audit log")?,
        None => 0,
    };
    join("reload", reload_task).await?;
    if let Some(task) = containerd_task {
        join("containerd", task).await?;
    }
    if let Some(task) = health {
        join("http", task).await?.context("serving HTTP")?;
    }
    log_totals(
        counters,
        &source_stats,
        alerts,
        audited,
        audit_dropped.load(Ordering::Relaxed),
    );
    Ok(())
}

/// A sink that can no longer write (stdout closed, disk full) must not leave
/// the hooks attached and /readyz green while events pile up: the agent
/// shuts down and exits non-zero, so the orchestrator restarts it.
async fn stop_on_error<T>(
    stage: &'static str,
    task: impl std::future::Future<Output = std::io::Result<T>>,
    shutdown: CancellationToken,
) -> std::io::Result<T> {
    let result = task.await;
    if let Err(err) = &result {
        tracing::error!(stage, %err, "output stage failed; shutting down");
        shutdown.cancel();
    }
    result
}

async fn serve_http(
    addr: SocketAddr,
    readiness: &Readiness,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("reading bound address")?;
    tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    let router = health::router(readiness.clone()).merge(metrics::router(metrics.clone()));
    Ok(tokio::spawn(health::serve(
        listener,
        router,
        shutdown.clone(),
    )))
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

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn join<T>(name: &str, task: JoinHandle<T>) -> anyhow::Result<T> {
    // A stage that does not drain within this long is abandoned, so a stuck
    // sink can never turn SIGTERM into SIGKILL.
    const STAGE_GRACE: Duration = Duration::from_secs(15);
    match tokio::time::timeout(STAGE_GRACE, task).await {
        Ok(joined) => joined.with_context(|| format!("{name} task")),
        Err(_) => anyhow::bail!("{name} task did not finish within {STAGE_GRACE:?}"),
    }
}

fn log_totals(
    counters: Result<
        [egret_common::HookCounters; egret_common::Hook::COUNT as usize],
        crate::kernel::KernelError,
    >,
    source: &source::SourceStats,
    alerts: u64,
    audited: u64,
    audit_dropped: u64,
) {
    match counters {
        Ok(counters) => {
            for (hook, c) in egret_common::Hook::ALL.iter().zip(counters) {
                tracing::info!(
                    hook = hook.name(),
                    seen = c.seen,
                    ignored = c.ignored,
                    emitted = c.emitted,
                    ringbuf_full = c.ringbuf_full,
                    repeat_of_connect = c.repeat_of_connect,
                    "kernel counters"
                );
            }
        }
        Err(err) => tracing::warn!(%err, "could not read kernel counters"),
    }
    tracing::info!(
        decoded = source.decoded.load(Ordering::Relaxed),
        decode_errors = source.decode_errors.load(Ordering::Relaxed),
        alerts,
        audited,
        audit_dropped,
        "pipeline totals"
    );
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}
