//! Scenario 6: what each kernel program costs per run, by outcome and by
//! the shape of the ignore list, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled`: `run_time_ns / run_cnt` per program).
//! The connect loop runs one outcome at a time, so the connect4 program's
//! delta over a phase is the cost of that outcome alone.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, bail};
use egret_testkit::agent::Stdout;

use super::{
    Settings,
    procs::{Binaries, NetNs, RunningAgent},
};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's per-program accounting on and restores the previous
/// setting on drop (it costs two clock reads per program run).
pub(super) struct StatsEnabled(String);

impl StatsEnabled {
    pub(super) fn new() -> anyhow::Result<StatsEnabled> {
        let old = std::fs::read_to_string(STATS).with_context(|| format!("reading {STATS}"))?;
        std::fs::write(STATS, "1").with_context(|| format!("writing {STATS}"))?;
        Ok(StatsEnabled(old.trim().to_string()))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.0);
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct ProgStats {
    pub(super) name: String,
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
}

/// Ids of the programs whose file descriptors `pid` holds (`prog_id:` in
/// /proc/PID/fdinfo; this bpftool has no `pids` column).
fn program_ids(pid: u32) -> anyhow::Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Run statistics of the programs `pid` holds, from `bpftool -j prog`.
pub(super) fn programs_of(pid: u32) -> anyhow::Result<Vec<ProgStats>> {
    let ids = program_ids(pid)?;
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running bpftool prog show")?;
    if !output.status.success() {
        bail!("bpftool prog show failed: {output:?}");
    }
    let all: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing bpftool's JSON")?;
    let mut out = Vec::new();
    for prog in all.as_array().into_iter().flatten() {
        if !prog["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
            continue;
        }
        out.push(ProgStats {
            name: prog["name"].as_str().unwrap_or("?").to_string(),
            run_time_ns: prog["run_time_ns"].as_u64().unwrap_or(0),
            run_cnt: prog["run_cnt"].as_u64().unwrap_or(0),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn find<'a>(progs: &'a [ProgStats], name: &str) -> Option<&'a ProgStats> {
    // bpftool truncates names to the kernel's 15 characters.
    progs
        .iter()
        .find(|p| name.starts_with(&p.name) && !p.name.is_empty())
}

/// A rule file shape and the two destinations (one ignored in the kernel,
/// one sent to userspace) whose connects are timed under it.
struct Shape {
    name: &'static str,
    rules: &'static str,
    ignored: &'static str,
    emitted: &'static str,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "no rule-derived list (4 built-in prefixes)",
        rules: "\
- rule: Bench Any Destination
  desc: can match any destination, so the rules add nothing to the list
  condition: evt.type = connect and proc.name = egret-bench-none
  output: never (pid=%proc.pid)
  priority: WARNING
",
        ignored: "127.0.0.1:0",
        emitted: "198.51.100.2:0",
    },
    Shape {
        name: "seed rule (RFC 1918 excluded)",
        rules: "\
- rule: Bench Outbound
  desc: external destinations only
  condition: evt.type = connect and not fd.snet in (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
  output: out (connection=%fd.name pid=%proc.pid)
  priority: WARNING
",
        ignored: "10.77.0.1:0",
        emitted: "198.51.100.2:0",
    },
    Shape {
        name: "one address alerted (its complement is ignored)",
        rules: super::ALERT_RULES,
        ignored: "198.51.100.2:0",
        emitted: "198.51.100.1:0",
    },
];

pub fn run(bins: &Binaries, ns: &NetNs, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 6. per-program cost (kernel.bpf_stats_enabled)");
    // Destinations the shapes need, local to the bench namespace.
    for addr in ["198.51.100.2/32", "10.77.0.1/32"] {
        let status = Command::new("ip")
            .args(["-n", &ns.name, "addr", "replace", addr, "dev", "lo"])
            .status()
            .context("adding a bench address")?;
        if !status.success() {
            bail!("ip addr add {addr} in the bench namespace failed");
        }
    }
    let _stats = StatsEnabled::new()?;
    let dir = egret_testkit::TempDir::new("bench-hooks");
    let mut rows = Vec::new();
    let mut programs = Vec::new();
    for shape in &SHAPES {
        let rules = dir.write("rules.yaml", shape.rules);
        let rules_arg = rules.display().to_string();
        let agent = RunningAgent::start(bins, &["--rules", &rules_arg], Stdout::Discard)?;
        let mut costs = Vec::new();
        // The repeat phase: UDP sends to a connected peer, port 9 of the
        // emitted destination (nothing listens; errors are expected).
        let repeat_dest = shape.emitted.replace(":0", ":9");
        for (dest, mode, program) in [
            (shape.ignored, "connect-loop", "egret_connect4"),
            (shape.emitted, "connect-loop", "egret_connect4"),
            (repeat_dest.as_str(), "udp-repeat", "egret_sendmsg4"),
        ] {
            let before = programs_of(agent.pid())?;
            let status = ns
                .command(&bins.probe)
                .args([mode, dest, &settings.connects.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .context("running the probe")?;
            if !status.success() {
                bail!("probe {mode} {dest} failed: {status}");
            }
            let after = programs_of(agent.pid())?;
            let (Some(b), Some(a)) = (find(&before, program), find(&after, program)) else {
                bail!("the agent holds no {program} program: {after:?}");
            };
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            let ns_per_run =
                a.run_time_ns.saturating_sub(b.run_time_ns) as f64 / runs.max(1) as f64;
            costs.push((runs, ns_per_run));
        }
        let entries = agent_entries(&agent)?;
        programs = programs_of(agent.pid())?;
        agent.stop()?;
        rows.push((shape, entries, costs));
    }

    let mut out = String::new();
    writeln!(out, "## 6. Per-program cost in the kernel\n")?;
    writeln!(
        out,
        "From `kernel.bpf_stats_enabled` (`run_time_ns / run_cnt` of each program, read with \
         `bpftool`; the accounting itself adds two clock reads per run). A single-thread \
         loop of {} TCP connects per phase inside the bench namespace, one destination per \
         phase, so each phase times one outcome of the connect4 program; then {} UDP sends \
         (`sendto` its peer) on one connected socket, the repeat outcome of the sendmsg4 \
         program. Goals (issue 19): ignored ≤ 150 ns, emitted ≤ 400 ns.\n",
        settings.connects, settings.connects
    )?;
    writeln!(
        out,
        "| ignore-list shape | kernel map entries | ignored connect ns | emitted connect ns | \
         repeat send ns |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for (shape, entries, costs) in &rows {
        writeln!(
            out,
            "| {} | {} | {:.0} ({} runs) | {:.0} ({} runs) | {:.0} ({} runs) |",
            shape.name,
            entries,
            costs[0].1,
            costs[0].0,
            costs[1].1,
            costs[1].0,
            costs[2].1,
            costs[2].0
        )?;
    }
    let worst = |i: usize| rows.iter().map(|r| r.2[i].1).fold(0.0, f64::max);
    writeln!(
        out,
        "\nWorst over the shapes: ignored {:.0} ns ({}), emitted {:.0} ns ({}).",
        worst(0),
        super::goal(worst(0) <= 150.0),
        worst(1),
        super::goal(worst(1) <= 400.0)
    )?;
    writeln!(
        out,
        "\nEvery program of the last agent over its whole run (all phases of the last shape):\n"
    )?;
    writeln!(out, "| program | runs | ns per run |")?;
    writeln!(out, "|---|---:|---:|")?;
    for p in &programs {
        let per = if p.run_cnt == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", p.run_time_ns as f64 / p.run_cnt as f64)
        };
        writeln!(out, "| {} | {} | {per} |", p.name, p.run_cnt)?;
    }
    Ok(out)
}

/// Entries the agent wrote to its kernel ignore map, from its start-up log
/// line (`kernel ignore list updated networks=N entries=M`).
fn agent_entries(agent: &RunningAgent) -> anyhow::Result<String> {
    Ok(agent
        .stderr()
        .iter()
        .rev()
        .find_map(|line| {
            let rest = line.split("entries=").nth(1)?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .unwrap_or_else(|| "?".to_string()))
}
