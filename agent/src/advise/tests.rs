//! The advisor end to end without a kernel: audit lines on disk → advise →
//! YAML, which must validate (kubernetes-validate, Cilium structure) and,
//! replayed through the test evaluator, allow every observed flow and deny
//! held-out ones.
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, process::Command};

use serde_json::{Value, json};

use super::{
    cidr::Widening,
    evaluator::{Flow, Pod, allows},
    model::{DnsSelector, LabelPolicy},
    *,
};

/// The Kubernetes versions whose strict schemas the manifests must pass
/// (NetworkPolicy `endPort` and `kubernetes.io/metadata.name` are GA in all).
pub const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.33.0", "1.35.0", "1.37.0"];

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn temp(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("egret-advise-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

fn record(
    t: u64,
    ns: &str,
    labels: Value,
    ip: &str,
    port: u16,
    proto: &str,
    name: Option<&str>,
) -> String {
    let mut r = json!({
        "evt.time": t, "fd.sip": ip, "fd.sport": port, "fd.l4proto": proto,
        "k8s.ns.name": ns, "k8s.pod.labels": labels, "container.host_network": false,
        "proc.name": "curl",
    });
    if let Some(name) = name {
        r["fd.sip.name"] = name.into();
    }
    r.to_string()
}

const T0: u64 = 1_795_328_442_000_000_000;

/// Two nodes' logs: web (two restarts of one Deployment) talks to an API
/// over IPv4 and IPv6, a database Service and the cluster resolver; a job
/// without stable labels; a host process.
fn fixture(dir: &std::path::Path) -> Vec<(String, u16, &'static str)> {
    let web_a = json!({"app": "web", "pod-template-hash": "5d8f"});
    let web_b = json!({"app": "web", "pod-template-hash": "77aa"});
    let flows = [
        ("198.51.100.7", 443, "tcp", Some("api.example.com")),
        ("198.51.100.9", 443, "tcp", Some("api.example.com")),
        ("203.0.113.50", 8125, "udp", None),
        ("2001:db8::10", 443, "tcp", None),
        ("2001:db8::11", 443, "tcp", None),
        ("2001:db8:1::5", 9000, "sctp", None),
        ("10.96.0.7", 80, "tcp", None),
        ("10.96.0.10", 53, "udp", None),
        ("10.1.0.5", 5432, "tcp", None),
    ];
    let node = |n: usize| dir.join(format!("node-{n}"));
    for n in 0..2 {
        std::fs::create_dir_all(node(n)).unwrap();
    }
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (i, (ip, port, proto, name)) in flows.iter().enumerate() {
        let t = T0 + i as u64 * 1_000_000_000;
        a.push(record(t, "shop", web_a.clone(), ip, *port, proto, *name));
        b.push(record(
            t + 60_000_000_000,
            "shop",
            web_b.clone(),
            ip,
            *port,
            proto,
            *name,
        ));
    }
    a.push("{\"truncated".into());
    a.push(record(
        T0,
        "batch",
        json!({"controller-uid": "x"}),
        "198.51.100.1",
        80,
        "tcp",
        None,
    ));
    b.push(r#"{"evt.time":1,"fd.sip":"198.51.100.1","fd.sport":80,"fd.l4proto":"tcp","k8s.ns.name":null}"#.into());
    std::fs::write(node(0).join("audit.jsonl"), a.join("\n") + "\n").unwrap();
    std::fs::write(node(1).join("audit.jsonl.1"), b.join("\n")).unwrap();
    std::fs::write(
        dir.join("pods.json"),
        json!({"kind": "List", "items": [
            {"kind": "Pod", "metadata": {"namespace": "db", "labels": {"app": "pg", "pod-template-hash": "1"}},
             "status": {"podIP": "10.1.0.5"}},
            {"kind": "Pod", "metadata": {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
             "status": {"podIP": "10.1.0.10"}},
            {"kind": "Service", "metadata": {"namespace": "db", "name": "pg-http"},
             "spec": {"clusterIP": "10.96.0.7", "selector": {"app": "pg"},
                      "ports": [{"port": 80, "targetPort": "http"}]}},
            {"kind": "Service", "metadata": {"namespace": "kube-system", "name": "kube-dns"},
             "spec": {"clusterIP": "10.96.0.10", "selector": {"k8s-app": "kube-dns"},
                      "ports": [{"port": 53, "protocol": "UDP"}]}}
        ]})
        .to_string(),
    )
    .unwrap();
    flows
        .iter()
        .map(|(ip, port, proto, _)| ((*ip).to_owned(), *port, *proto))
        .collect()
}

fn options(dir: &std::path::Path, cilium: bool) -> Options {
    Options {
        from: vec![dir.join("node-0"), dir.join("node-1")],
        profiles: Vec::new(),
        window: Window::default(),
        pods: Some(dir.join("pods.json")),
        labels: LabelPolicy::default(),
        render: RenderOptions {
            widening: Widening::default(),
            dns: DnsSelector::default(),
            dns_rule: true,
            default_deny: true,
            cilium,
        },
        namespaces: BTreeSet::new(),
    }
}

fn parse_all(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Strict validation; the validator is installed by scripts/setup-deploy.sh
/// and must be there under CI.
fn kubernetes_validate(file: &std::path::Path) {
    let have = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate missing under CI (scripts/setup-deploy.sh)"
        );
        eprintln!("kubernetes-validate not installed: schema validation skipped");
        return;
    }
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--kubernetes-version",
                version,
            ])
            .arg(file)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{version}:\n{report}");
        assert!(
            !report.contains("WARN") && !report.contains("ERROR"),
            "{version}:\n{report}"
        );
        assert!(report.contains("passed"), "{version}:\n{report}");
    }
}

#[test]
fn policy_allows_all_observed_egress_and_nothing_held_out() {
    let dir = temp("replay");
    let flows = fixture(&dir.0);
    let advice = advise(&options(&dir.0, false)).unwrap();
    assert_eq!(advice.stats.malformed, 1);
    assert!(
        advice.stats.problems[0].contains("node-0/audit.jsonl:10:"),
        "{:?}",
        advice.stats.problems
    );
    assert_eq!(advice.stats.not_a_pod, 1);
    assert_eq!(advice.unlabelled, ["batch"]);
    let text = to_yaml(&advice.documents);
    let out = dir.0.join("out.yaml");
    std::fs::write(&out, &text).unwrap();
    kubernetes_validate(&out);
    let policies = parse_all(&text);
    // One workload policy (restarts share it) and one default deny.
    assert_eq!(policies.len(), 2, "{text}");
    assert_eq!(policies[0]["metadata"]["name"], render::DEFAULT_DENY_NAME);
    let web = &policies[1];
    assert_eq!(
        web["spec"]["podSelector"]["matchLabels"],
        json!({"app": "web"})
    );
    assert_eq!(web["spec"]["policyTypes"], json!(["Egress"]));
    assert!(text.contains("# 198.51.100.0/28 (seen: 198.51.100.7, 198.51.100.9) as api.example.com TCP/443: 4 attempts, first 2026-11-22T06:20:42Z, last"), "{text}");
    assert!(text.contains("# DNS to the cluster resolver (kube-system pods k8s-app=kube-dns) TCP/53, UDP/53: 2 attempts"), "{text}");

    let none = BTreeMap::new();
    let web_labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
    let web_pod = |hash: &str| {
        let mut l = web_labels.clone();
        l.insert("pod-template-hash".into(), hash.into());
        l
    };
    let pg: BTreeMap<String, String> = [("app".to_owned(), "pg".to_owned())].into();
    let dns: BTreeMap<String, String> = [("k8s-app".to_owned(), "kube-dns".to_owned())].into();
    let pg_ports: BTreeMap<String, (String, u16)> =
        [("http".to_owned(), ("TCP".to_owned(), 8080))].into();
    let flow = |ip: &str, port: u16, proto: &'static str| -> Flow<'_> {
        // What NetworkPolicy sees: Service traffic after DNAT.
        let (ip, port, pod) = match (ip, port) {
            ("10.96.0.7", 80) => (
                "10.1.0.5",
                8080,
                Some(Pod {
                    namespace: "db",
                    labels: &pg,
                    ports: &pg_ports,
                }),
            ),
            ("10.1.0.5", _) => (
                "10.1.0.5",
                port,
                Some(Pod {
                    namespace: "db",
                    labels: &pg,
                    ports: &pg_ports,
                }),
            ),
            ("10.96.0.10", 53) => (
                "10.1.0.10",
                53,
                Some(Pod {
                    namespace: "kube-system",
                    labels: &dns,
                    ports: &none,
                }),
            ),
            _ => (ip, port, None),
        };
        Flow {
            ip: ip.parse().unwrap(),
            port,
            proto,
            pod,
        }
    };
    let mut v6 = 0;
    for hash in ["5d8f", "77aa", "new-rollout"] {
        let labels = web_pod(hash);
        let src = Pod {
            namespace: "shop",
            labels: &labels,
            ports: &none,
        };
        for (ip, port, proto) in &flows {
            let proto = match *proto {
                "tcp" => "TCP",
                "udp" => "UDP",
                _ => "SCTP",
            };
            v6 += usize::from(ip.parse::<IpAddr>().unwrap().is_ipv6());
            assert!(
                allows(&policies, &src, &flow(ip, *port, proto)),
                "{ip}:{port}/{proto} denied"
            );
        }
        // TCP DNS is allowed too (large answers fall back to it).
        assert!(allows(&policies, &src, &flow("10.96.0.10", 53, "TCP")));
        for (ip, port, proto) in [
            ("198.51.100.77", 443, "TCP"),
            ("198.51.100.7", 80, "TCP"),
            ("198.51.100.7", 443, "UDP"),
            ("203.0.113.51", 8125, "UDP"),
            ("2001:db8::100", 443, "TCP"),
            ("2001:db8:1::5", 9001, "SCTP"),
            ("10.1.0.5", 5433, "TCP"),
            ("10.1.0.10", 5353, "UDP"),
        ] {
            assert!(
                !allows(&policies, &src, &flow(ip, port, proto)),
                "held-out {ip}:{port}/{proto} allowed"
            );
        }
    }
    assert!(v6 >= 9, "IPv6 flows replayed");
    // Other pods of the namespace are cut off by the default deny.
    let other: BTreeMap<String, String> = [("app".to_owned(), "other".to_owned())].into();
    let src = Pod {
        namespace: "shop",
        labels: &other,
        ports: &none,
    };
    assert!(!allows(&policies, &src, &flow("198.51.100.7", 443, "TCP")));
}

#[test]
fn exact_widening_and_window() {
    let dir = temp("exact");
    fixture(&dir.0);
    let mut opts = options(&dir.0, false);
    opts.render.widening = Widening { v4: 32, v6: 128 };
    opts.render.default_deny = false;
    opts.window.until_ns = Some(T0 + 30_000_000_000);
    let advice = advise(&opts).unwrap();
    let text = to_yaml(&advice.documents);
    assert!(text.contains("cidr: \"198.51.100.7/32\""), "{text}");
    assert!(text.contains("cidr: \"2001:db8::10/128\""), "{text}");
    assert!(!text.contains(render::DEFAULT_DENY_NAME));
    assert_eq!(
        advice.stats.outside_window, 9,
        "node-1's records are a minute later"
    );
    assert!(text.contains("TCP/443: 1 attempt, first"), "{text}");
}

/// Cilium's CRD schema is not in any package registry Egret's setup can use
/// (checked: PyPI and npm carry no cilium CRD package), so the
/// CiliumNetworkPolicy is checked structurally against the fields of
/// `cilium.io_ciliumnetworkpolicies.yaml` the advisor writes.
fn check_cilium(doc: &Value) {
    fn keys(v: &Value, allowed: &[&str], at: &str) {
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{at}: not an object"));
        for k in obj.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "{at}.{k} is not a CiliumNetworkPolicy field"
            );
        }
    }
    fn selector(v: &Value, at: &str) {
        keys(v, &["matchLabels", "matchExpressions"], at);
        for (k, val) in v["matchLabels"].as_object().into_iter().flatten() {
            assert!(!k.is_empty() && val.is_string(), "{at}.matchLabels.{k}");
        }
    }
    assert_eq!(doc["apiVersion"], "cilium.io/v2");
    keys(doc, &["apiVersion", "kind", "metadata", "spec"], "");
    keys(
        &doc["metadata"],
        &["name", "namespace", "labels"],
        "metadata",
    );
    let spec = &doc["spec"];
    keys(spec, &["endpointSelector", "egress"], "spec");
    selector(&spec["endpointSelector"], "spec.endpointSelector");
    for (i, rule) in spec["egress"].as_array().unwrap().iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        keys(rule, &["toEndpoints", "toCIDR", "toFQDNs", "toPorts"], &at);
        let peers = ["toEndpoints", "toCIDR", "toFQDNs"]
            .iter()
            .filter(|k| rule.get(**k).is_some())
            .count();
        assert_eq!(peers, 1, "{at}: one peer kind per rule");
        for e in rule["toEndpoints"].as_array().into_iter().flatten() {
            selector(e, &at);
        }
        for c in rule["toCIDR"].as_array().into_iter().flatten() {
            c.as_str().unwrap().parse::<ipnet::IpNet>().unwrap();
        }
        for f in rule["toFQDNs"].as_array().into_iter().flatten() {
            keys(f, &["matchName", "matchPattern"], &at);
            assert!(model::is_dns_name(f["matchName"].as_str().unwrap()));
        }
        for tp in rule["toPorts"].as_array().unwrap() {
            keys(tp, &["ports", "rules"], &at);
            for p in tp["ports"].as_array().unwrap() {
                keys(p, &["port", "protocol", "endPort"], &at);
                let port = p["port"].as_str().expect("Cilium ports are strings");
                assert!(
                    port.parse::<u16>().is_ok()
                        || port.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                );
                assert!(["TCP", "UDP", "SCTP", "ANY"].contains(&p["protocol"].as_str().unwrap()));
            }
            if let Some(rules) = tp.get("rules") {
                keys(rules, &["dns"], &at);
                for d in rules["dns"].as_array().unwrap() {
                    keys(d, &["matchName", "matchPattern"], &at);
                }
            }
        }
    }
}

#[test]
fn cilium_policy_uses_names_and_files_per_namespace() {
    let dir = temp("cilium");
    fixture(&dir.0);
    let advice = advise(&options(&dir.0, true)).unwrap();
    let files = write_dir(&dir.0.join("out"), &advice.documents).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["shop.cilium.yaml", "shop.yaml"]);
    kubernetes_validate(&dir.0.join("out/shop.yaml"));
    let cilium = parse_all(&std::fs::read_to_string(dir.0.join("out/shop.cilium.yaml")).unwrap());
    assert_eq!(cilium.len(), 1);
    check_cilium(&cilium[0]);
    let egress = cilium[0]["spec"]["egress"].as_array().unwrap();
    let fqdn = egress
        .iter()
        .find(|r| r.get("toFQDNs").is_some())
        .expect("a toFQDNs rule");
    assert_eq!(fqdn["toFQDNs"], json!([{"matchName": "api.example.com"}]));
    assert_eq!(
        fqdn["toPorts"][0]["ports"],
        json!([{"port": "443", "protocol": "TCP"}])
    );
    let dns = egress
        .iter()
        .find(|r| r["toPorts"][0].get("rules").is_some())
        .expect("DNS rule");
    assert_eq!(
        dns["toEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"],
        "kube-system"
    );
    assert!(
        egress
            .iter()
            .any(|r| r["toCIDR"] == json!(["2001:db8::10/127"]))
    );
    // No names: the Cilium policy falls back to addresses.
    let text = std::fs::read_to_string(dir.0.join("out/shop.cilium.yaml")).unwrap();
    assert!(
        !text.contains("198.51.100.7"),
        "named addresses are toFQDNs"
    );

    // The diff of the written files against themselves is empty; a
    // narrower observation window shows the rules it would drop.
    let existing = diff::load_dir(&dir.0.join("out")).unwrap();
    assert_eq!(
        diff::diff(&as_values(&advice.documents), &existing),
        Vec::<String>::new()
    );
    let mut narrow = options(&dir.0, true);
    narrow.window.until_ns = Some(T0 + 2_500_000_000);
    let lines = diff::diff(&as_values(&advise(&narrow).unwrap().documents), &existing);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("~ NetworkPolicy shop/egret-web-")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("- egress") && l.contains("2001:db8::10/127")),
        "{lines:?}"
    );
}

#[test]
fn hostile_inventory_and_names_stay_inside_their_scalars() {
    let dir = temp("hostile");
    let labels = json!({"app": "x\n  evil: true", "k\"ey": "v: [1]"});
    std::fs::create_dir_all(dir.0.join("n")).unwrap();
    std::fs::write(
        dir.0.join("n/a.jsonl"),
        record(
            T0,
            "ns\n- a",
            labels,
            "198.51.100.7",
            1,
            "tcp",
            Some("bad name\n#"),
        ),
    )
    .unwrap();
    let mut opts = options(&dir.0, true);
    opts.from = vec![dir.0.join("n")];
    opts.pods = None;
    let advice = advise(&opts).unwrap();
    let docs = parse_all(&to_yaml(&advice.documents));
    assert_eq!(docs.len(), 3);
    assert_eq!(
        docs[1]["spec"]["podSelector"]["matchLabels"]["app"],
        "x\n  evil: true"
    );
    assert_eq!(docs[1]["metadata"]["namespace"], "ns\n- a");
    assert!(
        docs[2]["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("toFQDNs").is_none())
    );
    let err = advise(&Options {
        pods: Some(dir.0.join("missing.json")),
        ..options(&dir.0, false)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn a_learned_profile_is_an_input_too() {
    let dir = temp("profile");
    std::fs::create_dir_all(dir.0.join("empty")).unwrap();
    let mut baseline = crate::baseline::Baseline::open(
        crate::baseline::BaselineConfig {
            path: Some(dir.0.join("baseline.json")),
            ..Default::default()
        },
        LabelPolicy::default(),
    )
    .unwrap();
    let labels: BTreeMap<String, String> = [("app", "api"), ("pod-template-hash", "9")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (ip, t) in [
        ("2001:db8::20", T0),
        ("2001:db8::20", T0 + 5),
        ("198.51.100.30", T0 + 9),
    ] {
        baseline.observe(
            Some("pay"),
            Some(&labels),
            ip.parse().unwrap(),
            443,
            Some(model::Proto::Tcp),
            t,
        );
    }
    baseline.flush().unwrap();
    let mut opts = options(&dir.0, false);
    opts.from = vec![dir.0.join("empty")];
    opts.pods = None;
    opts.profiles = vec![dir.0.join("baseline.json")];
    let advice = advise(&opts).unwrap();
    let text = to_yaml(&advice.documents);
    assert!(
        text.contains("# 2001:db8::20 TCP/443: 2 attempts"),
        "{text}"
    );
    assert!(text.contains("cidr: \"198.51.100.30/32\""), "{text}");
    let docs = parse_all(&text);
    assert_eq!(
        docs[1]["spec"]["podSelector"]["matchLabels"],
        json!({"app": "api"})
    );
    std::fs::write(dir.0.join("baseline.json"), "{}").unwrap();
    let err = advise(&opts).err().unwrap().to_string();
    assert!(err.contains("baseline.json: not an Egret profile"), "{err}");
}
