//! Issue 13, items 1–3: raw IP sends, unprivileged ICMP ping-socket sends
//! and packet/raw socket creation are reported with process and container;
//! raw sends are rate-bound per (socket, destination).
//!
//! Destinations are this suite's own TEST-NET addresses, on-link inside a
//! namespace the test creates: the packets leave the socket (the hooks see
//! them) and die unanswered in the namespace.
use std::{path::PathBuf, time::Duration};

use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs, unique_id},
    netns::NetNs,
};

const RAW_V4: &str = "198.51.100.193";
const RAW_V6: &str = "2001:db8:13b::2";
const PING_V4: &str = "198.51.100.194";
const PING_V6: &str = "2001:db8:13b::3";
const BOUND_V4: &str = "198.51.100.195";
const CONTAINER_V4: &str = "198.51.100.196";
const ARP_V4: &str = "198.51.100.197";
/// `nobody`: the ping sender has no capability at all.
const UNPRIVILEGED: &str = "65534";

/// A namespace with this suite's IPv6 prefix on-link too.
fn namespace(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    let status = std::process::Command::new("ip")
        .args([
            "-n",
            &ns.name,
            "addr",
            "add",
            "2001:db8:13b::1/64",
            "dev",
            "v0",
            "nodad",
        ])
        .status()
        .expect("ip addr add");
    assert!(status.success(), "adding 2001:db8:13b::1/64");
    ns
}

fn wait_for(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    agent.wait_json(pred, EVENT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no event {what} within {EVENT_TIMEOUT:?}; stderr:\n{}",
            agent.stderr().join("\n")
        )
    })
}

fn probe_output(ns: &NetNs, args: &[&str]) -> (u32, String) {
    let child = ns
        .command(support::probe_path())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let pid = child.id();
    let output = child.wait_with_output().expect("probe");
    assert!(output.status.success(), "probe {args:?}: {output:?}");
    (
        pid,
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

#[test]
fn raw_icmp_echo_is_reported_with_process_and_socket_creation() {
    if !support::privileged("raw_icmp_echo_is_reported_with_process_and_socket_creation") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = namespace("raw");
    for (dest, hook, proto) in [(RAW_V4, "raw_send4", 1), (RAW_V6, "raw_send6", 58)] {
        let (pid, out) = probe_output(&ns, &["raw-icmp", dest]);
        assert_eq!(out, "sent 1");
        let send = wait_for(&agent, "raw send", |v| {
            v["proc.pid"] == pid && v["evt.type"] == "sendto"
        });
        assert_eq!(send["evt.hook"], hook, "{send}");
        assert_eq!(send["fd.sip"], dest, "{send}");
        assert_eq!(send["fd.l4proto"], "raw", "{send}");
        assert_eq!(send["egret.ip_proto"], proto, "{send}");
        assert_eq!(send["proc.name"], "egret-probe", "{send}");
        assert_eq!(send["container.id"], "host", "{send}");
        assert!(send["egret.socket_cookie"].as_u64() > Some(0), "{send}");

        let created = wait_for(&agent, "raw socket creation", |v| {
            v["proc.pid"] == pid && v["evt.type"] == "socket"
        });
        assert_eq!(created["evt.hook"], "socket_create", "{created}");
        let domain = if proto == 1 { "AF_INET" } else { "AF_INET6" };
        assert_eq!(created["evt.arg.domain"], domain, "{created}");
        assert_eq!(created["evt.arg.type"], "3", "{created}");
        assert_eq!(created["evt.arg.proto"], proto.to_string(), "{created}");
        assert_eq!(created["fd.sip"], Value::Null, "no destination: {created}");
        assert_eq!(
            created["egret.socket_cookie"], send["egret.socket_cookie"],
            "the same socket"
        );
    }
}

#[test]
fn unprivileged_ping_socket_sendto_is_reported() {
    if !support::privileged("unprivileged_ping_socket_sendto_is_reported") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = namespace("ping");
    ns.sysctl("net.ipv4.ping_group_range=0 2147483647")
        .expect("ping_group_range");
    for (dest, hook) in [(PING_V4, "raw_send4"), (PING_V6, "raw_send6")] {
        let child = ns
            .command("setpriv")
            .args([
                "--reuid",
                UNPRIVILEGED,
                "--regid",
                UNPRIVILEGED,
                "--clear-groups",
            ])
            .arg(support::probe_path())
            .args(["ping-sendto", dest])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn setpriv");
        let pid = child.id();
        let output = child.wait_with_output().expect("ping probe");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "sent 1");
        let send = wait_for(&agent, "ping send", |v| {
            v["proc.pid"] == pid && v["evt.type"] == "sendto"
        });
        assert_eq!(send["evt.hook"], hook, "{send}");
        assert_eq!(send["fd.sip"], dest, "{send}");
        assert_eq!(send["fd.l4proto"], "icmp", "{send}");
        assert_eq!(send["user.uid"], 65534, "{send}");
        assert_eq!(send["proc.name"], "egret-probe", "{send}");
    }
}

#[test]
fn raw_sends_are_rate_bound_per_socket_and_destination() {
    if !support::privileged("raw_sends_are_rate_bound_per_socket_and_destination") {
        return;
    }
    const PACKETS: u64 = 500;
    let dir = TempDir::new("rawbound");
    let summary = dir.0.join("summary.json");
    let summary_arg = summary.display().to_string();
    let mut agent = Agent::start(&["run", "--audit", "-", "--summary", &summary_arg]);
    let ns = namespace("bound");
    let count = PACKETS.to_string();
    let (pid, out) = probe_output(&ns, &["raw-icmp", BOUND_V4, &count]);
    assert_eq!(out, format!("sent {PACKETS}"));
    wait_for(&agent, "the first raw send", |v| {
        v["proc.pid"] == pid && v["evt.type"] == "sendto"
    });
    // Whatever else arrives for this socket arrives by now.
    std::thread::sleep(Duration::from_secs(1));
    let status = agent.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    let sends: Vec<Value> = agent
        .json_lines()
        .into_iter()
        .filter(|v| v["proc.pid"] == pid && v["evt.type"] == "sendto")
        .collect();
    assert_eq!(sends.len(), 1, "one event for {PACKETS} packets: {sends:?}");

    let text = std::fs::read_to_string(&summary).expect("summary written");
    let summary: Value = serde_json::from_str(&text).expect("summary JSON");
    let raw = &summary["kernel"]["raw_send4"];
    // Other agents' and tests' raw traffic only adds to the node-wide counts.
    let seen = raw["seen"].as_u64().unwrap_or(0);
    let repeats = raw["repeat_of_connect"].as_u64().unwrap_or(0);
    assert!(seen >= PACKETS, "every packet seen: {summary}");
    assert!(repeats >= PACKETS - 1, "the rest counted: {summary}");
    assert!(raw["emitted"].as_u64() >= Some(1), "{summary}");
}

fn pod() -> Pod {
    Pod {
        name: "netshoot-6b7c".into(),
        namespace: "debug".into(),
        uid: "0d1c2b3a-4f5e-4a6b-9c8d-7e6f5a4b3c2d".into(),
    }
}

/// Falco's "Packet socket created in container" condition, verbatim, with
/// an output limited to fields Egret has (Falco's names fd.lport,
/// user.loginuid and proc.tty, which a socket creation does not carry).
const PACKET_SOCKET_RULE: &str = "- list: user_known_packet_socket_binaries
  items: []
- macro: container
  condition: (container.id != host)
- rule: Packet socket created in container
  desc: Detect new packet socket at the device driver (OSI Layer 2) level in a container.
  condition: >
    evt.type=socket
    and container
    and evt.arg.domain contains AF_PACKET
    and not proc.name in (user_known_packet_socket_binaries)
  output: Packet socket was created in a container | socket_info=%evt.args evt_type=%evt.type user=%user.name user_uid=%user.uid process=%proc.name proc_exepath=%proc.exepath parent=%proc.pname command=%proc.cmdline
  priority: NOTICE
  tags: [maturity_stable, container, network, mitre_credential_access, T1557.002]
";

#[test]
fn container_raw_ping_and_packet_socket_are_reported() {
    if !support::privileged("container_raw_ping_and_packet_socket_are_reported") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let dir = TempDir::new("pktrule");
    let rules = dir.write("packet.yaml", PACKET_SOCKET_RULE);
    let socket = containerd.socket().display().to_string();
    let rules_arg = rules.display().to_string();
    let agent = Agent::start(&[
        "run",
        "--audit",
        "-",
        "--rules",
        &rules_arg,
        "--containerd-socket",
        &socket,
    ]);
    let ns = namespace("ctr");
    let id = unique_id("netshoot");
    // busybox ping opens a raw socket as root (containers get CAP_NET_RAW),
    // busybox arping an AF_PACKET one; the container lives in the test's
    // namespace, whose TEST-NET network is on-link.
    let script = format!("ping -c 2 -W 1 {CONTAINER_V4}; arping -c 1 -w 1 -I v0 {ARP_V4}; sleep 1");
    let spec = RunSpec::new(&id, Source::Rootfs(rootfs), &["sh", "-c", &script])
        .in_pod(&pod(), "netshoot")
        .label("io.cri-containerd.kind", "container")
        .join_netns(PathBuf::from("/var/run/netns").join(&ns.name));
    let output = containerd.run(&spec);
    assert!(output.status.success(), "container run: {output:?}");

    let send = wait_for(&agent, "container raw send", |v| {
        v["fd.sip"] == CONTAINER_V4 && v["evt.type"] == "sendto"
    });
    assert_eq!(send["evt.hook"], "raw_send4", "{send}");
    assert_eq!(send["proc.name"], "ping", "{send}");
    assert_eq!(send["container.id"], &id[..12], "{send}");
    assert_eq!(send["k8s.pod.name"], "netshoot-6b7c", "{send}");
    assert_eq!(send["k8s.ns.name"], "debug", "{send}");
    assert!(
        ["raw", "icmp"].contains(&send["fd.l4proto"].as_str().unwrap_or("")),
        "{send}"
    );

    let created = wait_for(&agent, "container packet socket", |v| {
        v["evt.arg.domain"] == "AF_PACKET" && v["container.id"] == id[..12]
    });
    assert_eq!(created["evt.type"], "socket", "{created}");
    assert_eq!(created["proc.name"], "arping", "{created}");
    assert_eq!(created["k8s.pod.name"], "netshoot-6b7c", "{created}");

    let alert = wait_for(&agent, "the Falco rule's alert", |v| {
        v["rule"] == "Packet socket created in container"
            && v["output_fields"]["proc.name"] == "arping"
    });
    assert_eq!(alert["priority"], "Notice", "{alert}");
    let text = alert["output"].as_str().unwrap_or("");
    assert!(
        text.contains("socket_info=domain=17(AF_PACKET) type="),
        "{alert}"
    );
}
