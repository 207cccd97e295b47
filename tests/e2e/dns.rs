//! Issue 14: observed DNS. A real DNS server (dnsmasq) in a test
//! namespace on a TEST-NET address; processes resolve through it and
//! connect. The agent is attached to a test cgroup, so it sees only this
//! test's processes.
use std::{net::SocketAddr, time::Duration};

use egret_testkit::dns::DnsServer;
use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT, scaled},
    cgroup::TestCgroup,
    free_port,
    http::metric_value,
    netns::NetNs,
};

const SHOP_IP: &str = "203.0.113.5";

/// A test rule on the observed name, loaded after the bundled rules.
const NAME_RULES: &str = r#"
- rule: Test Connect To Observed Name
  desc: fd.sip.name from observed DNS
  condition: evt.type = connect and fd.sip.name in (shop.example, other.example)
  output: named connection (name=%fd.sip.name connection=%fd.name pid=%proc.pid)
  priority: WARNING
"#;

struct Setup {
    agent: Agent,
    cgroup: TestCgroup,
    ns: NetNs,
    _dns: DnsServer,
    listen: SocketAddr,
    _dir: TempDir,
}

fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(&format!("dns-{tag}"));
    let rules = dir.path().join("names.yaml");
    std::fs::write(&rules, NAME_RULES).expect("write rules");
    let cgroup = TestCgroup::new(&format!("dns-{tag}"));
    let ns = NetNs::new(&format!("dns-{tag}"));
    let dns = DnsServer::start(
        &ns,
        &[("shop.example", SHOP_IP), ("t.example", "203.0.113.9")],
    );
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = Agent::start(&[
        "run",
        "--rules",
        "bundled",
        "--rules",
        &rules.display().to_string(),
        "--rule-matching",
        "all",
        "--audit",
        "-",
        "--listen",
        &listen.to_string(),
        "--cgroup",
        &cgroup.path().display().to_string(),
    ]);
    Setup {
        agent,
        cgroup,
        ns,
        _dns: dns,
        listen,
        _dir: dir,
    }
}

fn is_audit(v: &Value) -> bool {
    v.get("evt.type").is_some() && v.get("rule").is_none()
}

fn wait(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    agent.wait_json(pred, EVENT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no {what} within {EVENT_TIMEOUT:?}; stderr:\n{}",
            agent.stderr().join("\n")
        )
    })
}

#[test]
fn resolved_names_reach_fd_sip_name_rules_and_the_audit_log() {
    if !support::privileged("resolved_names_reach_fd_sip_name_rules_and_the_audit_log") {
        return;
    }
    let s = setup("names");
    let probe = support::probe_path();
    let (pid, status) = s.ns.run_in_cgroup(
        s.cgroup.path(),
        &probe,
        &["resolve-connect", "shop.example", "443"],
    );
    assert!(status.success());

    // The query and the answer are dns events, joined to the process.
    let query = wait(&s.agent, "dns query event", |v| {
        is_audit(v) && v["evt.type"] == "dns" && v["egret.dns.direction"] == "query"
    });
    assert_eq!(query["egret.dns.query"], "shop.example", "{query}");
    assert_eq!(query["fd.sip"], "198.51.100.1", "{query}");
    assert_eq!(query["fd.sport"], 53, "{query}");
    assert_eq!(query["proc.pid"], pid, "joined by socket cookie: {query}");
    let answer = wait(&s.agent, "dns answer event", |v| {
        is_audit(v)
            && v["evt.type"] == "dns"
            && v["egret.dns.direction"] == "answer"
            && v["egret.dns.qtype"] == "A"
    });
    assert_eq!(answer["egret.dns.rcode"], "NOERROR", "{answer}");
    assert_eq!(answer["egret.dns.answers"], SHOP_IP, "{answer}");

    // The connect carries the name the process resolved.
    let connect = wait(&s.agent, "connect event", |v| {
        is_audit(v) && v["evt.type"] == "connect" && v["proc.pid"] == pid && v["fd.sip"] == SHOP_IP
    });
    assert_eq!(connect["fd.sip.name"], "shop.example", "{connect}");
    let alert = wait(&s.agent, "fd.sip.name alert", |v| {
        v["rule"] == "Test Connect To Observed Name" && v["output_fields"]["proc.pid"] == pid
    });
    assert_eq!(
        alert["output_fields"]["fd.sip.name"], "shop.example",
        "{alert}"
    );

    // An address nobody resolved has no name: <NA>, and the rule is quiet.
    let (direct, _) =
        s.ns.run_in_cgroup(s.cgroup.path(), &probe, &["tcp", "203.0.113.77:443"]);
    let unnamed = wait(&s.agent, "unresolved connect", |v| {
        is_audit(v) && v["proc.pid"] == direct
    });
    assert!(unnamed.get("fd.sip.name").is_none(), "{unnamed}");
    // Queries over TCP and to an IPv6 resolver are seen too.
    let (tcp_pid, _) = s.ns.run_in_cgroup(
        s.cgroup.path(),
        &probe,
        &["dns-query-tcp", "198.51.100.1:53", "1", "tcp.shop.example"],
    );
    for direction in ["query", "answer"] {
        let tcp = wait(&s.agent, "dns over tcp", |v| {
            is_audit(v)
                && v["egret.dns.query"] == "tcp.shop.example"
                && v["egret.dns.direction"] == direction
        });
        assert_eq!(tcp["fd.l4proto"], "tcp", "{tcp}");
        if direction == "query" {
            assert_eq!(tcp["proc.pid"], tcp_pid, "{tcp}");
        } else {
            assert_eq!(tcp["egret.dns.answers"], SHOP_IP, "{tcp}");
        }
    }
    s.ns.run_in_cgroup(
        s.cgroup.path(),
        &probe,
        &["dns-query", "[2001:db8::1]:53", "28", "v6.shop.example"],
    );
    for direction in ["query", "answer"] {
        let v6 = wait(&s.agent, "dns over ipv6", |v| {
            is_audit(v)
                && v["egret.dns.query"] == "v6.shop.example"
                && v["egret.dns.direction"] == direction
        });
        assert_eq!(v6["fd.sip"], "2001:db8::1", "{v6}");
        assert_eq!(v6["egret.dns.qtype"], "AAAA", "{v6}");
    }

    std::thread::sleep(scaled(Duration::from_millis(500)));
    assert!(
        !s.agent
            .json_lines()
            .iter()
            .any(|v| v["rule"] == "Test Connect To Observed Name"
                && v["output_fields"]["proc.pid"] == direct),
        "no alert without an observed name"
    );
}

/// 60 distinct base32-looking labels of 40 characters under t.example.
fn tunnel_names() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..60)
        .map(|i| {
            let label: String = (0..40)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(ALPHABET[(state % 32) as usize])
                })
                .collect();
            format!("{label}.s{i}.t.example")
        })
        .collect()
}

#[test]
fn tunnelling_burst_alerts_and_a_normal_pattern_does_not() {
    if !support::privileged("tunnelling_burst_alerts_and_a_normal_pattern_does_not") {
        return;
    }
    let s = setup("tunnel");
    let probe = support::probe_path();
    let server = "198.51.100.1:53";
    // A normal pattern first: a few hosts of one domain, twice.
    let normal: Vec<&str> = vec![
        "www.shop.example",
        "api.shop.example",
        "img.shop.example",
        "www.shop.example",
        "shop.example",
    ];
    let mut args = vec!["dns-query", server, "1"];
    args.extend(&normal);
    let (normal_pid, status) = s.ns.run_in_cgroup(s.cgroup.path(), &probe, &args);
    assert!(status.success());
    // Then a tunnel through the same (TEST-NET, here standing in for the
    // cluster's private) resolver.
    let names = tunnel_names();
    let mut args = vec!["dns-query", server, "1"];
    args.extend(names.iter().map(String::as_str));
    let (tunnel_pid, status) = s.ns.run_in_cgroup(s.cgroup.path(), &probe, &args);
    assert!(status.success());

    let alert = wait(&s.agent, "tunnelling alert", |v| {
        v["rule"] == "DNS Tunnelling Suspected" && v["output_fields"]["proc.pid"] == tunnel_pid
    });
    assert_eq!(
        alert["output_fields"]["egret.dns.parent"], "t.example",
        "{alert}"
    );
    assert_eq!(alert["priority"], "Critical");
    // Records are evaluated in order: the normal queries came first.
    assert!(
        s.agent.wait_json_count(
            |v| is_audit(v) && v["evt.type"] == "dns" && v["proc.pid"] == normal_pid,
            normal.len(),
            EVENT_TIMEOUT
        ),
        "normal queries observed"
    );
    let noisy: Vec<Value> = s
        .agent
        .json_lines()
        .into_iter()
        .filter(|v| v.get("rule").is_some() && v["output_fields"]["proc.pid"] == normal_pid)
        .collect();
    assert!(noisy.is_empty(), "normal lookups alerted: {noisy:?}");
}

#[test]
fn malformed_and_truncated_messages_are_counted_and_never_crash() {
    if !support::privileged("malformed_and_truncated_messages_are_counted_and_never_crash") {
        return;
    }
    let s = setup("malformed");
    let probe = support::probe_path();
    let server = "198.51.100.1:53";
    let junk = "deadbeef";
    // A header announcing a question and five answers, then 600 bytes of
    // 0xff (a compression pointer out of bounds): longer than the kernel's
    // 512-byte copy, so the parser sees a cut message.
    let long = format!("000701000001000500000000{}", "ff".repeat(600));
    // A header alone: a message with no question.
    let empty = "000701000000000000000000";
    for hex in [junk, long.as_str(), empty] {
        let (_, status) =
            s.ns.run_in_cgroup(s.cgroup.path(), &probe, &["dns-raw", server, hex]);
        assert!(status.success());
    }
    for reason in ["invalid", "truncated", "no_question"] {
        let series = format!(r#"egret_dns_malformed_total{{reason="{reason}"}}"#);
        let deadline = std::time::Instant::now() + scaled(EVENT_TIMEOUT);
        while metric_value(s.listen, &series).unwrap_or(0.0) < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{series} not counted; stderr:\n{}",
                s.agent.stderr().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Still running, and still parsing good messages.
    let (pid, _) = s.ns.run_in_cgroup(
        s.cgroup.path(),
        &probe,
        &["resolve-connect", "shop.example", "443"],
    );
    let connect = wait(&s.agent, "connect after hostile messages", |v| {
        is_audit(v) && v["evt.type"] == "connect" && v["proc.pid"] == pid && v["fd.sip"] == SHOP_IP
    });
    assert_eq!(connect["fd.sip.name"], "shop.example", "{connect}");
}

const POD_A: &str = "9c2d3c4e-1f0a-4b8c-9d7e-6f5a4b3c2d21";
const POD_B: &str = "9c2d3c4e-1f0a-4b8c-9d7e-6f5a4b3c2d22";
const CTR_A: &str = "a9dc3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0";
const CTR_B: &str = "b9dc3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0";

/// Two real containerd containers (sharing one network namespace, as a
/// pod's containers do) resolve one IP under different names: each
/// connect gets its own container's name, never a node-wide one.
#[test]
fn two_containers_resolving_one_ip_each_get_their_own_name() {
    use crate::support::{
        containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs},
        control::CgroupTrees,
    };
    if !support::privileged("two_containers_resolving_one_ip_each_get_their_own_name") {
        return;
    }
    let cgroup = TestCgroup::new("dns-ctr");
    let relative = cgroup
        .path()
        .strip_prefix(support::cgroup_root())
        .expect("test cgroup below the mount")
        .to_path_buf();
    let _trees = CgroupTrees {
        relative: relative.clone(),
    };
    let ns = NetNs::new("dnsctr");
    let _dns = DnsServer::start(&ns, &[("shop.example", SHOP_IP), ("blog.example", SHOP_IP)]);
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    // busybox's own resolver asks the server it is given (no NSS needed).
    let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin/nslookup"));
    let netns = std::path::PathBuf::from("/var/run/netns").join(&ns.name);
    let s = |p: &std::path::Path| p.display().to_string();
    let agent = Agent::start(&[
        "run",
        "--cgroup",
        &s(cgroup.path()),
        "--containerd-socket",
        &s(containerd.socket()),
        "--audit",
        "-",
    ]);
    let containers = [
        (POD_A, CTR_A, "web-a", "shop.example"),
        (POD_B, CTR_B, "web-b", "blog.example"),
    ];
    for (uid, id, pod, _) in containers {
        let pod = Pod {
            name: pod.into(),
            namespace: "dns".into(),
            uid: uid.into(),
        };
        let spec = RunSpec::new(id, Source::Rootfs(rootfs.clone()), &["sleep", "600"])
            .in_pod(&pod, "app")
            .label("io.cri-containerd.kind", "container")
            .join_netns(netns.clone())
            .cgroup(format!("/{}/kubepods/pod{uid}/{id}", relative.display()));
        containerd.run_detached(&spec);
    }
    for (_, id, _, name) in containers {
        let script = format!("nslookup {name} 198.51.100.1; nc -w1 {SHOP_IP} 443; true");
        let out = containerd.exec(id, &["sh", "-c", &script]);
        assert!(out.status.success(), "{id}: {out:?}");
    }
    for (_, id, _, name) in containers {
        let connect = wait(&agent, "container connect", |v| {
            is_audit(v)
                && v["evt.type"] == "connect"
                && v["fd.sip"] == SHOP_IP
                && v["container.id"] == id[..12]
        });
        assert_eq!(connect["fd.sip.name"], name, "{connect}");
        let query = wait(&agent, "container dns query", |v| {
            is_audit(v) && v["evt.type"] == "dns" && v["container.id"] == id[..12]
        });
        assert_eq!(query["egret.dns.query"], name, "{query}");
    }
    for (_, id, _, _) in containers {
        containerd.remove(id);
    }
}
