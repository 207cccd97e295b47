//! `egret run`: wires kernel → source → sinks with bounded channels and one
//! shutdown token, and tears everything down in order on SIGINT/SIGTERM.
use std::sync::{Arc, atomic::Ordering};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::RunArgs,
    enrich::{self, Enricher, IdentitySources, process::ProcessCache},
    health::{self, Readiness},
    identity::{
        cgroups::{CgroupPaths, CgroupPathsConfig},
        containerd::{ContainerdConfig, ContainerdMetadata},
        netns::HostNetns,
        resolver::IdentityResolver,
        users::{UserNames, UserNamesConfig},
    },
    kernel::{IgnoreSet, KernelProbes, cgroup},
    sinks, source,
};

/// Batches in flight between stages; with [`source::BATCH`] events each.
const STAGE_QUEUE: usize = 64;
/// Process images kept (one per exec); about 300 bytes each.
const PROCESS_CACHE_CAP: usize = 65_536;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    let readiness = Readiness::default();
    let health = match args.listen {
        Some(addr) => {
            let listener = health::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let bound = listener.local_addr().context("reading bound address")?;
            tracing::info!(%bound, "serving /healthz and /readyz");
            Some(tokio::spawn(health::serve(
                listener,
                health::router(readiness.clone()),
                shutdown.clone(),
            )))
        }
        None => None,
    };

    let cgroup_path = match &args.cgroup {
        Some(path) => {
            cgroup::ensure_cgroup2(path)?;
            path.clone()
        }
        None => cgroup::cgroup2_root()?,
    };

    let mut probes = KernelProbes::load(args.ringbuf_bytes)?;
    let mut ignore = if args.no_builtin_ignore {
        IgnoreSet::default()
    } else {
        IgnoreSet::builtin()
    };
    ignore.extend(args.ignore_cidrs.iter().copied());
    let mut ignore_map = probes.take_ignore_map()?;
    ignore_map
        .replace(&ignore)
        .context("filling the in-kernel ignore map")?;
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
    readiness.set(true);
    tracing::info!(
        cgroup = %cgroup_path.display(),
        ignored_networks = ignore.len(),
        seeded_processes = seeded.len(),
        program_ids = ?probes.attached_program_ids(),
        "egret ready"
    );

    let (identity, containerd_task) = if args.no_identity {
        (None, None)
    } else {
        let (sources, worker) = identity_sources(&args)?;
        (
            Some(sources),
            Some(tokio::spawn(worker.run(shutdown.clone()))),
        )
    };

    let source_stats = Arc::new(source::SourceStats::default());
    let (records_tx, records_rx) = mpsc::channel(STAGE_QUEUE);
    let (events_tx, events_rx) = mpsc::channel(STAGE_QUEUE);
    let source_task = tokio::spawn(source::run(
        ring,
        records_tx,
        source_stats.clone(),
        shutdown.clone(),
    ));
    let enrich_task = tokio::spawn(enrich::run(
        Enricher::new(processes, identity),
        records_rx,
        events_tx,
    ));
    let audit_task = tokio::spawn(sinks::audit::run(events_rx, tokio::io::stdout()));

    shutdown.cancelled().await;
    readiness.set(false);
    tracing::info!("shutting down");
    // Stop hooks first so nothing new arrives, then let the stages drain.
    let ids = probes.attached_program_ids().to_vec();
    let counters = probes.counters();
    drop(probes);
    tracing::info!(program_ids = ?ids, "detached kernel programs");

    source_task
        .await
        .context("source task")?
        .context("reading the ring buffer")?;
    enrich_task.await.context("enrich task")?;
    if let Some(task) = containerd_task {
        task.await.context("containerd task")?;
    }
    let written = audit_task
        .await
        .context("audit task")?
        .context("writing audit records")?;
    if let Some(health) = health {
        health
            .await
            .context("health task")?
            .context("serving health")?;
    }
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
        decoded = source_stats.decoded.load(Ordering::Relaxed),
        decode_errors = source_stats.decode_errors.load(Ordering::Relaxed),
        written,
        "pipeline totals"
    );
    Ok(())
}

fn identity_sources(
    args: &RunArgs,
) -> anyhow::Result<(
    IdentitySources,
    crate::identity::containerd::ContainerdWorker,
)> {
    let cgroups = CgroupPaths::from_mountinfo(CgroupPathsConfig::default())
        .context("cgroup tree for container identity")?;
    // Warm the cache so the first events do not each trigger a walk.
    if let Err(err) = cgroups.refresh() {
        tracing::warn!(%err, "initial cgroup walk failed; retrying on demand");
    }
    let (containerd, worker) = ContainerdMetadata::new(ContainerdConfig {
        socket: args.containerd_socket.clone(),
        namespace: args.containerd_namespace.clone(),
        ..Default::default()
    })
    .context("containerd client")?;
    let users = UserNames::new(UserNamesConfig {
        host_passwd: args.host_passwd.clone(),
        ..Default::default()
    });
    let host_netns = HostNetns::detect().context("reading this host's network namespace cookie")?;
    Ok((
        IdentitySources {
            resolver: IdentityResolver::new(cgroups, Some(containerd)),
            users,
            host_netns,
        },
        worker,
    ))
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
