//! `cargo xtask bench`: measured speed, printed as a table per scenario and
//! written to BENCHMARKS.md. Run as root. `--short` runs every scenario
//! with few iterations so CI keeps the harness working; it never asserts
//! on timings (goals are reported as met or missed, never enforced).
//!
//! 1. connect overhead on traffic the kernel filters (loopback);
//! 2. connect overhead when every connect alerts, with loss and CPU;
//! 3. userspace pipeline throughput (criterion bench, no kernel);
//! 4. alert latency from connect(2) to a webhook receiver;
//! 5. agent memory at idle and after a long alert storm;
//! 6. per-program kernel cost by outcome and ignore-list shape;
//! 7. bulk TCP throughput with and without Egret (loopback, veth), and
//!    every program's ns per run (kernel.bpf_stats_enabled);
//! 8. what a quarantine's programs cost the quarantined workload's allowed
//!    traffic (bulk throughput, connect rate, ns/run);
//! 9. observed DNS: a DNS-heavy workload with and without Egret, bulk
//!    throughput with and without the DNS programs, their ns per run and
//!    share of a core, names cache memory.
//! 10. flow accounting on vs off and against the tcplife peer (bulk
//!     throughput, connect rate), the flow programs' ns per run and share
//!     of a core, memory per tracked flow, 100,000 concurrent flows against
//!     the flow table.
//! 11. an IOC list grown to a million entries: load, reload without loss,
//!     ns per event, agent memory;
//! 12. rule count grown to a thousand: ns per event, rules run per event.
//!
//! Traffic of scenarios 2, 4, 5 and 6 goes to TEST-NET-2 addresses inside
//! a throwaway network namespace: nothing leaves the machine.
mod connect;
mod dns;
mod flows;
mod hooks;
mod ioc;
mod latency;
mod memory;
mod paired;
mod pipeline;
mod procs;
mod quarantine;
mod scale;
mod storm;
mod throughput;

use std::fmt::Write as _;

use anyhow::Context as _;

use crate::test::{cargo, root, run_step};
use procs::{bench_netns, binaries};

pub struct Settings {
    /// Scenario 1: interleaved rounds and connects per run.
    rounds: usize,
    connects: u64,
    /// Scenario 2.
    storm_rounds: usize,
    storm_connects: u64,
    /// Scenario 3: criterion's command line.
    criterion: Vec<String>,
    /// Scenario 4: measured alerts and their rate per second.
    latency_alerts: u64,
    latency_rate: f64,
    /// Scenario 5: connects before the second reading.
    memory_events: u64,
    /// Scenario 7: interleaved rounds and the length of each bulk run.
    bulk_rounds: usize,
    bulk_run: std::time::Duration,
    /// Scenario 8: interleaved rounds, MiB per bulk run, connects per run.
    quarantine_rounds: usize,
    quarantine_mib: u64,
    quarantine_connects: u64,
    /// Scenarios 10 and 9 (bulk): paired rounds, MiB per bulk run;
    /// scenario 10: connects per run, and whether to fill the flow table
    /// (100,000 UDP sockets).
    flow_rounds: usize,
    /// Each side's interval in the concurrent rounds (scenarios 9, 10).
    flow_run: std::time::Duration,
    flow_mib: u64,
    flow_connects: u64,
    flow_fill: bool,
    /// Scenario 10: runs of the alternating connect measurement and
    /// 100 ms block pairs per run.
    flow_alternations: usize,
    flow_blocks: u64,
    /// Scenario 9: DNS lookups per run and paired rounds.
    dns_lookups: u64,
    dns_rounds: usize,
    /// Scenario 11: list sizes; scenario 12: rule counts.
    ioc_sizes: Vec<u32>,
    rule_counts: Vec<u32>,
}

impl Settings {
    fn new(short: bool) -> Settings {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        if short {
            Settings {
                rounds: 2,
                connects: 2_000,
                storm_rounds: 2,
                storm_connects: 2_000,
                criterion: args(&[
                    "--warm-up-time",
                    "0.2",
                    "--measurement-time",
                    "0.5",
                    "--sample-size",
                    "10",
                ]),
                latency_alerts: 50,
                latency_rate: 200.0,
                memory_events: 20_000,
                bulk_rounds: 1,
                bulk_run: std::time::Duration::from_millis(300),
                quarantine_rounds: 1,
                quarantine_mib: 64,
                quarantine_connects: 1_000,
                flow_rounds: 1,
                flow_run: std::time::Duration::from_millis(300),
                flow_mib: 64,
                flow_connects: 1_000,
                flow_fill: false,
                flow_alternations: 2,
                flow_blocks: 4,
                dns_lookups: 500,
                dns_rounds: 1,
                ioc_sizes: vec![1_000, 10_000],
                rule_counts: vec![10, 100],
            }
        } else {
            Settings {
                rounds: 7,
                connects: 20_000,
                storm_rounds: 5,
                storm_connects: 50_000,
                criterion: args(&["--warm-up-time", "2", "--measurement-time", "5"]),
                latency_alerts: 600,
                latency_rate: 200.0,
                memory_events: 1_000_000,
                bulk_rounds: 7,
                bulk_run: std::time::Duration::from_secs(2),
                quarantine_rounds: 5,
                quarantine_mib: 2_048,
                quarantine_connects: 20_000,
                flow_rounds: 10,
                flow_run: std::time::Duration::from_secs(2),
                flow_mib: 2_048,
                flow_connects: 20_000,
                flow_fill: true,
                flow_alternations: 8,
                flow_blocks: 30,
                dns_lookups: 20_000,
                dns_rounds: 4,
                ioc_sizes: vec![1_000, 10_000, 100_000, 1_000_000],
                rule_counts: vec![10, 100, 1_000],
            }
        }
    }
}

/// Rules for the alerting scenarios: every connect to the bench address.
const ALERT_RULES: &str = "\
- rule: Bench Connect
  desc: every connect to the benchmark's TEST-NET address
  condition: evt.type = connect and fd.sip = 198.51.100.1
  output: bench connect (connection=%fd.name port=%fd.sport pid=%proc.pid command=%proc.cmdline)
  priority: WARNING
  tags: [bench]
";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let short = args.iter().any(|a| a == "--short");
    // `--only N,M`: just those scenarios (BENCHMARKS.md is then left alone).
    let only: Option<Vec<u32>> = match args.iter().position(|a| a == "--only") {
        Some(i) => Some(
            args.get(i + 1)
                .context("--only needs scenario numbers, e.g. --only 1,6")?
                .split(',')
                .map(|n| n.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .context("--only takes scenario numbers 1-12, comma-separated")?,
        ),
        None => None,
    };
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let settings = Settings::new(short);
    crate::test::build_release_binaries("build (release)")?;
    if want(3) || want(11) || want(12) {
        // Built up front so compiling never overlaps a measurement.
        run_step(
            "build (pipeline bench)",
            cargo().args(pipeline::BENCH).arg("--no-run"),
        )?;
    }
    let bins = binaries()?;

    let mut report = String::new();
    writeln!(report, "# Egret benchmarks\n")?;
    writeln!(report, "{}\n", machine_description())?;
    print!("{report}");
    let mut started = std::time::Instant::now();
    let mut section = |text: String| {
        eprintln!("    ({:.1} s)", started.elapsed().as_secs_f64());
        started = std::time::Instant::now();
        println!("{text}");
        report.push_str(&text);
        report.push('\n');
    };

    if want(1) {
        section(connect::filtered(&bins, &settings)?);
    }
    let rules = std::env::temp_dir().join(format!("egret-bench-rules-{}.yaml", std::process::id()));
    connect::write_rules(&rules)?;
    let _rules_file = RemoveOnDrop(rules.clone());
    let ns = bench_netns()?;
    if want(2) {
        let mut text = connect::alerting(&bins, &ns, &rules, &settings)?;
        text.push_str(&storm::run(&bins, &ns, &rules, &settings)?);
        section(text);
    }
    if want(3) {
        section(pipeline::run(&settings)?);
    }
    if want(4) {
        section(latency::run(&bins, &ns, &rules, &settings)?);
    }
    if want(5) {
        section(memory::run(&bins, &ns, &rules, &settings)?);
    }
    if want(6) {
        section(hooks::run(&bins, &ns, &settings)?);
    }
    if want(8) {
        section(quarantine::run(&bins, &ns, &settings)?);
    }
    if want(10) {
        section(flows::run(&bins, &ns, &settings)?);
    }
    if want(11) {
        section(ioc::lists(&bins, &ns, &settings)?);
    }
    if want(12) {
        section(ioc::rule_count(&settings)?);
    }
    if want(13) {
        section(scale::run(&bins, short)?);
    }
    drop(ns);
    if want(7) {
        section(throughput::run(&bins, &settings)?);
    }
    if want(9) {
        section(dns::run(&bins, &settings)?);
    }

    if !short && only.is_none() {
        std::fs::write(
            root().join("BENCHMARKS.md"),
            report.trim_end().to_string() + "\n",
        )
        .context("writing BENCHMARKS.md")?;
        eprintln!("wrote BENCHMARKS.md");
    }
    Ok(())
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Nearest-rank percentile of sorted, non-empty `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn goal(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, Linux {}. Numbers are from one run on a shared VM; \
         compare ratios, not absolutes.",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
