//! Test-only NetworkPolicy egress evaluator (the Kubernetes semantics, not
//! the advisor's): a pod is isolated for egress once any policy of its
//! namespace selects it with `Egress` in its policy types; then a
//! connection is allowed when some rule of some selecting policy matches
//! both the peer (ipBlock with except, pod and namespace selectors with
//! matchLabels and matchExpressions) and the port (protocol, number or
//! name, endPort). Unisolated pods may go anywhere.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde_json::Value;

pub struct Pod<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Named container ports: name → (protocol, number).
    pub ports: &'a BTreeMap<String, (String, u16)>,
}

pub struct Flow<'a> {
    pub ip: IpAddr,
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`.
    pub proto: &'a str,
    /// The destination when it is a pod.
    pub pod: Option<Pod<'a>>,
}

/// Namespace labels as the API server sets them (`kubernetes.io/metadata.name`).
fn namespace_labels(ns: &str) -> BTreeMap<String, String> {
    [("kubernetes.io/metadata.name".to_owned(), ns.to_owned())].into()
}

fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let Some(obj) = selector.as_object() else {
        return false;
    };
    for (k, v) in obj
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if labels.get(k).map(String::as_str) != v.as_str() {
            return false;
        }
    }
    for expr in obj
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expr["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let have = labels.get(key).map(String::as_str);
        let ok = match expr["operator"].as_str() {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn peer_matches(peer: &Value, policy_ns: &str, flow: &Flow<'_>) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        let cidr: IpNet = block["cidr"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .expect("ipBlock.cidr");
        let excepted = block["except"].as_array().into_iter().flatten().any(|e| {
            e.as_str()
                .and_then(|c| c.parse::<IpNet>().ok())
                .expect("except CIDR")
                .contains(&flow.ip)
        });
        return cidr.contains(&flow.ip) && !excepted;
    }
    let Some(pod) = &flow.pod else { return false };
    let ns_ok = match peer.get("namespaceSelector") {
        Some(sel) => selects(sel, &namespace_labels(pod.namespace)),
        None => pod.namespace == policy_ns,
    };
    let pod_ok = peer
        .get("podSelector")
        .is_none_or(|sel| selects(sel, pod.labels));
    ns_ok && pod_ok
}

fn port_matches(entry: &Value, flow: &Flow<'_>) -> bool {
    let proto = entry["protocol"].as_str().unwrap_or("TCP");
    if proto != flow.proto {
        return false;
    }
    match &entry["port"] {
        Value::Null => true,
        Value::Number(n) => {
            let start = n.as_u64().expect("port number");
            let end = entry["endPort"].as_u64().unwrap_or(start);
            (start..=end).contains(&u64::from(flow.port))
        }
        Value::String(name) => flow.pod.as_ref().is_some_and(|p| {
            p.ports
                .get(name)
                .is_some_and(|(pr, n)| pr == flow.proto && *n == flow.port)
        }),
        other => panic!("bad port {other}"),
    }
}

fn rule_allows(rule: &Value, policy_ns: &str, flow: &Flow<'_>) -> bool {
    let peers = rule["to"].as_array().map(Vec::as_slice).unwrap_or_default();
    let ports = rule["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    (peers.is_empty() || peers.iter().any(|p| peer_matches(p, policy_ns, flow)))
        && (ports.is_empty() || ports.iter().any(|p| port_matches(p, flow)))
}

/// Whether `policies` let `source` open `flow`.
pub fn allows(policies: &[Value], source: &Pod<'_>, flow: &Flow<'_>) -> bool {
    let mut isolated = false;
    for policy in policies {
        if policy["kind"] != "NetworkPolicy" {
            continue;
        }
        let ns = policy["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let spec = &policy["spec"];
        if ns != source.namespace || !selects(&spec["podSelector"], source.labels) {
            continue;
        }
        let egress_type = match spec["policyTypes"].as_array() {
            Some(types) => types.iter().any(|t| t == "Egress"),
            None => spec.get("egress").is_some(),
        };
        if !egress_type {
            continue;
        }
        isolated = true;
        if spec["egress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| rule_allows(r, ns, flow))
        {
            return true;
        }
    }
    !isolated
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
    fn evaluator_follows_networkpolicy_semantics() {
        let policies: Vec<Value> = serde_yaml_ng::Deserializer::from_str(
            "kind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Egress]}\n\
             ---\nkind: NetworkPolicy\nmetadata: {name: web, namespace: a}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}\n  policyTypes: [Egress]\n  egress:\n\
             \x20 - to: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]\n    ports: [{port: 8000, endPort: 8010}]\n\
             \x20 - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}, podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: pg}]\n\
             \x20 - to: [{podSelector: {}}]\n    ports: [{protocol: UDP}]\n",
        )
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
        let none = BTreeMap::new();
        let web = labels(&[("app", "web")]);
        let other = labels(&[("app", "other")]);
        let src = Pod {
            namespace: "a",
            labels: &web,
            ports: &none,
        };
        let ext = |ip: &str, port, proto| Flow {
            ip: ip.parse().unwrap(),
            port,
            proto,
            pod: None,
        };
        assert!(allows(&policies, &src, &ext("198.51.100.7", 8005, "TCP")));
        assert!(!allows(&policies, &src, &ext("198.51.100.7", 8011, "TCP")));
        assert!(
            !allows(&policies, &src, &ext("198.51.100.200", 8005, "TCP")),
            "except"
        );
        assert!(
            !allows(&policies, &src, &ext("198.51.100.7", 8005, "UDP")),
            "protocol"
        );
        let db = labels(&[("app", "db")]);
        let pg: BTreeMap<String, (String, u16)> =
            [("pg".to_owned(), ("TCP".to_owned(), 5432))].into();
        let to_db = |ns, port| Flow {
            ip: "203.0.113.5".parse().unwrap(),
            port,
            proto: "TCP",
            pod: Some(Pod {
                namespace: ns,
                labels: &db,
                ports: &pg,
            }),
        };
        assert!(allows(&policies, &src, &to_db("b", 5432)));
        assert!(!allows(&policies, &src, &to_db("b", 5433)), "named port");
        assert!(
            !allows(&policies, &src, &to_db("c", 5432)),
            "namespace selector"
        );
        let udp_in_a = Flow {
            proto: "UDP",
            port: 9,
            ..to_db("a", 9)
        };
        assert!(
            allows(&policies, &src, &udp_in_a),
            "podSelector alone: own namespace"
        );
        // Default-deny isolates every pod; an unselected namespace is open.
        let other_src = Pod {
            namespace: "a",
            labels: &other,
            ports: &none,
        };
        assert!(!allows(
            &policies,
            &other_src,
            &ext("198.51.100.7", 8005, "TCP")
        ));
        let open = Pod {
            namespace: "z",
            labels: &other,
            ports: &none,
        };
        assert!(allows(&policies, &open, &ext("2001:db8::1", 1, "SCTP")));
    }
}
