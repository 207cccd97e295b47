//! Quarantine end to end: the agent's enforcing programs attached below a
//! TEST cgroup only (`--cgroup`), workloads in kubelet-shaped cgroups inside
//! it, talking to TEST-NET addresses that live in a test network namespace.
//! Nothing here can deny traffic outside the test cgroup.
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    cgroup::TestCgroup,
    control::{
        ControlClient, Listener, Q_V4, Q_V4_ALLOWED, Workload, add_quarantine_addresses, eperm,
        probe_in,
    },
    netns::NetNs,
    privileged,
    prometheus::free_port,
};

const POD_A: &str = "3f1c2b4a-0d9e-4c7b-8a6f-5e4d3c2b1a01";
const POD_B: &str = "3f1c2b4a-0d9e-4c7b-8a6f-5e4d3c2b1a02";
const CTR_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const CTR_B: &str = "b1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TOKEN: &str = "test-token-0123456789abcdef";

struct Setup {
    dir: TempDir,
    cgroup: TestCgroup,
    ns: NetNs,
    _listener: Listener,
    args: Vec<String>,
    control: ControlClient,
    metrics_port: u16,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let dir = TempDir::new(&format!("quarantine-{tag}"));
        let token_file = dir.write("token", &format!("{TOKEN}\n"));
        let cgroup = TestCgroup::new(&format!("q-{tag}"));
        let ns = NetNs::new(&format!("q{tag}"));
        add_quarantine_addresses(&ns);
        let listener = Listener::start(&ns, "0.0.0.0:7000");
        let control_port = free_port();
        let metrics_port = free_port();
        let args = vec![
            "run".into(),
            "--cgroup".into(),
            cgroup.path().display().to_string(),
            "--no-identity".into(),
            "--audit".into(),
            "-".into(),
            "--listen".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--control-listen".into(),
            format!("127.0.0.1:{control_port}"),
            "--control-token-file".into(),
            token_file.display().to_string(),
            "--quarantine-state".into(),
            dir.0.join("state/quarantines.json").display().to_string(),
        ];
        Setup {
            dir,
            cgroup,
            ns,
            _listener: listener,
            args,
            control: ControlClient {
                addr: format!("127.0.0.1:{control_port}").parse().unwrap(),
                token: TOKEN.into(),
            },
            metrics_port,
        }
    }

    fn agent(&self) -> Agent {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Agent::start(&args)
    }

    fn metrics(&self) -> String {
        let client = ControlClient {
            addr: format!("127.0.0.1:{}", self.metrics_port).parse().unwrap(),
            token: String::new(),
        };
        // /metrics is text; reuse the raw client and keep the body as text.
        let mut stream = std::net::TcpStream::connect(client.addr).expect("metrics port");
        use std::io::{Read, Write};
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: egret\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }
}

fn server(port: u16) -> String {
    format!("{Q_V4}:{port}")
}

/// Waits until `check` holds (quarantine changes apply within a tick).
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn quarantine_blocks_one_pod_allows_its_list_and_lifts_on_delete() {
    if !privileged("quarantine_blocks_one_pod") {
        return;
    }
    let setup = Setup::new("pod");
    let a = Workload::new(setup.cgroup.path(), &format!("kubepods/pod{POD_A}/{CTR_A}"));
    let b = Workload::new(setup.cgroup.path(), &format!("kubepods/pod{POD_B}/{CTR_B}"));
    let mut agent = setup.agent();
    let ns = &setup.ns;

    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), "ok");
    assert_eq!(probe_in(a.path(), ns, "icmp-raw", &server(0)), "ok");

    // Unauthenticated and wrongly authenticated requests change nothing.
    let body = format!(
        r#"{{"target":{{"pod_uid":"{POD_A}"}},"allow":["203.0.113.64/26"],"reason":"e2e"}}"#
    );
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let (status, _) = setup
            .control
            .call_with("POST", "/v1/quarantines", Some(&body), token);
        assert_eq!(status, 401);
        let (status, _) = setup
            .control
            .call_with("GET", "/v1/quarantines", None, token);
        assert_eq!(status, 401);
    }
    assert!(setup.control.ids().is_empty());
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), "ok");

    // Unknown targets are 404, malformed requests 400.
    let (status, _) = setup.control.call(
        "POST",
        "/v1/quarantines",
        Some(r#"{"target":{"pod_uid":"00000000-0000-4000-8000-000000000000"}}"#),
    );
    assert_eq!(status, 404);
    let (status, _) = setup.control.call(
        "POST",
        "/v1/quarantines",
        Some(r#"{"target":{"pod_uid":"x"},"ttl":"soon"}"#),
    );
    assert_eq!(status, 400);

    let (status, created) = setup.control.call("POST", "/v1/quarantines", Some(&body));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["state"], "active");

    // The quarantined pod: TCP, UDP and ICMP fail with EPERM at the call.
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), eperm());
    assert_eq!(probe_in(a.path(), ns, "udp-sendto", &server(9)), eperm());
    assert_eq!(probe_in(a.path(), ns, "icmp-raw", &server(0)), eperm());
    // Its allow list stays reachable; another pod is untouched.
    assert_eq!(
        probe_in(a.path(), ns, "tcp", &format!("{Q_V4_ALLOWED}:7000")),
        "ok"
    );
    assert_eq!(probe_in(b.path(), ns, "tcp", &server(7000)), "ok");
    assert_eq!(probe_in(b.path(), ns, "icmp-raw", &server(0)), "ok");

    // Blocked attempts are events and metrics.
    let blocked = agent
        .wait_json(
            |v| v["egret.action"] == "blocked" && v["fd.sip"] == Q_V4 && v["fd.sport"] == 7000,
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no blocked event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(blocked["evt.type"], "connect");
    assert!(
        agent
            .wait_json(
                |v| v["egret.action"] == "blocked"
                    && v["fd.l4proto"] == "icmp"
                    && v["fd.sip"] == Q_V4,
                EVENT_TIMEOUT
            )
            .is_some()
    );
    let (_, list) = setup.control.call("GET", "/v1/quarantines", None);
    let entry = &list["quarantines"][0];
    assert!(entry["blocked"]["connects"].as_u64() >= Some(1), "{entry}");
    assert!(entry["blocked"]["sends"].as_u64() >= Some(1), "{entry}");
    assert!(entry["blocked"]["packets"].as_u64() >= Some(1), "{entry}");
    let series = format!("egret_quarantine_blocked_total{{quarantine=\"{id}\",kind=\"connect\"}}");
    eventually("blocked metric", Duration::from_secs(5), || {
        setup
            .metrics()
            .lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0)
    });

    // A second quarantine of the same pod is a conflict, not a duplicate.
    let (status, _) = setup.control.call("POST", "/v1/quarantines", Some(&body));
    assert_eq!(status, 409);

    // DELETE restores; unknown ids are 404.
    let (status, _) = setup
        .control
        .call("DELETE", &format!("/v1/quarantines/{id}"), None);
    assert_eq!(status, 200);
    let (status, _) = setup
        .control
        .call("DELETE", &format!("/v1/quarantines/{id}"), None);
    assert_eq!(status, 404);
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), "ok");
    assert_eq!(probe_in(a.path(), ns, "icmp-raw", &server(0)), "ok");
    assert!(agent.terminate().success());
}

#[test]
fn quarantine_survives_restart_and_expires_by_ttl() {
    if !privileged("quarantine_survives_restart") {
        return;
    }
    let setup = Setup::new("ttl");
    let a = Workload::new(setup.cgroup.path(), &format!("kubepods/pod{POD_A}/{CTR_A}"));
    let ns = &setup.ns;
    let mut agent = setup.agent();
    let body = format!(
        r#"{{"target":{{"container_id":"{}"}},"ttl":"8s"}}"#,
        &CTR_A[..12]
    );
    let (status, created) = setup.control.call("POST", "/v1/quarantines", Some(&body));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), eperm());

    // Killed agent: the programs go with it (fail-open, documented) …
    assert!(agent.terminate().success());
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), "ok");
    // … and come back, from the state file, before the agent is ready.
    let mut agent = setup.agent();
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), eperm());
    assert_eq!(setup.control.ids(), vec![id]);

    // The TTL lifts it.
    eventually("ttl expiry", Duration::from_secs(15), || {
        probe_in(a.path(), ns, "tcp", &server(7000)) == "ok"
    });
    assert!(setup.control.ids().is_empty());
    let restarts_clean: Vec<Value> = agent
        .json_lines()
        .into_iter()
        .filter(|v| v["egret.action"] == "blocked")
        .collect();
    assert!(
        !restarts_clean.is_empty(),
        "the restarted agent reported its blocks"
    );
    assert!(agent.terminate().success());
}

#[test]
fn quarantine_refuses_the_host_scope() {
    if !privileged("quarantine_refuses_the_host_scope") {
        return;
    }
    let setup = Setup::new("refuse");
    // A non-container directory directly below the scope is not a target,
    // and the scope itself never resolves.
    let _plain = Workload::new(setup.cgroup.path(), "system.slice");
    let mut agent = setup.agent();
    let (status, body) = setup.control.call(
        "POST",
        "/v1/quarantines",
        Some(r#"{"target":{"container_id":"system.slice"}}"#),
    );
    assert_eq!(status, 404, "{body}");
    assert!(setup.control.ids().is_empty());
    assert!(agent.terminate().success());
}

/// Writes `text` as the kubelet publishes a ConfigMap: a fresh timestamped
/// directory, then an atomic swap of the `..data` symlink.
fn publish(dir: &std::path::Path, generation: u32, text: &str) {
    let data = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("quarantines.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("quarantines.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/quarantines.yaml", &link).unwrap();
    }
}

#[test]
fn quarantine_list_file_applies_through_symlink_swaps() {
    if !privileged("quarantine_list_file_applies_through_symlink_swaps") {
        return;
    }
    let mut setup = Setup::new("list");
    let list_dir = setup.dir.0.join("configmap");
    std::fs::create_dir_all(&list_dir).unwrap();
    publish(&list_dir, 1, "quarantines: []\n");
    setup.args.extend([
        "--quarantine-file".to_owned(),
        list_dir.join("quarantines.yaml").display().to_string(),
    ]);
    let a = Workload::new(setup.cgroup.path(), &format!("kubepods/pod{POD_A}/{CTR_A}"));
    let b = Workload::new(setup.cgroup.path(), &format!("kubepods/pod{POD_B}/{CTR_B}"));
    let ns = &setup.ns;
    let mut agent = setup.agent();
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), "ok");

    // Entries for pods on other nodes are ignored; ours is applied.
    publish(
        &list_dir,
        2,
        &format!(
            "quarantines:\n  - target: {{pod_uid: 00000000-0000-4000-8000-00000000abcd}}\n  - target: {{pod_uid: {POD_A}}}\n    reason: SOAR case 4711\n"
        ),
    );
    eventually("quarantine from the list", Duration::from_secs(10), || {
        probe_in(a.path(), ns, "tcp", &server(7000)) == eperm()
    });
    assert_eq!(probe_in(b.path(), ns, "tcp", &server(7000)), "ok");
    let (_, list) = setup.control.call("GET", "/v1/quarantines", None);
    let entries = list["quarantines"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert!(
        entries[0]["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("file:")
    );

    // A broken list changes nothing; removing the entry lifts it.
    publish(&list_dir, 3, "quarantines: [{target: {colour: red}}]\n");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(probe_in(a.path(), ns, "tcp", &server(7000)), eperm());
    publish(&list_dir, 4, "quarantines: []\n");
    eventually("lifted by the list", Duration::from_secs(10), || {
        probe_in(a.path(), ns, "tcp", &server(7000)) == "ok"
    });
    assert!(agent.terminate().success());
}
