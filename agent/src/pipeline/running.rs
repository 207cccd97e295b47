//! A started pipeline and its ordered, bounded stop.
use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use egret_common::{Hook, HookCounters};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    kernel::KernelProbes,
    metrics::{Metrics, Output, Verdict},
    outputs::{OutputTotals, Outputs, stdout_queue::StdoutQueue},
};

/// From the detach to exit, at most, whatever the outputs do (a stdout
/// nobody reads, a hung disk): well under the 30 s termination grace of the
/// shipped DaemonSet. Stages and outputs share this one deadline; what is
/// still running then is abandoned and what it held is counted as lost
/// where it can be. Webhook endpoints get
/// [`crate::outputs::webhook::DEFAULT_SHUTDOWN_GRACE`] of it.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

pub struct Running {
    pub(super) started: Started,
    pub(super) probes: KernelProbes,
    pub(super) metrics: Arc<Metrics>,
    pub(super) source: JoinHandle<std::io::Result<()>>,
    pub(super) enrich: JoinHandle<()>,
    pub(super) evaluate: JoinHandle<std::io::Result<Outputs<StdoutQueue>>>,
    pub(super) reload: JoinHandle<()>,
    pub(super) watchdog: JoinHandle<()>,
    pub(super) containerd: Option<JoinHandle<()>>,
    /// The control API (if configured) and the quarantine ticker.
    pub(super) quarantine: Option<crate::quarantine::Tasks>,
    /// The stdout queue's handle, to drain it by the deadline.
    pub(super) stdout: StdoutQueue,
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
    /// Records each local output could not write, all reasons
    /// (`egret_output_lost_records_total`).
    pub stdout_lost: u64,
    pub audit_lost: u64,
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
    /// stage drain into the next, then the outputs, all by one deadline
    /// [`SHUTDOWN_BOUND`] away. The shutdown token must already be cancelled
    /// (the source stops on it).
    pub async fn stop(self) -> anyhow::Result<Summary> {
        let Running {
            started,
            probes,
            metrics,
            source,
            enrich,
            evaluate,
            reload,
            watchdog,
            containerd,
            quarantine,
            stdout,
        } = self;
        let counters = probes.counters();
        metrics.set_kernel_reader(|| None);
        let program_ids = probes.detach();
        tracing::info!(program_ids = ?program_ids, "detached kernel programs");
        // The ticker, the API and the rule-action worker own the quarantine
        // manager: once they have stopped, its links close and every quarantine is lifted (the
        // persisted state re-applies them at the next start).
        let deadline = Instant::now() + SHUTDOWN_BOUND;
        if let Some(crate::quarantine::Tasks {
            api,
            ticker,
            actions,
        }) = quarantine
        {
            if let Some(api) = api
                && let Some(result) = join_by("control", api, deadline).await?
            {
                result.context("serving the control API")?;
            }
            join_by("quarantine ticker", ticker, deadline).await?;
            if let Some(actions) = actions {
                join_by("rule actions", actions, deadline).await?;
            }
        }
        if let Ok(counters) = &counters {
            // The last values stay visible to a final scrape.
            metrics.set_kernel_counters(*counters);
        }

        if let Some(result) = join_by("source", source, deadline).await? {
            result.context("reading the ring buffer")?;
        }
        join_by("enrich", enrich, deadline).await?;
        let mut totals = match join_by("evaluate", evaluate, deadline).await? {
            Some(outputs) => outputs
                .context("evaluating")?
                .stop(deadline)
                .await
                .context("stopping the outputs")?,
            None => OutputTotals::default(),
        };
        totals.alerts_written = stdout.finish(deadline).await;
        join_by("reload", reload, deadline).await?;
        join_by("watchdog", watchdog, deadline).await?;
        if let Some(task) = containerd {
            join_by("containerd", task, deadline).await?;
        }
        let mut summary = Summary::new(counters.ok(), &metrics, totals);
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
                .filter_map(|hook| Some((hook, *counters.get(*hook as usize)?)))
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
                stdout_lost: metrics.output_lost_total(Output::Stdout),
                audit_lost: metrics.output_lost_total(Output::Audit),
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
            stdout_lost = p.stdout_lost,
            audit_lost = p.audit_lost,
            "pipeline totals"
        );
    }

    /// Writes the summary as one JSON object.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self).context("encoding the exit summary")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// The evaluate stage fails only if an alert cannot be serialised (outputs
/// degrade and count instead of failing); should it ever, the agent shuts
/// down and exits non-zero rather than run without evaluating.
pub(super) async fn stop_on_error<T>(
    stage: &'static str,
    task: impl std::future::Future<Output = std::io::Result<T>>,
    shutdown: CancellationToken,
) -> std::io::Result<T> {
    let result = task.await;
    if let Err(err) = &result {
        tracing::error!(stage, %err, "stage failed; shutting down");
        shutdown.cancel();
    }
    result
}

/// `None` when the task was still running at `deadline`: it is abandoned
/// and ends with the process. A panicked task is an error.
pub async fn join_by<T>(
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
