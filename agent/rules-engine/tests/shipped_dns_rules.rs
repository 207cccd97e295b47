//! The bundled DNS rules (rules/dns.yaml), each shown firing and staying
//! quiet on a normal pattern, loaded after egress.yaml as the agent does.
mod common;

use common::*;
use egret_rules::{FieldId, Ruleset, Source, TestEvent, Value, load};

const EGRESS: &str = include_str!("../../../rules/egress.yaml");
const DNS: &str = include_str!("../../../rules/dns.yaml");

fn bundled() -> Ruleset {
    let loaded = load(
        &[
            Source::new("egress.yaml", EGRESS),
            Source::new("dns.yaml", DNS),
        ],
        &all_matches(),
    );
    assert!(loaded.diagnostics.is_empty(), "{:#?}", diagnostics(&loaded));
    loaded.ruleset
}

const TUNNEL: &str = "DNS Tunnelling Suspected";
const IOC_QUERY: &str = "DNS Query for IOC Domain";
const IOC_CONNECT: &str = "Connection to IOC Domain";
const TXT: &str = "DNS TXT or NULL Query Flood";
const NX: &str = "DNS NXDOMAIN Burst";

/// A query from a pod to the cluster's (private) resolver.
fn query(name: &str, parent: &str) -> TestEvent {
    let mut ev = TestEvent::udp_send(ip("10.96.0.10"), 53)
        .in_pod("shop", "web-1", "registry.example/shop/web:2.1")
        .with(FieldId::EvtType, "dns")
        .with(FieldId::DnsDirection, "query")
        .with(FieldId::DnsQuery, name)
        .with(FieldId::DnsQtype, "A")
        .with(FieldId::DnsParent, parent)
        .with(FieldId::DnsResolver, ip("10.96.0.10"));
    let longest = name.split('.').map(str::len).max().unwrap_or(0) as u64;
    ev.set(FieldId::DnsLongestLabel, longest)
        .set(FieldId::DnsNameLen, name.len() as u64)
        .set(FieldId::DnsEntropy, 0u64)
        .set(FieldId::DnsParentSubdomains, 1u64)
        .set(FieldId::DnsNxdomainRate, 0u64)
        .set(FieldId::DnsTxtRate, 0u64);
    ev
}

fn hits(rules: &Ruleset, rule: &str, event: &TestEvent) -> bool {
    matched(rules, event).iter().any(|m| m == rule)
}

#[test]
fn tunnelling_through_a_private_resolver_alerts_and_normal_lookups_do_not() {
    let rules = bundled();
    let data = "aGVsbG8gd29ybGQgdGhpcyBpcyBkYXRh.x7f.t.example";
    let tunnel = query(data, "t.example")
        .with(FieldId::DnsParentSubdomains, 120u64)
        .with(FieldId::DnsEntropy, 480u64);
    assert!(hits(&rules, TUNNEL, &tunnel));
    // The seed rule would never see it: the resolver is RFC 1918.
    assert_eq!(matched(&rules, &tunnel), [TUNNEL]);
    // Few short names under one domain: normal.
    let normal = query("www.shop.example", "shop.example")
        .with(FieldId::DnsParentSubdomains, 5u64)
        .with(FieldId::DnsEntropy, 200u64);
    assert!(matched(&rules, &normal).is_empty());
    // Many subdomains of an allowed parent (reverse lookups).
    let ptr = query("9.0.96.10.in-addr.arpa", "in-addr.arpa")
        .with(FieldId::DnsParentSubdomains, 500u64)
        .with(FieldId::DnsEntropy, 400u64);
    assert!(!hits(&rules, TUNNEL, &ptr));
}

#[test]
fn ioc_domains_by_query_and_by_observed_name() {
    let rules = bundled();
    assert!(hits(
        &rules,
        IOC_QUERY,
        &query("evil.example", "evil.example")
    ));
    assert!(hits(
        &rules,
        IOC_QUERY,
        &query("www.evil.example", "evil.example")
    ));
    assert!(!hits(
        &rules,
        IOC_QUERY,
        &query("good.example", "good.example")
    ));
    let connect = TestEvent::connect(ip("203.0.113.5"), 443).with(FieldId::SipName, "evil.example");
    assert!(hits(&rules, IOC_CONNECT, &connect));
    // Unknown name: <NA>, matches nothing.
    let unknown = TestEvent::connect(ip("203.0.113.5"), 443);
    assert!(!hits(&rules, IOC_CONNECT, &unknown));
    assert!(matches!(
        egret_rules::Event::value(&unknown, FieldId::SipName),
        Value::Missing
    ));
}

#[test]
fn txt_floods_and_nxdomain_bursts() {
    let rules = bundled();
    let txt = query("x.t.example", "t.example")
        .with(FieldId::DnsQtype, "TXT")
        .with(FieldId::DnsTxtRate, 31u64);
    assert!(hits(&rules, TXT, &txt));
    assert!(!hits(
        &rules,
        TXT,
        &txt.clone().with(FieldId::DnsTxtRate, 3u64)
    ));
    let nx = query("qzx.example", "qzx.example")
        .with(FieldId::DnsDirection, "answer")
        .with(FieldId::DnsRcode, "NXDOMAIN")
        .with(FieldId::DnsNxdomainRate, 51u64);
    assert!(hits(&rules, NX, &nx));
    assert!(!hits(
        &rules,
        NX,
        &nx.clone().with(FieldId::DnsNxdomainRate, 2u64)
    ));
}
