//! The bundled rules in rules/egress.yaml, each shown firing and staying
//! quiet on allowed traffic.
mod common;

use common::*;
use egret_rules::{FieldId, Options, Priority, Ruleset, Source, TestEvent, load};

const EGRESS: &str = include_str!("../../../rules/egress.yaml");

fn bundled(options: &Options) -> Ruleset {
    let loaded = load(&[Source::new("egress.yaml", EGRESS)], options);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", diagnostics(&loaded));
    loaded.ruleset
}

fn pod(dest: &str, port: u16) -> TestEvent {
    TestEvent::connect(ip(dest), port).in_pod("shop", "web-1", "registry.example/shop/web:2.1")
}

fn pod_udp(dest: &str, port: u16) -> TestEvent {
    TestEvent::udp_send(ip(dest), port).in_pod("shop", "web-1", "registry.example/shop/web:2.1")
}

fn host(dest: &str, port: u16) -> TestEvent {
    TestEvent::connect(ip(dest), port)
}

/// Whether `rule` is among the matches (every rule evaluated).
fn hits(rule: &str, event: &TestEvent) -> bool {
    matched(&bundled(&all_matches()), event)
        .iter()
        .any(|m| m == rule)
}

const SEED: &str = "Outbound Connection in Container";
const IOC: &str = "Outbound Connection to IOC Destination";
const MINING: &str = "Connection to Mining Pool Port";
const METADATA: &str = "Contact Cloud Metadata Service From Container";
const K8S_API: &str = "Contact K8S API Server From Container";
const DNS: &str = "DNS Query to External Resolver";
const HOST_NET: &str = "Egress From Host-Network Container";
const BASELINE: &str = "Workload Contacted Destination Outside Its Baseline";
const FILELESS: &str = "Egress From Fileless Process";
const DROPPED: &str = "Egress From Binary Dropped Into Container";
const DELETED: &str = "Egress From Deleted Executable in Container";

#[test]
fn bundled_rules_load_cleanly() {
    let rules = bundled(&Options::default());
    let names: Vec<&str> = rules.rules().iter().map(|r| &**r.name()).collect();
    assert_eq!(
        names,
        [
            IOC, MINING, FILELESS, DROPPED, DELETED, METADATA, K8S_API, DNS, HOST_NET, BASELINE,
            SEED
        ]
    );
    let seed = rules.rule(rules.find(SEED).unwrap()).unwrap();
    assert_eq!(seed.priority(), Priority::Warning);
    assert_eq!(
        seed.desc(),
        "Detects outbound network connection from container to external IP"
    );
}

#[test]
fn seed_rule() {
    assert!(hits(SEED, &pod("203.0.113.7", 443)));
    assert!(!hits(SEED, &pod("10.0.5.6", 443)));
    assert!(!hits(SEED, &host("203.0.113.7", 443)));
}

#[test]
fn ioc_destinations() {
    assert!(hits(IOC, &host("203.0.113.66", 443)));
    assert!(hits(IOC, &pod_udp("198.51.100.140", 53)));
    assert!(hits(IOC, &pod("2001:db8:bad::1", 80)));
    assert!(hits(IOC, &pod("::ffff:203.0.113.66", 80)));
    assert!(!hits(IOC, &host("203.0.113.67", 443)));
    assert!(!hits(IOC, &pod("198.51.100.1", 443)));
}

#[test]
fn mining_pool_ports() {
    assert!(hits(MINING, &pod("198.51.100.20", 3333)));
    assert!(hits(MINING, &host("198.51.100.20", 14444)));
    assert!(
        !hits(MINING, &pod("10.0.0.20", 3333)),
        "private destination"
    );
    assert!(!hits(MINING, &pod("198.51.100.20", 443)));
    assert!(
        !hits(MINING, &pod_udp("198.51.100.20", 3333)),
        "UDP sends are not pool traffic"
    );
}

#[test]
fn cloud_metadata() {
    assert!(hits(METADATA, &pod("169.254.169.254", 80)));
    assert!(hits(METADATA, &pod("fd00:ec2::254", 80)));
    assert!(
        !hits(METADATA, &host("169.254.169.254", 80)),
        "the node itself may"
    );
    let agent = pod("169.254.169.254", 80).with(
        FieldId::ContainerImageRepository,
        "registry.example/cloud-agent",
    );
    let allow = "- list: metadata_allowed_images\n  items: [registry.example/cloud-agent]\n  override:\n    items: append\n";
    let loaded = load(
        &[
            Source::new("egress.yaml", EGRESS),
            Source::new("local.yaml", allow),
        ],
        &all_matches(),
    );
    assert!(loaded.diagnostics.is_empty(), "{:?}", diagnostics(&loaded));
    assert!(
        !matched(&loaded.ruleset, &agent)
            .iter()
            .any(|m| m == METADATA)
    );
    assert!(hits(METADATA, &agent));
}

#[test]
fn k8s_api_server() {
    assert!(hits(K8S_API, &pod("10.96.0.1", 443)));
    assert!(hits(K8S_API, &pod("203.0.113.10", 6443)));
    assert!(!hits(
        K8S_API,
        &pod("10.96.0.1", 443).with(FieldId::K8sNsName, "kube-system")
    ));
    assert!(!hits(K8S_API, &host("10.96.0.1", 443)));
    assert!(!hits(K8S_API, &pod("10.96.0.2", 443)));
    // Users add their API server addresses from their own file.
    let extra =
        "- list: k8s_api_servers\n  items: [172.20.0.0/16]\n  override:\n    items: append\n";
    let loaded = load(
        &[
            Source::new("egress.yaml", EGRESS),
            Source::new("local.yaml", extra),
        ],
        &all_matches(),
    );
    assert!(
        matched(&loaded.ruleset, &pod("172.20.3.4", 443))
            .iter()
            .any(|m| m == K8S_API)
    );
}

#[test]
fn dns_to_external_resolvers() {
    assert!(hits(DNS, &pod_udp("8.8.8.8", 53)));
    assert!(
        hits(DNS, &pod("1.1.1.1", 53)),
        "DNS over TCP, or UDP after connect()"
    );
    assert!(hits(DNS, &pod_udp("2001:4860:4860::8888", 53)));
    assert!(!hits(DNS, &pod_udp("10.96.0.10", 53)), "cluster DNS");
    assert!(
        !hits(
            DNS,
            &pod_udp("8.8.8.8", 53).with(FieldId::K8sNsName, "kube-system")
        ),
        "CoreDNS forwarding"
    );
    assert!(
        !hits(DNS, &TestEvent::udp_send(ip("8.8.8.8"), 53)),
        "the node's resolver"
    );
    assert!(!hits(DNS, &pod_udp("8.8.8.8", 5353)));
}

#[test]
fn host_network_containers() {
    let hostnet = |dest: &str| pod(dest, 443).with(FieldId::ContainerHostNetwork, true);
    assert!(hits(HOST_NET, &hostnet("198.51.100.9")));
    assert!(!hits(HOST_NET, &hostnet("10.0.0.9")));
    assert!(!hits(HOST_NET, &pod("198.51.100.9", 443)));
    assert!(
        !hits(HOST_NET, &host("198.51.100.9", 443)),
        "the node itself"
    );
    assert!(!hits(
        HOST_NET,
        &hostnet("198.51.100.9").with(FieldId::ContainerHostNetwork, "yes")
    ));
}

#[test]
fn baseline_rule_only_for_destinations_outside_the_baseline() {
    let new = FieldId::NewForWorkload;
    assert!(hits(BASELINE, &pod("198.51.100.9", 443).with(new, true)));
    assert!(hits(BASELINE, &pod_udp("10.1.1.1", 53).with(new, true)));
    assert!(!hits(BASELINE, &pod("198.51.100.9", 443).with(new, false)));
    // Missing: baselines off, or the workload still learning.
    assert!(!hits(BASELINE, &pod("198.51.100.9", 443)));
}

#[test]
fn fileless_dropped_and_deleted_executables() {
    let memfd = FieldId::ProcIsExeFromMemfd;
    assert!(hits(FILELESS, &host("198.51.100.9", 443).with(memfd, true)));
    assert!(hits(
        FILELESS,
        &pod_udp("203.0.113.9", 53).with(memfd, true)
    ));
    assert!(!hits(FILELESS, &pod("10.0.0.9", 443).with(memfd, true)));
    assert!(!hits(
        FILELESS,
        &pod("198.51.100.9", 443).with(memfd, false)
    ));
    // Missing: the kernel could not resolve the executable.
    assert!(!hits(FILELESS, &pod("198.51.100.9", 443)));

    let upper = FieldId::ProcIsExeUpperLayer;
    assert!(hits(DROPPED, &pod("198.51.100.9", 443).with(upper, true)));
    assert!(!hits(DROPPED, &pod("198.51.100.9", 443).with(upper, false)));
    assert!(!hits(DROPPED, &pod("10.0.0.9", 443).with(upper, true)));
    assert!(
        !hits(DROPPED, &host("198.51.100.9", 443).with(upper, true)),
        "the node's own overlay mounts are not container drift"
    );

    let deleted = FieldId::ProcIsExeDeleted;
    assert!(hits(DELETED, &pod("198.51.100.9", 443).with(deleted, true)));
    assert!(!hits(
        DELETED,
        &pod("198.51.100.9", 443).with(deleted, false)
    ));
    assert!(
        !hits(DELETED, &host("198.51.100.9", 443).with(deleted, true)),
        "upgraded daemons on the node"
    );

    // Users allow a known memfd-based agent from their own file.
    let allow = "- macro: user_known_memfd_egress\n  condition: (proc.name = agentd)\n  override:\n    condition: replace\n";
    let loaded = load(
        &[
            Source::new("egress.yaml", EGRESS),
            Source::new("local.yaml", allow),
        ],
        &all_matches(),
    );
    assert!(loaded.diagnostics.is_empty(), "{:?}", diagnostics(&loaded));
    let agentd = host("198.51.100.9", 443)
        .with(memfd, true)
        .with(FieldId::ProcName, "agentd");
    assert!(
        !matched(&loaded.ruleset, &agentd)
            .iter()
            .any(|m| m == FILELESS)
    );
}

#[test]
fn first_match_reports_the_most_specific_rule() {
    let rules = bundled(&Options::default());
    let cases = [
        (pod("203.0.113.66", 443), IOC),
        (pod("198.51.100.20", 3333), MINING),
        (pod("169.254.169.254", 80), METADATA),
        (pod("1.1.1.1", 53), DNS),
        (
            pod("198.51.100.9", 443).with(FieldId::ContainerHostNetwork, true),
            HOST_NET,
        ),
        (
            pod("198.51.100.9", 443).with(FieldId::NewForWorkload, true),
            BASELINE,
        ),
        (pod("198.51.100.9", 443), SEED),
    ];
    for (event, rule) in cases {
        assert_eq!(matched(&rules, &event), [rule]);
    }
    assert!(matched(&rules, &pod("10.1.1.1", 443)).is_empty());
    assert!(matched(&rules, &host("198.51.100.9", 443)).is_empty());
}

#[test]
fn outputs_render() {
    let rules = bundled(&Options::default());
    let event = pod_udp("8.8.8.8", 53);
    let mut ids = Vec::new();
    rules.evaluate(&event, &mut ids);
    let out = rules.rule(ids[0]).unwrap().render(&event);
    assert_eq!(
        out.output,
        "DNS query to an external resolver (resolver=8.8.8.8 proto=udp command=curl https://example.com pid=4242 container_id=0123456789ab image=registry.example/shop/web:2.1 namespace=shop pod=web-1)"
    );
}

#[test]
fn bundled_rules_leave_nothing_to_the_kernel() {
    // The API server rule must see private destinations, so nothing is
    // ignorable with the full set.
    assert!(
        bundled(&Options::default())
            .kernel_ignorable_networks()
            .is_empty()
    );
}

const FLOWS: &str = include_str!("../../../rules/flows.yaml");

/// rules/flows.yaml, loaded after egress.yaml as the agent bundles them.
fn with_flows() -> Ruleset {
    let loaded = load(
        &[
            Source::new("egress.yaml", EGRESS),
            Source::new("flows.yaml", FLOWS),
        ],
        &all_matches(),
    );
    assert!(loaded.diagnostics.is_empty(), "{:#?}", diagnostics(&loaded));
    loaded.ruleset
}

fn flow(dest: &str, bytes_out: u64, prev: u64, duration: u64) -> TestEvent {
    pod(dest, 443)
        .with(FieldId::EvtType, "close")
        .with(FieldId::FlowBytesOut, bytes_out)
        .with(FieldId::FlowPrevBytesOut, prev)
        .with(FieldId::FlowDuration, duration)
        .with(FieldId::FlowPrevDuration, 0u64)
        .with(FieldId::FlowFinal, true)
}

#[test]
fn flow_rules_fire_once_per_flow_and_only_on_close() {
    let rules = with_flows();
    let upload = "Large Upload to External Destination";
    let long = "Long-Lived Connection to Unknown External Address";
    let scan = "Many Short Connections to External Addresses";
    let names = |e: &TestEvent| matched(&rules, e);
    assert!(names(&flow("203.0.113.7", 200_000_000, 0, 1)).contains(&upload.to_string()));
    assert!(
        !names(&flow("203.0.113.7", 200_000_000, 150_000_000, 1)).contains(&upload.to_string())
    );
    assert!(!names(&flow("10.1.2.3", 200_000_000, 0, 1)).contains(&upload.to_string()));
    assert!(!names(&flow("203.0.113.7", 1_000, 0, 1)).contains(&upload.to_string()));
    let hour = 3_600_000_000_000u64;
    let tcp = flow("203.0.113.7", 10, 10, hour + 1).with(FieldId::L4Proto, "tcp");
    assert!(names(&tcp).contains(&long.to_string()));
    let fan = flow("203.0.113.7", 10, 0, 1_000)
        .with(FieldId::FlowProcPeers, 50u64)
        .with(FieldId::FlowDuration, 1_000u64);
    assert!(names(&fan).contains(&scan.to_string()));
    // The connect-time rules do not see close events, and the flow rules
    // do not see connects.
    let close_names = names(&flow("203.0.113.7", 10, 0, 1));
    assert!(close_names.is_empty(), "{close_names:?}");
    assert!(!names(&pod("203.0.113.7", 443)).iter().any(|n| n == upload));
}
