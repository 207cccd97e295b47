//! Bounded storage for label sets that come from workloads or the network.
//!
//! Both structures here keep at most `cap` entries in a slab with an intrusive
//! recency list, so finding, touching and evicting are O(1) and a hit neither
//! allocates nor moves memory. Keys are 64-bit digests seeded per process
//! (label values are attacker-influenced: process names, pod names,
//! destination addresses), and the full label values are compared on every
//! hit, so two label sets are never merged into one series. A digest
//! collision can only evict a series, which a flood of new label sets can
//! do anyway, so the digest needs speed and a secret seed, not SipHash's
//! cryptographic strength (SipHash was 40% of the per-alert cost).
use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    sync::OnceLock,
};

const NIL: u32 = u32::MAX;

/// The map keys are already digests; hashing them again would only cost
/// time.
#[derive(Default)]
struct Digest(u64);

impl Hasher for Digest {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

struct Slot<const N: usize> {
    digest: u64,
    labels: [Box<str>; N],
    value: u64,
    /// Caller-defined clock reading of the last update (seconds for
    /// [`ValueCap`]; unused by [`LruSeries`]).
    touched: u64,
    prev: u32,
    next: u32,
}

/// The slab and recency list shared by both public structures.
struct Lru<const N: usize> {
    cap: usize,
    seed: [u64; 2],
    index: HashMap<u64, u32, BuildHasherDefault<Digest>>,
    slots: Vec<Slot<N>>,
    /// Most recently updated.
    head: u32,
    /// Least recently updated: the next to go.
    tail: u32,
}

enum Found {
    Hit(u32),
    /// Same digest, different labels: a 64-bit collision.
    Collision(u32),
    Miss,
}

impl<const N: usize> Lru<N> {
    fn new(cap: usize) -> Self {
        Lru {
            // Slot indices are u32 and NIL is reserved.
            cap: cap.min(NIL as usize - 1),
            seed: seed(),
            index: HashMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn digest(&self, values: &[&str; N]) -> u64 {
        let [k0, k1] = self.seed;
        let mut state = k0;
        for v in values {
            let bytes = v.as_bytes();
            let mut chunks = bytes.chunks_exact(16);
            for c in &mut chunks {
                let (a, b) = c.split_at(8);
                state = fold_mul(word(a) ^ state ^ k0, word(b) ^ k1);
            }
            let rest = chunks.remainder();
            let (a, b) = rest.split_at(rest.len().min(8));
            // The length ends every value, so ("ab","c") and ("a","bc")
            // differ and zero padding is unambiguous.
            state = fold_mul(word(a) ^ state ^ k1, word(b) ^ (bytes.len() as u64) ^ k0);
        }
        fold_mul(state, k1 ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn find(&self, digest: u64, values: &[&str; N]) -> Found {
        match self.index.get(&digest) {
            None => Found::Miss,
            Some(&i) => {
                let slot = &self.slots[i as usize];
                if slot.labels.iter().zip(values).all(|(a, b)| same(a, b)) {
                    Found::Hit(i)
                } else {
                    Found::Collision(i)
                }
            }
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32, now: u64) {
        self.slots[i as usize].touched = now;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// A new entry in a free slot; the caller checked there is room.
    fn push(&mut self, digest: u64, values: &[&str; N], value: u64, now: u64) {
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            digest,
            labels: values.map(Box::from),
            value,
            touched: now,
            prev: NIL,
            next: NIL,
        });
        self.index.insert(digest, i);
        self.push_front(i);
    }

    /// Gives slot `i` to a new label set (eviction or collision).
    fn reuse(&mut self, i: u32, digest: u64, values: &[&str; N], value: u64, now: u64) {
        let old = self.slots[i as usize].digest;
        self.index.remove(&old);
        {
            let s = &mut self.slots[i as usize];
            s.digest = digest;
            s.labels = values.map(Box::from);
            s.value = value;
        }
        self.index.insert(digest, i);
        self.touch(i, now);
    }
}

/// Per-process secret seed, drawn once from the OS via std's random
/// hasher keys.
fn seed() -> [u64; 2] {
    static SEED: OnceLock<[u64; 2]> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = RandomState::new();
        [s.hash_one(0x5eed_u64) | 1, s.hash_one(0xfeed_u64) | 1]
    })
}

/// Label equality without a call to libc's `memcmp`. Labels are a few
/// dozen bytes; on the benchmark VM glibc's AVX-512 `memcmp` spent most of
/// its time stalled on the masked load of its short-input path, which made
/// these comparisons a sixth of the agent's CPU in an alert storm. Word-wise
/// comparison made the pipeline bench 16% (mixed) to 32% (all alerts) faster.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut words_a = a.chunks_exact(8);
    let mut words_b = b.chunks_exact(8);
    for (x, y) in (&mut words_a).zip(&mut words_b) {
        if word(x) != word(y) {
            return false;
        }
    }
    word(words_a.remainder()) == word(words_b.remainder())
}

/// Full 64×64→128-bit multiply folded back to 64 bits: the mixing step of
/// foldhash/wyhash-style hashes.
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Up to 8 bytes, little-endian, zero padded. Byte by byte for short
/// input: a variable-length `copy_from_slice` becomes a `memcpy` call that
/// cost more than the hashing.
fn word(bytes: &[u8]) -> u64 {
    if let Some(head) = bytes.first_chunk::<8>() {
        return u64::from_le_bytes(*head);
    }
    bytes
        .iter()
        .enumerate()
        .fold(0, |w, (i, b)| w | (u64::from(*b) << (8 * i)))
}

/// A counter family capped at `cap` series; when full, a new label set
/// replaces the series updated least recently.
pub(crate) struct LruSeries<const N: usize> {
    lru: Lru<N>,
    evictions: u64,
}

impl<const N: usize> LruSeries<N> {
    /// `cap == 0` disables the family: nothing is stored.
    pub(crate) fn new(cap: usize) -> Self {
        LruSeries {
            lru: Lru::new(cap),
            evictions: 0,
        }
    }

    /// Adds `by` to the series labelled `values`; allocates only when the
    /// series is new.
    pub(crate) fn add(&mut self, values: [&str; N], by: u64) {
        let lru = &mut self.lru;
        if lru.cap == 0 {
            return;
        }
        let digest = lru.digest(&values);
        match lru.find(digest, &values) {
            Found::Hit(i) => {
                lru.slots[i as usize].value += by;
                lru.touch(i, 0);
            }
            Found::Collision(i) => {
                self.evictions += 1;
                lru.reuse(i, digest, &values, by, 0);
            }
            Found::Miss if lru.slots.len() < lru.cap => lru.push(digest, &values, by, 0),
            Found::Miss => {
                self.evictions += 1;
                let tail = lru.tail;
                lru.reuse(tail, digest, &values, by, 0);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lru.slots.len()
    }

    pub(crate) fn cap(&self) -> usize {
        self.lru.cap
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Every series, most recently updated first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[Box<str>; N], u64)> {
        let slots = &self.lru.slots;
        let mut i = self.lru.head;
        std::iter::from_fn(move || {
            let s = slots.get(i as usize)?;
            i = s.next;
            Some((&s.labels, s.value))
        })
    }
}

/// What a workload-derived label may show: at most `cap` distinct values
/// active at once; the rest read `other`. A value idle for `idle_secs` gives
/// its place to a new one, so pod churn over weeks does not end with every
/// new pod folded into `other`.
pub(crate) struct ValueCap {
    lru: Lru<1>,
    idle_secs: u64,
    folded: u64,
}

pub(crate) const OTHER: &str = "other";

impl ValueCap {
    pub(crate) fn new(cap: usize, idle_secs: u64) -> Self {
        ValueCap {
            lru: Lru::new(cap),
            idle_secs,
            folded: 0,
        }
    }

    /// `value` itself if it may be shown, else [`OTHER`]. Empty values (the
    /// label does not apply) are always shown and take no place.
    pub(crate) fn resolve<'a>(&mut self, value: &'a str, now_secs: u64) -> &'a str {
        if value.is_empty() {
            return value;
        }
        let values = [value];
        let lru = &mut self.lru;
        let digest = lru.digest(&values);
        match lru.find(digest, &values) {
            Found::Hit(i) => {
                lru.touch(i, now_secs);
                value
            }
            Found::Miss if lru.slots.len() < lru.cap => {
                lru.push(digest, &values, 0, now_secs);
                value
            }
            // Folding on a collision keeps the index consistent (the
            // colliding slot keeps its digest); it is a 2^-64 event.
            Found::Collision(_) => {
                self.folded += 1;
                OTHER
            }
            Found::Miss => {
                let tail = lru.tail;
                let idle = lru
                    .slots
                    .get(tail as usize)
                    .is_some_and(|s| now_secs.saturating_sub(s.touched) >= self.idle_secs);
                if idle {
                    lru.reuse(tail, digest, &values, 0, now_secs);
                    value
                } else {
                    self.folded += 1;
                    OTHER
                }
            }
        }
    }

    /// Observations shown as `other` so far.
    pub(crate) fn folded(&self) -> u64 {
        self.folded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series<const N: usize>(t: &LruSeries<N>) -> Vec<(Vec<String>, u64)> {
        t.iter()
            .map(|(l, v)| (l.iter().map(|s| s.to_string()).collect(), v))
            .collect()
    }

    #[test]
    fn counts_and_evicts_least_recently_updated() {
        let mut t = LruSeries::<2>::new(2);
        t.add(["a", "1"], 1);
        t.add(["b", "1"], 1);
        t.add(["a", "1"], 2); // a is now the most recent
        t.add(["c", "1"], 5); // evicts b
        assert_eq!(t.len(), 2);
        assert_eq!(t.evictions(), 1);
        assert_eq!(
            series(&t),
            vec![
                (vec!["c".into(), "1".into()], 5),
                (vec!["a".into(), "1".into()], 3)
            ]
        );
        // b comes back as a new series, evicting a (least recent now).
        t.add(["b", "1"], 1);
        assert_eq!(t.evictions(), 2);
        assert!(series(&t).iter().all(|(l, _)| l[0] != "a"));
    }

    #[test]
    fn label_boundaries_are_part_of_the_key() {
        let mut t = LruSeries::<2>::new(10);
        t.add(["ab", "c"], 1);
        t.add(["a", "bc"], 1);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn label_equality() {
        for (a, b) in [
            ("", ""),
            ("a", "a"),
            ("exactly8", "exactly8"),
            (
                "Outbound Connection in Container",
                "Outbound Connection in Container",
            ),
        ] {
            assert!(same(a, b), "{a} = {b}");
        }
        for (a, b) in [
            ("", "a"),
            ("a", "b"),
            ("exactly8", "exactly9"),
            ("exactly8+", "exactly8-"),
            ("abc", "abd"),
            (
                "Outbound Connection in Container",
                "Outbound Connection in Containe",
            ),
        ] {
            assert!(!same(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn zero_cap_stores_nothing() {
        let mut t = LruSeries::<1>::new(0);
        t.add(["x"], 1);
        assert_eq!(t.len(), 0);
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn many_updates_keep_the_list_consistent() {
        let mut t = LruSeries::<1>::new(16);
        let names: Vec<String> = (0..64).map(|i| format!("v{i}")).collect();
        for round in 0..10u64 {
            for (i, n) in names.iter().enumerate() {
                if !(i as u64 + round).is_multiple_of(3) {
                    t.add([n.as_str()], 1);
                }
            }
        }
        assert_eq!(t.len(), 16);
        assert_eq!(t.iter().count(), 16);
    }

    #[test]
    fn value_cap_folds_then_recycles_idle_values() {
        let mut cap = ValueCap::new(2, 60);
        assert_eq!(cap.resolve("pod-a", 0), "pod-a");
        assert_eq!(cap.resolve("pod-b", 10), "pod-b");
        assert_eq!(cap.resolve("pod-c", 20), OTHER);
        assert_eq!(cap.resolve("", 20), "");
        assert_eq!(cap.folded(), 1);
        // pod-a was last seen at 0; at 61 it is idle and gives its place.
        assert_eq!(cap.resolve("pod-c", 61), "pod-c");
        assert_eq!(cap.resolve("pod-a", 62), OTHER);
        assert_eq!(cap.resolve("pod-b", 62), "pod-b");
        assert_eq!(cap.folded(), 2);
    }
}
