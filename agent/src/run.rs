//! `egret run`: wires kernel → source → enrich → rules → sinks with bounded
//! channels and one shutdown token, and tears everything down in order on
//! SIGINT/SIGTERM.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    health::{self, Readiness},
    kernel::{IgnoreSet, KernelProbes, cgroup},
    metrics::{self, Metrics, Output},
    outputs::{
        audit::{self, AuditSink, AuditTarget},
        stdout_queue::StdoutQueue,
        webhook::{DEFAULT_SHUTDOWN_GRACE, WebhookSink},
    },
    pipeline::{
        enrich::{self, Enricher, IdentitySources, process::ProcessCache},
        evaluate::RulesStage,
        source,
    },
    ruleset::{
        self as rules, RulePaths,
        reload::{self, Reloader},
    },
    watchdog::{self, Watchdog},
};

/// From the shutdown signal to exit, at most (plus the detach itself): well
/// under the 30 s termination grace of the shipped DaemonSet. Webhook
/// endpoints get [`DEFAULT_SHUTDOWN_GRACE`] of it.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

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
    if !config.rules_allow_empty
        && let Some(empty) = reload::empty_file(&rule_paths)
    {
        anyhow::bail!(
            "{empty} is empty: an agent without rules detects nothing (set `rules_allow_empty: true` to start anyway)"
        );
    }
    tracing::info!(rules = ruleset.rules().len(), from = %rules::describe(&rule_paths), "rules loaded");
    // The first load is a load too: without this the rule gauges read 0
    // ("last reload failed") until the first reload, and
    // EgretRuleReloadFailed pages for every healthy agent.
    metrics.rules_reloaded(ruleset.rules().len());

    let audit_path = config.audit.path.clone().filter(|p| !p.is_empty());
    // Opened now: a path that can never be written fails start-up.
    let audit_sink = match &audit_path {
        Some(path) if path == "-" => Some(AuditSink::open(
            AuditTarget::Writer(std::io::stdout()),
            metrics.clone(),
        )?),
        Some(path) => Some(AuditSink::open(
            AuditTarget::File {
                path: path.into(),
                max_bytes: config.audit.max_bytes,
                max_files: config.audit.max_files,
            },
            metrics.clone(),
        )?),
        None => None,
    };
    let stdout = StdoutQueue::stdout(metrics.clone()).context("starting the stdout writer")?;
    metrics.watch_queue_with("stdout_bytes", stdout.probe());

    let webhook_endpoints = config.webhooks.clone();
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
    let (rules_tx, rules_rx) = tokio::sync::watch::channel(Arc::new(ruleset));
    let mut reloader = Reloader {
        paths: rule_paths,
        options: rule_options,
        rules: rules_tx,
        ignore_map: probes.take_ignore_map()?,
        base_ignore,
        rules_drive_ignore: audit_path.is_none(),
        allow_empty: config.rules_allow_empty,
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
    let mut dog = Watchdog::new(readiness.clone(), watchdog::Bounds::default());
    dog.queue("records", watchdog::queue_probe(&records_tx));
    dog.queue("events", watchdog::queue_probe(&events_tx));
    {
        let probes = Arc::downgrade(&probes);
        dog.ringbuf_drops(move || {
            let probes = probes.upgrade()?;
            let counters = lock(&probes).counters().ok()?;
            Some(
                egret_common::Hook::EGRESS
                    .iter()
                    .filter_map(|h| counters.get(*h as usize))
                    .map(|c| c.ringbuf_full)
                    .sum(),
            )
        });
        let m = metrics.clone();
        dog.progress(
            move || Some(m.events_evaluated()),
            watchdog::queue_probe(&events_tx),
        );
    }
    let watchdog_task = tokio::spawn(dog.run(shutdown.clone()));
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
    let (audit_tx, audit_task) = match audit_sink {
        Some(sink) => {
            let (tx, rx) = mpsc::channel(STAGE_QUEUE);
            metrics.watch_queue("audit", &tx);
            (Some(tx), Some(tokio::spawn(audit::run(rx, sink))))
        }
        None => (None, None),
    };
    let stage = RulesStage {
        rules: rules_rx,
        hostname: hostname(&config).into(),
        metrics: metrics.clone(),
        webhooks,
        alerts_out: stdout.clone(),
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

    // One deadline for everything after the hooks are gone, whatever the
    // outputs do: a stage still running at the deadline is abandoned (and
    // what it held is counted as lost where it can be), never waited for.
    let deadline = Instant::now() + SHUTDOWN_BOUND;
    if let Some(result) = join_by("source", source_task, deadline).await? {
        result.context("reading the ring buffer")?;
    }
    join_by("enrich", enrich_task, deadline).await?;
    let alerts = match join_by("rules", rules_task, deadline).await? {
        Some(result) => result.context("evaluating rules")?,
        None => 0,
    };
    let alerts_written = stdout.finish(deadline).await;
    let audited = match audit_task {
        Some(task) => join_by("audit", task, deadline).await?.unwrap_or(0),
        None => 0,
    };
    join_by("reload", reload_task, deadline).await?;
    join_by("watchdog", watchdog_task, deadline).await?;
    if let Some(task) = containerd_task {
        join_by("containerd", task, deadline).await?;
    }
    if let Some(task) = health
        && let Some(result) = join_by("http", task, deadline).await?
    {
        result.context("serving HTTP")?;
    }
    log_totals(
        counters,
        &source_stats,
        alerts,
        audited,
        audit_dropped.load(Ordering::Relaxed),
    );
    tracing::info!(
        alerts_written,
        stdout_lost = metrics.output_lost_total(Output::Stdout),
        audit_lost = metrics.output_lost_total(Output::Audit),
        "output totals"
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
fn hostname(config: &Config) -> String {
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

/// `None` when the task was still running at `deadline` (it is abandoned
/// and ends with the process); a panicked task is an error.
async fn join_by<T>(
    name: &str,
    task: JoinHandle<T>,
    deadline: Instant,
) -> anyhow::Result<Option<T>> {
    match tokio::time::timeout_at(deadline.into(), task).await {
        Ok(joined) => joined.map(Some).with_context(|| format!("{name} task")),
        Err(_) => {
            tracing::warn!(
                task = name,
                bound = ?SHUTDOWN_BOUND,
                "still running at the shutdown deadline; abandoned"
            );
            Ok(None)
        }
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

/// The first SIGTERM/SIGINT starts the ordered shutdown; a second one
/// exits at once (an operator who signals twice wants the process gone).
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
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal during shutdown; exiting now");
        // Links to the kernel programs are file descriptors: exiting
        // detaches them.
        std::process::exit(1);
    });
    Ok(())
}
