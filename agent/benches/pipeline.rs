//! The userspace pipeline without the kernel: ring-buffer records →
//! decode → enrich (process cache and identity, every lookup a cache hit) →
//! bundled rules → alerts rendered to JSON and counted in the metrics, in
//! batches of [`egret::pipeline::source::BATCH`] as the agent runs them. Only the
//! stdout write is left out. `cargo xtask bench` runs it (scenario 3) and
//! reads the `pipeline/mixed` throughput.
//!
//! Benchmarks:
//! - `pipeline/mixed`: a realistic mix (most traffic private, 60% from pods,
//!   about one event in eight raises an alert);
//! - `pipeline/alert_storm`: every event raises an alert (containers
//!   connecting out), the worst case per event.
use std::{
    hint::black_box,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use criterion::{Criterion, Throughput, criterion_group};
use egret::{
    identity::{
        IdentitySources,
        cgroups::{CgroupPaths, CgroupPathsConfig},
        netns::HostNetns,
        resolver::IdentityResolver,
        users::{UserNames, UserNamesConfig},
    },
    metrics::{Metrics, MetricsConfig},
    outputs::{
        Raised,
        alert::{Additions, AppendOutputs},
        stdout,
    },
    pipeline::{
        decode::{self as event, Record},
        enrich::{Enricher, process::ProcessCache},
        evaluate::Evaluator,
        source::BATCH,
    },
    ruleset::{self as rules, RulePaths},
};
use egret_common::{
    AF_INET, AF_INET6, EXEC_ARG_CHUNK, EXEC_ARGS_BYTES, EXEC_FILENAME_BYTES, EgressEvent,
    ExecEvent, Hook, RecordKind,
};
use egret_rules::{Options, Ruleset};

const RECORDS: usize = 4096;
const PROCESSES: u32 = 64;
const HOST_NETNS: u64 = 4096;
const POD_NETNS: u64 = 8192;

/// A cgroup tree and passwd file in a temporary directory, so identity
/// resolution runs its real code and every lookup hits its cache.
struct Fixture {
    dir: PathBuf,
    /// Cgroup ids (directory inodes) of the pods' containers.
    containers: Vec<u64>,
    /// Cgroup ids of host services.
    host: Vec<u64>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!("egret-pipeline-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cgroup = dir.join("cgroup");
        let mut containers = Vec::new();
        for pod in 0..8u32 {
            let uid = format!("0c6b7e5f-1234-4abc-9def-0123456789{pod:02x}");
            let id = format!("{:064x}", 0x3f4b_2a1c_9d8e_7f6a_u64 + u64::from(pod));
            let path = cgroup.join(format!("kubepods/burstable/pod{uid}/{id}"));
            std::fs::create_dir_all(&path).expect("container cgroup");
            containers.push(ino(&path));
        }
        let mut host = Vec::new();
        for service in ["system.slice/sshd.service", "system.slice/cron.service"] {
            let path = cgroup.join(service);
            std::fs::create_dir_all(&path).expect("host cgroup");
            host.push(ino(&path));
        }
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        Fixture {
            dir,
            containers,
            host,
        }
    }

    fn identity(&self) -> IdentitySources {
        let cgroups = CgroupPaths::new(self.dir.join("cgroup"), CgroupPathsConfig::default());
        cgroups.refresh().expect("walking the fixture cgroup tree");
        let users = UserNames::new(UserNamesConfig {
            host_passwd: self.dir.join("passwd"),
            proc_root: self.dir.join("proc"),
            ..UserNamesConfig::default()
        });
        IdentitySources {
            resolver: IdentityResolver::new(cgroups, None),
            users,
            host_netns: HostNetns::from_cookie(HOST_NETNS),
        }
    }

    /// Cgroup of process `p`: 60% in pods.
    fn cgroup_of(&self, p: u32) -> u64 {
        if p % 10 < 6 {
            self.containers[p as usize % self.containers.len()]
        } else {
            self.host[p as usize % self.host.len()]
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").ino()
}

fn bytes_of<T>(value: &T) -> Vec<u8> {
    // SAFETY: kernel records are repr(C) with explicit padding.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn comm(name: &str) -> [u8; 16] {
    let mut raw = [0u8; 16];
    let len = name.len().min(15);
    raw[..len].copy_from_slice(&name.as_bytes()[..len]);
    raw
}

const NAMES: [&str; 4] = ["curl", "python3", "java", "node"];

fn exec_record(tgid: u32, exec_id: u64, cgroup_id: u64, name: &str) -> Vec<u8> {
    let mut event = ExecEvent {
        kind: RecordKind::Exec as u8,
        flags: 0,
        filename_len: 0,
        args_len: 0,
        _pad0: 0,
        tgid,
        ppid: 1,
        uid: 0,
        gid: 0,
        mono_ns: 1,
        exec_id,
        cgroup_id,
        comm: comm(name),
        filename: [0; EXEC_FILENAME_BYTES],
        args: [0; EXEC_ARGS_BYTES + EXEC_ARG_CHUNK],
        exe: egret_common::ExeFile {
            flags: egret_common::EXE_KNOWN,
            len: 0,
            path: [0; egret_common::EXE_PATH_BYTES],
        },
    };
    let filename = format!("/usr/bin/{name}");
    event.exe.path[..filename.len()].copy_from_slice(filename.as_bytes());
    event.exe.len = filename.len() as u32;
    event.filename[..filename.len()].copy_from_slice(filename.as_bytes());
    event.filename_len = filename.len() as u16;
    let args = format!("{name}\0--config\0/etc/{name}/config.yaml\0--verbose\0");
    event.args[..args.len()].copy_from_slice(args.as_bytes());
    event.args_len = args.len() as u16;
    bytes_of(&event)
}

/// Exec records for pid 1 and every process, so all lookups hit.
fn exec_records(fixture: &Fixture) -> Vec<Vec<u8>> {
    let mut records = vec![exec_record(1, 1, fixture.host[0], "systemd")];
    for p in 0..PROCESSES {
        let name = NAMES[p as usize % NAMES.len()];
        records.push(exec_record(
            1000 + p,
            5000 + u64::from(p),
            fixture.cgroup_of(p),
            name,
        ));
    }
    records
}

#[derive(Clone, Copy)]
enum Mix {
    Realistic,
    AlertStorm,
}

fn egress_records(fixture: &Fixture, mix: Mix) -> Vec<Vec<u8>> {
    let private = [
        "10.0.3.7",
        "10.96.0.10",
        "172.20.1.9",
        "192.168.4.2",
        "10.244.1.18",
    ];
    let public = [
        "203.0.113.7",
        "198.51.100.20",
        "2001:db8::42",
        "8.8.8.8",
        "151.101.1.69",
    ];
    let special: [(&str, u16); 5] = [
        ("169.254.169.254", 80),
        ("10.96.0.1", 443),
        ("198.51.100.20", 3333),
        ("203.0.113.66", 443),
        ("1.1.1.1", 53),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..RECORDS)
        .map(|i| {
            let (mut p, dest, port, udp) = match mix {
                Mix::Realistic => {
                    let p = (next() % u64::from(PROCESSES)) as u32;
                    let (dest, port, udp) = match next() % 100 {
                        0..=69 => (private[(next() % 5) as usize], 443, false),
                        70..=89 => (public[(next() % 5) as usize], 443, false),
                        90..=94 => ("10.96.0.10", 53, true),
                        _ => {
                            let (d, p) = special[(next() % 5) as usize];
                            (d, p, p == 53)
                        }
                    };
                    (p, dest, port, udp)
                }
                Mix::AlertStorm => {
                    let p = (next() % u64::from(PROCESSES)) as u32;
                    (p, public[(next() % 5) as usize], 443, false)
                }
            };
            if matches!(mix, Mix::AlertStorm) {
                // Containers only: the generic container rule fires.
                while p % 10 >= 6 {
                    p = (p + 1) % PROCESSES;
                }
            }
            let ip: std::net::IpAddr = dest.parse().expect("literal address");
            let (family, daddr) = match ip {
                std::net::IpAddr::V4(v4) => {
                    let mut raw = [0u8; 16];
                    raw[..4].copy_from_slice(&v4.octets());
                    (AF_INET, raw)
                }
                std::net::IpAddr::V6(v6) => (AF_INET6, v6.octets()),
            };
            let hook = match (udp, family == AF_INET6) {
                (false, false) => Hook::Connect4,
                (false, true) => Hook::Connect6,
                (true, false) => Hook::Sendmsg4,
                (true, true) => Hook::Sendmsg6,
            };
            let in_pod = p % 10 < 6;
            let host_network = in_pod && next() % 20 == 0;
            let event = EgressEvent {
                kind: RecordKind::Egress as u8,
                hook: hook as u8,
                family,
                protocol: if udp { 17 } else { 6 },
                dport: port,
                flags: 0,
                _pad0: 0,
                tgid: 1000 + p,
                pid: 1000 + p,
                uid: if p % 3 == 0 { 1000 } else { 0 },
                gid: 0,
                mono_ns: 1_000_000 + i as u64 * 1000,
                exec_id: 5000 + u64::from(p),
                ppid: 1,
                quarantine: 0,
                cgroup_id: fixture.cgroup_of(p),
                netns_cookie: if in_pod && !host_network {
                    POD_NETNS + u64::from(p)
                } else {
                    HOST_NETNS
                },
                socket_cookie: i as u64 + 1,
                daddr,
                comm: comm(NAMES[p as usize % NAMES.len()]),
            };
            bytes_of(&event)
        })
        .collect()
}

/// What one agent holds: the enricher (caches warmed by exec records), the
/// rule set and the evaluator with its metrics.
struct Pipeline {
    enricher: Enricher,
    ruleset: Arc<Ruleset>,
    evaluator: Evaluator,
    matches: Vec<egret_rules::RuleId>,
    alerts: Vec<Raised>,
    out: Vec<u8>,
}

impl Pipeline {
    fn new(fixture: &Fixture, baseline: bool) -> Pipeline {
        Self::with_rules(fixture, baseline, None)
    }

    /// `extra`: a rule file compiled before the bundled rules, so that its
    /// rules run on every event (scenarios 11 and 12 of `cargo xtask bench`).
    fn with_rules(fixture: &Fixture, baseline: bool, extra: Option<String>) -> Pipeline {
        let ruleset = Arc::new(match extra {
            None => {
                rules::load(&RulePaths::default(), &Options::default()).expect("bundled rules load")
            }
            Some(text) => {
                let mut texts = vec![("extra.yaml".to_string(), text)];
                texts.extend(
                    rules::BUNDLED
                        .iter()
                        .map(|(n, t)| (n.to_string(), t.to_string())),
                );
                rules::compile(&texts, &Options::default()).expect("extra rules load")
            }
        });
        let mut enricher = Enricher::new(
            ProcessCache::new(fixture.dir.join("proc"), 65_536),
            Some(fixture.identity()),
        );
        let execs = exec_records(fixture)
            .iter()
            .map(|raw| event::decode(raw, 0).expect("exec record decodes"))
            .collect();
        let mut none = Vec::new();
        enricher.process_batch(execs, &mut none);
        if baseline {
            // In memory, learning for the whole run: after the first pass
            // every attempt is a lookup and update of a learned destination,
            // the same work as checking one after learning.
            let config = egret::baseline::BaselineConfig {
                max_destinations: 65_536,
                ..Default::default()
            };
            let baseline = egret::baseline::Baseline::open(
                config,
                egret::advise::model::LabelPolicy::default(),
            )
            .expect("in-memory baseline");
            enricher = enricher.with_baseline(baseline);
        }
        let evaluator = Evaluator::new(
            "bench-node".into(),
            // The shipped default: workload identity on every alert.
            Arc::new(
                Additions::build(&AppendOutputs::default().0, &Default::default())
                    .expect("default additions"),
            ),
            Metrics::new(&MetricsConfig::default()),
        );
        Pipeline {
            enricher,
            ruleset,
            evaluator,
            matches: Vec::new(),
            alerts: Vec::new(),
            out: Vec::with_capacity(16 * 1024),
        }
    }

    /// Rules `Ruleset::evaluate` may run per event, after the event-type and
    /// destination indexes (records decoded and enriched once).
    fn rules_per_event(&mut self, records: &[Vec<u8>]) -> f64 {
        let offset = event::wall_offset_ns();
        let mut total = 0usize;
        let mut events_seen = 0usize;
        for chunk in records.chunks(BATCH) {
            let batch: Vec<Record> = chunk
                .iter()
                .filter_map(|raw| event::decode(raw, offset).ok())
                .collect();
            let mut events = Vec::with_capacity(batch.len());
            self.enricher.process_batch(batch, &mut events);
            events_seen += events.len();
            total += events
                .iter()
                .map(|e| self.ruleset.candidates(e))
                .sum::<usize>();
        }
        total as f64 / events_seen.max(1) as f64
    }

    /// Every record once, batch by batch as the source stage cuts them;
    /// returns the alerts raised.
    fn run(&mut self, records: &[Vec<u8>]) -> u64 {
        let mut alerts = 0;
        for chunk in records.chunks(BATCH) {
            // Source stage: one clock offset per batch, decode each record.
            let offset = event::wall_offset_ns();
            let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
            for raw in chunk {
                if let Ok(record) = event::decode(black_box(raw), offset) {
                    batch.push(record);
                }
            }
            // Enrich stage.
            let mut events = Vec::with_capacity(batch.len());
            self.enricher.process_batch(batch, &mut events);
            // Evaluate stage, and the stdout output minus the write.
            self.alerts.clear();
            alerts += self.evaluator.evaluate_batch(
                &self.ruleset,
                &events,
                &mut self.matches,
                &mut self.alerts,
            );
            self.out.clear();
            stdout::encode(&self.alerts, &mut self.out).expect("alerts serialise");
            black_box(&self.out);
        }
        alerts
    }
}

fn bench(c: &mut Criterion) {
    let fixture = Fixture::new();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, mix, baseline) in [
        ("mixed", Mix::Realistic, false),
        ("alert_storm", Mix::AlertStorm, false),
        ("mixed_baseline", Mix::Realistic, true),
    ] {
        let records = egress_records(&fixture, mix);
        let mut pipeline = Pipeline::new(&fixture, baseline);
        let alerts = pipeline.run(&records);
        assert!(alerts > 0, "{name}: the mix should raise alerts");
        // Machine-readable for `cargo xtask bench`.
        println!(
            "pipeline/{name}: alerts per event {:.3}",
            alerts as f64 / RECORDS as f64
        );
        group.bench_function(name, |b| b.iter(|| black_box(pipeline.run(&records))));
    }
    group.finish();
}

/// Sizes from an environment variable (comma-separated); none when unset.
fn sizes(var: &str) -> Vec<u32> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `pipeline/ioc_N` (`EGRET_BENCH_IOC_SIZES`): the mixed workload with a
/// rule `fd.sip in (ioc_list)` of N entries before the bundled rules
/// (`ioc_0`: no such rule); `pipeline/rules_N` (`EGRET_BENCH_RULE_COUNTS`):
/// N generated rules before the bundled ones, none of which match. The
/// difference to `_0` is what the list or the rules add per event.
fn at_scale(c: &mut Criterion) {
    let ioc = sizes("EGRET_BENCH_IOC_SIZES");
    let counts = sizes("EGRET_BENCH_RULE_COUNTS");
    if ioc.is_empty() && counts.is_empty() {
        return;
    }
    let fixture = Fixture::new();
    let records = egress_records(&fixture, Mix::Realistic);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let runs = ioc
        .iter()
        .map(|&n| {
            (
                format!("ioc_{n}"),
                (n > 0).then(|| egret_testkit::feeds::ioc_rules(n)),
            )
        })
        .chain(counts.iter().map(|&n| {
            (
                format!("rules_{n}"),
                (n > 0).then(|| egret_testkit::feeds::many_rules(n)),
            )
        }));
    for (name, extra) in runs {
        let started = std::time::Instant::now();
        let mut pipeline = Pipeline::with_rules(&fixture, false, extra);
        // Machine-readable for `cargo xtask bench`.
        println!(
            "pipeline/{name}: compile_ms {:.1} rules_per_event {:.2}",
            started.elapsed().as_secs_f64() * 1e3,
            pipeline.rules_per_event(&records)
        );
        group.bench_function(name, |b| b.iter(|| black_box(pipeline.run(&records))));
    }
    group.finish();
}

/// `EGRET_BENCH_ONCE=NAME` (`mixed`, `alert_storm`, `ioc_N`, `rules_N`):
/// builds that pipeline, runs its records once to warm every cache, once
/// more in [`counted_run`], and exits without criterion. Under callgrind
/// (`--toggle-collect='*counted_run*'`, scripts/count-instructions.sh) the
/// second pass's instructions over [`RECORDS`] are the instructions per
/// event: a count that does not move with the machine's load, where this
/// VM's timings do and it offers no hardware counters.
fn once(name: &str) {
    let fixture = Fixture::new();
    let size = |prefix: &str| -> Option<u32> { name.strip_prefix(prefix)?.parse().ok() };
    let (mix, extra) = match name {
        "mixed" => (Mix::Realistic, None),
        "alert_storm" => (Mix::AlertStorm, None),
        _ => match (size("ioc_"), size("rules_")) {
            (Some(n), _) => (
                Mix::Realistic,
                (n > 0).then(|| egret_testkit::feeds::ioc_rules(n)),
            ),
            (_, Some(n)) => (
                Mix::Realistic,
                (n > 0).then(|| egret_testkit::feeds::many_rules(n)),
            ),
            _ => panic!("EGRET_BENCH_ONCE={name}: expected mixed, alert_storm, ioc_N or rules_N"),
        },
    };
    let records = egress_records(&fixture, mix);
    let mut pipeline = Pipeline::with_rules(&fixture, false, extra);
    let warm = pipeline.run(&records);
    let counted = counted_run(&mut pipeline, &records);
    assert_eq!(warm, counted, "the same records raise the same alerts");
    println!("pipeline/once {name}: events {RECORDS} alerts {counted}");
}

#[inline(never)]
fn counted_run(pipeline: &mut Pipeline, records: &[Vec<u8>]) -> u64 {
    pipeline.run(records)
}

criterion_group!(benches, bench, at_scale);

fn main() {
    if let Ok(name) = std::env::var("EGRET_BENCH_ONCE") {
        once(&name);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
