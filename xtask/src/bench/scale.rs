//! Scenario 13: memory at scale (issue 19, goal 5). The agent's resident
//! memory idle with defaults, and with a million-entry IOC list loaded; then
//! what a large node's state adds, part by part: 10,000 containers'
//! identity, a full names cache and full flow-owner tables. Those parts are
//! built in one process with the agent's own types (`agent/benches/
//! scale_memory.rs`) because filling a real agent's caches needs a
//! containerd with 10,000 containers and as many live flows; the process
//! reports heap bytes from a counting allocator and its RSS.
use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use egret_testkit::{TempDir, agent::Stdout, feeds};

use super::{
    goal,
    procs::{Binaries, RunningAgent, status_kib},
};
use crate::test::cargo;

/// Start-up work (first /proc scan, containerd retries) settles by then.
const SETTLE: Duration = Duration::from_secs(2);

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// One line of the in-process bench.
struct Part {
    name: String,
    n: u64,
    heap: f64,
    peak: f64,
    rss_kib: f64,
    ms: f64,
}

fn parse_parts(stdout: &str) -> Vec<Part> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("scale ")?.split_whitespace();
            let name = words.next()?.to_string();
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            Some(Part {
                n: field("n") as u64,
                heap: field("heap"),
                peak: field("peak"),
                rss_kib: field("rss_kib"),
                ms: field("ms"),
                name,
            })
        })
        .collect()
}

/// (VmRSS, VmHWM) in KiB of an agent started with `args`, after [`SETTLE`].
fn agent_memory(bins: &Binaries, args: &[&str]) -> anyhow::Result<(u64, u64)> {
    let agent = RunningAgent::start(bins, args, Stdout::Count)?;
    std::thread::sleep(SETTLE);
    let pid = agent.pid();
    let rss = status_kib(pid, "VmRSS")?;
    let hwm = status_kib(pid, "VmHWM")?;
    agent.stop()?;
    Ok((rss, hwm))
}

pub fn run(bins: &Binaries, short: bool) -> anyhow::Result<String> {
    eprintln!("==> 13. memory at scale");
    let (ioc, containers, names, flows) = if short {
        (10_000u32, 500u32, 2_000u32, 2_000u32)
    } else {
        (1_000_000, 10_000, 100_000, 131_072)
    };
    let (idle_kib, idle_hwm) = agent_memory(bins, &[])?;
    let dir = TempDir::new("bench-scale");
    let file = dir.write("ioc.yaml", &feeds::ioc_rules(ioc));
    let file_arg = file.display().to_string();
    let (ioc_kib, ioc_hwm) = agent_memory(bins, &["--rules", "bundled", "--rules", &file_arg])?;

    let output = cargo()
        .args(["bench", "-p", "egret", "--bench", "scale_memory"])
        .env(
            "EGRET_BENCH_SCALE",
            format!("ioc={ioc},containers={containers},names={names},flows={flows}"),
        )
        .output()
        .context("running the scale_memory bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "scale_memory bench failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let parts = parse_parts(&stdout);
    let get = |name: &str| parts.iter().find(|p| p.name == name);
    let (Some(start), Some(total)) = (get("start"), get("total")) else {
        bail!("scale_memory printed no start or total line:\n{stdout}");
    };

    let mut out = String::new();
    writeln!(out, "## 13. Memory at scale\n")?;
    writeln!(
        out,
        "Agent RSS (/proc/PID/status, {} s after ready; peak: VmHWM, start-up and rule load \
         included), default settings (DNS capture and flow accounting on, 8 MiB ring buffer):\n",
        SETTLE.as_secs()
    )?;
    writeln!(out, "| agent | RSS MiB | peak MiB |")?;
    writeln!(out, "|---|---:|---:|")?;
    writeln!(
        out,
        "| defaults (bundled rules) | {:.1} | {:.1} |",
        idle_kib as f64 / 1024.0,
        idle_hwm as f64 / 1024.0
    )?;
    writeln!(
        out,
        "| bundled rules + `fd.sip in (ioc_list)` of {ioc} entries | {:.1} | {:.1} |",
        ioc_kib as f64 / 1024.0,
        ioc_hwm as f64 / 1024.0
    )?;
    writeln!(
        out,
        "\nWhat each part of a large node's state holds, built in one process with the agent's \
         types (`agent/benches/scale_memory.rs`, a counting allocator; each part kept while the \
         next is built): the same rules loaded as the agent loads them, plus the kernel ignore \
         analysis; {containers} containers' identity (a kubepods cgroup tree of {containers} \
         container directories walked by `CgroupPaths`, and {containers} metadata records built \
         by `ContainerMeta::from_record` from the labels and image containerd reports for a CRI \
         container, in a `ContainerCache` sized for them: no containerd is involved, the records \
         are what its answers become); the names cache filled to {names} entries; flow owners for \
         {flows} sockets. Quarantines are not included: their state is a few kernel maps per \
         quarantined workload, outside the agent's RSS.\n"
    )?;
    writeln!(
        out,
        "| part | entries | heap kept MiB | heap peak while built MiB | build ms |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    let mut added = 0.0;
    for p in parts
        .iter()
        .filter(|p| p.name != "start" && p.name != "total")
    {
        writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.0} |",
            p.name,
            p.n,
            mib(p.heap),
            mib(p.peak),
            p.ms
        )?;
        if p.name != "rules" {
            added += p.heap;
        }
    }
    let estimate = ioc_kib as f64 / 1024.0 + mib(added);
    writeln!(
        out,
        "\nThat process: {:.1} MiB RSS at start, {:.1} MiB with every part held ({:.1} MiB of \
         heap). The agent with the {ioc}-entry list plus the containers, names and flows parts: \
         about {estimate:.1} MiB.",
        start.rss_kib / 1024.0,
        total.rss_kib / 1024.0,
        mib(total.heap),
    )?;
    writeln!(
        out,
        "\nGoal: idle with defaults ≤ 32 MiB ({}).",
        goal(idle_kib <= 32 * 1024)
    )?;
    Ok(out)
}
