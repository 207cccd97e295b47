//! Issue 18: every kernel counter slot is read. The exec slot used to be
//! skipped by `KernelProbes::counters`, so lost exec records were invisible.
use std::process::Command;

use egret::kernel::KernelProbes;
use egret_common::Hook;

use crate::support::{self, cgroup::TestCgroup};

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
    assert_eq!(counters.len(), Hook::ALL.len());
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
