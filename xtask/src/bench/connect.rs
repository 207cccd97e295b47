//! Scenarios 1 and 2: what a monitor costs a process that connects in a
//! tight single-thread loop, when the kernel filters the traffic (1) and
//! when every connection raises an alert (2). Runs rotate between no
//! monitor, Egret and bpftrace so that drift on the shared machine hits all
//! three alike; ratios are taken within one run of the bench.
use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};

use egret_testkit::agent::Stdout;

use super::{
    ALERT_RULES, Settings, goal, median,
    procs::{
        Binaries, Bpftrace, ExitCounters, NetNs, RunningAgent, connect4_counters, cpu_seconds,
        wait_until_stable,
    },
};
use crate::test::root;

/// Runs `probe connect-loop ADDR COUNT` (inside `ns` if given) and returns
/// its connects/s.
pub(super) fn connect_rate(
    bins: &Binaries,
    ns: Option<&NetNs>,
    addr: &str,
    count: u64,
) -> anyhow::Result<f64> {
    let mut command = match ns {
        Some(ns) => ns.command(&bins.probe),
        None => Command::new(&bins.probe),
    };
    let output = command
        .args(["connect-loop", addr, &count.to_string()])
        .output()
        .context("running the connect loop")?;
    if !output.status.success() {
        bail!("connect loop failed: {output:?}");
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing connects/s")
}

/// Scenario 1: loopback connects, which the in-kernel ignore list drops.
pub fn filtered(bins: &Binaries, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 1. connect overhead, filtered traffic");
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut peer = Vec::new();
    let mut last_summary = serde_json::Value::Null;
    for _ in 0..settings.rounds {
        without.push(connect_rate(bins, None, "127.0.0.1:0", settings.connects)?);
        let agent = RunningAgent::start(bins, &[], Stdout::Discard)?;
        with.push(connect_rate(bins, None, "127.0.0.1:0", settings.connects)?);
        last_summary = agent.stop()?;
        let bpftrace = Bpftrace::start()?;
        peer.push(connect_rate(bins, None, "127.0.0.1:0", settings.connects)?);
        drop(bpftrace);
    }
    let base = median(&mut without);
    let egret = median(&mut with);
    let bpftrace = median(&mut peer);
    let mut out = String::new();
    writeln!(
        out,
        "## 1. Connect overhead, filtered traffic (loopback, ignored in kernel)\n"
    )?;
    writeln!(
        out,
        "Single-thread loop of TCP connect+accept+close on loopback, {} connects per run, \
         median of {} interleaved runs. The bpftrace peer prints every connect(2) to a file.\n",
        settings.connects, settings.rounds
    )?;
    writeln!(out, "| monitor | connects/s | ratio to none |")?;
    writeln!(out, "|---|---:|---:|")?;
    writeln!(out, "| none | {base:.0} | 1.000 |")?;
    writeln!(out, "| egret | {egret:.0} | {:.3} |", egret / base)?;
    writeln!(out, "| bpftrace | {bpftrace:.0} | {:.3} |", bpftrace / base)?;
    writeln!(
        out,
        "\nKernel counters after the last Egret run (connect4):\n"
    )?;
    writeln!(out, "`{}`", connect4_counters(&last_summary))?;
    Ok(out)
}

/// One monitor's runs in scenario 2, accounted together.
#[derive(Default)]
struct Monitor {
    rates: Vec<f64>,
    attempts: u64,
    delivered: u64,
    cpu_seconds: f64,
    /// Egret only: exit counters summed over runs, the last run's summary.
    counters: ExitCounters,
    last_summary: serde_json::Value,
}

impl Monitor {
    fn lost(&self) -> u64 {
        self.attempts.saturating_sub(self.delivered)
    }

    fn delivery(&self) -> String {
        format!(
            "{} / {} ({} lost)",
            self.delivered,
            self.attempts,
            self.lost()
        )
    }

    /// Milliseconds of CPU per 1,000 delivered events.
    fn cpu_per_thousand(&self) -> String {
        if self.delivered == 0 {
            return "–".into();
        }
        format!(
            "{:.1}",
            self.cpu_seconds * 1e3 / (self.delivered as f64 / 1e3)
        )
    }

    /// Networks the kernel ignore list held (from the exit summary).
    fn ignored_networks(&self) -> String {
        self.last_summary["ignored_networks"]
            .as_u64()
            .map_or_else(|| "?".to_string(), |n| n.to_string())
    }
}

/// Quiet time after a loop before an event still missing counts as lost:
/// far beyond any queueing in the agent.
const DRAIN: Duration = Duration::from_secs(2);
const STORM_TARGET: &str = "198.51.100.1:0";

/// One Egret run: the agent started with `args`, alerts counted on stdout.
fn egret_run(
    bins: &Binaries,
    ns: &NetNs,
    args: &[&str],
    count: u64,
    into: &mut Monitor,
) -> anyhow::Result<()> {
    let agent = RunningAgent::start(bins, args, Stdout::Count)?;
    let before = (agent.lines(), cpu_seconds(agent.pid())?);
    into.rates
        .push(connect_rate(bins, Some(ns), STORM_TARGET, count)?);
    let delivered = agent.wait_for_lines(before.0 + count, DRAIN) - before.0;
    into.cpu_seconds += cpu_seconds(agent.pid())? - before.1;
    into.attempts += count;
    into.delivered += delivered;
    into.last_summary = agent.stop()?;
    into.counters
        .add(ExitCounters::from_summary(&into.last_summary));
    Ok(())
}

/// One bpftrace run: lines printed for the probe count as delivered.
fn bpftrace_run(bins: &Binaries, ns: &NetNs, count: u64, into: &mut Monitor) -> anyhow::Result<()> {
    let bpftrace = Bpftrace::start()?;
    let before = (
        bpftrace.lines_for("egret-probe"),
        cpu_seconds(bpftrace.pid())?,
    );
    into.rates
        .push(connect_rate(bins, Some(ns), STORM_TARGET, count)?);
    let printed = wait_until_stable(
        || bpftrace.lines_for("egret-probe"),
        before.0 + count,
        DRAIN,
    ) - before.0;
    into.cpu_seconds += cpu_seconds(bpftrace.pid())? - before.1;
    into.attempts += count;
    into.delivered += printed;
    Ok(())
}

/// Scenario 2: connects to a TEST-NET address inside the bench namespace,
/// every one of which raises an alert.
pub fn alerting(
    bins: &Binaries,
    ns: &NetNs,
    rules: &Path,
    settings: &Settings,
) -> anyhow::Result<String> {
    eprintln!("==> 2. connect overhead, alerting traffic");
    let bench_rules = rules.display().to_string();
    let bundled = root().join("rules/egress.yaml").display().to_string();
    let only_bench = ["--rules", bench_rules.as_str()];
    let with_bundled = ["--rules", bundled.as_str(), "--rules", bench_rules.as_str()];
    let count = settings.storm_connects;
    let mut none = Monitor::default();
    let mut egret = Monitor::default();
    let mut egret_bundled = Monitor::default();
    let mut peer = Monitor::default();
    for _ in 0..settings.storm_rounds {
        none.rates
            .push(connect_rate(bins, Some(ns), STORM_TARGET, count)?);
        egret_run(bins, ns, &only_bench, count, &mut egret)?;
        egret_run(bins, ns, &with_bundled, count, &mut egret_bundled)?;
        bpftrace_run(bins, ns, count, &mut peer)?;
    }
    let base = median(&mut none.rates);
    let ratio = |m: &mut Monitor| median(&mut m.rates) / base;

    let mut out = String::new();
    writeln!(out, "## 2. Connect overhead, alerting traffic\n")?;
    writeln!(
        out,
        "The same single-thread connect+accept+close loop, to 198.51.100.1 on a veth inside a \
         throwaway network namespace (nothing leaves the machine), {count} connects per run, \
         median of {} interleaved runs. Egret runs with default settings and a rule file \
         written by the bench that alerts on every connect to that address: alone (the \
         agent then ignores every other destination in the kernel, which takes a \
         {}-prefix ignore list) and after the bundled rules (which can match almost any \
         destination: {}-prefix list). Alerts go to a pipe that is read and counted. \
         Delivered: alert lines on the agent's stdout (Egret) or lines in the output file \
         (bpftrace), summed over all runs. CPU: utime+stime of the monitor process from \
         /proc/PID/stat over the loop and its drain (10 ms ticks).\n",
        settings.storm_rounds,
        egret.ignored_networks(),
        egret_bundled.ignored_networks(),
    )?;
    writeln!(
        out,
        "| monitor | connects/s | ratio to none | delivered / attempts | CPU ms per 1,000 events |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    writeln!(out, "| none | {base:.0} | 1.000 | – | – |")?;
    let egret_ratio = ratio(&mut egret);
    for (name, m) in [
        ("egret (bench rule)", &mut egret),
        ("egret (bundled + bench rule)", &mut egret_bundled),
        ("bpftrace", &mut peer),
    ] {
        let r = ratio(m);
        writeln!(
            out,
            "| {name} | {:.0} | {r:.3} | {} | {} |",
            r * base,
            m.delivery(),
            m.cpu_per_thousand()
        )?;
    }
    let lost = egret.lost() + egret_bundled.lost();
    writeln!(
        out,
        "\nGoals: throughput ratio ≥ 0.90 ({} with the bench rule alone); zero loss ({}).\n",
        goal(egret_ratio >= 0.90),
        goal(lost == 0)
    )?;
    writeln!(
        out,
        "Where Egret's events went, summed over its runs (kernel counters of all hooks and \
         the agent's pipeline totals from its `--summary`, which include other processes):\n"
    )?;
    writeln!(
        out,
        "| rules | attempts | kernel emitted | ring buffer full | events | alerts |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for (name, m) in [
        ("bench rule", &egret),
        ("bundled + bench rule", &egret_bundled),
    ] {
        let c = m.counters;
        writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} |",
            m.attempts, c.emitted, c.ringbuf_full, c.events, c.alerts
        )?;
        if m.lost() > 0 {
            let place = if c.ringbuf_full > 0 {
                "the kernel ring buffer was full (reserve failures counted by the kernel)"
            } else if c.alerts < c.emitted.min(m.attempts) {
                "in the pipeline: emitted by the kernel but not written as alerts"
            } else {
                "after the agent: written but not read back in time"
            };
            writeln!(out, "\n{name}: {} events lost; where: {place}.\n", m.lost())?;
        }
    }
    writeln!(
        out,
        "\nKernel counters after the last Egret run (bench rule, connect4):\n"
    )?;
    writeln!(out, "`{}`", connect4_counters(&egret.last_summary))?;
    Ok(out)
}

/// The rule file of scenarios 2, 4 and 5: every connect to the bench
/// address alerts, with the destination port in the output (scenario 4
/// matches webhook requests to connects by it).
pub fn write_rules(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, ALERT_RULES).with_context(|| format!("writing {}", path.display()))
}
