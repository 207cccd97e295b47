//! Issue 16, the responder's side: the control API over TLS with client
//! certificates, driven by the `egret quarantine` CLI; rules tagged
//! `egret.quarantine` acting on a match (and only logging in dry run); the
//! node's control URL in the alerts. Workloads are processes in
//! kubelet-shaped cgroups below a TEST cgroup, the only place the enforcing
//! programs attach; destinations are this suite's TEST-NET addresses inside
//! a test namespace.
use std::time::{Duration, Instant};

use crate::support::{
    TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    cgroup::TestCgroup,
    control::{
        Listener, Pki, Q_V4, Q_V4_ALLOWED, Q_V4_TRIGGER, Workload, add_quarantine_addresses, eperm,
        probe_in, quarantine_cli,
    },
    http::Receiver,
    netns::NetNs,
    privileged,
    prometheus::free_port,
};

const POD_A: &str = "6a1c2b4a-0d9e-4c7b-8a6f-5e4d3c2b1a16";
const POD_B: &str = "6a1c2b4a-0d9e-4c7b-8a6f-5e4d3c2b1a17";
const CTR_A: &str = "c16b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const CTR_B: &str = "d16b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const TOKEN: &str = "respond-token-0123456789abcdef";

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(port: u16, series: &str) -> f64 {
    let (_, text) =
        crate::support::http::get(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics")
            .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn at(addr: &str) -> String {
    format!("{addr}:7000")
}

#[test]
fn quarantine_over_mtls_with_the_cli_refuses_foreign_and_missing_certificates() {
    if !privileged("quarantine_over_mtls_with_the_cli") {
        return;
    }
    let dir = TempDir::new("q-mtls");
    let pki = Pki::generate(dir.path());
    let token_file = dir.write("token", &format!("{TOKEN}\n"));
    let wrong_token = dir.write("wrong", "wrong-token-0123456789abcdef\n");
    let cgroup = TestCgroup::new("q-mtls");
    let ns = NetNs::new("qmtls");
    add_quarantine_addresses(&ns);
    let _listener = Listener::start(&ns, "0.0.0.0:7000");
    let a = Workload::new(cgroup.path(), &format!("kubepods/pod{POD_A}/{CTR_A}"));
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let s = |p: &std::path::Path| p.display().to_string();
    let state = dir.path().join("state.json");
    let mut agent = Agent::start(&[
        "run",
        "--cgroup",
        &s(cgroup.path()),
        "--no-identity",
        "--control-listen",
        &format!("127.0.0.1:{port}"),
        "--control-token-file",
        &s(&token_file),
        "--control-tls-cert",
        &s(&pki.server_cert),
        "--control-tls-key",
        &s(&pki.server_key),
        "--control-client-ca",
        &s(&pki.ca),
        "--quarantine-state",
        &s(&state),
    ]);
    let (ca, cert, key, other_cert, other_key, token) = (
        s(&pki.ca),
        s(&pki.client_cert),
        s(&pki.client_key),
        s(&pki.other_cert),
        s(&pki.other_key),
        s(&token_file),
    );
    let good = |rest: &[&str]| {
        let mut args = vec![
            "--url",
            &url,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--token-file",
            &token,
        ];
        args.extend_from_slice(rest);
        quarantine_cli(&args)
    };
    let (code, out, err) = good(&["list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ID"), "{out}");

    // No client certificate, or one from another CA: the handshake fails
    // (exit 3) and nothing changes; the right certificate with a wrong
    // token is 401 (exit 1).
    let body = ["add", "--pod-uid", POD_A];
    let wrong = s(&wrong_token);
    let no_cert = [
        &["--url", &url, "--ca", &ca, "--token-file", &token][..],
        &body,
    ]
    .concat();
    let foreign = [
        &[
            "--url",
            &url,
            "--ca",
            &ca,
            "--cert",
            &other_cert,
            "--key",
            &other_key,
            "--token-file",
            &token,
        ][..],
        &body,
    ]
    .concat();
    let bad_token = [
        &[
            "--url",
            &url,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--token-file",
            &wrong,
        ][..],
        &body,
    ]
    .concat();
    for (args, expected) in [(&no_cert, 3), (&foreign, 3), (&bad_token, 1)] {
        let (code, out, err) = quarantine_cli(args);
        assert_eq!(code, expected, "{args:?}: {out}{err}");
        assert!(err.starts_with("egret: error: "), "{err}");
    }
    let (_, out, _) = good(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("list --json");
    assert_eq!(
        listed["quarantines"].as_array().map(Vec::len),
        Some(0),
        "{out}"
    );
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4)), "ok");

    // The CLI's add, over mTLS: blocked, its allow list open; list names
    // the caller's certificate; remove restores.
    let (code, id, err) = good(&[
        "add",
        "--pod-uid",
        POD_A,
        "--allow",
        "203.0.113.64/26",
        "--reason",
        "case 16",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_owned();
    assert!(id.starts_with("q-"), "{id}");
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4)), eperm());
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4_ALLOWED)), "ok");
    let (_, out, _) = good(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let by = listed["quarantines"][0]["requested_by"]
        .as_str()
        .unwrap_or("");
    assert!(by.contains("token+cert:sha256:"), "{listed}");
    let (code, out, err) = good(&["add", "--pod-uid", POD_A]);
    assert_eq!(code, 1, "a duplicate is refused: {out}{err}");
    assert!(err.contains("409"), "{err}");
    let (code, out, _) = good(&["remove", &id]);
    assert_eq!((code, out.trim()), (0, format!("lifted {id}").as_str()));
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4)), "ok");
    let (code, _, err) = good(&["remove", &id]);
    assert_eq!(code, 1, "{err}");
    // Unreachable agent: exit 3.
    let (code, _, _) = quarantine_cli(&[
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
        "list",
    ]);
    assert_eq!(code, 3);
    assert!(agent.terminate().success());
}

fn rules(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "respond.yaml",
        &format!(
            "- rule: Exfiltration sink contacted
  desc: a workload reached the exfiltration sink; quarantine it
  condition: evt.type = connect and fd.sip = {Q_V4_TRIGGER} and egret.action = observed
  output: exfiltration sink contacted (container=%container.id connection=%fd.name)
  priority: CRITICAL
  tags: [network, egret.quarantine]
"
        ),
    )
}

struct RuleAgent {
    agent: Agent,
    metrics: u16,
    control: u16,
}

fn rule_agent(dir: &TempDir, cgroup: &TestCgroup, mode: &str, webhook: Option<&str>) -> RuleAgent {
    let rules = rules(dir);
    let token = dir.write("token", &format!("{TOKEN}\n"));
    let metrics = free_port();
    let control = free_port();
    let s = |p: &std::path::Path| p.display().to_string();
    let mut args = vec![
        "run".to_owned(),
        "--cgroup".into(),
        s(cgroup.path()),
        "--containerd-socket".into(),
        s(&dir.path().join("no-containerd.sock")),
        "--rules".into(),
        s(&rules),
        "--listen".into(),
        format!("127.0.0.1:{metrics}"),
        "--control-listen".into(),
        format!("127.0.0.1:{control}"),
        "--control-token-file".into(),
        s(&token),
        "--control-advertise".into(),
        "https://node-16.example.test:9465".into(),
        "--quarantine-state".into(),
        s(&dir.path().join(format!("state-{mode}.json"))),
        "--rule-actions".into(),
        mode.into(),
        "-o".into(),
        "control.rule_action_allow=[203.0.113.64/26]".into(),
        "-o".into(),
        "control.rule_action_ttl=10m".into(),
    ];
    if let Some(url) = webhook {
        args.extend(["--webhook".to_owned(), url.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    RuleAgent {
        agent: Agent::start(&args),
        metrics,
        control,
    }
}

#[test]
fn rule_action_quarantines_on_match_and_alerts_name_the_control_api() {
    if !privileged("rule_action_quarantines_on_match") {
        return;
    }
    let dir = TempDir::new("q-rule");
    let cgroup = TestCgroup::new("q-rule");
    let ns = NetNs::new("qrule");
    add_quarantine_addresses(&ns);
    let _listener = Listener::start(&ns, "0.0.0.0:7000");
    let a = Workload::new(cgroup.path(), &format!("kubepods/pod{POD_A}/{CTR_A}"));
    let b = Workload::new(cgroup.path(), &format!("kubepods/pod{POD_B}/{CTR_B}"));
    let receiver = Receiver::start().expect("webhook receiver");
    let url = receiver.url();
    let mut run = rule_agent(&dir, &cgroup, "enforce", Some(&url));

    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4)), "ok");
    // The match: detection first (the connect went through), then the
    // response quarantines the container within a tick.
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4_TRIGGER)), "ok");
    eventually("rule action applied", Duration::from_secs(10), || {
        probe_in(a.path(), &ns, "tcp", &at(Q_V4)) == eperm()
    });
    assert_eq!(
        probe_in(a.path(), &ns, "udp-sendto", &format!("{Q_V4}:9")),
        eperm()
    );
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4_ALLOWED)), "ok");
    assert_eq!(probe_in(b.path(), &ns, "tcp", &at(Q_V4)), "ok");
    let (code, out, err) = quarantine_cli(&[
        "--url",
        &format!("http://127.0.0.1:{}", run.control),
        "--token-file",
        &dir.path().join("token").display().to_string(),
        "list",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = &listed["quarantines"][0];
    assert_eq!(entry["target"]["container_id"], CTR_A, "{listed}");
    assert_eq!(entry["requested_by"], "rule:Exfiltration sink contacted");
    assert!(
        entry["expires_unix"].as_u64().is_some(),
        "ttl from the config"
    );
    assert_eq!(entry["allow"][0], "203.0.113.64/26");
    eventually("applied counted", Duration::from_secs(5), || {
        metric(
            run.metrics,
            "egret_rule_actions_total{mode=\"enforce\",outcome=\"applied\"}",
        ) >= 1.0
    });

    // The alert carries the node's control API (webhook payload).
    eventually("alert delivered", Duration::from_secs(10), || {
        receiver
            .requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("Exfiltration sink contacted"))
    });
    let request = receiver
        .requests()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("Exfiltration sink contacted"))
        .unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        payload["output_fields"]["egret.control.url"], "https://node-16.example.test:9465",
        "{payload}"
    );
    assert!(run.agent.terminate().success());
}

#[test]
fn rule_action_dry_run_only_logs_and_counts() {
    if !privileged("rule_action_dry_run_only_logs_and_counts") {
        return;
    }
    let dir = TempDir::new("q-dry");
    let cgroup = TestCgroup::new("q-dry");
    let ns = NetNs::new("qdry");
    add_quarantine_addresses(&ns);
    let _listener = Listener::start(&ns, "0.0.0.0:7000");
    let a = Workload::new(cgroup.path(), &format!("kubepods/pod{POD_A}/{CTR_A}"));
    let mut run = rule_agent(&dir, &cgroup, "dry_run", None);
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4_TRIGGER)), "ok");
    let logged = run
        .agent
        .wait_stderr(
            |l| l.contains("dry run") && l.contains(CTR_A),
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no dry-run log; stderr:\n{}", run.agent.stderr().join("\n")));
    assert!(logged.contains("Exfiltration sink contacted"), "{logged}");
    eventually("dry run counted", Duration::from_secs(5), || {
        metric(
            run.metrics,
            "egret_rule_actions_total{mode=\"dry_run\",outcome=\"dry_run\"}",
        ) >= 1.0
    });
    // Nothing was applied: the workload still connects, the list is empty.
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4)), "ok");
    assert_eq!(probe_in(a.path(), &ns, "tcp", &at(Q_V4_TRIGGER)), "ok");
    let (code, out, _) = quarantine_cli(&[
        "--url",
        &format!("http://127.0.0.1:{}", run.control),
        "--token-file",
        &dir.path().join("token").display().to_string(),
        "list",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"quarantines\":[]"), "{out}");
    assert!(run.agent.terminate().success());
}
