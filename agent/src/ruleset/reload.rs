//! Rule reloads: on SIGHUP and whenever a rule file changes. A file that no
//! longer loads keeps the previous rules running and logs every problem.
//! Each successful load also reprograms the kernel's ignore list, so traffic
//! no rule can match stops costing anything in userspace.
use std::{sync::Arc, time::Duration};

use egret_rules::{Options, Ruleset};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use super::{RulePaths, RulesError, describe};
use crate::{
    kernel::{IgnoreMap, IgnoreSet},
    metrics::Metrics,
};

/// How often rule files are checked for changes (a metadata read each).
const POLL: Duration = Duration::from_secs(2);

/// Where rules come from and how they compile.
pub struct RuleSource {
    pub paths: RulePaths,
    pub options: Options,
}

/// The kernel's ignore list as the rules drive it.
pub struct KernelIgnore {
    pub map: IgnoreMap,
    /// Built-in and configured networks; rule-derived ones are added on top.
    pub base: IgnoreSet,
    /// With an audit log every event is wanted, so rules must not make the
    /// kernel drop anything.
    pub rules_drive: bool,
}

pub struct Reloader {
    source: RuleSource,
    rules: watch::Sender<Arc<Ruleset>>,
    ignore: KernelIgnore,
    metrics: Arc<Metrics>,
}

impl RuleSource {
    /// Loads the rules and counts the load. The first load is a load too:
    /// without counting it the rule gauges read 0 ("last reload failed")
    /// until the first reload, and EgretRuleReloadFailed pages for every
    /// healthy agent.
    pub fn load(&self, metrics: &Metrics) -> Result<Ruleset, RulesError> {
        match super::load(&self.paths, &self.options) {
            Ok(ruleset) => {
                metrics.rules_reloaded(ruleset.rules().len());
                Ok(ruleset)
            }
            Err(err) => {
                metrics.rules_reload_failed();
                Err(err)
            }
        }
    }

    pub fn describe(&self) -> String {
        describe(&self.paths)
    }
}

impl KernelIgnore {
    /// The ignore set for `ruleset`.
    fn wanted(&self, ruleset: &Ruleset) -> IgnoreSet {
        let mut set = self.base.clone();
        if self.rules_drive {
            set.extend(ruleset.kernel_ignorable_networks());
        }
        set
    }

    fn apply(&mut self, ruleset: &Ruleset) {
        let wanted = self.wanted(ruleset);
        if &wanted == self.map.current() {
            return;
        }
        match self.map.replace(&wanted) {
            Ok(()) => tracing::info!(networks = wanted.len(), "kernel ignore list updated"),
            Err(err) => tracing::error!(%err, "could not update the kernel ignore list"),
        }
    }
}

impl Reloader {
    /// Programs the kernel ignore list for `first` (already loaded by
    /// [`RuleSource::load`]) and publishes it; the receiver follows reloads.
    pub fn new(
        source: RuleSource,
        first: Ruleset,
        mut ignore: KernelIgnore,
        metrics: Arc<Metrics>,
    ) -> (Reloader, watch::Receiver<Arc<Ruleset>>) {
        ignore.apply(&first);
        let (rules, rx) = watch::channel(Arc::new(first));
        let reloader = Reloader {
            source,
            rules,
            ignore,
            metrics,
        };
        (reloader, rx)
    }

    /// Networks the kernel currently drops.
    pub fn ignored_networks(&self) -> usize {
        self.ignore.map.current().len()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(err) => {
                tracing::warn!(%err, "no SIGHUP handler; reloading on file changes only");
                None
            }
        };
        let mut seen = self.source.paths.fingerprint();
        let mut poll = tokio::time::interval(POLL);
        loop {
            let reason = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = poll.tick() => {
                    if self.source.paths.is_bundled() {
                        continue;
                    }
                    let now = self.source.paths.fingerprint();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "rule files changed"
                }
            };
            self.reload(reason);
        }
    }

    fn reload(&mut self, reason: &str) {
        match self.source.load(&self.metrics) {
            Ok(ruleset) => {
                self.ignore.apply(&ruleset);
                tracing::info!(reason, rules = ruleset.rules().len(), "rules reloaded");
                self.rules.send_replace(Arc::new(ruleset));
            }
            Err(err) => {
                tracing::error!(
                    reason,
                    "rules not reloaded, previous rules stay active: {err}"
                );
            }
        }
    }
}
