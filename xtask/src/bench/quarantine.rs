//! Scenario 8: what a quarantine's programs cost the workload they are
//! attached to, on the traffic its allow list lets through (cluster DNS, a
//! forensics collector): bulk TCP throughput and connect rate with the
//! programs attached vs not, interleaved, plus the programs' own ns/run
//! from `kernel.bpf_stats_enabled`.
//!
//! The agent attaches to a throwaway cgroup; the workload is a process in a
//! kubelet-shaped cgroup below it; the traffic goes to 198.51.100.65 in the
//! bench namespace (the quarantine suite's range): nothing leaves the
//! machine and nothing outside the test cgroup can be denied.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};
use egret_testkit::{TempDir, agent::Stdout, cgroup::TestCgroup, free_port};

use super::{
    Settings, median,
    procs::{Binaries, NetNs, RunningAgent, probe_in},
};

const POD: &str = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e16";
const CTR: &str = "a16d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";
const ADDR: &str = "198.51.100.65";
const TOKEN: &str = "bench-token-0123456789abcdef";

/// (name, run_cnt, run_time_ns) of the agent's quarantine programs.
fn program_stats(agent: u32) -> anyhow::Result<Vec<(String, u64, u64)>> {
    Ok(super::hooks::programs_of(agent)?
        .into_iter()
        .filter(|p| p.name.starts_with("egret_q_"))
        .map(|p| (p.name, p.run_cnt, p.run_time_ns))
        .collect())
}

fn cli(bins: &Binaries, url: &str, token: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(&bins.agent)
        .args(["quarantine", "--url", url, "--token-file"])
        .arg(token)
        .args(args)
        .output()
        .context("egret quarantine")?;
    if !output.status.success() {
        bail!("egret quarantine {args:?}: {output:?}");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub fn run(bins: &Binaries, ns: &NetNs, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 8. quarantine programs on allowed traffic");
    let status = ns
        .command("ip")
        .args(["addr", "add", &format!("{ADDR}/26"), "dev", "v0"])
        .status()
        .context("ip addr add")?;
    if !status.success() {
        bail!("adding {ADDR} to the bench namespace");
    }
    let cgroup = TestCgroup::new("qbench");
    let pod = cgroup.path().join(format!("kubepods/pod{POD}"));
    let workload = pod.join(CTR);
    std::fs::create_dir_all(&workload).context("workload cgroup")?;
    let _dirs = RemoveDirs(vec![
        workload.clone(),
        pod.clone(),
        cgroup.path().join("kubepods"),
    ]);
    let dir = TempDir::new("qbench");
    let token = dir.write("token", TOKEN);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cgroup_arg = cgroup.path().display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let token_arg = token.display().to_string();
    let state = dir.path().join("state.json").display().to_string();
    let agent = RunningAgent::start(
        bins,
        &[
            "--cgroup",
            &cgroup_arg,
            "--no-identity",
            "--control-listen",
            &listen,
            "--control-token-file",
            &token_arg,
            "--quarantine-state",
            &state,
        ],
        Stdout::Discard,
    )?;
    let bulk_args = [
        "bulk",
        &format!("{ADDR}:0"),
        &settings.quarantine_mib.to_string(),
    ];
    let loop_args = [
        "connect-loop",
        &format!("{ADDR}:0"),
        &settings.quarantine_connects.to_string(),
    ];
    let (mut bulk_off, mut bulk_on, mut conn_off, mut conn_on) = (vec![], vec![], vec![], vec![]);
    let stats = super::hooks::StatsEnabled::new()?;
    let mut runs: Vec<(String, u64, u64)> = Vec::new();
    for _ in 0..settings.quarantine_rounds {
        bulk_off.push(probe_in(bins, &workload, &ns.name, &bulk_args)?);
        conn_off.push(probe_in(bins, &workload, &ns.name, &loop_args)?);
        let id = cli(
            bins,
            &url,
            &token,
            &["add", "--pod-uid", POD, "--allow", "198.51.100.64/26"],
        )?;
        let before = program_stats(agent.pid())?;
        bulk_on.push(probe_in(bins, &workload, &ns.name, &bulk_args)?);
        conn_on.push(probe_in(bins, &workload, &ns.name, &loop_args)?);
        let after = program_stats(agent.pid())?;
        for (name, cnt, ns_total) in &after {
            let (c0, t0) = before
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, c, t)| (*c, *t));
            match runs.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => {
                    entry.1 += cnt.saturating_sub(c0);
                    entry.2 += ns_total.saturating_sub(t0);
                }
                None => runs.push((
                    name.clone(),
                    cnt.saturating_sub(c0),
                    ns_total.saturating_sub(t0),
                )),
            }
        }
        cli(bins, &url, &token, &["remove", &id])?;
    }
    drop(stats);
    agent.stop()?;
    let (b0, b1) = (median(&mut bulk_off), median(&mut bulk_on));
    let (c0, c1) = (median(&mut conn_off), median(&mut conn_on));
    let mut out = String::new();
    writeln!(out, "## 8. Quarantine programs on allowed traffic\n")?;
    writeln!(
        out,
        "A process in a quarantined pod's cgroup (allow list `198.51.100.64/26`) talking to \
         198.51.100.65 in a test netns, vs the same process with the quarantine lifted (programs \
         detached); {} interleaved rounds, medians. Bulk: one TCP connection streaming {} MiB to \
         a reader thread of the same process. Connects: {} connect+accept+close per run. Only \
         quarantined cgroups run these programs; the rest of the node pays nothing.\n",
        settings.quarantine_rounds, settings.quarantine_mib, settings.quarantine_connects
    )?;
    writeln!(
        out,
        "| traffic | not quarantined | quarantined (allowed) | ratio |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(
        out,
        "| bulk TCP, MiB/s | {b0:.1} | {b1:.1} | {:.3} |",
        b1 / b0
    )?;
    writeln!(out, "| connects/s | {c0:.0} | {c1:.0} | {:.3} |", c1 / c0)?;
    writeln!(
        out,
        "\nPrograms while quarantined (`kernel.bpf_stats_enabled`):\n"
    )?;
    writeln!(out, "| program | runs | ns/run |")?;
    writeln!(out, "|---|---:|---:|")?;
    runs.sort();
    for (name, cnt, total) in runs.iter().filter(|(_, c, _)| *c > 0) {
        writeln!(
            out,
            "| `{name}` | {cnt} | {:.0} |",
            *total as f64 / *cnt as f64
        )?;
    }
    writeln!(
        out,
        "\nThe blocked path (a cold process per denied attempt, EPERM plus a Blocked record) \
         is measured by `scripts/bench-quarantine.sh`: 8 425 ns/run against 1 931 for the \
         monitor's `egret_connect4` on the same attempts (2026-12-01)."
    )?;
    Ok(out)
}

/// Workload directories, removed deepest first before the test cgroup.
struct RemoveDirs(Vec<std::path::PathBuf>);

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
