//! Quarantines from a mounted list (a ConfigMap key): a SOAR that can only
//! talk to the Kubernetes API edits the ConfigMap, the kubelet swaps the
//! `..data` symlink, and every agent applies the entries whose target runs
//! on its node. Removing an entry lifts it.
//!
//! The file is re-read by path once a second, which follows the symlink
//! swap without inotify bookkeeping. A file that fails to parse changes
//! nothing: the quarantines already applied stay (a typo must not open a
//! compromised workload again).
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::logging::RateLimited;

use super::{
    manager::{Manager, QuarantineError},
    model::{QuarantineRequest, TargetSpec, Validated},
    target::TargetError,
};

/// Targets not on this node are looked for again this often (a pod may be
/// scheduled here later).
const RETRY: Duration = Duration::from_secs(5);
/// Entries one file may hold.
const MAX_ENTRIES: usize = 256;
/// Bigger files are refused (a ConfigMap is at most 1 MiB anyway).
const MAX_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    #[serde(default)]
    quarantines: Vec<QuarantineRequest>,
}

pub struct FileSource {
    path: PathBuf,
    requester: String,
    last: Option<Vec<u8>>,
    wanted: Vec<Validated>,
    next_retry: Instant,
    faults: RateLimited,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource {
            requester: format!("file:{}", path.display()),
            path,
            last: None,
            wanted: Vec::new(),
            next_retry: Instant::now(),
            faults: RateLimited::default(),
        }
    }

    /// Parses a list; `name` prefixes errors (`file:line:col: message`).
    pub fn parse(name: &str, text: &str) -> Result<Vec<Validated>, String> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let list: ListFile = serde_yaml_ng::from_str(text).map_err(|err| match err.location() {
            Some(at) => format!("{name}:{}:{}: {err}", at.line(), at.column()),
            None => format!("{name}: {err}"),
        })?;
        if list.quarantines.len() > MAX_ENTRIES {
            return Err(format!("{name}: more than {MAX_ENTRIES} quarantines"));
        }
        list.quarantines
            .into_iter()
            .enumerate()
            .map(|(i, request)| {
                if request.ttl.is_some() {
                    // The list is the source of truth: an entry that expired
                    // would be applied again at the next read.
                    return Err(format!(
                        "{name}: quarantines[{i}]: ttl is not supported in the list; remove the entry to lift it"
                    ));
                }
                request
                    .validate()
                    .map_err(|e| format!("{name}: quarantines[{i}]: {e}"))
            })
            .collect()
    }

    /// Once a second: re-read, then make the manager match the list.
    pub fn reconcile(&mut self, manager: &Manager) {
        let bytes = match read_bounded(&self.path) {
            Ok(bytes) => bytes,
            // A missing file is an empty list (the ConfigMap key was removed).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                crate::warn_limited!(self.faults, path = %self.path.display(), %err, "cannot read the quarantine list");
                return;
            }
        };
        let changed = self.last.as_deref() != Some(&bytes[..]);
        if changed {
            let text = String::from_utf8_lossy(&bytes);
            match FileSource::parse(&self.path.display().to_string(), &text) {
                Ok(wanted) => {
                    tracing::info!(path = %self.path.display(), entries = wanted.len(), "quarantine list read");
                    self.wanted = wanted;
                    self.last = Some(bytes);
                }
                Err(message) => {
                    crate::warn_limited!(self.faults, %message, "quarantine list rejected; keeping the quarantines applied");
                    self.last = Some(bytes);
                    return;
                }
            }
        } else if Instant::now() < self.next_retry {
            return;
        }
        self.next_retry = Instant::now() + RETRY;
        let applied = manager.by_requester(&self.requester);
        for (id, target) in &applied {
            if !self.wanted.iter().any(|w| &w.target == target)
                && let Err(err) = manager.remove(id, "removed from the quarantine list")
            {
                tracing::warn!(%id, %err, "could not lift a quarantine removed from the list");
            }
        }
        for wanted in &self.wanted {
            if applied.iter().any(|(_, t)| t == &wanted.target) {
                continue;
            }
            match manager.add(wanted.clone(), &self.requester) {
                Ok(_) => {}
                // Most entries name workloads on other nodes.
                Err(QuarantineError::Target(TargetError::NotFound(_))) => {}
                Err(QuarantineError::Duplicate { .. }) => {}
                Err(err) => {
                    crate::warn_limited!(self.faults, target = %wanted.target, %err, "quarantine from the list not applied");
                }
            }
        }
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB",
        ));
    }
    Ok(bytes)
}

/// For tests and `egret config check`-style validation of a list.
pub fn targets(list: &[Validated]) -> Vec<&TargetSpec> {
    list.iter().map(|v| &v.target).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_list_with_every_target_shape() {
        let list = FileSource::parse(
            "q.yaml",
            "quarantines:\n  - target: {namespace: shop, pod: checkout}\n    allow: [10.96.0.10]\n    reason: case 4711\n  - target: {pod_uid: 3f1c2b4a-0d9e-4c7b-8a6f-5e4d3c2b1a01}\n",
        )
        .unwrap();
        assert_eq!(targets(&list).len(), 2);
        assert!(FileSource::parse("q.yaml", "").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file_and_entry() {
        let err =
            FileSource::parse("q.yaml", "quarantines:\n  - target: {color: red}\n").unwrap_err();
        assert!(err.starts_with("q.yaml:"), "{err}");
        let err = FileSource::parse(
            "q.yaml",
            "quarantines:\n  - target: {pod_uid: abc}\n    ttl: 5m\n",
        )
        .unwrap_err();
        assert!(err.contains("quarantines[0]: ttl"), "{err}");
        let err = FileSource::parse("q.yaml", "quarantine: []\n").unwrap_err();
        assert!(err.contains("q.yaml:1:1"), "{err}");
    }
}
