//! Issue 20 end to end: Falco's own upstream rule files, loaded unmodified
//! with `--skip-unsupported-rules`, plus the user file a Falco user writes
//! to enable the disabled network rules and to point the name-based macros
//! at addresses (Egret has no DNS names yet). One firing and one non-firing
//! case per network rule, from real containerd containers where the rule is
//! about containers; every destination is inside the test's own namespace.
//! Rules built on Falco's `outbound` macro read the connect's result
//! (`evt.rawres >= 0 or evt.res = EINPROGRESS`), so the containers' blocking
//! connects go to listeners: a refused one would not fire, as in Falco.
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::{
    self, TempDir,
    agent::Agent,
    cgroup::TestCgroup,
    containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs, unique_hex_id},
    control::{CgroupTrees, Listener, install_probe},
    free_port, http,
    netns::NetNs,
};

/// Falco's three maintained files, in Falco's load order.
const FILES: [&str; 3] = [
    "falco_rules.yaml",
    "falco-incubating_rules.yaml",
    "falco-sandbox_rules.yaml",
];

/// What a Falco user adapts for a cluster: the disabled rules enabled, the
/// API server and miner pools by address and port (no DNS names in Egret:
/// `fd.sip.name` is `<NA>`), and the namespaces the subnet rule watches.
const LOCAL: &str = "- rule: Interpreted procs outbound network activity
  enabled: true
  override:
    enabled: replace
- rule: Unexpected K8s NodePort Connection
  enabled: true
  override:
    enabled: replace
- rule: Detect outbound connections to common miner pool ports
  enabled: true
  override:
    enabled: replace
- macro: k8s_api_server
  condition: (fd.sip = \"203.0.113.1\" and fd.sport = 6443)
- macro: minerpool_other
  condition: (fd.sport in (miner_ports))
- list: namespace_scope_network_only_subnet
  items: [egret-subnet]
";

const PACKET_SOCKET: &str = "Packet socket created in container";

/// `shared/falco-rules` beside the checkout (or above a nested worktree).
fn falco_dir() -> PathBuf {
    let root = support::repo_root();
    root.ancestors()
        .map(|a| a.join("shared/falco-rules"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no shared/falco-rules above {}", root.display()))
}

fn falco_files() -> Vec<String> {
    let dir = falco_dir();
    FILES
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect()
}

fn egret(args: &[&str]) -> (i32, String) {
    let output = Command::new(support::agent_path())
        .args(args)
        .output()
        .expect("run egret");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn rules_check_skip_unsupported_loads_falcos_files() {
    let files = falco_files();
    let mut args = vec!["rules", "check", "--skip-unsupported-rules"];
    args.extend(files.iter().map(String::as_str));
    let (code, out) = egret(&args);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: skipped 82 unsupported rule(s)"),
        "{out}"
    );
    // Strict without the option, as before.
    let (code, out) = egret(
        &args
            .iter()
            .filter(|a| !a.starts_with("--"))
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 1, "{out}");

    let mut list = vec!["rules", "list", "--skip-unsupported-rules"];
    list.extend(files.iter().map(String::as_str));
    let (code, out) = egret(&list);
    assert_eq!(code, 0, "{out}");
    let state = |rule: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{rule}  ")))
            .map(|l| l[rule.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("{rule} not listed:\n{out}"))
    };
    for rule in [
        "Contact K8S API Server From Container",
        "Disallowed SSH Connection Non Standard Port",
        "System procs network activity",
        "Unexpected UDP Traffic",
        "Contact EC2 Instance Metadata Service From Container",
        "Contact cloud metadata service from container",
        "Network Connection outside Local Subnet",
    ] {
        assert!(
            state(rule).starts_with("enabled"),
            "{rule}: {}",
            state(rule)
        );
    }
    for rule in [
        "Interpreted procs outbound network activity",
        "Unexpected K8s NodePort Connection",
        "Detect outbound connections to common miner pool ports",
    ] {
        assert!(
            state(rule).starts_with("disabled"),
            "{rule}: {}",
            state(rule)
        );
    }
    assert!(
        state(PACKET_SOCKET).starts_with("enabled"),
        "{}",
        state(PACKET_SOCKET)
    );
    assert!(
        state("Terminal shell in container").starts_with("skipped (needs event types execve"),
        "{}",
        state("Terminal shell in container")
    );
}

/// The probe under another name: `proc.name` (comm) and `proc.exe` (argv[0])
/// are what the rules match.
fn renamed_probe(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::copy(support::probe_path(), &path).expect("copy probe");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Audit records the agent lost so far, all reasons
/// (`egret_output_lost_records_total{output="audit"}`): the audit log is
/// this test's evidence that a quiet case was seen, and it is only that
/// while nothing was lost.
fn audit_lost(addr: SocketAddr) -> f64 {
    let (code, body) = http::get(addr, "/metrics").expect("metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("egret_output_lost_records_total{output=\"audit\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn alerted(agent: &Agent, rule: &str, fd_name: &str) -> bool {
    agent
        .json_lines()
        .iter()
        .any(|v| v["rule"] == rule && v["output_fields"]["fd.name"] == fd_name)
}

/// One case: the rule, the destination (`fd.name`) it is judged by, and
/// whether it must alert.
struct Case {
    rule: &'static str,
    fd_name: &'static str,
    fires: bool,
}

const fn fires(rule: &'static str, fd_name: &'static str) -> Case {
    Case {
        rule,
        fd_name,
        fires: true,
    }
}

const fn quiet(rule: &'static str, fd_name: &'static str) -> Case {
    Case {
        rule,
        fd_name,
        fires: false,
    }
}

fn pod(name: &str, namespace: &str) -> Pod {
    Pod {
        name: name.into(),
        namespace: namespace.into(),
        uid: format!("{name}-0000-4000-8000-000000000020"),
    }
}

#[test]
fn falcos_network_rules_fire_and_stay_quiet_verbatim() {
    if !support::privileged("falcos_network_rules_fire_and_stay_quiet_verbatim") {
        return;
    }
    let dir = TempDir::new("falco-rules");
    let local = dir.write("local.yaml", LOCAL).display().to_string();
    // The agent watches this test's cgroup only, as a node agent watches its
    // node. Attached to the root it took in the connect floods other tests
    // make meanwhile (hundreds of thousands of connects while it ran), and
    // its audit log, whose queue drops records by design when stdout cannot
    // keep up, lost up to nine in ten of its records, counted
    // (`egret_output_lost_records_total{output="audit"}`): now and then the
    // record of a quiet case or of the host's packet socket. The containers
    // sit below it in kubelet-shaped cgroups, the host processes in a
    // host-shaped one (a unit name is no container); the trees guard
    // removes both.
    let cgroup = TestCgroup::new("falco");
    let relative = cgroup
        .path()
        .strip_prefix(support::cgroup_root())
        .expect("test cgroup below the mount")
        .to_path_buf();
    let _trees = CgroupTrees {
        relative: relative.clone(),
    };
    let host_cgroup = cgroup.path().join("host.slice");
    std::fs::create_dir(&host_cgroup).expect("host cgroup");
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let socket = containerd.socket().display().to_string();
    let files = falco_files();
    let cgroup_arg = cgroup.path().display().to_string();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let listen_arg = listen.to_string();
    // The audit log (on stdout with the alerts) shows that every quiet case
    // was seen and evaluated, not lost. Flow and DNS records would only add
    // lines no Falco network rule reads.
    let mut args = vec![
        "run",
        "--no-dns",
        "-o",
        "kernel.flows=false",
        "--skip-unsupported-rules",
        "--rule-matching",
        "all",
        "--audit",
        "-",
        "--cgroup",
        &cgroup_arg,
        "--listen",
        &listen_arg,
    ];
    for file in files.iter().chain([&local]) {
        args.extend(["--rules", file.as_str()]);
    }
    args.extend(["--containerd-socket", &socket]);
    let agent = Agent::start(&args);
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("skipped 82 unsupported rule(s)")),
        "one summarised warning: {:?}",
        agent.stderr()
    );

    // Every destination lives in this namespace; the metadata address is on
    // its own interface, never the host's.
    let ns = NetNs::new("falco");
    // 10.20.0.1 too, so the local-subnet cases connect instead of failing
    // with ENETUNREACH (which no `outbound` rule would fire for either).
    for addr in ["169.254.169.254/32", "10.20.0.1/32"] {
        let status = Command::new("ip")
            .args(["-n", &ns.name, "addr", "add", addr, "dev", "v0"])
            .status()
            .expect("ip addr add");
        assert!(status.success());
    }
    let netns = PathBuf::from(format!("/var/run/netns/{}", ns.name));
    // The containers' `nc` connects block until the handshake: listeners
    // make them succeed (evt.res = SUCCESS), firing and quiet cases alike,
    // so a quiet case is quiet for its rule's own reason. The host probes
    // connect non-blocking (evt.res = EINPROGRESS).
    let _listeners: Vec<Listener> = [
        "203.0.113.1:6443",
        "203.0.113.1:6444",
        "169.254.169.254:80",
        "169.254.169.254:81",
        "198.51.100.1:30080",
        "198.51.100.1:8081",
        "198.51.100.1:9001",
        "10.20.0.1:9002",
    ]
    .iter()
    .map(|addr| Listener::start(&ns, addr))
    .collect();
    install_probe(&rootfs);

    let apps = pod("web-20", "egret-apps");
    let system = pod("dns-20", "kube-system");
    let subnet = pod("db-20", "egret-subnet");
    let in_pod_cgroup =
        |pod: &Pod, id: &str| format!("/{}/kubepods/pod{}/{id}", relative.display(), pod.uid);
    let in_container = |pod: &Pod, target: &str| {
        let id = unique_hex_id();
        // As a pod's process would: the agent learns the container (cgroup,
        // containerd metadata, fetched asynchronously) when its shell starts,
        // before the connect. Detached, so the containers run side by side.
        // It repeats the attempt until the test ends (the guard removes the
        // container): another agent's load may fill this agent's ring buffer
        // and drop one attempt, never every one.
        let command = format!("sleep 2; while true; do nc -w1 {target}; sleep 0.5; done");
        let spec = RunSpec::new(&id, Source::Rootfs(rootfs.clone()), &["sh", "-c", &command])
            .in_pod(pod, "app")
            .join_netns(netns.clone())
            .cgroup(in_pod_cgroup(pod, &id));
        containerd.run_detached(&spec);
    };
    // Containers: API server, metadata service, NodePort, local subnet.
    in_container(&apps, "203.0.113.1 6443");
    in_container(&apps, "203.0.113.1 6444");
    in_container(&apps, "169.254.169.254 80");
    in_container(&system, "169.254.169.254 81");
    in_container(&apps, "198.51.100.1 30080");
    in_container(&apps, "198.51.100.1 8081");
    in_container(&subnet, "198.51.100.1 9001");
    in_container(&subnet, "10.20.0.1 9002");
    // An AF_PACKET socket from a container, repeated like the connects.
    let packet = pod("pkt-20", "egret-apps");
    let packet_id = unique_hex_id();
    let spec = RunSpec::new(
        &packet_id,
        Source::Rootfs(rootfs.clone()),
        &[
            "sh",
            "-c",
            "sleep 2; while true; do /bin/egret-probe packet-socket; sleep 0.5; done",
        ],
    )
    .in_pod(&packet, "sniffer")
    .join_netns(netns.clone())
    .cgroup(in_pod_cgroup(&packet, &packet_id));
    containerd.run_detached(&spec);

    // Host processes, named as the rules expect.
    // Each host attempt is kept so that it can be repeated if its event was
    // dropped (see `seen`).
    let attempts = std::cell::RefCell::new(Vec::<(PathBuf, &str, &str)>::new());
    let attempt = |program: &Path, mode: &str, target: &str| {
        let (_, status) = ns.run_in_cgroup(&host_cgroup, program, &[mode, target]);
        assert!(status.success(), "{} {mode} {target}", program.display());
    };
    let host = |program: &Path, mode: &'static str, target: &'static str| {
        attempt(program, mode, target);
        attempts
            .borrow_mut()
            .push((program.to_path_buf(), mode, target));
    };
    // Waits for a JSON line about `fd_name`, repeating its host attempt
    // (containers repeat theirs) a few times.
    let seen = |pred: &dyn Fn(&serde_json::Value) -> bool, fd_name: &str| {
        for _ in 0..5 {
            if let Some(v) = agent.wait_json(pred, Duration::from_secs(3)) {
                return Some(v);
            }
            for (program, mode, target) in attempts.borrow().iter() {
                if *target == fd_name {
                    attempt(program, mode, target);
                }
            }
        }
        None
    };
    let probe = support::probe_path();
    host(&probe, "tcp", "169.254.169.254:82");
    let ssh = renamed_probe(&dir, "ssh");
    host(&ssh, "tcp", "198.51.100.1:4444");
    host(&ssh, "tcp", "198.51.100.1:22");
    let who = renamed_probe(&dir, "who");
    host(&who, "tcp", "198.51.100.1:9101");
    host(&probe, "tcp", "198.51.100.1:9102");
    let python = renamed_probe(&dir, "python3");
    host(&python, "tcp", "198.51.100.1:9201");
    host(&python, "tcp", "10.20.0.1:9202");
    host(&probe, "udp-connect", "198.51.100.1:9301");
    host(&probe, "udp-connect", "198.51.100.1:53");
    host(&probe, "tcp", "198.51.100.1:3333");
    host(&probe, "tcp", "198.51.100.1:9401");

    let cases = [
        fires("Contact K8S API Server From Container", "203.0.113.1:6443"),
        quiet("Contact K8S API Server From Container", "203.0.113.1:6444"),
        fires(
            "Contact EC2 Instance Metadata Service From Container",
            "169.254.169.254:80",
        ),
        quiet(
            "Contact EC2 Instance Metadata Service From Container",
            "169.254.169.254:82",
        ),
        fires(
            "Contact cloud metadata service from container",
            "169.254.169.254:80",
        ),
        // kube-system is the cloud rule's own exception, not the EC2 one's.
        fires(
            "Contact EC2 Instance Metadata Service From Container",
            "169.254.169.254:81",
        ),
        quiet(
            "Contact cloud metadata service from container",
            "169.254.169.254:81",
        ),
        fires("Unexpected K8s NodePort Connection", "198.51.100.1:30080"),
        quiet("Unexpected K8s NodePort Connection", "198.51.100.1:8081"),
        fires(
            "Network Connection outside Local Subnet",
            "198.51.100.1:9001",
        ),
        quiet("Network Connection outside Local Subnet", "10.20.0.1:9002"),
        fires(
            "Disallowed SSH Connection Non Standard Port",
            "198.51.100.1:4444",
        ),
        quiet(
            "Disallowed SSH Connection Non Standard Port",
            "198.51.100.1:22",
        ),
        fires("System procs network activity", "198.51.100.1:9101"),
        quiet("System procs network activity", "198.51.100.1:9102"),
        fires(
            "Interpreted procs outbound network activity",
            "198.51.100.1:9201",
        ),
        quiet(
            "Interpreted procs outbound network activity",
            "10.20.0.1:9202",
        ),
        fires("Unexpected UDP Traffic", "198.51.100.1:9301"),
        quiet("Unexpected UDP Traffic", "198.51.100.1:53"),
        fires(
            "Detect outbound connections to common miner pool ports",
            "198.51.100.1:3333",
        ),
        quiet(
            "Detect outbound connections to common miner pool ports",
            "198.51.100.1:9401",
        ),
    ];
    for case in cases.iter().filter(|c| c.fires) {
        let alert = seen(
            &|v| v["rule"] == case.rule && v["output_fields"]["fd.name"] == case.fd_name,
            case.fd_name,
        )
        .unwrap_or_else(|| {
            panic!(
                "{} did not fire for {}; stderr:\n{}",
                case.rule,
                case.fd_name,
                agent.stderr().join("\n")
            )
        });
        // Falco's output, with Egret's values for the fields it added.
        let output = alert["output"].as_str().unwrap_or_default();
        assert!(
            output.contains(&format!("connection={}", case.fd_name)),
            "{output}"
        );
        assert!(output.contains("lport=<NA>"), "{output}");
        assert!(output.contains("evt_type=connect"), "{output}");
    }
    // Each quiet attempt was seen (its audit record is in) and evaluated;
    // the pause lets an alert written after the audit line arrive too.
    for case in cases.iter().filter(|c| !c.fires) {
        seen(&|v| v["fd.name"] == case.fd_name, case.fd_name).unwrap_or_else(|| {
            panic!(
                "no audit record for {} ({} audit records lost)",
                case.fd_name,
                audit_lost(listen)
            )
        });
    }
    // Packet socket created in container: fires for the container's
    // socket, stays quiet for the same socket from a host process.
    let packet_alert = agent
        .wait_json(
            |v| v["rule"] == PACKET_SOCKET && v["output_fields"]["k8s.pod.name"] == "pkt-20",
            support::agent::scaled(Duration::from_secs(20)),
        )
        .unwrap_or_else(|| {
            panic!(
                "{PACKET_SOCKET} did not fire; stderr:\n{}",
                agent.stderr().join("\n")
            )
        });
    let output = packet_alert["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("socket_info=domain=17(AF_PACKET) type=3 proto=768"),
        "{output}"
    );
    assert!(output.contains("process=egret-probe"), "{output}");
    assert_eq!(packet_alert["output_fields"]["evt.type"], "socket");
    let (host_packet, status) = ns.run_in_cgroup(&host_cgroup, &probe, &["packet-socket"]);
    assert!(status.success());
    let host_packet_seen = agent.wait_json(
        |v| v["proc.pid"] == host_packet && v["evt.type"] == "socket",
        support::agent::EVENT_TIMEOUT,
    );
    assert!(
        host_packet_seen.is_some(),
        "no audit record for the host's packet socket ({} audit records lost); stderr:\n{}",
        audit_lost(listen),
        agent.stderr().join("\n")
    );
    // Every record above (each quiet case's, the host packet socket's) is
    // evidence only while the audit log is complete.
    assert_eq!(audit_lost(listen), 0.0, "audit records lost");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !agent
            .json_lines()
            .iter()
            .any(|v| v["rule"] == PACKET_SOCKET && v["output_fields"]["container.id"] == "host"),
        "{PACKET_SOCKET} alerted for a host process"
    );
    for case in cases.iter().filter(|c| !c.fires) {
        assert!(
            !alerted(&agent, case.rule, case.fd_name),
            "{} alerted for {}",
            case.rule,
            case.fd_name
        );
    }
    let udp = agent
        .json_lines()
        .into_iter()
        .find(|v| {
            v["rule"] == "Unexpected UDP Traffic"
                && v["output_fields"]["fd.name"] == "198.51.100.1:9301"
        })
        .expect("udp alert");
    assert_eq!(udp["output_fields"]["fd.l4proto"], "udp");
    let imds = agent
        .json_lines()
        .into_iter()
        .find(|v| {
            v["rule"] == "Contact cloud metadata service from container"
                && v["output_fields"]["fd.name"] == "169.254.169.254:80"
        })
        .expect("metadata alert");
    assert_eq!(imds["output_fields"]["user.name"], "root");
    assert_eq!(imds["output_fields"]["fd.type"], "ipv4");
    assert_eq!(imds["output_fields"]["proc.name"], "nc");
}
