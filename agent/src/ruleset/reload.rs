//! Rule reloads: on SIGHUP and whenever a rule file changes. A file that no
//! longer loads keeps the previous rules running and logs every problem.
//! Each successful load also reprograms the kernel's ignore list, so traffic
//! no rule can match stops costing anything in userspace.
//!
//! Detection must never be switched off by accident, so a reload is also
//! refused (and counted as failed) when a rule file that had content is now
//! empty — `: > rules.yaml` or an editor caught mid-save — or when the new set
//! has no rules while the active one has some, unless `rules_allow_empty`
//! opts in. (A file that was empty all along, like the placeholder for local
//! rules in the shipped ConfigMap, is fine.) A file caught
//! half-written is not loaded either: a change is acted on only once two
//! polls in a row see the same files, and a load whose files changed while
//! they were read is discarded and retried.
use std::{sync::Arc, time::Duration};

use egret_rules::{Options, Ruleset};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use super::{RulePaths, RulesError, compile, describe};
use crate::{
    kernel::{IgnoreMap, IgnoreSet},
    metrics::Metrics,
};

/// How often rule files are checked for changes (a metadata read each).
const POLL: Duration = Duration::from_secs(2);

/// Where rules come from and how they compile.
#[derive(Clone)]
pub struct RuleSource {
    pub paths: RulePaths,
    pub options: Options,
    /// `rules_allow_empty`: an empty file, or a set of zero rules in place
    /// of active ones, may be loaded.
    pub allow_empty: bool,
}

/// Why new rules were not taken; the active ones stay.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not `transparent`: the [`RulesError`] stays in the error chain, where
    /// `main` looks for it to print one diagnostic per line.
    #[error("{0}")]
    Load(#[source] RulesError),
    #[error(
        "{0} is now empty (a rules file emptied while in use is refused unless `rules_allow_empty: true`)"
    )]
    EmptyFile(String),
    #[error(
        "the new rules define no rules while {0} are active (refused unless `rules_allow_empty: true`)"
    )]
    NoRules(usize),
}

impl From<RulesError> for Refused {
    fn from(err: RulesError) -> Self {
        Refused::Load(err)
    }
}

/// No YAML content at all: blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// What the active rules were loaded from.
#[derive(Clone, Debug, Default)]
pub struct Active {
    /// Rules in the active set (0 at start-up).
    pub rules: usize,
    /// Files that had content.
    pub with_content: std::collections::HashSet<String>,
}

/// A load that may replace the active rules.
pub struct Loaded {
    pub ruleset: Ruleset,
    pub from: Active,
}

/// Reads `paths` once, consistently, and compiles them. `Ok(None)`: a file
/// changed while it was read (try again later).
pub fn load_checked(
    paths: &RulePaths,
    options: &Options,
    active: &Active,
    allow_empty: bool,
) -> Result<Option<Loaded>, Refused> {
    let before = paths.fingerprint();
    let texts = paths.read()?;
    if paths.fingerprint() != before {
        return Ok(None);
    }
    if !allow_empty
        && let Some((name, _)) = texts
            .iter()
            .find(|(name, text)| is_blank(text) && active.with_content.contains(name))
    {
        return Err(Refused::EmptyFile(name.clone()));
    }
    let ruleset = compile(&texts, options)?;
    if !allow_empty && active.rules > 0 && ruleset.rules().is_empty() {
        return Err(Refused::NoRules(active.rules));
    }
    let from = Active {
        rules: ruleset.rules().len(),
        with_content: texts
            .into_iter()
            .filter(|(_, text)| !is_blank(text))
            .map(|(name, _)| name)
            .collect(),
    };
    Ok(Some(Loaded { ruleset, from }))
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
    active: Active,
    rules: watch::Sender<Arc<Ruleset>>,
    ignore: KernelIgnore,
    metrics: Arc<Metrics>,
}

impl RuleSource {
    /// Loads the rules and counts the load. The first load is a load too:
    /// without counting it the rule gauges read 0 ("last reload failed")
    /// until the first reload, and EgretRuleReloadFailed pages for every
    /// healthy agent.
    pub fn load(&self, metrics: &Metrics) -> Result<Loaded, Refused> {
        // At start-up nothing else can be used: a file that changes while
        // it is read is read again.
        for _ in 0..3 {
            if let Some(loaded) = self.load_over(&Active::default(), metrics)? {
                return Ok(loaded);
            }
        }
        Err(Refused::Load(RulesError::Read {
            path: self.describe(),
            source: std::io::Error::other("the rule files kept changing while being read"),
        }))
    }

    /// Loads in place of `active` rules, counting the result; `Ok(None)`
    /// (files changed mid-read) counts nothing.
    fn load_over(&self, active: &Active, metrics: &Metrics) -> Result<Option<Loaded>, Refused> {
        match load_checked(&self.paths, &self.options, active, self.allow_empty) {
            Ok(Some(loaded)) => {
                metrics.rules_reloaded(loaded.ruleset.rules().len());
                Ok(Some(loaded))
            }
            Ok(None) => Ok(None),
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
    /// The ignore set for `ruleset`'s ignorable networks.
    fn wanted(&self, from_rules: Vec<ipnet::IpNet>) -> IgnoreSet {
        let mut set = self.base.clone();
        if self.rules_drive {
            set.extend(from_rules);
        }
        set
    }

    fn apply(&mut self, ruleset: &Ruleset) {
        self.apply_networks(ruleset.kernel_ignorable_networks());
    }

    /// `from_rules`: `kernel_ignorable_networks()` of the new rules, which
    /// a reload computes off the async workers (a second at a million-entry
    /// IOC list).
    fn apply_networks(&mut self, from_rules: Vec<ipnet::IpNet>) {
        let mut wanted = self.wanted(from_rules);
        if self.map.current() == Some(&wanted) {
            return;
        }
        let mut result = self.map.replace(&wanted);
        if let Err(err @ crate::kernel::ReplaceError::TooLarge { .. }) = &result {
            // Ignoring less is always safe: the rules see those attempts
            // in userspace instead.
            tracing::warn!(
                %err,
                "kernel ignore list: keeping only the built-in and configured networks"
            );
            wanted = self.base.clone();
            if self.map.current() == Some(&wanted) {
                return;
            }
            result = self.map.replace(&wanted);
        }
        match result {
            Ok(entries) => tracing::info!(
                networks = wanted.len(),
                entries,
                split_slash8s = self.map.split_heads(),
                blocks = self.map.blocks(),
                trie_entries = self.map.trie_entries(),
                "kernel ignore list updated"
            ),
            Err(err) => tracing::error!(%err, "could not update the kernel ignore list"),
        }
    }
}

impl Reloader {
    /// Programs the kernel ignore list for `first` (already loaded by
    /// [`RuleSource::load`]) and publishes it; the receiver follows reloads.
    pub fn new(
        source: RuleSource,
        first: Loaded,
        mut ignore: KernelIgnore,
        metrics: Arc<Metrics>,
    ) -> (Reloader, watch::Receiver<Arc<Ruleset>>) {
        ignore.apply(&first.ruleset);
        release_freed_heap();
        let (rules, rx) = watch::channel(Arc::new(first.ruleset));
        let reloader = Reloader {
            source,
            active: first.from,
            rules,
            ignore,
            metrics,
        };
        (reloader, rx)
    }

    /// Networks the kernel currently drops (0 while a failed reload has
    /// left the maps between two sets).
    pub fn ignored_networks(&self) -> usize {
        self.ignore.map.current().map_or(0, IgnoreSet::len)
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
        // A new fingerprint seen once; acted on when the next poll sees it
        // again, so a file being written is not loaded half-way.
        let mut settling = None;
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
                        settling = None;
                        continue;
                    }
                    if settling.as_ref() != Some(&now) {
                        settling = Some(now);
                        continue;
                    }
                    "rule files changed"
                }
            };
            // A load that met a file mid-write is retried at the next poll.
            if self.reload(reason).await {
                seen = self.source.paths.fingerprint();
                settling = None;
            }
        }
    }

    /// `false` when the files changed during the read (nothing decided).
    /// The load runs on a blocking thread: compiling a large IOC list takes
    /// a second or two, and on an async worker it would hold up the pipeline
    /// tasks queued behind it. The active rules serve events meanwhile.
    async fn reload(&mut self, reason: &str) -> bool {
        let started = std::time::Instant::now();
        let (source, active, metrics) = (
            self.source.clone(),
            self.active.clone(),
            self.metrics.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || {
            source.load_over(&active, &metrics).map(|loaded| {
                loaded.map(|loaded| {
                    let networks = loaded.ruleset.kernel_ignorable_networks();
                    (loaded, networks)
                })
            })
        })
        .await;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                tracing::error!(reason, %err, "rules not reloaded, previous rules stay active");
                return true;
            }
        };
        match loaded {
            Ok(Some((Loaded { ruleset, from }, networks))) => {
                self.ignore.apply_networks(networks);
                tracing::info!(
                    reason,
                    rules = ruleset.rules().len(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "rules reloaded"
                );
                // The old rules go now, and their memory back to the OS.
                drop(self.rules.send_replace(Arc::new(ruleset)));
                self.active = from;
                release_freed_heap();
                true
            }
            Ok(None) => {
                tracing::info!(reason, "rule files changed while being read; retrying");
                false
            }
            Err(err) => {
                tracing::error!(
                    reason,
                    "rules not reloaded, previous rules stay active: {err}"
                );
                true
            }
        }
    }
}

/// Hands the heap a load freed back to the kernel. Compiling a
/// million-entry list allocates several times what the compiled list keeps
/// (source text, YAML tree, item strings, sorted ranges); glibc keeps freed
/// memory below its top chunk, so without this the agent's RSS stays at the
/// load's peak for its whole life.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_RULE: &str =
        "- rule: R\n  desc: d\n  condition: fd.sport = 1\n  output: o\n  priority: INFO\n";

    #[test]
    fn emptied_files_and_zero_rules_are_refused_without_opt_in() {
        let dir = std::env::temp_dir().join(format!("egret-reload-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules.yaml");
        let placeholder = dir.join("local.yaml");
        let paths = RulePaths(vec![file.clone(), placeholder.clone()]);
        let options = Options::default();
        std::fs::write(&file, ONE_RULE).unwrap();
        // Empty from the start: a placeholder, not a truncation.
        std::fs::write(&placeholder, "").unwrap();
        let first = load_checked(&paths, &options, &Active::default(), false)
            .unwrap()
            .unwrap();
        assert_eq!(first.ruleset.rules().len(), 1);
        let active = first.from;
        assert!(
            load_checked(&paths, &options, &active, false)
                .unwrap()
                .is_some()
        );

        for empty in ["", "\n  \n", "# all rules removed\n---\n"] {
            std::fs::write(&file, empty).unwrap();
            let err = load_checked(&paths, &options, &active, false)
                .err()
                .unwrap();
            assert!(matches!(err, Refused::EmptyFile(_)), "{empty:?}: {err}");
            assert!(err.to_string().contains("rules.yaml is now empty"), "{err}");
        }
        // Only lists and macros: parses, but no rule would ever fire.
        std::fs::write(&file, "- list: ports\n  items: [1]\n").unwrap();
        let err = load_checked(&paths, &options, &active, false)
            .err()
            .unwrap();
        assert!(matches!(err, Refused::NoRules(1)), "{err}");
        // With the opt-in both are taken; at start-up (nothing active) a
        // rule-less set is not a shrink.
        assert!(load_checked(&paths, &options, &Active::default(), false).is_ok());
        assert!(
            load_checked(&paths, &options, &active, true)
                .unwrap()
                .is_some()
        );
        std::fs::write(&file, "").unwrap();
        assert!(
            load_checked(&paths, &options, &active, true)
                .unwrap()
                .is_some()
        );
        // A truncated rule (the file cut mid-write) fails as a whole.
        std::fs::write(&file, &ONE_RULE[..40]).unwrap();
        assert!(matches!(
            load_checked(&paths, &options, &active, false),
            Err(Refused::Load(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
