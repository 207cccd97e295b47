//! Scenario 7 (issue 13's cost): bulk TCP throughput with and without
//! Egret, on loopback and over a veth between two namespaces, and the cost
//! of every Egret program per run from `kernel.bpf_stats_enabled`.
//!
//! The packet-path programs (`egret_raw_egress`, a cgroup_skb egress hook
//! that looks at every packet of every socket) are what a bulk stream
//! stresses; the sender is `egret-probe tcp-bulk` (128 KiB writes on one
//! connection), the receiver `egret-probe tcp-sink`. Runs alternate between
//! no monitor and Egret, so drift on the shared machine hits both alike.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use egret_testkit::agent::Stdout;

use super::{
    Settings, goal, median,
    procs::{Binaries, RunningAgent},
};

const LOOPBACK: &str = "127.0.0.1:47913";
/// This scenario's own TEST-NET addresses, on a veth between two throwaway
/// namespaces: nothing leaves the machine.
const SENDER_ADDR: &str = "198.51.100.241/26";
const SINK_ADDR: &str = "198.51.100.242";
const SINK_PORT: u16 = 47914;

/// Two namespaces joined by a veth pair; removed on drop.
struct VethPair {
    sender: String,
    sink: String,
}

impl VethPair {
    fn create() -> anyhow::Result<VethPair> {
        let tag = std::process::id();
        let pair = VethPair {
            sender: format!("egret-tput-a-{tag}"),
            sink: format!("egret-tput-b-{tag}"),
        };
        let sink_cidr = format!("{SINK_ADDR}/26");
        let steps: [&[&str]; 9] = [
            &["netns", "add", &pair.sender],
            &["netns", "add", &pair.sink],
            &[
                "link",
                "add",
                "ta",
                "netns",
                &pair.sender,
                "type",
                "veth",
                "peer",
                "name",
                "tb",
                "netns",
                &pair.sink,
            ],
            &["-n", &pair.sender, "addr", "add", SENDER_ADDR, "dev", "ta"],
            &["-n", &pair.sink, "addr", "add", &sink_cidr, "dev", "tb"],
            &["-n", &pair.sender, "link", "set", "ta", "up"],
            &["-n", &pair.sink, "link", "set", "tb", "up"],
            &["-n", &pair.sender, "link", "set", "lo", "up"],
            &["-n", &pair.sink, "link", "set", "lo", "up"],
        ];
        for args in steps {
            let status = Command::new("ip")
                .args(args)
                .status()
                .context("running ip")?;
            if !status.success() {
                bail!("ip {args:?} failed");
            }
        }
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.sink] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A `tcp-sink` process; killed on drop.
struct Sink(Child);

impl Sink {
    fn start(bins: &Binaries, netns: Option<&str>, addr: &str) -> anyhow::Result<Sink> {
        let mut command = in_netns(bins, netns);
        let mut child = command
            .args(["tcp-sink", addr])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the TCP sink")?;
        // "listening" once bound.
        let mut line = String::new();
        let stdout = child.stdout.take().context("sink stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "listening" {
            let _ = child.kill();
            bail!("TCP sink did not start: {line:?}");
        }
        Ok(Sink(child))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_netns(bins: &Binaries, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(&bins.probe);
            command
        }
        None => Command::new(&bins.probe),
    }
}

fn bulk_rate(
    bins: &Binaries,
    netns: Option<&str>,
    addr: &str,
    run: Duration,
) -> anyhow::Result<f64> {
    let output = in_netns(bins, netns)
        .args(["tcp-bulk", addr, &run.as_millis().to_string()])
        .output()
        .context("running the bulk sender")?;
    if !output.status.success() {
        bail!("bulk sender failed: {output:?}");
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing bytes/s")
}

/// Restores `kernel.bpf_stats_enabled` on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling bpf_stats_enabled")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// (name, run_cnt, run_time_ns) of one program, from bpftool.
fn program_stats(id: u32) -> anyhow::Result<(String, u64, u64)> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .context("running bpftool")?;
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing bpftool's JSON")?;
    Ok((
        info["name"].as_str().unwrap_or("?").to_string(),
        info["run_cnt"].as_u64().unwrap_or(0),
        info["run_time_ns"].as_u64().unwrap_or(0),
    ))
}

pub fn run(bins: &Binaries, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 7. bulk TCP throughput and per-program cost");
    let pair = VethPair::create()?;
    let _loop_sink = Sink::start(bins, None, LOOPBACK)?;
    let veth_sink_addr = format!("{SINK_ADDR}:{SINK_PORT}");
    let _veth_sink = Sink::start(bins, Some(&pair.sink), &veth_sink_addr)?;
    let _stats = BpfStats::enable()?;
    let run = settings.bulk_run;
    let paths: [(&str, Option<&str>, &str); 2] = [
        ("loopback", None, LOOPBACK),
        ("veth", Some(pair.sender.as_str()), veth_sink_addr.as_str()),
    ];
    let mut rates: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    // name → (runs, ns), summed over the Egret runs.
    let mut cost: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for _ in 0..settings.bulk_rounds {
        for (path, ns, addr) in paths {
            rates
                .entry((path, false))
                .or_default()
                .push(bulk_rate(bins, ns, addr, run)?);
        }
        let agent = RunningAgent::start(bins, &[], Stdout::Discard)?;
        for (path, ns, addr) in paths {
            rates
                .entry((path, true))
                .or_default()
                .push(bulk_rate(bins, ns, addr, run)?);
        }
        for id in agent.program_ids() {
            let (name, runs, ns) = program_stats(id)?;
            let entry = cost.entry(name).or_default();
            entry.0 += runs;
            entry.1 += ns;
        }
        agent.stop()?;
    }

    let mut out = String::new();
    writeln!(out, "## 7. Bulk TCP throughput and per-program cost\n")?;
    writeln!(
        out,
        "One TCP connection, `egret-probe tcp-bulk` writing 128 KiB chunks for {} ms to \
         `egret-probe tcp-sink`, on loopback and over a veth between two throwaway namespaces \
         ({SENDER_ADDR} → {SINK_ADDR}); median of {} interleaved runs, Egret with default \
         settings (every program attached to the cgroup2 root, so both ends' packets pass \
         `egret_raw_egress`).\n",
        run.as_millis(),
        settings.bulk_rounds
    )?;
    writeln!(out, "| path | none MB/s | egret MB/s | ratio |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let mut worst: f64 = f64::INFINITY;
    for (path, _, _) in paths {
        let base = median(rates.get_mut(&(path, false)).context("rates")?);
        let egret = median(rates.get_mut(&(path, true)).context("rates")?);
        let ratio = egret / base;
        worst = worst.min(ratio);
        writeln!(
            out,
            "| {path} | {:.0} | {:.0} | {ratio:.3} |",
            base / 1e6,
            egret / 1e6
        )?;
    }
    writeln!(out, "\nGoal: ratio ≥ 0.98 ({}).\n", goal(worst >= 0.98))?;
    writeln!(
        out,
        "Per-program cost over the Egret runs (`kernel.bpf_stats_enabled`, \
         `run_time_ns / run_cnt` from bpftool; the machine's other work runs through the \
         node-wide programs too; names are truncated by the kernel to 15 characters):\n"
    )?;
    writeln!(out, "| program | runs | ns/run |")?;
    writeln!(out, "|---|---:|---:|")?;
    for (name, (runs, ns)) in &cost {
        let per = if *runs == 0 {
            "–".to_string()
        } else {
            format!("{:.0}", *ns as f64 / *runs as f64)
        };
        writeln!(out, "| `{name}` | {runs} | {per} |")?;
    }
    Ok(out)
}
