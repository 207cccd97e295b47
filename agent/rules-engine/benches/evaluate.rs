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

/// Addresses of a synthetic threat-intelligence feed: `n` IPv4 addresses
/// scattered over 1.0.0.0–223.255.255.255 (text in a list, never contacted).
pub fn ioc_addresses(n: u32) -> Vec<std::net::Ipv4Addr> {
    (0..n)
        .map(|i| {
            std::net::Ipv4Addr::from(0x0100_0000 + i.wrapping_mul(2_654_435_761) % 0xdf00_0000)
        })
        .collect()
}

fn ioc_rules(addresses: &[std::net::Ipv4Addr]) -> String {
    let items: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    format!(
        "- list: ioc_ips\n  items: [{}]\n\n- rule: IOC Destination\n  desc: a feed's address\n  \
         condition: evt.type = connect and fd.sip in (ioc_ips)\n  output: ioc (connection=%fd.name)\n  \
         priority: CRITICAL\n",
        items.join(", ")
    )
}

/// `ioc/N`: the one IOC rule over connects of which one in eight goes to a
/// listed address; `ioc/1` is the baseline, so `ioc/N − ioc/1` is what the
/// list's size adds per event. Sizes: `EGRET_BENCH_IOC_SIZES` (comma-separated,
/// default 1,1000,10000,100000,1000000).
fn ioc(c: &mut Criterion) {
    let sizes: Vec<u32> = std::env::var("EGRET_BENCH_IOC_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 1_000, 10_000, 100_000, 1_000_000]);
    let mut group = c.benchmark_group("ioc");
    for n in sizes {
        let addresses = ioc_addresses(n);
        let text = ioc_rules(&addresses);
        let started = std::time::Instant::now();
        let loaded = load(&[Source::new("ioc.yaml", &text)], &Options::default());
        println!(
            "ioc/{n}: load_ms {:.1}",
            started.elapsed().as_secs_f64() * 1e3
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let rules = loaded.ruleset;
        let mut seed = 0x9e37_79b9_u32;
        let events: Vec<TestEvent> = (0..4096u32)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let ip = if i % 8 == 0 {
                    addresses[(seed % n) as usize]
                } else {
                    std::net::Ipv4Addr::from(0x0100_0000 + seed % 0xdf00_0000)
                };
                TestEvent::connect(IpAddr::V4(ip), 443)
            })
            .collect();
        let mut matches = Vec::with_capacity(2);
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(n.to_string(), |b| {
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

criterion_group!(benches, bench, ioc);
criterion_main!(benches);
