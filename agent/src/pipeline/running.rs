//! A started pipeline and its ordered, bounded stop.
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use egret_common::{Hook, HookCounters};
use serde::Serialize;
use tokio::{io::Stdout, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    kernel::KernelProbes,
    metrics::{Metrics, Verdict},
    outputs::{OutputTotals, Outputs},
};

/// How long each stage, and each output, may take to drain at shutdown. A
/// stage that takes longer is abandoned, so a stuck output can never turn
/// SIGTERM into SIGKILL.
pub const STAGE_GRACE: Duration = Duration::from_secs(15);

pub struct Running {
    pub(super) started: Started,
    pub(super) probes: KernelProbes,
    pub(super) metrics: Arc<Metrics>,
    pub(super) source: JoinHandle<std::io::Result<()>>,
    pub(super) enrich: JoinHandle<()>,
    pub(super) evaluate: JoinHandle<std::io::Result<Outputs<Stdout>>>,
    pub(super) reload: JoinHandle<()>,
    pub(super) containerd: Option<JoinHandle<()>>,
}

/// What start-up did, for the ready line.
pub(super) struct Started {
    pub cgroup: std::path::PathBuf,
    pub ignored_networks: usize,
    pub seeded_processes: usize,
}

/// Totals at exit, machine-readable (`egret run --summary PATH`).
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Networks in the kernel ignore list at start-up.
    pub ignored_networks: usize,
    /// Kernel counters per hook; absent when they could not be read.
    pub kernel: Option<BTreeMap<&'static str, HookTotals>>,
    pub pipeline: PipelineTotals,
}

#[derive(Debug, Serialize)]
pub struct HookTotals {
    pub seen: u64,
    pub ignored: u64,
    pub emitted: u64,
    pub ringbuf_full: u64,
    pub repeat_of_connect: u64,
}

#[derive(Debug, Serialize)]
pub struct PipelineTotals {
    /// Egress events evaluated (`alerted + no_match`).
    pub events: u64,
    pub alerted: u64,
    pub no_match: u64,
    pub decode_errors: u64,
    /// Events the audit log's full queue refused.
    pub audit_dropped: u64,
    #[serde(flatten)]
    pub outputs: OutputTotals,
}

impl Running {
    /// Ids of the attached kernel programs.
    pub fn program_ids(&self) -> &[u32] {
        self.probes.attached_program_ids()
    }

    /// Logs `egret ready`; call once readiness is reported, since tests and
    /// operators take the line to mean /readyz answers 200.
    pub fn log_ready(&self) {
        tracing::info!(
            cgroup = %self.started.cgroup.display(),
            ignored_networks = self.started.ignored_networks,
            seeded_processes = self.started.seeded_processes,
            program_ids = ?self.program_ids(),
            "egret ready"
        );
    }

    /// Stops in order: detach the hooks (nothing new arrives), then let each
    /// stage drain into the next, then the outputs, each within
    /// [`STAGE_GRACE`]. The shutdown token must already be cancelled (the
    /// source stops on it).
    pub async fn stop(self) -> anyhow::Result<Summary> {
        let Running {
            started,
            probes,
            metrics,
            source,
            enrich,
            evaluate,
            reload,
            containerd,
        } = self;
        let counters = probes.counters();
        metrics.set_kernel_reader(|| None);
        let program_ids = probes.detach();
        tracing::info!(program_ids = ?program_ids, "detached kernel programs");
        if let Ok(counters) = &counters {
            // The last values stay visible to a final scrape.
            metrics.set_kernel_counters(*counters);
        }

        join("source", source)
            .await?
            .context("reading the ring buffer")?;
        join("enrich", enrich).await?;
        let outputs = join("evaluate", evaluate)
            .await?
            .context("writing alerts")?;
        let outputs = outputs
            .stop(STAGE_GRACE)
            .await
            .context("writing the audit log")?;
        join("reload", reload).await?;
        if let Some(task) = containerd {
            join("containerd", task).await?;
        }
        let mut summary = Summary::new(counters.ok(), &metrics, outputs);
        summary.ignored_networks = started.ignored_networks;
        summary.log();
        Ok(summary)
    }
}

impl Summary {
    fn new(
        counters: Option<[HookCounters; Hook::COUNT as usize]>,
        metrics: &Metrics,
        outputs: OutputTotals,
    ) -> Summary {
        let kernel = counters.map(|counters| {
            Hook::ALL
                .iter()
                .zip(counters)
                .map(|(hook, c)| {
                    let totals = HookTotals {
                        seen: c.seen,
                        ignored: c.ignored,
                        emitted: c.emitted,
                        ringbuf_full: c.ringbuf_full,
                        repeat_of_connect: c.repeat_of_connect,
                    };
                    (hook.name(), totals)
                })
                .collect()
        });
        let alerted = metrics.events(Verdict::Alerted);
        let no_match = metrics.events(Verdict::NoMatch);
        Summary {
            ignored_networks: 0,
            kernel,
            pipeline: PipelineTotals {
                events: alerted + no_match,
                alerted,
                no_match,
                decode_errors: metrics.events(Verdict::DecodeError),
                audit_dropped: metrics.audit_dropped(),
                outputs,
            },
        }
    }

    fn log(&self) {
        match &self.kernel {
            Some(kernel) => {
                for (hook, c) in kernel {
                    tracing::info!(
                        hook,
                        seen = c.seen,
                        ignored = c.ignored,
                        emitted = c.emitted,
                        ringbuf_full = c.ringbuf_full,
                        repeat_of_connect = c.repeat_of_connect,
                        "kernel counters"
                    );
                }
            }
            None => tracing::warn!("could not read kernel counters"),
        }
        let p = &self.pipeline;
        tracing::info!(
            events = p.events,
            decode_errors = p.decode_errors,
            alerts = p.outputs.alerts_written,
            audited = p.outputs.audited,
            audit_dropped = p.audit_dropped,
            "pipeline totals"
        );
    }

    /// Writes the summary as one JSON object.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self).context("encoding the exit summary")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// An output that can no longer write (stdout closed, disk full) must not
/// leave the hooks attached and /readyz green while events pile up: the
/// agent shuts down and exits non-zero, so the orchestrator restarts it.
pub(super) async fn stop_on_error<T>(
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

async fn join<T>(name: &str, task: JoinHandle<T>) -> anyhow::Result<T> {
    match tokio::time::timeout(STAGE_GRACE, task).await {
        Ok(joined) => joined.with_context(|| format!("{name} task")),
        Err(_) => anyhow::bail!("{name} task did not finish within {STAGE_GRACE:?}"),
    }
}
