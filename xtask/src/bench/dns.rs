//! Scenario 9 (issue 14's cost): observed DNS.
//!
//! - a DNS-heavy workload: `egret-probe dns-query` sends sequential A
//!   queries for distinct names to dnsmasq in a throwaway namespace
//!   (TEST-NET address, nothing leaves the machine), without and with
//!   Egret; lookups/s of each, and what the DNS programs cost per run;
//! - bulk non-DNS throughput (one loopback TCP stream) with Egret without
//!   its DNS programs (`--no-dns`) and with them: the ratio is what the
//!   DNS programs' per-packet checks cost;
//! - the names cache's heap at 10,000 and 100,000 entries (unit-level:
//!   `agent/benches/names_memory.rs`, a counting allocator).
use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egret_testkit::{agent::Stdout, dns::DnsServer, netns::NetNs};

use super::{
    Settings, goal, median,
    procs::{Binaries, RunningAgent},
};
use crate::test::cargo;

const SERVER: &str = "198.51.100.1:53";
const LOOPBACK: &str = "127.0.0.1:47953";

fn lookups(bins: &Binaries, ns: &NetNs, names: &[String]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = ns
        .command(&bins.probe)
        .args(["dns-query", SERVER, "1"])
        .args(names)
        .output()
        .context("running dns-query")?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stdout);
    let answered: f64 = text
        .trim()
        .strip_prefix("answered ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("dns-query output {text:?}"))?;
    if answered < names.len() as f64 * 0.99 {
        bail!("only {answered} of {} queries answered", names.len());
    }
    Ok(answered / elapsed)
}

fn bulk(bins: &Binaries, run: Duration) -> anyhow::Result<f64> {
    let output = Command::new(&bins.probe)
        .args(["tcp-bulk", LOOPBACK, &run.as_millis().to_string()])
        .output()
        .context("running tcp-bulk")?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing bytes/s")
}

/// (runs, ns) of the agent's DNS programs, from bpftool.
fn dns_program_cost(agent: &RunningAgent) -> (u64, u64) {
    let mut total = (0, 0);
    for id in agent.program_ids() {
        let Ok(out) = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string(), "--json"])
            .output()
        else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            continue;
        };
        if info["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("egret_dns_"))
        {
            total.0 += info["run_cnt"].as_u64().unwrap_or(0);
            total.1 += info["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
    total
}

/// `kernel.bpf_stats_enabled` on, restored on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(Self::PATH).context("bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling bpf_stats_enabled")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn names_memory() -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let output = cargo()
        .args(["test", "-p", "egret", "--bench", "names_memory"])
        .stderr(Stdio::null())
        .output()
        .context("running the names_memory bench")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|n| n.parse::<u64>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        })
        .collect())
}

pub fn run(bins: &Binaries, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 9. observed DNS");
    let ns = NetNs::create("bench-dns").context("bench namespace")?;
    let _server = DnsServer::start(&ns, &[("shop.example", "203.0.113.5")]);
    let names: Vec<String> = (0..settings.dns_lookups)
        .map(|i| format!("h{i}.shop.example"))
        .collect();
    let mut sink = Command::new(&bins.probe)
        .args(["tcp-sink", LOOPBACK])
        .stdout(Stdio::null())
        .spawn()
        .context("tcp-sink")?;
    std::thread::sleep(Duration::from_millis(200));
    let _stats = BpfStats::enable()?;
    let (mut none, mut egret, mut no_dns, mut with_dns) = (vec![], vec![], vec![], vec![]);
    let mut cost = (0u64, 0u64);
    let mut messages = 0u64;
    for _ in 0..settings.dns_rounds {
        none.push(lookups(bins, &ns, &names)?);
        let agent = RunningAgent::start(bins, &["--no-dns"], Stdout::Discard)?;
        no_dns.push(bulk(bins, settings.bulk_run)?);
        agent.stop()?;
        let agent = RunningAgent::start(bins, &[], Stdout::Discard)?;
        with_dns.push(bulk(bins, settings.bulk_run)?);
        egret.push(lookups(bins, &ns, &names)?);
        let c = dns_program_cost(&agent);
        cost.0 += c.0;
        cost.1 += c.1;
        let summary = agent.stop()?;
        for hook in ["dns_query", "dns_answer"] {
            messages += summary["kernel"][hook]["emitted"].as_u64().unwrap_or(0);
        }
    }
    let _ = sink.kill();
    let _ = sink.wait();
    let memory = names_memory()?;

    let mut out = String::new();
    writeln!(out, "## 9. Observed DNS\n")?;
    writeln!(
        out,
        "{} sequential A queries for distinct names (`egret-probe dns-query`) to dnsmasq in a \
         throwaway namespace ({SERVER}), median of {} interleaved rounds; the agent with \
         default settings (DNS programs on the cgroup2 root).\n",
        settings.dns_lookups, settings.dns_rounds
    )?;
    let (base, with) = (median(&mut none), median(&mut egret));
    writeln!(out, "| | lookups/s |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(out, "| no monitor | {base:.0} |")?;
    writeln!(out, "| egret | {with:.0} |")?;
    writeln!(
        out,
        "\nRatio {:.3}. DNS messages captured over the Egret rounds: {messages}.",
        with / base
    )?;
    if cost.0 > 0 {
        writeln!(
            out,
            "DNS programs (`egret_dns_egress` + `egret_dns_ingress`, every packet of every \
             socket during the rounds, DNS or not): {} runs, {:.0} ns/run.",
            cost.0,
            cost.1 as f64 / cost.0 as f64
        )?;
    }
    let (a, b) = (median(&mut no_dns), median(&mut with_dns));
    writeln!(
        out,
        "\nBulk non-DNS throughput, one loopback TCP stream (`tcp-bulk`, {} ms): Egret \
         `--no-dns` {:.0} MB/s, Egret with DNS capture {:.0} MB/s, ratio {:.3}. Goal ≥ 0.98 ({}).\n",
        settings.bulk_run.as_millis(),
        a / 1e6,
        b / 1e6,
        b / a,
        goal(b / a >= 0.98)
    )?;
    writeln!(
        out,
        "Names cache heap (counting allocator, `agent/benches/names_memory.rs`):\n"
    )?;
    writeln!(out, "| entries | bytes | bytes/entry |")?;
    writeln!(out, "|---:|---:|---:|")?;
    for (entries, bytes, per) in memory {
        writeln!(out, "| {entries} | {bytes} | {per} |")?;
    }
    Ok(out)
}
