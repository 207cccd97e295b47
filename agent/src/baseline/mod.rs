//! Baseline alerts: each workload's destinations are learned for a learning
//! period from the workload's first event, then `egret.dest.new_for_workload`
//! is true for every attempt to a destination outside what was learned.
//!
//! A workload is its namespace and stable labels (as in the advisor), so
//! restarted and rescheduled pods share one profile; a destination is
//! address, port and protocol. Memory is bounded by `max_workloads` ×
//! `max_destinations`; what does not fit is counted, never stored. The
//! profile is persisted on the node ([`store`]) and survives restarts;
//! deleting the file while the agent is stopped resets it.
pub mod store;

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash as _, Hasher as _},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use egret_rules::Labels;

use crate::advise::model::{LabelPolicy, Proto, WorkloadKey};
use store::{LearnedDestination, ProfileFile, WorkloadProfile};

/// Learned destinations across all workloads: at most ~150 bytes each in
/// the profile, so the file stays under [`store::MAX_FILE_BYTES`].
pub const MAX_ENTRIES: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaselineConfig {
    /// Where the profile lives; `None` keeps it in memory only.
    pub path: Option<PathBuf>,
    pub learning: Duration,
    pub max_workloads: usize,
    pub max_destinations: usize,
    /// How often a changed profile is written.
    pub flush_interval: Duration,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            path: None,
            learning: Duration::from_secs(24 * 3600),
            max_workloads: 1024,
            max_destinations: 256,
            flush_interval: Duration::from_secs(60),
        }
    }
}

/// What the learner did with one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a pod, or not TCP/UDP/SCTP: the field is missing.
    Untracked,
    /// Over `max_workloads`: the field is missing.
    NoRoom,
    Learning,
    Known,
    New,
}

impl Verdict {
    /// The value of `egret.dest.new_for_workload`.
    pub fn field(self) -> Option<bool> {
        match self {
            Verdict::Untracked | Verdict::NoRoom => None,
            Verdict::Learning | Verdict::Known => Some(false),
            Verdict::New => Some(true),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Workloads not tracked because `max_workloads` were.
    pub workloads_dropped: u64,
    /// Destinations seen while learning that did not fit `max_destinations`.
    pub destinations_dropped: u64,
}

#[derive(Debug)]
struct Learned {
    key: WorkloadKey,
    first_seen_ns: u64,
    dests: HashMap<(IpAddr, u16, Proto), (u64, u64, u64)>,
}

pub struct Baseline {
    config: BaselineConfig,
    labels: LabelPolicy,
    workloads: HashMap<u64, Vec<Learned>>,
    count: usize,
    dirty: bool,
    pub counters: Counters,
}

/// Hash of namespace + stable labels, computed without allocating so the
/// per-event lookup is cheap; equality is checked against the stored key.
fn workload_hash(namespace: &str, labels: &dyn Labels, policy: &LabelPolicy) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    namespace.hash(&mut h);
    // Order-independent: labels may come from any map type.
    let mut acc = 0u64;
    labels.for_each_label(&mut |k, v| {
        if policy.is_stable(k) {
            let mut one = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut one);
            v.hash(&mut one);
            acc = acc.wrapping_add(one.finish());
        }
    });
    h.write_u64(acc);
    h.finish()
}

fn same_workload(
    key: &WorkloadKey,
    namespace: &str,
    labels: &dyn Labels,
    policy: &LabelPolicy,
) -> bool {
    if key.namespace != namespace {
        return false;
    }
    let mut stable = 0usize;
    let mut equal = true;
    labels.for_each_label(&mut |k, v| {
        if policy.is_stable(k) {
            stable += 1;
            equal &= key.labels.get(k).is_some_and(|l| l == v);
        }
    });
    equal && stable == key.labels.len()
}

impl Baseline {
    /// A learner with the profile at `config.path` loaded; a missing file is
    /// an empty profile, a bad one an error (the operator decides whether
    /// to delete it).
    pub fn open(config: BaselineConfig, labels: LabelPolicy) -> Result<Baseline, String> {
        let mut baseline = Baseline {
            config,
            labels,
            workloads: HashMap::new(),
            count: 0,
            dirty: false,
            counters: Counters::default(),
        };
        let Some(path) = baseline.config.path.clone() else {
            return Ok(baseline);
        };
        let profile = match ProfileFile::load(&path) {
            Ok(profile) => profile,
            Err(_) if !path.exists() => return Ok(baseline),
            Err(message) => return Err(format!("{}: {message}", path.display())),
        };
        for workload in profile.workloads {
            if baseline.count >= baseline.config.max_workloads {
                baseline.counters.workloads_dropped += 1;
                continue;
            }
            let key = WorkloadKey {
                labels: baseline.labels.stable(&workload.key.labels),
                namespace: workload.key.namespace,
            };
            let hash = workload_hash(&key.namespace, &key.labels, &baseline.labels);
            let dests = workload
                .destinations
                .into_iter()
                .take(baseline.config.max_destinations)
                .map(|d| ((d.ip, d.port, d.proto), (d.count, d.first_ns, d.last_ns)))
                .collect();
            baseline.workloads.entry(hash).or_default().push(Learned {
                key,
                first_seen_ns: workload.first_seen_ns,
                dests,
            });
            baseline.count += 1;
        }
        Ok(baseline)
    }

    pub fn config(&self) -> &BaselineConfig {
        &self.config
    }

    pub fn workloads(&self) -> usize {
        self.count
    }

    /// Learns or checks one attempt at `now_ns` (the event's wall time).
    pub fn observe(
        &mut self,
        namespace: Option<&str>,
        labels: Option<&dyn Labels>,
        ip: IpAddr,
        port: u16,
        proto: Option<Proto>,
        now_ns: u64,
    ) -> Verdict {
        let (Some(namespace), Some(proto)) = (namespace.filter(|n| !n.is_empty()), proto) else {
            return Verdict::Untracked;
        };
        let empty: BTreeMap<String, String> = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let hash = workload_hash(namespace, labels, &self.labels);
        let known = self.workloads.get(&hash).and_then(|bucket| {
            bucket
                .iter()
                .position(|l| same_workload(&l.key, namespace, labels, &self.labels))
        });
        let index = match known {
            Some(i) => i,
            // Nothing is inserted for a workload that does not fit, so
            // hostile label churn cannot grow the map.
            None if self.count >= self.config.max_workloads => {
                self.counters.workloads_dropped += 1;
                return Verdict::NoRoom;
            }
            None => {
                let mut stable = BTreeMap::new();
                labels.for_each_label(&mut |k, v| {
                    if self.labels.is_stable(k) {
                        stable.insert(k.to_owned(), v.to_owned());
                    }
                });
                let bucket = self.workloads.entry(hash).or_default();
                bucket.push(Learned {
                    key: WorkloadKey {
                        namespace: namespace.to_owned(),
                        labels: stable,
                    },
                    first_seen_ns: now_ns,
                    dests: HashMap::new(),
                });
                self.count += 1;
                self.dirty = true;
                bucket.len() - 1
            }
        };
        let Some(bucket) = self.workloads.get_mut(&hash) else {
            return Verdict::Untracked;
        };
        let learned = &mut bucket[index];
        let learning_ns = u64::try_from(self.config.learning.as_nanos()).unwrap_or(u64::MAX);
        let learning = now_ns < learned.first_seen_ns.saturating_add(learning_ns);
        let full = learned.dests.len() >= self.config.max_destinations;
        match learned.dests.get_mut(&(ip, port, proto)) {
            Some(seen) => {
                seen.0 = seen.0.saturating_add(1);
                seen.2 = seen.2.max(now_ns);
                self.dirty = true;
                if learning {
                    Verdict::Learning
                } else {
                    Verdict::Known
                }
            }
            None if !learning => Verdict::New,
            None if full => {
                self.counters.destinations_dropped += 1;
                Verdict::Learning
            }
            None => {
                learned.dests.insert((ip, port, proto), (1, now_ns, now_ns));
                self.dirty = true;
                Verdict::Learning
            }
        }
    }

    pub fn snapshot(&self) -> ProfileFile {
        let mut workloads: Vec<WorkloadProfile> = self
            .workloads
            .values()
            .flatten()
            .map(|l| {
                let mut destinations: Vec<LearnedDestination> = l
                    .dests
                    .iter()
                    .map(
                        |(&(ip, port, proto), &(count, first_ns, last_ns))| LearnedDestination {
                            ip,
                            port,
                            proto,
                            count,
                            first_ns,
                            last_ns,
                        },
                    )
                    .collect();
                destinations.sort_by_key(|d| (d.ip, d.port, d.proto));
                WorkloadProfile {
                    key: l.key.clone(),
                    first_seen_ns: l.first_seen_ns,
                    destinations,
                }
            })
            .collect();
        workloads.sort_by(|a, b| a.key.cmp(&b.key));
        ProfileFile {
            version: store::VERSION,
            workloads,
        }
    }

    /// Writes the profile if it changed since the last write.
    pub fn flush(&mut self) -> std::io::Result<bool> {
        let Some(path) = self.config.path.clone() else {
            return Ok(false);
        };
        if !self.dirty {
            return Ok(false);
        }
        self.snapshot().save(&path)?;
        self.dirty = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn web(pod: &str) -> BTreeMap<String, String> {
        [("app", "web"), ("pod-template-hash", pod)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn learner(path: Option<PathBuf>) -> Baseline {
        Baseline::open(
            BaselineConfig {
                path,
                learning: Duration::from_secs(10),
                max_workloads: 2,
                max_destinations: 2,
                flush_interval: Duration::from_secs(1),
            },
            LabelPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn learns_then_flags_new_destinations_per_workload() {
        let mut b = learner(None);
        let tcp = Some(Proto::Tcp);
        let a = web("a");
        let obs = |b: &mut Baseline, labels: &BTreeMap<String, String>, dst: &str, port, t| {
            b.observe(Some("shop"), Some(labels), ip(dst), port, tcp, t * SEC)
        };
        assert_eq!(obs(&mut b, &a, "198.51.100.7", 443, 100), Verdict::Learning);
        // A restarted pod (new hash) is the same workload.
        let restarted = web("b");
        assert_eq!(
            obs(&mut b, &restarted, "2001:db8::7", 443, 105),
            Verdict::Learning
        );
        assert_eq!(
            obs(&mut b, &a, "198.51.100.9", 443, 106),
            Verdict::Learning,
            "over the bound"
        );
        assert_eq!(b.counters.destinations_dropped, 1);
        assert_eq!(obs(&mut b, &a, "198.51.100.7", 443, 110), Verdict::Known);
        assert_eq!(
            b.observe(
                Some("shop"),
                Some(&a),
                ip("::ffff:198.51.100.7"),
                443,
                tcp,
                111 * SEC
            ),
            Verdict::Known
        );
        assert_eq!(
            obs(&mut b, &restarted, "2001:db8::7", 443, 111),
            Verdict::Known
        );
        assert_eq!(obs(&mut b, &a, "198.51.100.7", 80, 111), Verdict::New);
        assert_eq!(obs(&mut b, &a, "203.0.113.1", 443, 111), Verdict::New);
        assert_eq!(Verdict::New.field(), Some(true));
        // Another workload learns on its own clock.
        let db: BTreeMap<String, String> = [("app".to_owned(), "db".to_owned())].into();
        assert_eq!(obs(&mut b, &db, "203.0.113.1", 443, 111), Verdict::Learning);
        let other: BTreeMap<String, String> = [("app".to_owned(), "x".to_owned())].into();
        assert_eq!(
            obs(&mut b, &other, "203.0.113.1", 443, 111),
            Verdict::NoRoom
        );
        assert_eq!(b.counters.workloads_dropped, 1);
        for i in 0..100 {
            let churn: BTreeMap<String, String> = [("app".to_owned(), format!("x{i}"))].into();
            assert_eq!(
                obs(&mut b, &churn, "203.0.113.1", 443, 111),
                Verdict::NoRoom
            );
        }
        assert_eq!(b.workloads.values().map(Vec::len).sum::<usize>(), 2);
        assert!(b.workloads.len() <= 2, "no empty buckets");
        assert_eq!(
            b.observe(None, None, ip("203.0.113.1"), 1, tcp, 0),
            Verdict::Untracked
        );
        assert_eq!(
            b.observe(Some("shop"), Some(&a), ip("203.0.113.1"), 1, None, 0),
            Verdict::Untracked
        );
    }

    #[test]
    fn survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("egret-baseline-{}", std::process::id()));
        let path = dir.join("profile.json");
        let mut b = learner(Some(path.clone()));
        let a = web("a");
        let tcp = Some(Proto::Tcp);
        b.observe(Some("shop"), Some(&a), ip("198.51.100.7"), 443, tcp, SEC);
        assert!(b.flush().unwrap());
        assert!(!b.flush().unwrap(), "unchanged: not rewritten");
        let mut again = learner(Some(path.clone()));
        assert_eq!(again.workloads(), 1);
        let t = 20 * SEC;
        assert_eq!(
            again.observe(
                Some("shop"),
                Some(&web("z")),
                ip("198.51.100.7"),
                443,
                tcp,
                t
            ),
            Verdict::Known
        );
        assert_eq!(
            again.observe(Some("shop"), Some(&a), ip("198.51.100.8"), 443, tcp, t),
            Verdict::New
        );
        std::fs::write(&path, "garbage").unwrap();
        let err = Baseline::open(again.config().clone(), LabelPolicy::default())
            .err()
            .unwrap();
        assert!(err.contains("profile.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
