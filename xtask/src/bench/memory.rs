//! Scenario 5: the agent's resident memory at idle and after a long storm
//! of alerting connects.
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use egret_testkit::agent::Stdout;

use super::{
    Settings, goal,
    procs::{Binaries, ExitCounters, NetNs, RunningAgent, cpu_seconds, status_kib},
};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn run(
    bins: &Binaries,
    ns: &NetNs,
    rules: &Path,
    settings: &Settings,
) -> anyhow::Result<String> {
    let events = settings.memory_events;
    eprintln!("==> 5. memory ({events} alerting connects)");
    let rules_arg = rules.display().to_string();
    let agent = RunningAgent::start(bins, &["--rules", &rules_arg], Stdout::Count)?;
    let pid = agent.pid();
    // Let start-up work (containerd retries, first scrape of /proc) settle.
    std::thread::sleep(Duration::from_secs(2));
    let idle = status_kib(pid, "VmRSS")?;
    let cpu_before = cpu_seconds(pid)?;
    let lines_before = agent.lines();
    let output = ns
        .command(&bins.probe)
        .args(["connect-loop", "198.51.100.1:0", &events.to_string()])
        .output()
        .context("running the connect loop")?;
    if !output.status.success() {
        bail!("connect loop failed: {output:?}");
    }
    let rate: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing connects/s")?;
    let delivered =
        agent.wait_for_lines(lines_before + events, Duration::from_secs(2)) - lines_before;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let after = status_kib(pid, "VmRSS")?;
    let peak = status_kib(pid, "VmHWM")?;
    let counters = ExitCounters::from_summary(&agent.stop()?);

    let mut out = String::new();
    writeln!(out, "## 5. Memory\n")?;
    writeln!(
        out,
        "Agent RSS (/proc/PID/status) with default settings (8 MiB ring buffer) and the \
         alerting rule of scenario 2: at idle 2 s after start, and after {events} alerting \
         connects from the single-thread loop in the bench namespace ({rate:.0} connects/s, \
         alerts read from a pipe). Peak: VmHWM over the agent's whole life.\n"
    )?;
    writeln!(
        out,
        "| RSS idle MiB | RSS after MiB | peak MiB | events delivered / attempts | ring buffer full | CPU ms per 1,000 events |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|")?;
    writeln!(
        out,
        "| {:.1} | {:.1} | {:.1} | {delivered} / {events} | {} | {:.1} |",
        mib(idle),
        mib(after),
        mib(peak),
        counters.ringbuf_full,
        cpu * 1e3 / (delivered.max(1) as f64 / 1e3)
    )?;
    writeln!(out, "\nGoal: ≤ 64 MiB ({}).", goal(peak <= 64 * 1024))?;
    Ok(out)
}
