//! Memory at scale (`cargo xtask bench`, "memory at scale"): the state an
//! agent holds on a large node, built in one process with the agent's own
//! types and measured by a counting allocator (heap bytes live, and the
//! high-water mark while a part is built) and by the process's VmRSS.
//!
//! Parts, in order, each kept alive while the next is built:
//! - `rules`: the bundled rules and an `ioc_list` of N entries
//!   (`egret_testkit::feeds`), loaded as the agent loads them, then the
//!   kernel ignore analysis a load runs; the source text is dropped after.
//! - `containers`: C containers' identity: a cgroup tree of C container
//!   directories (kubepods layout) walked by `CgroupPaths`, and C metadata
//!   records (built by `ContainerMeta::from_record` from the labels and
//!   image containerd reports for a CRI container) in a `ContainerCache`.
//!   containerd is not involved: the records are what its answers become.
//! - `names`: the observed-DNS names cache, full (its default capacity).
//! - `flows`: flow owners for the most sockets the agent remembers.
//!
//! `EGRET_BENCH_SCALE=ioc=N,containers=C,names=M,flows=F` sets the sizes
//! (defaults: 1,000,000, 10,000, 100,000, 131,072). Prints one line per part:
//! `scale <part> n=<n> heap=<bytes> peak=<bytes> rss_kib=<kib> ms=<ms>`.
#[path = "support/counting.rs"]
mod counting;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use counting::{Counting, name_answer};

use egret::{
    identity::{
        cgroups::{CgroupPaths, CgroupPathsConfig},
        container_cache::{CacheConfig, ContainerCache},
        metadata::ContainerMeta,
    },
    pipeline::{
        decode::{Comm, EgressAttempt, L4Proto},
        enrich::{
            NAMES_CACHE_CAP,
            flow_owner::{FlowOwners, GENERATION_CAP},
            names::{NamesCache, Scope},
        },
    },
    ruleset::BUNDLED,
};
use egret_common::Hook;
use egret_rules::{Options, Source};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Measures building one part: heap it keeps, heap high-water mark while
/// building it (above what was live before), RSS after.
fn part<T>(name: &str, n: usize, build: impl FnOnce() -> T) -> T {
    let before = Counting::live();
    Counting::reset_peak();
    let started = Instant::now();
    let value = build();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let heap = Counting::live() - before;
    let peak = Counting::peak() - before;
    println!(
        "scale {name} n={n} heap={heap} peak={peak} rss_kib={} ms={ms:.0}",
        rss_kib()
    );
    value
}

fn size(spec: &str, key: &str, default: usize) -> usize {
    spec.split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A temporary cgroup-like tree of `n` pod containers, removed on drop.
struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn container_id(i: usize) -> String {
    format!("{:016x}{:048x}", 0x3f4b_2a1c_9d8e_7f6a_u64, i)
}

/// The labels containerd's CRI plugin records on a workload container.
fn record_labels(i: usize) -> HashMap<String, String> {
    let pod = i / 2;
    [
        (
            "io.kubernetes.pod.name",
            format!("shop-{pod:05}-7d9f8b6c5d-x2k4q"),
        ),
        (
            "io.kubernetes.pod.namespace",
            format!("team-{:03}", pod % 200),
        ),
        (
            "io.kubernetes.pod.uid",
            format!("0c6b7e5f-1234-4abc-9def-{pod:012x}"),
        ),
        ("io.kubernetes.container.name", format!("app-{}", i % 2)),
        ("io.cri-containerd.kind", "container".to_string()),
        ("io.kubernetes.sandbox.id", format!("{:064x}", pod)),
        ("app.kubernetes.io/name", format!("shop-{}", pod % 500)),
        ("app.kubernetes.io/version", "1.27.3".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn main() {
    let spec = std::env::var("EGRET_BENCH_SCALE").unwrap_or_default();
    let ioc = size(&spec, "ioc", 1_000_000);
    let containers = size(&spec, "containers", 10_000);
    let names = size(&spec, "names", NAMES_CACHE_CAP);
    let flows = size(&spec, "flows", 2 * GENERATION_CAP);
    println!(
        "scale start n=0 heap={} peak=0 rss_kib={} ms=0",
        Counting::live(),
        rss_kib()
    );

    let ruleset = part("rules", ioc, || {
        let list = egret_testkit::feeds::ioc_rules(u32::try_from(ioc).unwrap_or(u32::MAX));
        let mut sources: Vec<Source<'_>> = BUNDLED
            .iter()
            .map(|(name, text)| Source::new(name, text))
            .collect();
        sources.push(Source::new("ioc.yaml", &list));
        let (ruleset, _) = egret_rules::load(&sources, &Options::default())
            .into_result()
            .expect("bench rules load");
        let ignorable = ruleset.kernel_ignorable_networks();
        (ruleset, ignorable)
    });

    let dir = std::env::temp_dir().join(format!("egret-scale-bench-{}", std::process::id()));
    let tree = Tree(dir.clone());
    let identity = part("containers", containers, || {
        for i in 0..containers {
            let pod = i / 2;
            let path = dir.join(format!(
                "kubepods/burstable/pod0c6b7e5f-1234-4abc-9def-{pod:012x}/{}",
                container_id(i)
            ));
            std::fs::create_dir_all(&path).expect("container cgroup directory");
        }
        let cgroups = CgroupPaths::new(
            dir.clone(),
            CgroupPathsConfig {
                capacity: containers * 2 + 1024,
                ..CgroupPathsConfig::default()
            },
        );
        cgroups.refresh().expect("walking the container tree");
        let (cache, queue) = ContainerCache::new(
            CacheConfig {
                capacity: containers,
                ..CacheConfig::default()
            },
            16,
            Arc::default(),
        );
        for i in 0..containers {
            let id = container_id(i);
            let image = format!(
                "registry.example.com/team-{:03}/shop:1.27.{}",
                (i / 2) % 200,
                i % 10
            );
            let meta = ContainerMeta::from_record(&id, &record_labels(i), &image, None, None, None);
            cache.insert(Arc::new(meta));
        }
        (cgroups, cache, queue)
    });
    drop(tree);

    let names_cache = part("names", names, || {
        let mut cache = NamesCache::new(names);
        for i in 0..names {
            let container = container_id(i % containers.max(1));
            let scope = Scope::of(Some(&container), 0);
            let message = name_answer(i as u32);
            cache.learn(scope, &message, 0);
        }
        cache
    });

    let owners = part("flows", flows, || {
        let mut owners = FlowOwners::default();
        for i in 0..flows as u64 {
            owners.observe(&EgressAttempt {
                hook: Hook::Connect4,
                mono_ns: i,
                wall_ns: i,
                tgid: 1000 + (i % 5000) as u32,
                tid: 1000 + (i % 5000) as u32,
                uid: 1000,
                gid: 1000,
                comm: Comm::from_raw(*b"shop-server\0\0\0\0\0"),
                exec_id: i % 5000,
                ppid: 1,
                cgroup_id: i % 10_000,
                netns_cookie: 3,
                socket_cookie: i + 1,
                l4proto: L4Proto::Tcp,
                ip_protocol: 6,
                daddr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i as u32 % 60_000))),
                dport: 443,
                v4_mapped: false,
                blocked: None,
                socket: None,
                flow: None,
            });
        }
        owners
    });

    println!(
        "scale total n=0 heap={} peak=0 rss_kib={} ms=0",
        Counting::live(),
        rss_kib()
    );
    std::hint::black_box((&ruleset, &identity, &names_cache, &owners));
}
