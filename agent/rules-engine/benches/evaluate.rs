//! Evaluates the bundled rules over a realistic mix of egress events.
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use egret_rules::{FieldId, Options, RuleMatching, Source, TestEvent, load};

const EGRESS: &str = include_str!("../../../rules/egress.yaml");

/// Deterministic mix: most traffic stays inside the cluster, a fifth goes
/// out, a few percent is DNS, metadata, API server or mining-port traffic;
/// 60% comes from pods, the rest from host processes.
fn events(n: usize) -> Vec<TestEvent> {
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
    (0..n)
        .map(|_| {
            let r = next() % 100;
            let (dest, port, udp) = match r {
                0..=69 => (private[(next() % 5) as usize], 443, false),
                70..=89 => (public[(next() % 5) as usize], 443, false),
                90..=94 => ("10.96.0.10", 53, true),
                _ => {
                    let (d, p) = special[(next() % 5) as usize];
                    (d, p, p == 53)
                }
            };
            let ip: IpAddr = dest.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let event = if udp {
                TestEvent::udp_send(ip, port)
            } else {
                TestEvent::connect(ip, port)
            };
            if next() % 10 < 6 {
                let hostnet = next() % 20 == 0;
                event
                    .in_pod("shop", "web-7f9c", "registry.example/shop/web:2.1")
                    .with(FieldId::ContainerHostNetwork, hostnet)
                    .with_label("app", "web")
            } else {
                event
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events(4096);
    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(events.len() as u64));
    for (name, matching) in [
        ("bundled_first", RuleMatching::First),
        ("bundled_all", RuleMatching::All),
    ] {
        let options = Options {
            rule_matching: matching,
            ..Options::default()
        };
        let loaded = load(&[Source::new("egress.yaml", EGRESS)], &options);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let rules = loaded.ruleset;
        let mut matches = Vec::with_capacity(8);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut hits = 0usize;
                for event in &events {
                    rules.evaluate(black_box(event), &mut matches);
                    hits += matches.len();
                }
                black_box(hits)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
