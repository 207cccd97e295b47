//! Scenario 9 (issue 14's cost): observed DNS.
//!
//! - a DNS-heavy workload: `egret-probe dns-query` sends sequential A
//!   queries for distinct names to dnsmasq in a throwaway namespace
//!   (TEST-NET address, nothing leaves the machine), without and with
//!   Egret; lookups/s of each, and what the DNS programs cost per run;
//! - bulk non-DNS throughput (one TCP stream) from a process under an
//!   agent without its DNS programs (`--no-dns`) and one under an agent
//!   with them, sibling cgroups, paired rounds (`paired.rs`): the ratio is
//!   what the DNS programs' per-packet checks cost; and that cost from the
//!   kernel's accounting, in passes of their own;
//! - the names cache's heap at 10,000 and 100,000 entries (unit-level:
//!   `agent/benches/names_memory.rs`, a counting allocator).
use std::{fmt::Write as _, path::Path, process::Stdio, time::Instant};

use anyhow::{Context as _, bail};
use egret_testkit::{agent::Stdout, cgroup::TestCgroup, dns::DnsServer, netns::NetNs};

use super::{
    Settings, goal,
    paired::{Paired, ProgramShare},
    procs::{Binaries, RunningAgent, probe_in, probe_on_cpu},
};
use crate::test::cargo;

const SERVER: &str = "198.51.100.1:53";

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
    let rounds = settings.dns_rounds;
    // DNS-heavy: no monitor against the agent with default settings (its
    // programs on the cgroup2 root), an agent started per round.
    let mut messages = 0u64;
    let heavy = Paired::run(
        rounds,
        || lookups(bins, &ns, &names),
        || {
            let agent = RunningAgent::start(bins, &[], Stdout::Discard)?;
            let rate = lookups(bins, &ns, &names)?;
            let summary = agent.stop()?;
            for hook in ["dns_query", "dns_answer"] {
                messages += summary["kernel"][hook]["emitted"].as_u64().unwrap_or(0);
            }
            Ok(rate)
        },
    )?;
    // Bulk non-DNS: two agents on sibling cgroups, the same but for
    // `--no-dns`, and the same process in each.
    let parent = TestCgroup::new("dnsbench");
    let (on, off) = (parent.child("on"), parent.child("off"));
    let on_arg = on.path().display().to_string();
    let off_arg = off.path().display().to_string();
    let agent_on = RunningAgent::start(
        bins,
        &["--cgroup", &on_arg, "--no-identity"],
        Stdout::Discard,
    )?;
    let agent_off = RunningAgent::start(
        bins,
        &["--cgroup", &off_arg, "--no-identity", "--no-dns"],
        Stdout::Discard,
    )?;
    let millis = settings.flow_run.as_millis().to_string();
    let bulk_args = ["bulk-for", "198.51.100.1:0", &millis];
    let run = |cpu, cgroup: &Path| probe_on_cpu(bins, cpu, cgroup, &ns.name, &bulk_args);
    let rounds = settings.flow_rounds;
    let bulk = Paired::concurrent(rounds, |c| run(c, off.path()), |c| run(c, on.path()))?;
    let bulk_aa = Paired::concurrent(rounds, |c| run(c, off.path()), |c| run(c, off.path()))?;
    // The kernel's accounting, in passes of their own (it costs two clock
    // reads per run): the DNS programs on that bulk stream, and on the
    // DNS-heavy workload.
    let bulk_share = ProgramShare::measure(agent_on.pid(), &["egret_dns"], || {
        let mib = settings.flow_mib.to_string();
        for _ in 0..2 {
            probe_in(bins, on.path(), &ns.name, &["bulk", "198.51.100.1:0", &mib])?;
        }
        Ok(())
    })?;
    agent_on.stop()?;
    agent_off.stop()?;
    drop((on, off));
    let agent = RunningAgent::start(bins, &[], Stdout::Discard)?;
    let heavy_share = ProgramShare::measure(agent.pid(), &["egret_dns"], || {
        lookups(bins, &ns, &names).map(drop)
    })?;
    agent.stop()?;
    let memory = names_memory()?;

    let mut out = String::new();
    writeln!(out, "## 9. Observed DNS\n")?;
    writeln!(
        out,
        "Method (`paired.rs`): ratio: the median over adjacent round pairs of the geometric mean of their two \
         ratios, which cancels a core's or a position's bias (range of those in brackets); \
         rates: medians; `kernel.bpf_stats_enabled` off (the programs' own cost is measured in \
         passes of its own, below). The DNS-heavy rounds run both sides back to back, \
         alternating which goes first (an agent on the cgroup2 root sees both).\n"
    )?;
    writeln!(
        out,
        "DNS-heavy: {} sequential A queries for distinct names (`egret-probe dns-query`) to \
         dnsmasq in a throwaway namespace ({SERVER}), {rounds} rounds; the agent with default \
         settings (DNS programs on the cgroup2 root), started for each of its runs.\n",
        settings.dns_lookups
    )?;
    let (base, with) = heavy.medians();
    let (low, high) = heavy.ratio_range();
    writeln!(out, "| | lookups/s |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(out, "| no monitor | {base:.0} |")?;
    writeln!(out, "| egret | {with:.0} |")?;
    writeln!(
        out,
        "\nRatio {:.3} ({low:.3}–{high:.3}). DNS messages captured over the Egret runs: \
         {messages}.",
        heavy.ratio()
    )?;
    writeln!(
        out,
        "\nBulk non-DNS throughput: two agents on sibling cgroups, one with `--no-dns`, both \
         `--no-identity`, and the same process in each streaming over one TCP connection to a \
         reader thread (in the bench namespace, to 198.51.100.1), both at once, each pinned to a \
         core of its own (swapped every round), for {} ms per round, {} rounds; A/A: the `--no-dns` side against a second copy of itself (the \
         method's noise).\n",
        settings.flow_run.as_millis(),
        settings.flow_rounds
    )?;
    let (a, b) = bulk.medians();
    let (low, high) = bulk.ratio_range();
    let (aa_low, aa_high) = bulk_aa.ratio_range();
    writeln!(
        out,
        "| `--no-dns` MiB/s | DNS capture MiB/s | ratio | A/A ratio | goal |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---|")?;
    writeln!(
        out,
        "| {a:.1} | {b:.1} | {:.3} ({low:.3}–{high:.3}) | {:.3} ({aa_low:.3}–{aa_high:.3}) | \
         ≥ 0.98 ({}) |",
        bulk.ratio(),
        bulk_aa.ratio(),
        goal(bulk.ratio() >= 0.98)
    )?;
    writeln!(
        out,
        "\nWhat the DNS programs cost, from the kernel's accounting (% of one core: their run \
         time over the pass's wall time). On the bulk stream (2 runs; every segment of both \
         ends, none of them DNS): {:.2}% of one core.\n\n{}\nOn the DNS-heavy workload (one \
         run; every packet of every socket on the node, DNS or not): {:.2}% of one core.\n\n{}",
        bulk_share.percent(),
        bulk_share.table(),
        heavy_share.percent(),
        heavy_share.table()
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
