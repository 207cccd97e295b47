//! Issue 20: `evt.res`/`evt.rawres` are the connect's real result (Falco's
//! exit-event semantics), for syscalls and io_uring, matched to the
//! kernel-copied address of the sock_addr hook; rules that read the result
//! wait for it, and a blackholed destination still alerts at the deadline.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command},
    time::Duration,
};

use egret::kernel::KernelProbes;
use egret_common::Hook;
use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, scaled},
    cgroup::TestCgroup,
    control::Listener,
    free_port, http,
    netns::{NetNs, V4_SERVER, V6_SERVER},
};

/// A destination routed to a next hop whose MAC answers nothing: SYNs
/// leave and vanish (no ARP failure, no ICMP), so a blocking connect hangs
/// for the kernel's SYN retries (about two minutes).
const BLACKHOLE: &str = "203.0.113.200";

/// `Connect result` reads the result, so it waits for it; `Falco outbound`
/// is the `outbound` macro's result test, verbatim; `Attempt` reads no
/// result (its output does), so it alerts at the attempt.
const RULES: &str = "
- macro: falco_result_ok
  condition: (evt.rawres >= 0 or evt.res = EINPROGRESS)
- list: result_test_hosts
  items: [198.51.100.1, 2001:db8::1, 203.0.113.200]
- rule: Connect result
  desc: every connect to the test hosts, with its result
  condition: evt.type = connect and fd.sip in (result_test_hosts) and evt.rawres <= 0
  output: res=%evt.res raw=%evt.rawres args=%evt.args pid=%proc.pid
  priority: NOTICE
- rule: Falco outbound
  desc: Falco's outbound macro's result condition
  condition: evt.type = connect and fd.sip in (result_test_hosts) and falco_result_ok
  output: outbound res=%evt.res pid=%proc.pid
  priority: NOTICE
- rule: Attempt
  desc: reads no result
  condition: evt.type = connect and fd.sip = 203.0.113.200
  output: attempt res=%evt.res pid=%proc.pid
  priority: NOTICE
";

/// An agent running [`RULES`] (shared with `kernel_hooks.rs`, which runs on 6.1).
pub(crate) fn agent(dir: &TempDir, extra: &[&str]) -> Agent {
    let rules = dir.write("result.yaml", RULES).display().to_string();
    let mut args = vec!["run", "--rules", &rules, "--rule-matching", "all"];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

fn alert(agent: &Agent, rule: &str, pid: u32) -> Value {
    agent
        .wait_json(
            |v| v["rule"] == rule && v["output_fields"]["proc.pid"] == pid,
            scaled(Duration::from_secs(10)),
        )
        .unwrap_or_else(|| {
            panic!(
                "no {rule} alert for pid {pid}; stderr:\n{}",
                agent.stderr().join("\n")
            )
        })
}

fn alerted(agent: &Agent, rule: &str, pid: u32) -> bool {
    agent
        .json_lines()
        .iter()
        .any(|v| v["rule"] == rule && v["output_fields"]["proc.pid"] == pid)
}

fn result_of(alert: &Value) -> (String, i64) {
    let fields = &alert["output_fields"];
    (
        fields["evt.res"].as_str().unwrap_or_default().to_string(),
        fields["evt.rawres"].as_i64().unwrap_or(i64::MIN),
    )
}

/// The `Connect result` alert for `pid`, with this result in every field.
pub(crate) fn assert_result(agent: &Agent, pid: u32, res: &str, raw: i64) -> Value {
    let alert = alert(agent, "Connect result", pid);
    assert_eq!(result_of(&alert), (res.to_string(), raw), "{alert}");
    let args = alert["output_fields"]["evt.args"]
        .as_str()
        .unwrap_or_default();
    assert!(
        args.starts_with(&format!("res={raw}({res}) addr=")),
        "{alert}"
    );
    alert
}

#[test]
fn blocking_connects_carry_success_and_refusal() {
    if !support::privileged("blocking_connects_carry_success_and_refusal") {
        return;
    }
    let dir = TempDir::new("result-blocking");
    let agent = agent(&dir, &[]);
    let ns = NetNs::new("result-blocking");
    let _open = Listener::start(&ns, &format!("{V4_SERVER}:7311"));
    let probe = support::probe_path();

    let (ok, _) = ns.run(&probe, &["tcp-blocking", &format!("{V4_SERVER}:7311")]);
    let (refused, _) = ns.run(&probe, &["tcp-blocking", &format!("{V4_SERVER}:7312")]);
    let (refused6, _) = ns.run(&probe, &["tcp-blocking", &format!("[{V6_SERVER}]:7312")]);

    let success = assert_result(&agent, ok, "SUCCESS", 0);
    assert!(
        success["output"]
            .as_str()
            .is_some_and(|o| o.contains(&format!("args=res=0(SUCCESS) addr={V4_SERVER}:7311"))),
        "{success}"
    );
    assert_result(&agent, refused, "ECONNREFUSED", -111);
    assert_result(&agent, refused6, "ECONNREFUSED", -111);
    // Falco's `(evt.rawres >= 0 or evt.res = EINPROGRESS)`: the success
    // fires, the refusals do not (evaluated in the same batch as their
    // `Connect result` alert, already written).
    let outbound = alert(&agent, "Falco outbound", ok);
    assert_eq!(
        outbound["output_fields"]["evt.res"], "SUCCESS",
        "{outbound}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alerted(&agent, "Falco outbound", refused));
    assert!(!alerted(&agent, "Falco outbound", refused6));
}

#[test]
fn non_blocking_connects_are_in_progress() {
    if !support::privileged("non_blocking_connects_are_in_progress") {
        return;
    }
    let dir = TempDir::new("result-nonblock");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let listen_arg = listen.to_string();
    let agent = agent(&dir, &["--listen", &listen_arg]);
    let ns = NetNs::new("result-nonblock");
    let _open = Listener::start(&ns, &format!("{V4_SERVER}:7321"));
    let probe = support::probe_path();
    // `tcp` is a non-blocking connect then poll (connect_timeout): connect
    // itself returns EINPROGRESS, to an open and to a closed port alike.
    let (open, _) = ns.run(&probe, &["tcp", &format!("{V4_SERVER}:7321")]);
    let (closed, _) = ns.run(&probe, &["tcp", &format!("{V4_SERVER}:7322")]);
    assert_result(&agent, open, "EINPROGRESS", -115);
    assert_result(&agent, closed, "EINPROGRESS", -115);
    alert(&agent, "Falco outbound", closed);

    // The results were matched, and the kernel slot counted them.
    let metric = |name: &str| -> f64 {
        let (_, body) = http::get(listen, "/metrics").expect("scrape");
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{body}"))
    };
    assert!(metric("egret_connect_results_total{outcome=\"result\"}") >= 2.0);
    assert!(metric("egret_kernel_emitted_total{hook=\"connect_result\"}") >= 2.0);
    assert_eq!(
        metric("egret_connect_results_total{outcome=\"table_full\"}"),
        0.0
    );
}

#[test]
fn io_uring_connects_carry_the_completions_result() {
    if !support::privileged("io_uring_connects_carry_the_completions_result") {
        return;
    }
    let dir = TempDir::new("result-uring");
    let agent = agent(&dir, &[]);
    let ns = NetNs::new("result-uring");
    let _open4 = Listener::start(&ns, &format!("{V4_SERVER}:7331"));
    let _open6 = Listener::start(&ns, &format!("[{V6_SERVER}]:7331"));
    let probe = support::probe_path();
    let (ok4, _) = ns.run(&probe, &["uring-connect", &format!("{V4_SERVER}:7331")]);
    let (ok6, _) = ns.run(&probe, &["uring-connect", &format!("[{V6_SERVER}]:7331")]);
    let (refused, _) = ns.run(&probe, &["uring-connect", &format!("{V4_SERVER}:7332")]);
    // io_uring waits for the handshake itself: the CQE holds the final
    // result, never EINPROGRESS.
    assert_result(&agent, ok4, "SUCCESS", 0);
    assert_result(&agent, ok6, "SUCCESS", 0);
    assert_result(&agent, refused, "ECONNREFUSED", -111);
    alert(&agent, "Falco outbound", ok4);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alerted(&agent, "Falco outbound", refused));
}

/// Kills the hanging probe whatever the test's outcome.
struct Hanging(Child);

impl Drop for Hanging {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn blackholed_connect_alerts_at_the_deadline_in_progress() {
    if !support::privileged("blackholed_connect_alerts_at_the_deadline_in_progress") {
        return;
    }
    let dir = TempDir::new("result-blackhole");
    let agent = agent(&dir, &["--connect-result-wait-ms", "500"]);
    let ns = NetNs::new("result-blackhole");
    for args in [
        &[
            "neigh",
            "add",
            "198.51.100.254",
            "lladdr",
            "02:00:00:00:20:20",
            "dev",
            "v0",
            "nud",
            "permanent",
        ][..],
        &[
            "route",
            "add",
            &format!("{BLACKHOLE}/32"),
            "via",
            "198.51.100.254",
            "dev",
            "v0",
        ],
    ] {
        let status = Command::new("ip")
            .args(["-n", &ns.name])
            .args(args)
            .status()
            .expect("ip");
        assert!(status.success(), "ip {args:?}");
    }
    let mut child = Hanging(
        ns.command(support::probe_path())
            .args(["tcp-blocking", &format!("{BLACKHOLE}:7341")])
            .spawn()
            .expect("spawn probe"),
    );
    let pid = child.0.id();
    // The rule without result fields alerts at the attempt; the result rules
    // at the deadline, in progress, while connect is still blocked.
    let attempt = alert(&agent, "Attempt", pid);
    assert_eq!(attempt["output_fields"]["evt.res"], "EINPROGRESS");
    assert_result(&agent, pid, "EINPROGRESS", -115);
    alert(&agent, "Falco outbound", pid);
    assert!(
        child.0.try_wait().expect("probe status").is_none(),
        "the connect must still be blocked when the deadline alert is out"
    );
}

#[test]
fn connect_result_counters_count_each_result() {
    if !support::privileged("connect_result_counters_count_each_result") {
        return;
    }
    let cgroup = TestCgroup::new("result-counters");
    let mut probes = KernelProbes::load(1 << 20).expect("load the kernel programs");
    let _ring = probes.take_events().expect("events ring buffer");
    probes
        .attach(cgroup.path())
        .expect("attach to the test cgroup");
    assert!(probes.sees_connect_results(), "6.x has sys_exit_connect");
    let ns = NetNs::new("result-counters");
    let probe = support::probe_path();
    let target = format!("{V4_SERVER}:7351");
    ns.run_in_cgroup(cgroup.path(), &probe, &["tcp-blocking", &target]);
    ns.run_in_cgroup(cgroup.path(), &probe, &["uring-connect", &target]);
    // Only this cgroup's connects are emitted, so only theirs have results,
    // though the exit tracepoints are machine-wide.
    let counters = probes.counters().expect("read the kernel counters");
    let results = counters[Hook::ConnectResult as usize];
    assert_eq!(results.seen, 2, "{results:?}");
    assert_eq!(results.emitted, 2, "{results:?}");
    assert_eq!(results.ringbuf_full, 0, "{results:?}");
}
