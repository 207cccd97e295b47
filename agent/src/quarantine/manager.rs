//! The node's quarantines: applying and lifting them in the kernel,
//! persisting them, expiring them, and re-applying them after a restart.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use egret_common::{QUARANTINE_SLOTS, QuarantineCounters};
use serde::Serialize;

use super::{
    model::{Record, State, TargetSpec, Validated, now_unix},
    target::{TargetError, TargetResolver},
};
use crate::{
    kernel::{
        KernelError,
        quarantine::{QuarantineLinks, QuarantineMaps, QuarantinePrograms},
    },
    metrics::Metrics,
};

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("no quarantine {0}")]
    UnknownId(String),
    #[error("{target} is already quarantined as {id}")]
    Duplicate { target: String, id: String },
    #[error("all {} quarantine slots are in use", QUARANTINE_SLOTS - 1)]
    Full,
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error("persisting quarantine state to {path}: {source}")]
    Persist {
        path: String,
        source: std::io::Error,
    },
}

/// Blocked-attempt counts since the quarantine was applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlockedCounts {
    pub connects: u64,
    pub sends: u64,
    pub packets: u64,
    pub allowed: u64,
    /// Blocked events lost to a full ring buffer (still blocked).
    pub events_lost: u64,
}

/// One quarantine as `GET /v1/quarantines` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    #[serde(flatten)]
    pub record: Record,
    /// `active`: enforced now; `pending`: the target is not (yet) on this
    /// node, retried every second (e.g. after a restart).
    pub state: &'static str,
    pub cgroup: Option<String>,
    pub slot: Option<u32>,
    pub blocked: BlockedCounts,
}

struct Active {
    slot: u32,
    dir: PathBuf,
    links: QuarantineLinks,
    baseline: QuarantineCounters,
    reported: BlockedCounts,
}

struct Entry {
    record: Record,
    active: Option<Active>,
}

struct Inner {
    programs: QuarantinePrograms,
    maps: QuarantineMaps,
    resolver: TargetResolver,
    state_path: Option<PathBuf>,
    entries: BTreeMap<String, Entry>,
    metrics: Option<Arc<Metrics>>,
}

pub struct Manager {
    inner: Mutex<Inner>,
}

impl Manager {
    pub fn new(
        programs: QuarantinePrograms,
        maps: QuarantineMaps,
        resolver: TargetResolver,
        state_path: Option<PathBuf>,
        metrics: Option<Arc<Metrics>>,
    ) -> Manager {
        Manager {
            inner: Mutex::new(Inner {
                programs,
                maps,
                resolver,
                state_path,
                entries: BTreeMap::new(),
                metrics,
            }),
        }
    }

    /// Re-applies the persisted quarantines (call before readiness). Targets
    /// not on the node stay pending; expired ones are dropped.
    pub fn restore(&self) -> Result<usize, QuarantineError> {
        let mut inner = self.lock();
        let Some(path) = inner.state_path.clone() else {
            return Ok(0);
        };
        let state = State::load(&path).map_err(|source| QuarantineError::Persist {
            path: path.display().to_string(),
            source,
        })?;
        let now = now_unix();
        for record in state.quarantines {
            if record.expires_unix.is_some_and(|at| at <= now) {
                tracing::info!(id = %record.id, "persisted quarantine expired while the agent was down");
                continue;
            }
            let id = record.id.clone();
            let mut entry = Entry {
                record,
                active: None,
            };
            if let Err(err) = inner.activate(&mut entry) {
                tracing::warn!(%id, %err, "quarantine restored as pending");
            }
            inner.entries.insert(id, entry);
        }
        inner.save()?;
        inner.update_metrics();
        Ok(inner.entries.len())
    }

    pub fn add(&self, request: Validated, requested_by: &str) -> Result<View, QuarantineError> {
        let mut inner = self.lock();
        let now = now_unix();
        let record = Record {
            id: new_id(),
            target: request.target,
            allow: request.allow,
            reason: request.reason,
            requested_by: requested_by.to_owned(),
            created_unix: now,
            expires_unix: request.ttl.map(|ttl| now + ttl.as_secs()),
            stop_existing: request.stop_existing,
            force: request.force,
        };
        let mut entry = Entry {
            record,
            active: None,
        };
        inner.activate(&mut entry)?;
        let id = entry.record.id.clone();
        inner.entries.insert(id.clone(), entry);
        if let Err(err) = inner.save() {
            // 201 promises the quarantine survives a restart; without the
            // state file it would not, so it is lifted again.
            inner.lift(&id);
            return Err(err);
        }
        inner.update_metrics();
        let view = inner.view(&inner.entries[&id]);
        tracing::warn!(id = %id, target = %view.record.target, cgroup = ?view.cgroup, by = requested_by, "quarantine applied");
        Ok(view)
    }

    /// What [`add`](Self::add) would do, without doing it: resolution,
    /// refusals and duplicates (a rule action's dry run).
    pub fn would_add(&self, target: &TargetSpec) -> Result<PathBuf, QuarantineError> {
        let inner = self.lock();
        let resolved = inner.resolver.resolve(target, false)?;
        if let Some(other) = inner
            .entries
            .values()
            .find(|e| e.active.as_ref().is_some_and(|a| a.dir == resolved.dir))
        {
            return Err(QuarantineError::Duplicate {
                target: target.to_string(),
                id: other.record.id.clone(),
            });
        }
        Ok(resolved.dir)
    }

    pub fn remove(&self, id: &str, why: &str) -> Result<View, QuarantineError> {
        let mut inner = self.lock();
        let view = inner
            .entries
            .get(id)
            .map(|entry| inner.view(entry))
            .ok_or_else(|| QuarantineError::UnknownId(id.to_owned()))?;
        inner.lift(id);
        inner.save()?;
        inner.update_metrics();
        tracing::warn!(%id, why, "quarantine lifted");
        Ok(view)
    }

    pub fn list(&self) -> Vec<View> {
        let inner = self.lock();
        inner.entries.values().map(|e| inner.view(e)).collect()
    }

    /// (id, target) of the quarantines one source asked for.
    pub fn by_requester(&self, requester: &str) -> Vec<(String, TargetSpec)> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| e.record.requested_by == requester)
            .map(|e| (e.record.id.clone(), e.record.target.clone()))
            .collect()
    }

    /// Once a second: expiry, pending targets, metrics.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = now_unix();
        let expired: Vec<String> = inner
            .entries
            .values()
            .filter(|e| e.record.expires_unix.is_some_and(|at| at <= now))
            .map(|e| e.record.id.clone())
            .collect();
        let mut changed = !expired.is_empty();
        for id in expired {
            inner.lift(&id);
            tracing::warn!(%id, "quarantine expired (ttl)");
        }
        let pending: Vec<String> = inner
            .entries
            .values()
            .filter(|e| e.active.is_none())
            .map(|e| e.record.id.clone())
            .collect();
        for id in pending {
            if let Some(mut entry) = inner.entries.remove(&id) {
                if inner.activate(&mut entry).is_ok() {
                    tracing::warn!(%id, "pending quarantine applied");
                    changed = true;
                }
                inner.entries.insert(id, entry);
            }
        }
        if changed && let Err(err) = inner.save() {
            tracing::error!(%err, "could not persist quarantine state");
        }
        inner.update_metrics();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn activate(&mut self, entry: &mut Entry) -> Result<(), QuarantineError> {
        let resolved = self
            .resolver
            .resolve(&entry.record.target, entry.record.force)?;
        if let Some(other) = self.entries.values().find(|e| {
            e.record.id != entry.record.id
                && e.active.as_ref().is_some_and(|a| a.dir == resolved.dir)
        }) {
            return Err(QuarantineError::Duplicate {
                target: entry.record.target.to_string(),
                id: other.record.id.clone(),
            });
        }
        let used: Vec<u32> = self
            .entries
            .values()
            .filter_map(|e| e.active.as_ref().map(|a| a.slot))
            .collect();
        let slot = (1..QUARANTINE_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or(QuarantineError::Full)?;
        let baseline = self.maps.counters(slot)?;
        // Maps first, then links: the programs act the moment they attach.
        let links = self.programs.attach(&resolved.dir)?;
        if let Err(err) = self.maps.enable(
            links.cgroup_id,
            slot,
            &entry.record.allow,
            entry.record.stop_existing,
        ) {
            self.maps
                .disable(links.cgroup_id, slot, &entry.record.allow);
            return Err(err.into());
        }
        entry.active = Some(Active {
            slot,
            dir: resolved.dir,
            links,
            baseline,
            reported: BlockedCounts::default(),
        });
        Ok(())
    }

    fn lift(&mut self, id: &str) {
        let Some(entry) = self.entries.remove(id) else {
            return;
        };
        if let Some(active) = entry.active {
            // Links go first, so the programs stop acting before their map
            // entries disappear (in between they would allow anyway).
            let cgroup_id = active.links.cgroup_id;
            drop(active.links);
            self.maps
                .disable(cgroup_id, active.slot, &entry.record.allow);
            if let Some(metrics) = &self.metrics {
                metrics.quarantine_lifted(id);
            }
        }
    }

    fn save(&self) -> Result<(), QuarantineError> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        State {
            version: 1,
            quarantines: self.entries.values().map(|e| e.record.clone()).collect(),
        }
        .save(path)
        .map_err(|source| QuarantineError::Persist {
            path: path.display().to_string(),
            source,
        })
    }

    fn counts(&self, active: &Active) -> BlockedCounts {
        let now = self.maps.counters(active.slot).unwrap_or_default();
        let b = &active.baseline;
        BlockedCounts {
            connects: now.blocked_connects.saturating_sub(b.blocked_connects),
            sends: now.blocked_sends.saturating_sub(b.blocked_sends),
            packets: now.dropped_packets.saturating_sub(b.dropped_packets),
            allowed: now.allowed.saturating_sub(b.allowed),
            events_lost: now.ringbuf_full.saturating_sub(b.ringbuf_full),
        }
    }

    fn view(&self, entry: &Entry) -> View {
        let active = entry.active.as_ref();
        View {
            record: entry.record.clone(),
            state: if active.is_some() {
                "active"
            } else {
                "pending"
            },
            cgroup: active.map(|a| a.dir.display().to_string()),
            slot: active.map(|a| a.slot),
            blocked: active.map(|a| self.counts(a)).unwrap_or_default(),
        }
    }

    fn update_metrics(&mut self) {
        let Some(metrics) = self.metrics.clone() else {
            return;
        };
        let mut active_count = 0;
        let mut pending_count = 0;
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        for id in ids {
            let counts = match self.entries.get(&id).and_then(|e| e.active.as_ref()) {
                Some(active) => self.counts(active),
                None => {
                    pending_count += 1;
                    continue;
                }
            };
            active_count += 1;
            if let Some(active) = self.entries.get_mut(&id).and_then(|e| e.active.as_mut()) {
                let before = active.reported;
                metrics.quarantine_blocked(
                    &id,
                    "connect",
                    counts.connects - before.connects.min(counts.connects),
                );
                metrics.quarantine_blocked(
                    &id,
                    "send",
                    counts.sends - before.sends.min(counts.sends),
                );
                metrics.quarantine_blocked(
                    &id,
                    "packet",
                    counts.packets - before.packets.min(counts.packets),
                );
                active.reported = counts;
            }
        }
        metrics.quarantines(active_count, pending_count);
    }
}

/// `q-` and 16 random hex digits.
fn new_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No randomness: time-based ids are still unique on one node.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    let mut id = String::from("q-");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}
