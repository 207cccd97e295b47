//! Scenario 2's parallel alert storm: four connect loops at once in the
//! bench namespace (every connect alerts), so the agent competes with
//! the workload for this machine's two cores. Throughput is the sum of the
//! four loops' connects/s; runs alternate between no monitor and Egret.
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use egret_testkit::agent::Stdout;

use super::{
    Settings, goal, median,
    procs::{Binaries, ExitCounters, NetNs, RunningAgent, cpu_seconds},
};

pub const PROCESSES: usize = 4;
const DRAIN: Duration = Duration::from_secs(3);
const TARGET: &str = "198.51.100.1:0";

/// Starts `PROCESSES` connect loops of `count` connects each at once and
/// returns their summed connects/s.
fn parallel_rate(bins: &Binaries, ns: &NetNs, count: u64) -> anyhow::Result<f64> {
    let mut children = Vec::new();
    for _ in 0..PROCESSES {
        children.push(
            ns.command(&bins.probe)
                .args(["connect-loop", TARGET, &count.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting a connect loop")?,
        );
    }
    let mut total = 0.0;
    for child in children {
        let output = child
            .wait_with_output()
            .context("waiting for a connect loop")?;
        if !output.status.success() {
            bail!("connect loop failed: {output:?}");
        }
        total += String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<f64>()
            .context("parsing connects/s")?;
    }
    Ok(total)
}

#[derive(Default)]
struct Totals {
    rates: Vec<f64>,
    attempts: u64,
    delivered: u64,
    cpu_seconds: f64,
    /// Summed exit counters: where a missing alert was lost.
    counters: ExitCounters,
}

pub fn run(
    bins: &Binaries,
    ns: &NetNs,
    rules: &Path,
    settings: &Settings,
) -> anyhow::Result<String> {
    eprintln!("==> 2b. alert storm, {PROCESSES} processes in parallel");
    let count = settings.storm_connects / PROCESSES as u64;
    let rules_arg = rules.display().to_string();
    let mut none = Vec::new();
    let mut egret = Totals::default();
    for _ in 0..settings.storm_rounds {
        none.push(parallel_rate(bins, ns, count)?);
        let agent = RunningAgent::start(bins, &["--rules", &rules_arg], Stdout::Count)?;
        let before = (agent.lines(), cpu_seconds(agent.pid())?);
        egret.rates.push(parallel_rate(bins, ns, count)?);
        let attempts = count * PROCESSES as u64;
        let delivered = agent.wait_for_lines(before.0 + attempts, DRAIN) - before.0;
        egret.cpu_seconds += cpu_seconds(agent.pid())? - before.1;
        egret.attempts += attempts;
        egret.delivered += delivered;
        egret
            .counters
            .add(ExitCounters::from_summary(&agent.stop()?));
    }
    let base = median(&mut none);
    let rate = median(&mut egret.rates);
    let ratio = rate / base;
    let lost = egret.attempts.saturating_sub(egret.delivered);
    let cpu_per_k = egret.cpu_seconds * 1e3 / (egret.delivered.max(1) as f64 / 1e3);
    let mut out = String::new();
    writeln!(
        out,
        "\n### {PROCESSES} processes in parallel\n\n\
         {PROCESSES} connect loops at once ({count} connects each, to the same address, every \
         connect alerting), median of {} interleaved runs; connects/s summed over the loops; \
         Egret with the bench rule alone, default settings. CPU: the agent's utime+stime over \
         the loops and their drain.\n",
        settings.storm_rounds
    )?;
    writeln!(
        out,
        "| monitor | connects/s | ratio to none | delivered / attempts | kernel emitted | ring buffer full | alerts written (agent) | stdout queue dropped | CPU ms per 1,000 events |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    writeln!(out, "| none | {base:.0} | 1.000 | – | – | – | – | – | – |")?;
    let c = egret.counters;
    writeln!(
        out,
        "| egret | {rate:.0} | {ratio:.3} | {} / {} ({lost} lost) | {} | {} | {} | {} | {cpu_per_k:.2} |",
        egret.delivered, egret.attempts, c.emitted, c.ringbuf_full, c.alerts, c.stdout_lost
    )?;
    writeln!(
        out,
        "\nGoals: ratio ≥ 0.97 ({}); zero loss ({}); agent CPU ≤ 1 ms per 1,000 events ({}).",
        goal(ratio >= 0.97),
        goal(lost == 0),
        goal(cpu_per_k <= 1.0)
    )?;
    Ok(out)
}
