//! Rule actions: a rule tagged [`TAG`] quarantines the container of the
//! event it matched, with the allow list and TTL from the config, subject
//! to the same refusals as the API (host, Egret's own pod, kube-system).
//! `control.rule_actions` switches it: `off`, `dry_run` (log and count what
//! would happen), `enforce`.
//!
//! The evaluate stage only offers requests to a bounded queue (a full queue
//! is counted, never waited on); a worker resolves and applies them off the
//! event path, and skips a container it handled in the last minute, so a
//! flood of matching events costs one cgroup walk.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    manager::{Manager, QuarantineError},
    model::{TargetSpec, Validated},
    target::TargetError,
};
use crate::{config::RuleActionMode, metrics::Metrics, pipeline::enrich::Event};

/// The opt-in tag. Falco accepts any tag, so a rule file carrying it stays
/// valid for Falco, which simply does not act on it.
pub const TAG: &str = "egret.quarantine";

const QUEUE: usize = 256;
const RECENT: Duration = Duration::from_secs(60);
const RECENT_CAP: usize = 4096;

/// Why a rule action did or did not quarantine: the metric's `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    DryRun,
    /// Already quarantined (by the API, a list, or an earlier match).
    Duplicate,
    /// The event is not from a container (host process, identity off).
    NotContainer,
    /// Host, Egret's own pod, kube-system.
    Refused,
    NotFound,
    /// The queue to the worker was full.
    Dropped,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::DryRun => "dry_run",
            Outcome::Duplicate => "duplicate",
            Outcome::NotContainer => "not_container",
            Outcome::Refused => "refused",
            Outcome::NotFound => "not_found",
            Outcome::Dropped => "dropped",
            Outcome::Failed => "failed",
        }
    }
}

struct Request {
    rule: Arc<str>,
    /// Full container id from the cgroup path.
    container: Option<String>,
}

/// The evaluate stage's handle.
pub struct RuleActions {
    tx: mpsc::Sender<Request>,
    mode: RuleActionMode,
    metrics: Arc<Metrics>,
}

/// The config of the worker.
pub struct Settings {
    pub mode: RuleActionMode,
    pub allow: Vec<IpNet>,
    pub ttl: Option<Duration>,
}

impl RuleActions {
    /// Offers the event a tagged rule matched; never waits.
    pub fn offer(&self, rule: &Arc<str>, event: &Event) {
        let container = event
            .identity
            .as_ref()
            .and_then(|i| i.container_id())
            .map(str::to_owned);
        let request = Request {
            rule: rule.clone(),
            container,
        };
        if self.tx.try_send(request).is_err() {
            self.metrics
                .rule_action(self.mode.as_str(), Outcome::Dropped.as_str());
        }
    }
}

/// Starts the worker (`None` when rule actions are off).
pub fn spawn(
    settings: Settings,
    manager: Arc<Manager>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Option<(RuleActions, JoinHandle<()>)> {
    if settings.mode == RuleActionMode::Off {
        return None;
    }
    let (tx, mut rx) = mpsc::channel::<Request>(QUEUE);
    let handle = RuleActions {
        tx,
        mode: settings.mode,
        metrics: metrics.clone(),
    };
    let mode = settings.mode.as_str();
    let settings = Arc::new(settings);
    let task = tokio::spawn(async move {
        let mut recent: HashMap<String, Instant> = HashMap::new();
        loop {
            let request = tokio::select! {
                () = shutdown.cancelled() => break,
                request = rx.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
            };
            if let Some(id) = &request.container {
                let now = Instant::now();
                if recent
                    .get(id)
                    .is_some_and(|at| now.duration_since(*at) < RECENT)
                {
                    metrics.rule_action(mode, Outcome::Duplicate.as_str());
                    continue;
                }
                if recent.len() >= RECENT_CAP {
                    recent.retain(|_, at| now.duration_since(*at) < RECENT);
                }
                if recent.len() < RECENT_CAP {
                    recent.insert(id.clone(), now);
                }
            }
            let manager = manager.clone();
            let settings = settings.clone();
            let rule = request.rule.clone();
            let outcome = tokio::task::spawn_blocking(move || act(&settings, &manager, request))
                .await
                .unwrap_or(Outcome::Failed);
            tracing::debug!(rule = %rule, outcome = outcome.as_str(), "rule action");
            metrics.rule_action(mode, outcome.as_str());
        }
    });
    Some((handle, task))
}

fn act(settings: &Settings, manager: &Manager, request: Request) -> Outcome {
    let mode = settings.mode.as_str();
    let Some(id) = request.container else {
        tracing::info!(rule = %request.rule, mode, "rule action skipped: the event is not from a container");
        return Outcome::NotContainer;
    };
    let target = TargetSpec::Container { container_id: id };
    let by = format!("rule:{}", request.rule);
    let result = match settings.mode {
        RuleActionMode::Off => return Outcome::NotContainer,
        RuleActionMode::DryRun => manager.would_add(&target).map(|dir| {
            tracing::warn!(
                rule = %request.rule,
                %target,
                cgroup = %dir.display(),
                allow = ?settings.allow,
                ttl_seconds = settings.ttl.map(|t| t.as_secs()),
                "dry run: a rule action would quarantine this container (control.rule_actions: enforce to act)"
            );
            Outcome::DryRun
        }),
        RuleActionMode::Enforce => manager
            .add(
                Validated {
                    target: target.clone(),
                    allow: settings.allow.clone(),
                    ttl: settings.ttl,
                    reason: format!("rule {}", request.rule),
                    force: false,
                    stop_existing: true,
                },
                &by,
            )
            .map(|view| {
                tracing::warn!(rule = %request.rule, id = %view.record.id, %target, "rule action: container quarantined");
                Outcome::Applied
            }),
    };
    result.unwrap_or_else(|err| {
        let outcome = match &err {
            QuarantineError::Duplicate { .. } => Outcome::Duplicate,
            QuarantineError::Target(TargetError::Refused(_)) => Outcome::Refused,
            QuarantineError::Target(TargetError::NotFound(_)) => Outcome::NotFound,
            _ => Outcome::Failed,
        };
        if outcome == Outcome::Duplicate {
            tracing::debug!(rule = %request.rule, %target, "rule action: already quarantined");
        } else {
            tracing::warn!(rule = %request.rule, %target, mode, %err, "rule action not applied");
        }
        outcome
    })
}
