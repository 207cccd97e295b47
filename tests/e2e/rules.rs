//! Issue 4 end to end: the seed article's rule, verbatim, against a real
//! container; rules-driven in-kernel filtering; reloads; the check commands.
use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs, unique_id},
    netns::{NetNs, V4_SERVER},
};

/// The rule from the seed article (shared/seeds/004_*), character for character.
pub(crate) const SEED_RULE: &str = "- rule: Outbound Connection in Container
  desc: Detects outbound network connection from container to external IP
  condition: >
    evt.type = connect and
    container and
    not fd.sip in (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
  output: >
    Container outbound connection to external IP: (command=%proc.cmdline connection=%fd.name user=%user.name)
  priority: WARNING
  tags: [network, outbound]
";

fn alerts(agent: &Agent, rule: &str) -> Vec<Value> {
    agent
        .json_lines()
        .into_iter()
        .filter(|v| v["rule"] == rule)
        .collect()
}

#[test]
fn seed_rule_alerts_once_for_external_and_never_for_rfc1918() {
    if !support::privileged("seed_rule_alerts_once_for_external_and_never_for_rfc1918") {
        return;
    }
    let dir = TempDir::new("seed");
    let rules = dir.write("seed.yaml", SEED_RULE);
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let socket = containerd.socket().display().to_string();
    let rules_arg = rules.display().to_string();
    let mut agent = Agent::start(&["run", "--rules", &rules_arg, "--containerd-socket", &socket]);
    let pod = Pod {
        name: "shop-5c8d".into(),
        namespace: "shop".into(),
        uid: "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d".into(),
    };

    // Both attempts from containers in their own empty netns: the hook fires,
    // nothing leaves the machine. RFC1918 first, so that once the external
    // alert is in, the private one would have been too.
    for (tag, target) in [
        ("private", "10.20.30.40 443"),
        ("external", "198.51.100.7 443"),
    ] {
        let id = unique_id(tag);
        let command = format!("nc -w1 {target}; sleep 1");
        let spec = RunSpec::new(&id, Source::Rootfs(rootfs.clone()), &["sh", "-c", &command])
            .in_pod(&pod, "web");
        containerd.run(&spec);
    }

    let rule = "Outbound Connection in Container";
    let alert = agent
        .wait_json(|v| v["rule"] == rule, EVENT_TIMEOUT)
        .unwrap_or_else(|| panic!("no alert; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(
        alert["output"],
        "Container outbound connection to external IP: (command=nc -w1 198.51.100.7 443 \
         connection=198.51.100.7:443 user=root)"
    );
    assert_eq!(alert["priority"], "Warning");
    assert_eq!(alert["tags"], serde_json::json!(["network", "outbound"]));
    assert_eq!(alert["source"], "syscall");
    assert_eq!(alert["output_fields"]["fd.name"], "198.51.100.7:443");
    assert!(alert["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(alert["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(alerts(&agent, rule).len(), 1, "exactly one alert");

    // The seed rule excludes RFC1918 everywhere, so the kernel dropped the
    // private attempt before userspace: it shows in the exit counters.
    assert!(agent.terminate().success());
    let stderr = agent.stderr();
    let connect4 = stderr
        .iter()
        .find(|l| l.contains("kernel counters") && l.contains("connect4"))
        .expect("counters at exit");
    let ignored: u64 = connect4
        .split("ignored=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ignored count");
    assert!(
        ignored >= 1,
        "RFC1918 attempt filtered in the kernel: {connect4}"
    );
    assert!(
        stderr.iter().any(|l| l.contains("ignored_networks=7")),
        "4 built-in + 3 RFC1918 networks programmed: {stderr:?}"
    );
}

const RULE_A: &str = "- rule: Rule A
  desc: first version
  condition: evt.type = connect and fd.sip = 198.51.100.1
  output: A %proc.name %fd.name
  priority: NOTICE
";

const RULE_B: &str = "- rule: Rule B
  desc: second version
  condition: evt.type = connect and fd.sip = 198.51.100.1 and fd.sport = 8080
  output: B %proc.name %fd.name
  priority: CRITICAL
";

#[test]
fn reload_swaps_rules_and_keeps_old_ones_on_a_broken_file() {
    if !support::privileged("reload_swaps_rules_and_keeps_old_ones_on_a_broken_file") {
        return;
    }
    let dir = TempDir::new("reload");
    let rules_dir = dir.0.join("rules.d");
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    std::fs::write(rules_dir.join("a.yaml"), RULE_A).expect("rule a");
    let rules_arg = rules_dir.display().to_string();
    let agent = Agent::start(&["run", "--no-identity", "--rules", &rules_arg]);
    let ns = NetNs::new("reload");
    let probe = support::probe_path();
    let connect = || ns.run(&probe, &["tcp", &format!("{V4_SERVER}:8080")]).0;

    connect();
    agent
        .wait_json(|v| v["rule"] == "Rule A", EVENT_TIMEOUT)
        .expect("rule A fires");

    // A broken file: the reload fails, the old rules keep running.
    std::fs::write(
        rules_dir.join("a.yaml"),
        "- rule: Rule A\n  condition: (((\n",
    )
    .expect("break");
    agent
        .wait_stderr(|l| l.contains("rules not reloaded"), EVENT_TIMEOUT)
        .expect("failed reload is logged");
    let before = alerts(&agent, "Rule A").len();
    connect();
    assert!(
        agent.wait_json_count(|v| v["rule"] == "Rule A", before + 1, EVENT_TIMEOUT),
        "rule A still active after a broken file"
    );

    // A good new version is picked up on its own (file change) ...
    std::fs::write(rules_dir.join("a.yaml"), RULE_B).expect("rule b");
    agent
        .wait_stderr(
            |l| l.contains("rules reloaded") && l.contains("rule files changed"),
            EVENT_TIMEOUT,
        )
        .expect("reload on change");
    connect();
    let alert = agent
        .wait_json(|v| v["rule"] == "Rule B", EVENT_TIMEOUT)
        .expect("rule B fires after reload");
    assert_eq!(alert["priority"], "Critical");

    // ... and SIGHUP reloads on demand.
    // SAFETY: signalling the agent child by pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent
        .wait_stderr(
            |l| l.contains("rules reloaded") && l.contains("SIGHUP"),
            EVENT_TIMEOUT,
        )
        .expect("reload on SIGHUP");
}

fn egret(args: &[&str]) -> (i32, String) {
    let output = Command::new(crate::support::agent_path())
        .args(args)
        .output()
        .expect("run egret");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn rules_check_reports_every_problem_with_positions() {
    let dir = TempDir::new("check");
    let good = dir.write("seed.yaml", SEED_RULE);
    let (code, out) = egret(&["rules", "check", &good.display().to_string()]);
    assert_eq!(code, 0, "{out}");

    let bad = dir.write(
        "bad.yaml",
        "- rule: Bad priority\n  desc: d\n  condition: evt.type = connect\n  output: o\n  priority: LOUD\n\
         - rule: Unknown field\n  desc: d\n  condition: proc.sid = 1\n  output: o\n  priority: INFO\n",
    );
    let (code, out) = egret(&["rules", "check", &bad.display().to_string()]);
    assert_eq!(code, 1, "{out}");
    let name = bad.display().to_string();
    assert!(out.contains(&format!("{name}:5:13: error")), "{out}");
    assert!(out.contains("proc.sid"), "{out}");
    assert!(out.contains(&format!("{name}:6:3: error")), "{out}");

    // The bundled rules directory checks clean.
    let bundled = crate::support::repo_root().join("rules");
    let (code, out) = egret(&["rules", "check", &bundled.display().to_string()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn config_check_names_file_line_and_column() {
    let dir = TempDir::new("config");
    let good = dir.write("egret.yaml", "listen: 127.0.0.1:9464\nrule_matching: all\n");
    let (code, out) = egret(&["config", "check", &good.display().to_string()]);
    assert_eq!((code, out.trim().ends_with(": ok")), (0, true), "{out}");
    let bad = dir.write(
        "bad.yaml",
        "listen: 127.0.0.1:9464\nkernel:\n  ringbuf: 4096\n",
    );
    let (code, out) = egret(&["config", "check", &bad.display().to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{}:3:3:", bad.display())), "{out}");
    assert!(out.contains("ringbuf"), "{out}");
}
