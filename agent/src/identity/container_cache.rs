//! Bounded container id → metadata cache with non-blocking reads.
//!
//! The event pipeline only ever takes a read lock and clones an `Arc`. A
//! miss marks the id pending and hands it to the containerd worker through a
//! bounded queue (`try_send`, never waiting); the caller gets "unknown" until
//! the worker fills the slot in. Failures and "no such container" are cached
//! for a while so a flood of events from one unknown container costs one
//! fetch, not one per event.
use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::metadata::ContainerMeta;

/// Counters for the metrics exporter. Plain relaxed atomics: they are
/// monotonic except `connected`, which is 0 or 1.
#[derive(Debug, Default)]
pub struct ContainerdStats {
    pub lookups: AtomicU64,
    pub hits: AtomicU64,
    /// Lookups answered "unknown" (pending, failed, not found, overloaded).
    pub unknown: AtomicU64,
    /// Misses that could not be queued because the fetch queue was full.
    pub queue_full: AtomicU64,
    pub fetches: AtomicU64,
    /// Enrichment failures: fetches that errored or timed out, or could not
    /// be made because containerd was unreachable.
    pub fetch_failures: AtomicU64,
    pub fetch_timeouts: AtomicU64,
    /// containerd answered that no such container exists.
    pub not_found: AtomicU64,
    pub evictions: AtomicU64,
    pub events: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Event streams that ended in an error (containerd went away).
    pub stream_errors: AtomicU64,
    pub connected: AtomicU64,
}

/// Why a container's metadata is not (yet) known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// A fetch is under way.
    Pending,
    /// containerd has no such container (in the configured namespace).
    NotFound,
    /// The last fetch failed; it is retried after a pause.
    Failed,
    /// Too many fetches queued; retried after a pause.
    Overloaded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Known(Arc<ContainerMeta>),
    Unknown(Unknown),
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub capacity: usize,
    /// A pending fetch older than this is assumed lost and re-requested.
    pub pending_timeout: Duration,
    pub retry_after_failure: Duration,
    pub retry_after_not_found: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 8192,
            pending_timeout: Duration::from_secs(10),
            retry_after_failure: Duration::from_secs(2),
            retry_after_not_found: Duration::from_secs(30),
        }
    }
}

enum State {
    Known(Arc<ContainerMeta>),
    Pending { since: Instant },
    NotFound { until: Instant },
    Failed { until: Instant },
}

struct Slot {
    state: State,
    /// Coarse tick of the last read, for eviction.
    last_used: AtomicU64,
    /// Set when containerd deleted the container: kept a little longer for
    /// events still queued behind the deletion, then dropped.
    delete_at: Option<Instant>,
}

pub struct ContainerCache {
    config: CacheConfig,
    map: RwLock<HashMap<Box<str>, Slot>>,
    /// Advanced by `sweep`; reading a clock per lookup would cost more than
    /// the lookup.
    tick: AtomicU64,
    fetch_tx: mpsc::Sender<Box<str>>,
    stats: Arc<ContainerdStats>,
}

impl ContainerCache {
    /// The cache and the receiving end of its fetch queue.
    pub fn new(
        config: CacheConfig,
        queue: usize,
        stats: Arc<ContainerdStats>,
    ) -> (ContainerCache, mpsc::Receiver<Box<str>>) {
        let (fetch_tx, fetch_rx) = mpsc::channel(queue.max(1));
        let cache = ContainerCache {
            config,
            map: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
            fetch_tx,
            stats,
        };
        (cache, fetch_rx)
    }

    pub fn stats(&self) -> &ContainerdStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Metadata for `id`, or why there is none; queues a fetch on a miss.
    /// Never blocks beyond a brief lock.
    pub fn get(&self, id: &str) -> Lookup {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(answer) = self.cached_answer(id) {
            match &answer {
                Lookup::Known(_) => self.stats.hits.fetch_add(1, Ordering::Relaxed),
                Lookup::Unknown(_) => self.stats.unknown.fetch_add(1, Ordering::Relaxed),
            };
            return answer;
        }
        self.stats.unknown.fetch_add(1, Ordering::Relaxed);
        Lookup::Unknown(self.request(id))
    }

    /// Known metadata only: no fetch, no counters.
    pub fn peek(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        match self.read().get(id).map(|slot| &slot.state) {
            Some(State::Known(meta)) => Some(meta.clone()),
            _ => None,
        }
    }

    /// `Some` when the cache can answer without a new fetch.
    fn cached_answer(&self, id: &str) -> Option<Lookup> {
        let map = self.read();
        let slot = map.get(id)?;
        match &slot.state {
            State::Known(meta) => {
                let tick = self.tick.load(Ordering::Relaxed);
                // Skip the store when unchanged so readers on other cores do
                // not fight over the cache line.
                if slot.last_used.load(Ordering::Relaxed) != tick {
                    slot.last_used.store(tick, Ordering::Relaxed);
                }
                Some(Lookup::Known(meta.clone()))
            }
            State::Pending { since } => (since.elapsed() < self.config.pending_timeout)
                .then_some(Lookup::Unknown(Unknown::Pending)),
            State::NotFound { until } => {
                (Instant::now() < *until).then_some(Lookup::Unknown(Unknown::NotFound))
            }
            State::Failed { until } => {
                (Instant::now() < *until).then_some(Lookup::Unknown(Unknown::Failed))
            }
        }
    }

    fn request(&self, id: &str) -> Unknown {
        let mut map = self.write();
        // Another thread may have queued it between our read and write locks.
        if let Some(Slot {
            state: State::Pending { since },
            ..
        }) = map.get(id)
            && since.elapsed() < self.config.pending_timeout
        {
            return Unknown::Pending;
        }
        let now = Instant::now();
        let (state, answer) = match self.fetch_tx.try_send(id.into()) {
            Ok(()) => (State::Pending { since: now }, Unknown::Pending),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                let until = now + self.config.retry_after_failure;
                (State::Failed { until }, Unknown::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // No worker (shut down): nothing will ever answer.
                let until = now + self.config.retry_after_not_found;
                (State::Failed { until }, Unknown::Failed)
            }
        };
        self.put(&mut map, id, state);
        answer
    }

    /// Stores fetched metadata, replacing whatever was there.
    pub fn insert(&self, meta: Arc<ContainerMeta>) {
        let id = meta.id.clone();
        let mut map = self.write();
        self.put(&mut map, &id, State::Known(meta));
    }

    pub fn mark_not_found(&self, id: &str) {
        self.stats.not_found.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + self.config.retry_after_not_found;
        let mut map = self.write();
        self.put(&mut map, id, State::NotFound { until });
    }

    /// Records a failed fetch, keeping any metadata already known (stale
    /// beats nothing while containerd is unreachable).
    pub fn mark_failed(&self, id: &str) {
        self.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + self.config.retry_after_failure;
        let mut map = self.write();
        if !matches!(map.get(id).map(|s| &s.state), Some(State::Known(_))) {
            self.put(&mut map, id, State::Failed { until });
        }
    }

    /// Pending fetches that will never complete (the connection dropped)
    /// become failures, to be retried later.
    pub fn fail_pending(&self) {
        let until = Instant::now() + self.config.retry_after_failure;
        let mut failed = 0;
        for slot in self.write().values_mut() {
            if matches!(slot.state, State::Pending { .. }) {
                slot.state = State::Failed { until };
                failed += 1;
            }
        }
        self.stats
            .fetch_failures
            .fetch_add(failed, Ordering::Relaxed);
    }

    /// containerd deleted `id`: forget it after `grace`.
    pub fn mark_deleted(&self, id: &str, grace: Duration) {
        if let Some(slot) = self.write().get_mut(id) {
            slot.delete_at.get_or_insert(Instant::now() + grace);
        }
    }

    /// Ids with metadata, for reconciling against a full listing.
    pub fn known_ids(&self) -> Vec<Box<str>> {
        self.read()
            .iter()
            .filter(|(_, slot)| matches!(slot.state, State::Known(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether the worker should fetch `id` on a start/create event.
    pub fn is_known(&self, id: &str) -> bool {
        self.peek(id).is_some()
    }

    /// Drops entries whose deletion grace has passed and advances the
    /// eviction clock. Call about once a second.
    pub fn sweep(&self) {
        self.tick.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut map = self.write();
        let before = map.len();
        map.retain(|_, slot| slot.delete_at.is_none_or(|at| at > now));
        let removed = before - map.len();
        if removed > 0 {
            tracing::debug!(removed, "dropped deleted containers");
        }
    }

    fn put(&self, map: &mut HashMap<Box<str>, Slot>, id: &str, state: State) {
        if let Some(slot) = map.get_mut(id) {
            slot.state = state;
            return;
        }
        if map.len() >= self.config.capacity {
            self.evict_one(map);
        }
        map.insert(
            id.into(),
            Slot {
                state,
                last_used: AtomicU64::new(self.tick.load(Ordering::Relaxed)),
                delete_at: None,
            },
        );
    }

    /// Deleted containers first, then failed/unknown ones, then the least
    /// recently read. A linear scan, but only when inserting into a full
    /// cache, which a node with fewer containers than `capacity` never does.
    fn evict_one(&self, map: &mut HashMap<Box<str>, Slot>) {
        let victim = map
            .iter()
            .min_by_key(|(_, slot)| {
                let class = match (&slot.delete_at, &slot.state) {
                    (Some(_), _) => 0,
                    (None, State::Known(_)) => 2,
                    (None, _) => 1,
                };
                (class, slot.last_used.load(Ordering::Relaxed))
            })
            .map(|(id, _)| id.clone());
        if let Some(id) = victim {
            map.remove(&id);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, Slot>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, Slot>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::identity::metadata::ContainerKind;

    pub(crate) fn meta(id: &str) -> Arc<ContainerMeta> {
        Arc::new(ContainerMeta {
            id: id.to_owned(),
            name: id.to_owned(),
            kind: ContainerKind::Plain,
            image: None,
            image_ref: None,
            pod: None,
            labels: BTreeMap::new(),
            host_network: None,
        })
    }

    fn cache(capacity: usize, queue: usize) -> (ContainerCache, mpsc::Receiver<Box<str>>) {
        let config = CacheConfig {
            capacity,
            retry_after_failure: Duration::from_millis(30),
            ..CacheConfig::default()
        };
        ContainerCache::new(config, queue, Arc::default())
    }

    #[test]
    fn miss_queues_one_fetch_then_hits() {
        let (cache, mut rx) = cache(8, 8);
        assert_eq!(cache.get("a"), Lookup::Unknown(Unknown::Pending));
        assert_eq!(cache.get("a"), Lookup::Unknown(Unknown::Pending));
        assert_eq!(rx.try_recv().as_deref(), Ok("a"));
        assert!(rx.try_recv().is_err(), "one fetch per id");
        cache.insert(meta("a"));
        assert_eq!(cache.get("a"), Lookup::Known(meta("a")));
        let stats = cache.stats();
        assert_eq!(stats.lookups.load(Ordering::Relaxed), 3);
        assert_eq!(stats.hits.load(Ordering::Relaxed), 1);
        assert_eq!(stats.unknown.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failures_are_retried_after_a_pause_and_keep_known_data() {
        let (cache, mut rx) = cache(8, 8);
        cache.get("a");
        rx.try_recv().unwrap();
        cache.mark_failed("a");
        assert_eq!(cache.get("a"), Lookup::Unknown(Unknown::Failed));
        assert!(rx.try_recv().is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("a"), Lookup::Unknown(Unknown::Pending));
        assert_eq!(rx.try_recv().as_deref(), Ok("a"));
        cache.insert(meta("a"));
        cache.mark_failed("a");
        assert!(matches!(cache.get("a"), Lookup::Known(_)));
        assert_eq!(cache.stats().fetch_failures.load(Ordering::Relaxed), 2);

        cache.mark_not_found("b");
        assert_eq!(cache.get("b"), Lookup::Unknown(Unknown::NotFound));
        cache.get("c");
        cache.fail_pending();
        assert_eq!(cache.get("c"), Lookup::Unknown(Unknown::Failed));
    }

    #[test]
    fn full_queue_and_closed_worker_do_not_block() {
        let (cache, rx) = cache(8, 1);
        assert_eq!(cache.get("a"), Lookup::Unknown(Unknown::Pending));
        assert_eq!(cache.get("b"), Lookup::Unknown(Unknown::Overloaded));
        assert_eq!(cache.stats().queue_full.load(Ordering::Relaxed), 1);
        drop(rx);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("b"), Lookup::Unknown(Unknown::Failed));
    }

    #[test]
    fn bounded_with_deleted_first_then_lru() {
        let (cache, _rx) = cache(3, 8);
        for id in ["a", "b", "c"] {
            cache.insert(meta(id));
        }
        cache.sweep();
        cache.get("a");
        cache.get("c");
        cache.insert(meta("d"));
        assert_eq!(cache.len(), 3);
        assert!(cache.peek("b").is_none(), "least recently read goes first");
        cache.mark_deleted("a", Duration::from_secs(60));
        cache.insert(meta("e"));
        assert!(cache.peek("a").is_none(), "deleted goes before live ones");
        assert!(cache.peek("c").is_some() && cache.peek("d").is_some());
        assert_eq!(cache.stats().evictions.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn deletion_grace_and_reconcile() {
        let (cache, _rx) = cache(8, 8);
        cache.insert(meta("a"));
        cache.insert(meta("b"));
        cache.mark_deleted("a", Duration::ZERO);
        assert!(cache.peek("a").is_some(), "still served until swept");
        cache.sweep();
        assert!(cache.peek("a").is_none());
        assert_eq!(cache.known_ids(), [Box::from("b")]);
        cache.get("c");
        assert_eq!(cache.known_ids().len(), 1, "pending is not known");
    }
}
