//! Observed DNS names: (scope, IP) → the name a workload resolved to that
//! IP, from the answers that workload itself received. A scope is one
//! container (by id), the host, or a cgroup when neither is known; two
//! containers that resolve one IP under different names each keep theirs.
//!
//! The cache is the enrich stage's own (no lock, never blocks): answers
//! and the connects that follow them arrive through one ring buffer in
//! order, so an answer is applied before any connect made with it.
//!
//! Bounded: at most `cap` (scope, IP) entries, each with at most
//! [`NAMES_PER_IP`] names; the oldest entry is evicted first (counted).
//! TTL-respecting: a name stops matching `ttl` seconds (at most
//! [`MAX_TTL_SECS`]) after its answer, plus [`GRACE_SECS`] for the connect
//! that immediately follows an answer with TTL 0.
use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, Hash},
    net::IpAddr,
    sync::Arc,
};

use crate::pipeline::decode::dns::{AnswerData, DnsMessage};

/// Names remembered per (scope, IP): CDNs put many names on one address.
pub const NAMES_PER_IP: usize = 4;
/// Long TTLs are cut so a stale mapping cannot outlive a day.
pub const MAX_TTL_SECS: u32 = 86_400;
/// Kept this long past the TTL (TTL 0 answers are used right away).
pub const GRACE_SECS: u32 = 5;
/// Most CNAME hops followed from the question to the addresses.
const MAX_CHAIN: usize = 8;
const NS: u64 = 1_000_000_000;

/// Where a name was observed, as a 64-bit key (hash of the container id,
/// or the cgroup id), so lookups allocate nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope(u64);

impl Scope {
    pub const HOST: Scope = Scope(0);

    /// From `container.id` (`"host"` outside containers) or, when that is
    /// unknown, the cgroup id.
    pub fn of(container_id: Option<&str>, cgroup_id: u64) -> Scope {
        match container_id {
            Some("host") => Scope::HOST,
            Some(id) => {
                // Seeded once per process: a scope is only a key of this
                // process's cache. SipHash here cost a thirtieth of an event.
                static SEED: std::sync::OnceLock<foldhash::fast::FixedState> =
                    std::sync::OnceLock::new();
                let state = SEED.get_or_init(|| {
                    foldhash::fast::FixedState::with_seed(
                        std::hash::RandomState::new().hash_one(0x5c0e_u64),
                    )
                });
                // Never 0 (the host) nor a cgroup key.
                Scope((state.hash_one(id) >> 1) | 1)
            }
            None => Scope((cgroup_id << 1) & !1 | (1 << 63)),
        }
    }
}

#[derive(Clone, Debug)]
struct Name {
    name: Arc<str>,
    expires_ns: u64,
}

#[derive(Debug, Default)]
struct Entry {
    /// Most recent first.
    names: Vec<Name>,
    generation: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamesStats {
    pub entries: u64,
    pub evictions: u64,
    pub expired: u64,
    pub inserted: u64,
}

pub struct NamesCache {
    map: HashMap<(Scope, IpAddr), Entry>,
    /// Insertion order, for eviction; stale positions are skipped.
    order: VecDeque<((Scope, IpAddr), u64)>,
    cap: usize,
    generation: u64,
    pub evictions: u64,
    pub expired: u64,
    pub inserted: u64,
}

impl NamesCache {
    pub fn new(cap: usize) -> NamesCache {
        NamesCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            generation: 0,
            evictions: 0,
            expired: 0,
            inserted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stats(&self) -> NamesStats {
        NamesStats {
            entries: self.map.len() as u64,
            evictions: self.evictions,
            expired: self.expired,
            inserted: self.inserted,
        }
    }

    /// Learns the addresses of an answer: each address reached from the
    /// question through the CNAME chain gets the question's name.
    pub fn learn(&mut self, scope: Scope, message: &DnsMessage, now_ns: u64) {
        if !message.response || message.rcode != 0 || message.qname.is_empty() {
            return;
        }
        let mut chain: Vec<&str> = vec![&message.qname];
        for _ in 0..MAX_CHAIN {
            let last = chain[chain.len() - 1];
            let next = message.answers.iter().find_map(|a| match &a.data {
                AnswerData::Cname(target) if a.name == last && !chain.contains(&&**target) => {
                    Some(&**target)
                }
                _ => None,
            });
            match next {
                Some(target) => chain.push(target),
                None => break,
            }
        }
        let mut name: Option<Arc<str>> = None;
        for answer in &message.answers {
            let AnswerData::Addr(ip) = answer.data else {
                continue;
            };
            if !chain.contains(&&*answer.name) {
                continue;
            }
            let name = name.get_or_insert_with(|| Arc::from(message.qname.as_str()));
            let ttl = answer.ttl.min(MAX_TTL_SECS) + GRACE_SECS;
            self.insert(
                scope,
                ip.to_canonical(),
                name.clone(),
                now_ns + u64::from(ttl) * NS,
            );
        }
    }

    fn insert(&mut self, scope: Scope, ip: IpAddr, name: Arc<str>, expires_ns: u64) {
        let key = (scope, ip);
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                self.evict_oldest();
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let entry = self.map.entry(key).or_default();
        entry.names.retain(|n| n.name != name);
        entry.names.insert(0, Name { name, expires_ns });
        entry.names.truncate(NAMES_PER_IP);
        entry.generation = generation;
        self.inserted += 1;
        self.order.push_back((key, generation));
        // Refreshed entries leave stale positions; keep the queue bounded.
        if self.order.len() > 2 * self.cap + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((key, generation)) = self.order.pop_front() {
            if self
                .map
                .get(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.map.remove(&key);
                self.evictions += 1;
                return;
            }
        }
        // Unreachable in practice (every entry has a position); never loop.
        self.map.clear();
    }

    /// The most recently answered name of `ip` in `scope` that has not
    /// expired; expired names are dropped on the way.
    pub fn lookup(&mut self, scope: Scope, ip: IpAddr, now_ns: u64) -> Option<Arc<str>> {
        let key = (scope, ip.to_canonical());
        let entry = self.map.get_mut(&key)?;
        let before = entry.names.len();
        entry.names.retain(|n| n.expires_ns > now_ns);
        self.expired += (before - entry.names.len()) as u64;
        let found = entry.names.first().map(|n| n.name.clone());
        if entry.names.is_empty() {
            self.map.remove(&key);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::dns::{Answer, AnswerData};

    fn answer(qname: &str, answers: Vec<Answer>) -> DnsMessage {
        DnsMessage {
            id: 1,
            response: true,
            rcode: 0,
            qname: qname.into(),
            qtype: 1,
            answers,
        }
    }

    fn a(name: &str, ip: &str, ttl: u32) -> Answer {
        Answer {
            name: name.into(),
            ttl,
            data: AnswerData::Addr(ip.parse().unwrap()),
        }
    }

    fn cname(name: &str, target: &str) -> Answer {
        Answer {
            name: name.into(),
            ttl: 60,
            data: AnswerData::Cname(target.into()),
        }
    }

    const IP: &str = "203.0.113.5";

    fn ip() -> IpAddr {
        IP.parse().unwrap()
    }

    #[test]
    fn names_are_per_scope_and_follow_cname_chains() {
        let mut cache = NamesCache::new(16);
        let a_scope = Scope::of(Some("aaaaaaaaaaaa"), 1);
        let b_scope = Scope::of(Some("bbbbbbbbbbbb"), 2);
        cache.learn(
            a_scope,
            &answer(
                "shop.example",
                vec![
                    cname("shop.example", "edge.cdn.example"),
                    cname("edge.cdn.example", "x.cdn.example"),
                    a("x.cdn.example", IP, 60),
                    // Not on the chain: ignored.
                    a("other.example", "198.51.100.1", 60),
                ],
            ),
            0,
        );
        cache.learn(
            b_scope,
            &answer("blog.example", vec![a("blog.example", IP, 60)]),
            0,
        );
        assert_eq!(
            cache.lookup(a_scope, ip(), 1).as_deref(),
            Some("shop.example")
        );
        assert_eq!(
            cache.lookup(b_scope, ip(), 1).as_deref(),
            Some("blog.example")
        );
        assert_eq!(cache.lookup(Scope::HOST, ip(), 1), None);
        assert_eq!(
            cache.lookup(a_scope, "198.51.100.1".parse().unwrap(), 1),
            None
        );
    }

    #[test]
    fn ttl_is_respected() {
        let mut cache = NamesCache::new(16);
        cache.learn(
            Scope::HOST,
            &answer("a.example", vec![a("a.example", IP, 10)]),
            0,
        );
        let live = u64::from(10 + GRACE_SECS) * NS - 1;
        assert!(cache.lookup(Scope::HOST, ip(), live).is_some());
        assert_eq!(cache.lookup(Scope::HOST, ip(), live + 2), None);
        assert_eq!(cache.expired, 1);
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_with_counted_evictions() {
        let mut cache = NamesCache::new(100);
        for i in 0..1000u32 {
            let ip = std::net::Ipv4Addr::from(0xcb00_7100 + i).to_string();
            cache.learn(
                Scope::HOST,
                &answer("n.example", vec![a("n.example", &ip, 60)]),
                0,
            );
            // Refreshing one entry must not grow the order queue unbounded.
            cache.learn(
                Scope::HOST,
                &answer("m.example", vec![a("m.example", IP, 60)]),
                0,
            );
        }
        assert!(cache.len() <= 100);
        assert!(cache.order.len() <= 2 * 100 + 16);
        assert!(cache.evictions >= 900);
        assert_eq!(
            cache.lookup(Scope::HOST, ip(), 1).as_deref(),
            Some("m.example")
        );
    }

    #[test]
    fn errors_and_queries_teach_nothing() {
        let mut cache = NamesCache::new(4);
        let mut nx = answer("a.example", vec![a("a.example", IP, 60)]);
        nx.rcode = 3;
        cache.learn(Scope::HOST, &nx, 0);
        let mut query = answer("a.example", vec![a("a.example", IP, 60)]);
        query.response = false;
        cache.learn(Scope::HOST, &query, 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn few_names_per_ip_most_recent_first() {
        let mut cache = NamesCache::new(4);
        for i in 0..10 {
            let name = format!("n{i}.example");
            cache.learn(Scope::HOST, &answer(&name, vec![a(&name, IP, 60)]), 0);
        }
        assert_eq!(
            cache.lookup(Scope::HOST, ip(), 1).as_deref(),
            Some("n9.example")
        );
        assert_eq!(cache.map[&(Scope::HOST, ip())].names.len(), NAMES_PER_IP);
    }
}
