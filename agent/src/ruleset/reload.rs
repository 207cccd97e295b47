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

use super::{RulePaths, load};
use crate::{
    kernel::{IgnoreMap, IgnoreSet},
    metrics::Metrics,
};

/// How often rule files are checked for changes (a metadata read each).
const POLL: Duration = Duration::from_secs(2);

pub struct Reloader {
    pub paths: RulePaths,
    pub options: Options,
    pub rules: watch::Sender<Arc<Ruleset>>,
    pub ignore_map: IgnoreMap,
    /// Built-in and configured networks; rule-derived ones are added on top.
    pub base_ignore: IgnoreSet,
    /// With an audit log every event is wanted, so rules must not make the
    /// kernel drop anything.
    pub rules_drive_ignore: bool,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// The ignore set for `ruleset`.
    pub fn ignore_set(&self, ruleset: &Ruleset) -> IgnoreSet {
        let mut set = self.base_ignore.clone();
        if self.rules_drive_ignore {
            set.extend(ruleset.kernel_ignorable_networks());
        }
        set
    }

    pub fn apply_ignore(&mut self, ruleset: &Ruleset) {
        let wanted = self.ignore_set(ruleset);
        if &wanted == self.ignore_map.current() {
            return;
        }
        match self.ignore_map.replace(&wanted) {
            Ok(()) => tracing::info!(networks = wanted.len(), "kernel ignore list updated"),
            Err(err) => tracing::error!(%err, "could not update the kernel ignore list"),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(err) => {
                tracing::warn!(%err, "no SIGHUP handler; reloading on file changes only");
                None
            }
        };
        let mut seen = self.paths.fingerprint();
        let mut poll = tokio::time::interval(POLL);
        loop {
            let reason = tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = poll.tick() => {
                    if self.paths.is_bundled() {
                        continue;
                    }
                    let now = self.paths.fingerprint();
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
        match load(&self.paths, &self.options) {
            Ok(ruleset) => {
                let count = ruleset.rules().len();
                self.apply_ignore(&ruleset);
                self.metrics.rules_reloaded(count);
                tracing::info!(reason, rules = count, "rules reloaded");
                self.rules.send_replace(Arc::new(ruleset));
            }
            Err(err) => {
                self.metrics.rules_reload_failed();
                tracing::error!(
                    reason,
                    "rules not reloaded, previous rules stay active: {err}"
                );
            }
        }
    }
}
