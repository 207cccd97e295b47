//! Issue 18: every kernel counter slot is read. The exec slot used to be
//! skipped by `KernelProbes::counters`, so lost exec records were invisible.
use std::process::Command;

use egret::kernel::KernelProbes;
use egret_common::Hook;

use crate::support::{
    self,
    agent::Agent,
    cgroup::TestCgroup,
    netns::{NetNs, V4_SERVER},
};

#[test]
fn exec_counters_and_exec_losses_are_read_through_kernel_probes() {
    if !support::privileged("exec_counters_and_exec_losses_are_read_through_kernel_probes") {
        return;
    }
    let cgroup = TestCgroup::new("exec-counters");
    // One page of ring buffer holds two exec records; nothing drains it, so
    // the execs below must overflow it and be counted as lost.
    let mut probes = KernelProbes::load(4096).expect("load the kernel programs");
    let _ring = probes.take_events().expect("events ring buffer");
    probes
        .attach(cgroup.path())
        .expect("attach to the test cgroup");

    const EXECS: u64 = 8;
    for _ in 0..EXECS {
        let status = Command::new("/bin/true").status().expect("run /bin/true");
        assert!(status.success());
    }

    let counters = probes.counters().expect("read the kernel counters");
    assert_eq!(counters.len(), Hook::COUNT as usize);
    // The exec tracepoint is machine-wide: other processes add to the counts,
    // never take from them.
    let exec = counters[Hook::Exec as usize];
    assert!(exec.seen >= EXECS, "exec slot not read: {exec:?}");
    assert!(exec.emitted >= 1, "{exec:?}");
    assert!(
        exec.ringbuf_full >= EXECS - 2,
        "exec records lost to a full ring buffer must be visible: {exec:?}"
    );
    assert!(exec.emitted + exec.ringbuf_full <= exec.seen, "{exec:?}");
}

#[test]
fn exit_summary_is_machine_readable() {
    if !support::privileged("exit_summary_is_machine_readable") {
        return;
    }
    let dir = support::TempDir::new("summary");
    let path = dir.0.join("summary.json");
    let path_arg = path.display().to_string();
    let mut agent = Agent::start(&["run", "--audit", "-", "--summary", &path_arg]);
    let ns = NetNs::new("summary");
    let (pid, _) = ns.run(
        &support::probe_path(),
        &["tcp", &format!("{V4_SERVER}:8080")],
    );
    agent.wait_event_for_pid(pid);
    let status = agent.terminate();
    assert!(status.success(), "clean exit: {status:?}");

    let text = std::fs::read_to_string(&path).expect("summary written at exit");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("summary is JSON");
    for hook in Hook::ALL {
        assert!(
            summary["kernel"][hook.name()]["seen"].is_u64(),
            "{} missing: {summary}",
            hook.name()
        );
    }
    assert!(summary["kernel"]["connect4"]["emitted"].as_u64() >= Some(1));
    assert!(summary["kernel"]["exec"]["seen"].as_u64() >= Some(1));
    let pipeline = &summary["pipeline"];
    let events = pipeline["events"].as_u64().expect("events");
    assert!(events >= 1, "{summary}");
    assert_eq!(
        pipeline["alerted"]
            .as_u64()
            .zip(pipeline["no_match"].as_u64())
            .map(|(a, n)| a + n),
        Some(events),
        "{summary}"
    );
    assert!(pipeline["audited"].as_u64() >= Some(events), "{summary}");
    assert_eq!(pipeline["audit_dropped"], 0, "{summary}");
}
