//! Issue 17 end to end: real containerd containers carrying pod labels make
//! connections; `egret advise networkpolicy` turns the agent's audit log
//! into the policy for that workload; the baseline rule fires for a new
//! destination after learning, not for known ones, across an agent restart.
//!
//! Network safety: containers run in their own empty network namespaces,
//! where TEST-NET connects fail with ENETUNREACH after the hook has fired.
use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs, unique_id},
};

/// A pod of a Deployment-like workload: its sandbox (holding the pod
/// labels, with a per-pod `pod-template-hash`) stays up; `cmd` runs in an
/// app container of it.
fn run_in_pod(containerd: &Containerd, rootfs: &Path, pod: &Pod, app: &str, hash: &str, cmd: &str) {
    let sandbox_id = unique_id("sandbox");
    let sandbox = RunSpec::new(
        &sandbox_id,
        Source::Rootfs(rootfs.to_path_buf()),
        &["sleep", "60"],
    )
    .sandbox_of(pod)
    .label("app", app)
    .label("pod-template-hash", hash);
    containerd.run_detached(&sandbox);
    let app_id = unique_id("app");
    let spec = RunSpec::new(
        &app_id,
        Source::Rootfs(rootfs.to_path_buf()),
        &["sh", "-c", cmd],
    )
    .in_pod(pod, "main")
    .label("io.cri-containerd.kind", "container")
    .annotation("io.kubernetes.cri.sandbox-id", &sandbox_id);
    containerd.run(&spec);
}

fn pod(namespace: &str, name: &str) -> Pod {
    Pod {
        name: name.into(),
        namespace: namespace.into(),
        uid: unique_id("uid"),
    }
}

fn event_to(ns: &str, ip: &'static str, port: u16) -> impl Fn(&Value) -> bool {
    let ns = ns.to_owned();
    move |v: &Value| {
        v.get("rule").is_none()
            && v["k8s.ns.name"] == ns
            && v["fd.sip"] == ip
            && v["fd.sport"] == port
    }
}

fn wait(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    agent.wait_json(pred, EVENT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no {what} within {EVENT_TIMEOUT:?}; stderr:\n{}",
            agent.stderr().join("\n")
        )
    })
}

fn kubernetes_validate(file: &Path) {
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.37.0",
        ])
        .arg(file)
        .output()
        .expect("python3 -m kubernetes_validate (scripts/setup-deploy.sh)");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !report.contains("ERROR"),
        "{report}"
    );
}

#[test]
fn observed_container_egress_becomes_its_networkpolicy() {
    if !support::privileged("observed_container_egress_becomes_its_networkpolicy") {
        return;
    }
    let dir = TempDir::new("advise-e2e");
    let audit = dir.0.join("node-a/audit.jsonl");
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let socket = containerd.socket().display().to_string();
    let audit_arg = audit.display().to_string();
    let agent = Agent::start(&["run", "--audit", &audit_arg, "--containerd-socket", &socket]);
    let ns = unique_id("shop");
    // Two pods of one workload (a rollout: new pod-template-hash).
    run_in_pod(
        &containerd,
        &rootfs,
        &pod(&ns, "web-1"),
        "web",
        "5d8f",
        "nc -w1 198.51.100.7 443; sleep 1",
    );
    run_in_pod(
        &containerd,
        &rootfs,
        &pod(&ns, "web-2"),
        "web",
        "77aa",
        "nc -w1 2001:db8::7 8443; nc -w1 198.51.100.9 443; sleep 1",
    );
    // The audit file is written per batch; wait for the agent to have
    // printed nothing we need and then for the file to hold all three.
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    let needed = [
        ("198.51.100.7", 443),
        ("2001:db8::7", 8443),
        ("198.51.100.9", 443),
    ];
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if needed
            .iter()
            .all(|(ip, port)| events.iter().any(event_to(&ns, ip, *port)))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log lacks the pods' events:\n{text}\n{}",
            agent.stderr().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(support::agent_path())
        .args(["advise", "networkpolicy", "--from"])
        .arg(dir.0.join("node-a"))
        .args(["--namespace", &ns])
        .output()
        .expect("egret advise");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 malformed"), "{stderr}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let file = dir.write("policy.yaml", &yaml);
    kubernetes_validate(&file);
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        2,
        "one workload policy and the default deny:\n{yaml}"
    );
    let web = docs
        .iter()
        .find(|d| d["spec"]["podSelector"]["matchLabels"]["app"] == "web")
        .unwrap_or_else(|| panic!("no policy for app=web:\n{yaml}"));
    assert_eq!(web["metadata"]["namespace"], ns.as_str());
    assert_eq!(
        web["spec"]["podSelector"]["matchLabels"],
        serde_json::json!({"app": "web"}),
        "pod-template-hash dropped"
    );
    let egress = web["spec"]["egress"].as_array().unwrap();
    let rule_for = |cidr: &str| {
        egress
            .iter()
            .find(|r| r["to"][0]["ipBlock"]["cidr"] == cidr)
            .unwrap_or_else(|| panic!("no rule for {cidr}:\n{yaml}"))
    };
    assert_eq!(
        rule_for("198.51.100.0/28")["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 443}])
    );
    assert_eq!(
        rule_for("2001:db8::7/128")["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 8443}])
    );
    assert!(
        egress
            .iter()
            .any(|r| r["to"][0]["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns"),
        "DNS rule"
    );
    assert!(
        yaml.contains("# 2001:db8::7 TCP/8443: 1 attempt, first "),
        "{yaml}"
    );
    assert!(
        docs.iter()
            .any(|d| d["metadata"]["name"] == "egret-default-deny-egress")
    );
}

const BASELINE_RULE: &str = "Workload Contacted Destination Outside Its Baseline";

#[test]
fn baseline_rule_fires_for_new_destinations_after_learning_across_restarts() {
    if !support::privileged(
        "baseline_rule_fires_for_new_destinations_after_learning_across_restarts",
    ) {
        return;
    }
    let dir = TempDir::new("baseline-e2e");
    let profile = dir.0.join("state/baseline.json");
    let config = dir.write(
        "egret.yaml",
        &format!(
            "baseline:\n  enabled: true\n  path: {}\n  learning_seconds: 3\n  flush_seconds: 1\n",
            serde_json::to_string(&profile.display().to_string()).unwrap()
        ),
    );
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let socket = containerd.socket().display().to_string();
    let config_arg = config.display().to_string();
    let args = [
        "run",
        "--config",
        &config_arg,
        "--audit",
        "-",
        "--containerd-socket",
        &socket,
    ];
    let ns = unique_id("pay");

    let mut agent = Agent::start(&args);
    run_in_pod(
        &containerd,
        &rootfs,
        &pod(&ns, "api-1"),
        "api",
        "aaaa",
        "nc -w1 198.51.100.7 443; sleep 1",
    );
    let learned = wait(&agent, "learning event", event_to(&ns, "198.51.100.7", 443));
    assert_eq!(learned["egret.dest.new_for_workload"], false, "{learned}");
    assert!(!agent.json_lines().iter().any(|v| v["rule"] == BASELINE_RULE && v["output_fields"]["k8s.ns.name"] == ns.as_str()));
    // Past the learning period, then a restart: the profile must carry it.
    std::thread::sleep(Duration::from_secs(4));
    assert!(agent.terminate().success(), "{}", agent.stderr().join("\n"));
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(&profile).expect("profile written at shutdown"),
    )
    .unwrap();
    let workload = saved["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["key"]["namespace"] == ns.as_str())
        .unwrap_or_else(|| panic!("workload not in the profile: {saved}"));
    assert_eq!(workload["key"]["labels"], serde_json::json!({"app": "api"}));

    let agent = Agent::start(&args);
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("workload baselines on"))
    );
    // A new pod of the same workload: the known destination stays quiet,
    // the new one alerts.
    run_in_pod(
        &containerd,
        &rootfs,
        &pod(&ns, "api-2"),
        "api",
        "bbbb",
        "nc -w1 198.51.100.7 443; nc -w1 203.0.113.9 443; sleep 1",
    );
    let known = wait(&agent, "known event", event_to(&ns, "198.51.100.7", 443));
    assert_eq!(known["egret.dest.new_for_workload"], false, "{known}");
    let fresh = wait(&agent, "new event", event_to(&ns, "203.0.113.9", 443));
    assert_eq!(fresh["egret.dest.new_for_workload"], true, "{fresh}");
    let alert = wait(&agent, "baseline alert", |v| {
        v["rule"] == BASELINE_RULE && v["output_fields"]["k8s.ns.name"] == ns.as_str()
    });
    assert_eq!(
        alert["output_fields"]["fd.name"], "203.0.113.9:443",
        "{alert}"
    );
    let alerts: Vec<Value> = agent
        .json_lines()
        .into_iter()
        .filter(|v| v["rule"] == BASELINE_RULE && v["output_fields"]["k8s.ns.name"] == ns.as_str())
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "only the new destination alerts: {alerts:?}"
    );
}
