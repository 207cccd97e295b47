//! The workload model: who a record belongs to (namespace + stable labels,
//! so a restarted or rescheduled pod shares its workload's profile), what
//! the destination is (a known pod, a Service, the cluster resolver or an
//! address) and how often each was seen.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{AdviseError, records::Observation};

/// Labels that differ between pods of one workload. `--keep-label` and
/// `--drop-label` adjust the list.
pub const UNSTABLE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// Destinations kept per run; past it, observations are counted, not kept.
pub const MAX_DESTINATIONS: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// `fd.l4proto` as the audit log writes it; ICMP and raw have no
    /// NetworkPolicy protocol.
    pub fn from_audit(raw: &str) -> Option<Proto> {
        match raw {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn as_k8s(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    pub fn from_k8s(raw: &str) -> Option<Proto> {
        match raw {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// A port as NetworkPolicy names it: a number, or a Service's named target
/// port (resolved on the destination pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Number(u16),
    Named(String),
}

/// Which labels identify a workload.
#[derive(Clone, Debug)]
pub struct LabelPolicy {
    drop: BTreeSet<String>,
}

impl Default for LabelPolicy {
    fn default() -> Self {
        LabelPolicy {
            drop: UNSTABLE_LABELS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl LabelPolicy {
    pub fn new(extra_drop: &[String], keep: &[String]) -> LabelPolicy {
        let mut policy = LabelPolicy::default();
        policy.drop.extend(extra_drop.iter().cloned());
        for key in keep {
            policy.drop.remove(key);
        }
        policy
    }

    pub fn is_stable(&self, key: &str) -> bool {
        !self.drop.contains(key)
    }

    pub fn stable(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        labels
            .iter()
            .filter(|(k, _)| !self.drop.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Workload identity: namespace and stable labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadKey {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl WorkloadKey {
    /// A DNS-1123 name for the workload's policy: the `app`-like label
    /// values, else a hash of the labels.
    pub fn policy_name(&self) -> String {
        let preferred = [
            "app.kubernetes.io/name",
            "app",
            "k8s-app",
            "name",
            "component",
        ];
        let base = preferred
            .iter()
            .find_map(|k| self.labels.get(*k))
            .map(|v| sanitize_name(v))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "workload".to_owned());
        // The label hash keeps two workloads with the same app label apart.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for (k, v) in &self.labels {
            for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        let mut name = format!("egret-{base}");
        name.truncate(52);
        let name = name.trim_end_matches('-');
        format!("{name}-{:08x}", hash as u32)
    }
}

/// Lower-case alphanumerics and `-`, as object names require.
pub fn sanitize_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// A DNS name fit for `toFQDNs.matchName` (RFC 1123 labels, no wildcard).
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Where traffic went, as a policy can name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Pods in a namespace matching labels (a known pod, or the pods behind
    /// a known Service).
    Pods {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
    /// The cluster resolver: folded into the DNS rule.
    ClusterDns,
    Address(IpAddr),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub peer: Peer,
    pub port: Port,
    pub proto: Proto,
}

/// How often and when a destination was seen, and under which names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub names: BTreeSet<String>,
    /// For Pods peers: the addresses that were contacted.
    pub addresses: BTreeSet<IpAddr>,
}

impl Seen {
    pub fn add(&mut self, count: u64, first_ns: u64, last_ns: u64) {
        if self.count == 0 {
            self.first_ns = first_ns;
            self.last_ns = last_ns;
        } else {
            self.first_ns = self.first_ns.min(first_ns);
            self.last_ns = self.last_ns.max(last_ns);
        }
        self.count = self.count.saturating_add(count);
    }
}

/// The cluster's pods and Services by address, from `--pods`.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pods: HashMap<IpAddr, WorkloadKey>,
    services: HashMap<IpAddr, Service>,
}

#[derive(Clone, Debug)]
struct Service {
    namespace: String,
    selector: BTreeMap<String, String>,
    /// service port → target port (number or name), per protocol.
    ports: HashMap<(u16, Proto), Port>,
}

/// The cluster resolver's pods.
#[derive(Clone, Debug)]
pub struct DnsSelector {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for DnsSelector {
    fn default() -> Self {
        DnsSelector {
            namespace: "kube-system".into(),
            labels: [("k8s-app".to_owned(), "kube-dns".to_owned())].into(),
        }
    }
}

impl DnsSelector {
    fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

impl Inventory {
    /// `kubectl get pods,services -A -o json` (or YAML): a List of Pods and
    /// Services; other kinds are ignored.
    pub fn load(path: &Path, labels: &LabelPolicy) -> Result<Inventory, AdviseError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdviseError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Inventory::parse(&text, labels).map_err(|message| AdviseError::Inventory {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str, labels: &LabelPolicy) -> Result<Inventory, String> {
        let list: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let items = match list.get("items") {
            Some(serde_json::Value::Array(items)) => items.as_slice(),
            _ if list.get("kind").is_some() => std::slice::from_ref(&list),
            _ => return Err("expected a Kubernetes List with `items`".into()),
        };
        let mut inventory = Inventory::default();
        for (i, item) in items.iter().enumerate() {
            let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let namespace = item
                .pointer("/metadata/namespace")
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_owned();
            let string_map =
                |v: Option<&serde_json::Value>| -> Result<BTreeMap<String, String>, String> {
                    match v {
                        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
                        Some(v) => serde_json::from_value(v.clone())
                            .map_err(|e| format!("items[{i}]: labels: {e}")),
                    }
                };
            match kind {
                "Pod" => {
                    // Host-network pods share the node's address.
                    if item.pointer("/spec/hostNetwork") == Some(&serde_json::Value::Bool(true)) {
                        continue;
                    }
                    let key = WorkloadKey {
                        namespace,
                        labels: labels.stable(&string_map(item.pointer("/metadata/labels"))?),
                    };
                    for ip in addresses(item, "/status/podIP", "/status/podIPs", "ip") {
                        inventory.pods.insert(ip, key.clone());
                    }
                }
                "Service" => {
                    let selector = string_map(item.pointer("/spec/selector"))?;
                    if selector.is_empty() {
                        continue;
                    }
                    let mut ports = HashMap::new();
                    for p in item
                        .pointer("/spec/ports")
                        .and_then(|p| p.as_array())
                        .into_iter()
                        .flatten()
                    {
                        let Some(port) = p.get("port").and_then(|p| p.as_u64()) else {
                            continue;
                        };
                        let Ok(port) = u16::try_from(port) else {
                            continue;
                        };
                        let proto = p
                            .get("protocol")
                            .and_then(|p| p.as_str())
                            .map_or(Some(Proto::Tcp), Proto::from_k8s);
                        let Some(proto) = proto else { continue };
                        let target = match p.get("targetPort") {
                            Some(serde_json::Value::Number(n)) => n
                                .as_u64()
                                .and_then(|n| u16::try_from(n).ok())
                                .map_or(Port::Number(port), Port::Number),
                            Some(serde_json::Value::String(s)) => match s.parse::<u16>() {
                                Ok(n) => Port::Number(n),
                                Err(_) => Port::Named(s.clone()),
                            },
                            _ => Port::Number(port),
                        };
                        ports.insert((port, proto), target);
                    }
                    let service = Service {
                        namespace,
                        selector,
                        ports,
                    };
                    for ip in addresses(item, "/spec/clusterIP", "/spec/clusterIPs", "") {
                        inventory.services.insert(ip, service.clone());
                    }
                }
                _ => {}
            }
        }
        Ok(inventory)
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.services.is_empty()
    }

    /// What a policy should name for traffic to `ip:port/proto`.
    pub fn classify(&self, dns: &DnsSelector, ip: IpAddr, port: u16, proto: Proto) -> (Peer, Port) {
        // NetworkPolicy sees Service traffic after DNAT: the selected pods
        // and the target port, not the ClusterIP.
        let (namespace, labels, port) = if let Some(svc) = self.services.get(&ip) {
            let target = svc
                .ports
                .get(&(port, proto))
                .cloned()
                .unwrap_or(Port::Number(port));
            (&svc.namespace, &svc.selector, target)
        } else if let Some(pod) = self.pods.get(&ip) {
            (&pod.namespace, &pod.labels, Port::Number(port))
        } else {
            return (Peer::Address(ip), Port::Number(port));
        };
        if port == Port::Number(53) && dns.matches(namespace, labels) {
            return (Peer::ClusterDns, port);
        }
        (
            Peer::Pods {
                namespace: namespace.clone(),
                labels: labels.clone(),
            },
            port,
        )
    }
}

fn addresses(item: &serde_json::Value, single: &str, list: &str, field: &str) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let mut add = |v: Option<&serde_json::Value>| {
        if let Some(ip) = v.and_then(|v| v.as_str()).and_then(|s| s.parse().ok()) {
            out.insert(ip);
        }
    };
    add(item.pointer(single));
    for entry in item
        .pointer(list)
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
    {
        add(if field.is_empty() {
            Some(entry)
        } else {
            entry.get(field)
        });
    }
    out
}

/// Attempts to one destination and when.
#[derive(Clone, Copy, Debug)]
pub struct Tally {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Every workload's destinations.
#[derive(Debug, Default)]
pub struct Profiles {
    pub workloads: BTreeMap<WorkloadKey, BTreeMap<Destination, Seen>>,
    destinations: usize,
    /// Observations of new destinations past [`MAX_DESTINATIONS`].
    pub dropped: u64,
}

impl Profiles {
    pub fn add(
        &mut self,
        key: WorkloadKey,
        dest: Destination,
        ip: IpAddr,
        name: Option<&str>,
        tally: Tally,
    ) {
        let full = self.destinations >= MAX_DESTINATIONS;
        let dests = self.workloads.entry(key).or_default();
        let seen = match dests.get_mut(&dest) {
            Some(seen) => seen,
            None if full => {
                self.dropped += tally.count;
                return;
            }
            None => {
                self.destinations += 1;
                dests.entry(dest).or_default()
            }
        };
        seen.add(tally.count, tally.first_ns, tally.last_ns);
        if let Some(name) = name
            && seen.names.len() < 64
        {
            seen.names
                .insert(name.trim_end_matches('.').to_ascii_lowercase());
        }
        if seen.addresses.len() < 256 {
            seen.addresses.insert(ip);
        }
    }

    pub fn observe(
        &mut self,
        obs: Observation,
        labels: &LabelPolicy,
        inventory: &Inventory,
        dns: &DnsSelector,
    ) {
        let key = WorkloadKey {
            labels: labels.stable(&obs.labels),
            namespace: obs.namespace,
        };
        let (peer, port) = inventory.classify(dns, obs.ip, obs.port, obs.proto);
        let dest = Destination {
            peer,
            port,
            proto: obs.proto,
        };
        self.add(
            key,
            dest,
            obs.ip,
            obs.name.as_deref(),
            Tally {
                count: 1,
                first_ns: obs.time_ns,
                last_ns: obs.time_ns,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn stable_labels_drop_per_pod_ones() {
        let policy = LabelPolicy::new(&["team".into()], &["controller-revision-hash".into()]);
        let stable = policy.stable(&labels(&[
            ("app", "web"),
            ("pod-template-hash", "5d8f"),
            ("statefulset.kubernetes.io/pod-name", "web-0"),
            ("controller-revision-hash", "web-7c"),
            ("team", "a"),
        ]));
        assert_eq!(
            stable,
            labels(&[("app", "web"), ("controller-revision-hash", "web-7c")])
        );
    }

    #[test]
    fn policy_names_are_dns_labels_and_distinct() {
        let a = WorkloadKey {
            namespace: "x".into(),
            labels: labels(&[("app", "Web_Front.End"), ("tier", "a")]),
        };
        let mut b = a.clone();
        b.labels.insert("tier".into(), "b".into());
        let name = a.policy_name();
        assert!(name.starts_with("egret-web-front-end-"), "{name}");
        assert!(name.len() <= 63);
        assert_ne!(name, b.policy_name());
        let long = WorkloadKey {
            namespace: "x".into(),
            labels: labels(&[("app", &"a".repeat(200))]),
        };
        assert!(long.policy_name().len() <= 63);
    }

    #[test]
    fn inventory_maps_pods_services_and_dns() {
        let text = r#"{"kind":"List","items":[
          {"kind":"Pod","metadata":{"namespace":"db","labels":{"app":"pg","pod-template-hash":"1"}},
           "status":{"podIP":"10.1.0.5","podIPs":[{"ip":"10.1.0.5"},{"ip":"fd00::5"}]}},
          {"kind":"Pod","metadata":{"namespace":"kube-system","labels":{"k8s-app":"kube-dns"}},
           "status":{"podIP":"10.1.0.10"}},
          {"kind":"Service","metadata":{"namespace":"db","name":"pg"},
           "spec":{"clusterIP":"10.96.0.7","selector":{"app":"pg"},
                   "ports":[{"port":80,"targetPort":"http","protocol":"TCP"},{"port":5432}]}},
          {"kind":"Service","metadata":{"namespace":"kube-system"},
           "spec":{"clusterIP":"10.96.0.10","selector":{"k8s-app":"kube-dns"},
                   "ports":[{"port":53,"protocol":"UDP","targetPort":53}]}}]}"#;
        let inv = Inventory::parse(text, &LabelPolicy::default()).unwrap();
        let dns = DnsSelector::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let pg = Peer::Pods {
            namespace: "db".into(),
            labels: labels(&[("app", "pg")]),
        };
        assert_eq!(
            inv.classify(&dns, ip("fd00::5"), 5432, Proto::Tcp),
            (pg.clone(), Port::Number(5432))
        );
        assert_eq!(
            inv.classify(&dns, ip("10.96.0.7"), 80, Proto::Tcp),
            (pg.clone(), Port::Named("http".into()))
        );
        assert_eq!(
            inv.classify(&dns, ip("10.96.0.7"), 5432, Proto::Tcp),
            (pg, Port::Number(5432))
        );
        assert_eq!(
            inv.classify(&dns, ip("10.96.0.10"), 53, Proto::Udp).0,
            Peer::ClusterDns
        );
        assert_eq!(
            inv.classify(&dns, ip("10.1.0.10"), 53, Proto::Tcp).0,
            Peer::ClusterDns
        );
        assert_eq!(
            inv.classify(&dns, ip("198.51.100.1"), 53, Proto::Udp).0,
            Peer::Address(ip("198.51.100.1"))
        );
        assert!(Inventory::parse("[1,2]", &LabelPolicy::default()).is_err());
        assert!(
            Inventory::parse(
                "{\"items\":[{\"kind\":\"Pod\",\"metadata\":{\"labels\":[1]}}]}",
                &LabelPolicy::default()
            )
            .is_err()
        );
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("api.example.com."));
        assert!(!is_dns_name("*.example.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
    }
}
