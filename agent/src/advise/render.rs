//! Policies from profiles: a NetworkPolicy (and optionally a
//! CiliumNetworkPolicy) per workload, a default-deny egress policy per
//! namespace, each rule with a comment saying what was seen.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    cidr::{self, Widening},
    model::{Destination, DnsSelector, Peer, Port, Proto, Seen, WorkloadKey},
    yaml::{Item, Node},
};
use crate::timefmt;

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "egret-advisor");
pub const DEFAULT_DENY_NAME: &str = "egret-default-deny-egress";
/// Addresses listed by name in a rule's comment; the rest are counted.
const LISTED: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    NetworkPolicy,
    CiliumNetworkPolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
        }
    }
}

pub struct Document {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub comment: Vec<String>,
    pub node: Node,
}

pub struct RenderOptions {
    pub widening: Widening,
    pub dns: DnsSelector,
    pub dns_rule: bool,
    pub default_deny: bool,
    pub cilium: bool,
}

/// One egress rule before rendering: where, which ports, what was seen.
struct Rule {
    to: To,
    ports: BTreeSet<(Proto, Port)>,
    seen: Seen,
    /// Addresses behind the rule (for the comment).
    addresses: BTreeSet<IpAddr>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Dns,
    Pods {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
    Block(IpNet),
    /// Cilium only: names the workload resolved.
    Names(BTreeSet<String>),
}

fn merge(into: &mut Seen, from: &Seen) {
    into.add(from.count, from.first_ns, from.last_ns);
    into.names.extend(from.names.iter().cloned());
}

/// The workload's rules. `by_name`: destinations with observed names
/// become name rules (Cilium); otherwise every address is an ipBlock.
fn rules(dests: &BTreeMap<Destination, Seen>, opts: &RenderOptions, by_name: bool) -> Vec<Rule> {
    let mut out: BTreeMap<To, Rule> = BTreeMap::new();
    let mut rule = |to: To, port: (Proto, Port), seen: &Seen, addrs: &BTreeSet<IpAddr>| {
        let r = out.entry(to.clone()).or_insert_with(|| Rule {
            to,
            ports: BTreeSet::new(),
            seen: Seen::default(),
            addresses: BTreeSet::new(),
        });
        r.ports.insert(port);
        merge(&mut r.seen, seen);
        r.addresses.extend(addrs.iter().copied());
    };
    if opts.dns_rule {
        let none = Seen::default();
        for proto in [Proto::Udp, Proto::Tcp] {
            rule(To::Dns, (proto, Port::Number(53)), &none, &BTreeSet::new());
        }
    }
    // Addresses per port, aggregated per port so widening never lends one
    // destination's port to another.
    let mut by_port: BTreeMap<(Proto, Port), BTreeMap<IpAddr, Seen>> = BTreeMap::new();
    for (dest, seen) in dests {
        let port = (dest.proto, dest.port.clone());
        match &dest.peer {
            Peer::ClusterDns => rule(To::Dns, port, seen, &seen.addresses),
            Peer::Pods { namespace, labels } => rule(
                To::Pods {
                    namespace: namespace.clone(),
                    labels: labels.clone(),
                },
                port,
                seen,
                &seen.addresses,
            ),
            Peer::Address(ip) if by_name && !seen.names.is_empty() => {
                rule(To::Names(seen.names.clone()), port, seen, &seen.addresses)
            }
            Peer::Address(ip) => merge(
                by_port.entry(port).or_default().entry(*ip).or_default(),
                seen,
            ),
        }
    }
    for (port, addrs) in by_port {
        for net in cidr::aggregate(addrs.keys().copied(), opts.widening) {
            let mut seen = Seen::default();
            let mut covered = BTreeSet::new();
            for (ip, s) in addrs.iter().filter(|(ip, _)| net.contains(*ip)) {
                merge(&mut seen, s);
                covered.insert(*ip);
            }
            rule(To::Block(net), port.clone(), &seen, &covered);
        }
    }
    out.into_values().collect()
}

fn when(ns: u64) -> String {
    // Seconds are precise enough for a reader.
    let full = timefmt::rfc3339_nanos(ns);
    format!("{}Z", full.get(..19).unwrap_or(&full))
}

fn ports_text(ports: &BTreeSet<(Proto, Port)>) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|(proto, port)| match port {
            Port::Number(n) => format!("{}/{n}", proto.as_k8s()),
            Port::Named(n) => format!("{}/{n}", proto.as_k8s()),
        })
        .collect();
    list.join(", ")
}

fn comment(rule: &Rule, dns: &DnsSelector) -> String {
    let what = match &rule.to {
        To::Dns => format!(
            "DNS to the cluster resolver ({} pods {})",
            dns.namespace,
            label_text(&dns.labels)
        ),
        To::Pods { namespace, labels } => format!("pods {} in {namespace}", label_text(labels)),
        To::Block(net) => {
            let listed: Vec<String> = rule
                .addresses
                .iter()
                .take(LISTED)
                .map(ToString::to_string)
                .collect();
            let more = rule.addresses.len().saturating_sub(LISTED);
            let mut text = if rule.addresses.len() == 1 && net.prefix_len() == net.max_prefix_len()
            {
                net.addr().to_string()
            } else {
                format!(
                    "{net} (seen: {}{})",
                    listed.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            };
            if !rule.seen.names.is_empty() {
                let names: Vec<&str> = rule
                    .seen
                    .names
                    .iter()
                    .take(LISTED)
                    .map(String::as_str)
                    .collect();
                text.push_str(&format!(" as {}", names.join(", ")));
            }
            text
        }
        To::Names(names) => names.iter().cloned().collect::<Vec<_>>().join(", "),
    };
    if rule.seen.count == 0 {
        return format!(
            "{what} {}: not seen (always allowed so names resolve)",
            ports_text(&rule.ports)
        );
    }
    format!(
        "{what} {}: {} attempt{}, first {}, last {}",
        ports_text(&rule.ports),
        rule.seen.count,
        if rule.seen.count == 1 { "" } else { "s" },
        when(rule.seen.first_ns),
        when(rule.seen.last_ns),
    )
}

fn label_text(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

fn metadata(name: &str, namespace: &str) -> Node {
    Node::map([
        ("name", Node::str(name)),
        ("namespace", Node::str(namespace)),
        (
            "labels",
            Node::map([(MANAGED_BY.0, Node::str(MANAGED_BY.1))]),
        ),
    ])
}

fn match_labels(labels: &BTreeMap<String, String>) -> Node {
    Node::map([("matchLabels", Node::labels(labels))])
}

fn k8s_port(proto: Proto, port: &Port) -> Node {
    Node::map([
        ("protocol", Node::str(proto.as_k8s())),
        (
            "port",
            match port {
                Port::Number(n) => Node::Int(i64::from(*n)),
                Port::Named(n) => Node::str(n),
            },
        ),
    ])
}

fn workload_comment(key: &WorkloadKey, dests: &BTreeMap<Destination, Seen>) -> Vec<String> {
    let count: u64 = dests.values().map(|s| s.count).sum();
    let first = dests.values().map(|s| s.first_ns).min().unwrap_or(0);
    let last = dests.values().map(|s| s.last_ns).max().unwrap_or(0);
    vec![
        format!(
            "Egress of the pods {} in namespace {}, written by `egret advise networkpolicy`.",
            label_text(&key.labels),
            key.namespace
        ),
        format!(
            "{} destination{} in {count} attempts from {} to {}; review before applying.",
            dests.len(),
            if dests.len() == 1 { "" } else { "s" },
            when(first),
            when(last)
        ),
    ]
}

pub fn network_policy(
    key: &WorkloadKey,
    dests: &BTreeMap<Destination, Seen>,
    opts: &RenderOptions,
) -> Document {
    let name = key.policy_name();
    let egress: Vec<Item> = rules(dests, opts, false)
        .into_iter()
        .map(|rule| {
            let peer = match &rule.to {
                To::Dns => Node::map([
                    (
                        "namespaceSelector",
                        match_labels(&namespace_labels(&opts.dns.namespace)),
                    ),
                    ("podSelector", match_labels(&opts.dns.labels)),
                ]),
                To::Pods { namespace, labels } => Node::map([
                    (
                        "namespaceSelector",
                        match_labels(&namespace_labels(namespace)),
                    ),
                    ("podSelector", match_labels(labels)),
                ]),
                To::Block(net) => {
                    Node::map([("ipBlock", Node::map([("cidr", Node::str(net.to_string()))]))])
                }
                To::Names(_) => Node::map::<String>([]),
            };
            let ports = Node::seq(
                rule.ports
                    .iter()
                    .map(|(proto, port)| k8s_port(*proto, port)),
            );
            Item {
                comment: vec![comment(&rule, &opts.dns)],
                node: Node::map([("to", Node::seq([peer])), ("ports", ports)]),
            }
        })
        .collect();
    let node = Node::map([
        ("apiVersion", Node::str("networking.k8s.io/v1")),
        ("kind", Node::str("NetworkPolicy")),
        ("metadata", metadata(&name, &key.namespace)),
        (
            "spec",
            Node::map([
                ("podSelector", match_labels(&key.labels)),
                ("policyTypes", Node::seq([Node::str("Egress")])),
                ("egress", Node::Seq(egress)),
            ]),
        ),
    ]);
    Document {
        kind: Kind::NetworkPolicy,
        namespace: key.namespace.clone(),
        name,
        comment: workload_comment(key, dests),
        node,
    }
}

fn namespace_labels(namespace: &str) -> BTreeMap<String, String> {
    [(
        "kubernetes.io/metadata.name".to_owned(),
        namespace.to_owned(),
    )]
    .into()
}

/// Cilium's endpoint labels: pod labels plus the namespace pseudo-label.
fn cilium_endpoint(namespace: &str, labels: &BTreeMap<String, String>) -> Node {
    let mut all = labels.clone();
    all.insert("k8s:io.kubernetes.pod.namespace".into(), namespace.into());
    match_labels(&all)
}

fn cilium_ports(ports: &BTreeSet<(Proto, Port)>) -> Node {
    let list = ports.iter().map(|(proto, port)| {
        Node::map([
            (
                "port",
                Node::str(match port {
                    Port::Number(n) => n.to_string(),
                    Port::Named(n) => n.clone(),
                }),
            ),
            ("protocol", Node::str(proto.as_k8s())),
        ])
    });
    Node::map([("ports", Node::seq(list))])
}

pub fn cilium_policy(
    key: &WorkloadKey,
    dests: &BTreeMap<Destination, Seen>,
    opts: &RenderOptions,
) -> Document {
    let name = key.policy_name();
    let egress: Vec<Item> = rules(dests, opts, true)
        .into_iter()
        .map(|rule| {
            let mut to_ports = cilium_ports(&rule.ports);
            let peer = match &rule.to {
                To::Dns => {
                    // toFQDNs only works when Cilium's DNS proxy sees the
                    // lookups: the DNS rule turns it on.
                    if let Node::Map(entries) = &mut to_ports {
                        entries.push((
                            "rules".into(),
                            Node::map([(
                                "dns",
                                Node::seq([Node::map([("matchPattern", Node::str("*"))])]),
                            )]),
                        ));
                    }
                    (
                        "toEndpoints",
                        Node::seq([cilium_endpoint(&opts.dns.namespace, &opts.dns.labels)]),
                    )
                }
                To::Pods { namespace, labels } => (
                    "toEndpoints",
                    Node::seq([cilium_endpoint(namespace, labels)]),
                ),
                To::Block(net) => ("toCIDR", Node::seq([Node::str(net.to_string())])),
                To::Names(names) => (
                    "toFQDNs",
                    Node::seq(
                        names
                            .iter()
                            .map(|n| Node::map([("matchName", Node::str(n))])),
                    ),
                ),
            };
            Item {
                comment: vec![comment(&rule, &opts.dns)],
                node: Node::map([peer, ("toPorts", Node::seq([to_ports]))]),
            }
        })
        .collect();
    let node = Node::map([
        ("apiVersion", Node::str("cilium.io/v2")),
        ("kind", Node::str("CiliumNetworkPolicy")),
        ("metadata", metadata(&name, &key.namespace)),
        (
            "spec",
            Node::map([
                ("endpointSelector", match_labels(&key.labels)),
                ("egress", Node::Seq(egress)),
            ]),
        ),
    ]);
    Document {
        kind: Kind::CiliumNetworkPolicy,
        namespace: key.namespace.clone(),
        name,
        comment: workload_comment(key, dests),
        node,
    }
}

pub fn default_deny(namespace: &str) -> Document {
    let node = Node::map([
        ("apiVersion", Node::str("networking.k8s.io/v1")),
        ("kind", Node::str("NetworkPolicy")),
        ("metadata", metadata(DEFAULT_DENY_NAME, namespace)),
        (
            "spec",
            Node::map([
                ("podSelector", Node::map::<String>([])),
                ("policyTypes", Node::seq([Node::str("Egress")])),
            ]),
        ),
    ]);
    Document {
        kind: Kind::NetworkPolicy,
        namespace: namespace.to_owned(),
        name: DEFAULT_DENY_NAME.into(),
        comment: vec![
            format!(
                "Default-deny egress for every pod in namespace {namespace}: only what another"
            ),
            "policy allows leaves. Pods the advisor never saw are cut off too.".into(),
        ],
        node,
    }
}
