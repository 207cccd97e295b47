//! Scenario 10: what flow accounting costs (issue 15). Two agents attached
//! to sibling cgroups, one with `kernel.flows` on and one off, and the same
//! traffic from a process in each, interleaved: bulk TCP throughput (one
//! connection streaming to a reader thread of the same process) and
//! connect rate (connect+accept+close), so the ratio is what the flow
//! programs add on top of connect monitoring. Then memory per tracked flow
//! (the kernel table is preallocated: `bytes_memlock` over its entries) and,
//! without `--short`, what happens at 100,000 concurrent flows: that many
//! UDP sockets each send one datagram and stay open, against a table of
//! 65,536.
//!
//! Traffic goes to 198.51.100.1 in the bench namespace: nothing leaves the
//! machine.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, bail};
use egret_testkit::{agent::Stdout, cgroup::TestCgroup, free_port};

use super::{
    Settings, goal, median,
    procs::{Binaries, NetNs, RunningAgent, probe_in},
};

const ADDR: &str = "198.51.100.1";
/// Concurrent UDP flows of the full-table step.
const CONCURRENT: u64 = 100_000;
/// Processes holding them.
const HOLDERS: u64 = 8;

/// One sample of a Prometheus text exposition, summed over label sets
/// matching `labels` (a substring of the label block).
fn sample(metrics: &str, name: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn scrape(port: u16) -> anyhow::Result<String> {
    let addr = format!("127.0.0.1:{port}").parse().expect("literal");
    let (status, body) = egret_testkit::http::get(addr, "/metrics").map_err(anyhow::Error::msg)?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body)
}

/// `bytes_memlock` and `max_entries` of the agent's flow table.
fn flow_table_memory(agent: u32) -> anyhow::Result<(u64, u64)> {
    let output = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("bpftool map show")?;
    let maps: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("bpftool's JSON")?;
    let pid = serde_json::Value::from(agent);
    let ours = maps.as_array().into_iter().flatten().find(|m| {
        m["name"] == "EGRET_FLOWS"
            && m["pids"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["pid"] == pid))
    });
    // Without pid information (older bpftool) any EGRET_FLOWS is the same size.
    let map = ours
        .or_else(|| {
            maps.as_array()
                .into_iter()
                .flatten()
                .find(|m| m["name"] == "EGRET_FLOWS")
        })
        .context("no EGRET_FLOWS map")?;
    Ok((
        map["bytes_memlock"].as_u64().unwrap_or(0),
        map["max_entries"].as_u64().unwrap_or(0),
    ))
}

pub fn run(bins: &Binaries, ns: &NetNs, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 10. flow accounting");
    let parent = TestCgroup::new("flowbench");
    let on = parent.child("on");
    let off = parent.child("off");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let on_arg = on.path().display().to_string();
    let off_arg = off.path().display().to_string();
    let agent_on = RunningAgent::start(
        bins,
        &["--cgroup", &on_arg, "--no-identity", "--listen", &listen],
        Stdout::Discard,
    )?;
    let agent_off = RunningAgent::start(
        bins,
        &[
            "--cgroup",
            &off_arg,
            "--no-identity",
            "-o",
            "kernel.flows=false",
        ],
        Stdout::Discard,
    )?;
    let bulk_args = ["bulk", &format!("{ADDR}:0"), &settings.flow_mib.to_string()];
    let loop_args = [
        "connect-loop",
        &format!("{ADDR}:0"),
        &settings.flow_connects.to_string(),
    ];
    let (mut bulk_off, mut bulk_on, mut conn_off, mut conn_on) = (vec![], vec![], vec![], vec![]);
    for _ in 0..settings.flow_rounds {
        bulk_off.push(probe_in(bins, off.path(), &ns.name, &bulk_args)?);
        bulk_on.push(probe_in(bins, on.path(), &ns.name, &bulk_args)?);
        conn_off.push(probe_in(bins, off.path(), &ns.name, &loop_args)?);
        conn_on.push(probe_in(bins, on.path(), &ns.name, &loop_args)?);
    }
    let (memlock, entries) = flow_table_memory(agent_on.pid())?;
    let full = if settings.flow_fill {
        // Both of the namespace's addresses (one has only ~64k ports), and
        // several processes (the fd hard limit may be low): all at once.
        let per = CONCURRENT / HOLDERS;
        let hold = [
            "udp-hold",
            &format!("{ADDR}:9"),
            &per.to_string(),
            "4000",
            "198.51.100.1,203.0.113.1",
        ];
        let before = scrape(port)?;
        let holders: Vec<_> = (0..HOLDERS)
            .map(|_| {
                let bins = bins.clone();
                let cgroup = on.path().to_path_buf();
                let ns_name = ns.name.clone();
                let hold: Vec<String> = hold.iter().map(|s| s.to_string()).collect();
                std::thread::spawn(move || -> anyhow::Result<f64> {
                    let args: Vec<&str> = hold.iter().map(String::as_str).collect();
                    probe_in(&bins, &cgroup, &ns_name, &args)
                })
            })
            .collect();
        let mut opened = 0u64;
        for holder in holders {
            opened += holder
                .join()
                .map_err(|_| anyhow::anyhow!("holder thread panicked"))??
                as u64;
        }
        // The tracked sockets' final records drain through the pipeline.
        std::thread::sleep(std::time::Duration::from_secs(5));
        let after = scrape(port)?;
        let delta = |name: &str, labels: &str| {
            sample(&after, name, labels).saturating_sub(sample(&before, name, labels))
        };
        Some((
            opened,
            delta("egret_kernel_flow_untracked_total", "udp_table_full"),
            delta("egret_kernel_seen_total", "udp_flow"),
            delta("egret_kernel_emitted_total", "udp_flow"),
            delta("egret_kernel_ringbuf_drops_total", "udp_flow"),
            delta(
                "egret_flow_records_total",
                "protocol=\"udp\",end=\"closed\"",
            ),
        ))
    } else {
        None
    };
    let rss_kib = super::procs::status_kib(agent_on.pid(), "VmRSS").unwrap_or(0);
    agent_on.stop()?;
    agent_off.stop()?;
    drop((on, off));

    let (b0, b1) = (median(&mut bulk_off), median(&mut bulk_on));
    let (c0, c1) = (median(&mut conn_off), median(&mut conn_on));
    let mut out = String::new();
    writeln!(out, "## 10. Flow accounting\n")?;
    writeln!(
        out,
        "Two agents on sibling cgroups, `kernel.flows` on and off (connect monitoring on in \
         both), and the same process in each talking to {ADDR} in a test netns; {} interleaved \
         rounds, medians. Bulk: one TCP connection streaming {} MiB to a reader thread of the \
         same process (one flow; every segment passes the cgroup_skb lookup). Connects: {} \
         connect+accept+close per run (each a tracked flow with its state callbacks and record). \
         Goals (issue 15): bulk ≥ 0.98, connects ≥ 0.95.\n",
        settings.flow_rounds, settings.flow_mib, settings.flow_connects
    )?;
    writeln!(out, "| traffic | flows off | flows on | ratio | goal |")?;
    writeln!(out, "|---|---:|---:|---:|---|")?;
    writeln!(
        out,
        "| bulk TCP, MiB/s | {b0:.1} | {b1:.1} | {:.3} | {} |",
        b1 / b0,
        goal(b1 / b0 >= 0.98)
    )?;
    writeln!(
        out,
        "| connects/s | {c0:.0} | {c1:.0} | {:.3} | {} |",
        c1 / c0,
        goal(c1 / c0 >= 0.95)
    )?;
    let per_flow = memlock.checked_div(entries).unwrap_or(0);
    writeln!(
        out,
        "\nMemory per tracked flow: the kernel table `EGRET_FLOWS` holds {entries} flows in \
         {} KiB, preallocated ({per_flow} bytes per flow, paid once at load whether used or \
         not); the agent keeps each live flow's owner (about 100 bytes plus hash overhead, at \
         most 2 × 65,536). Agent RSS at the end of this run: {} MiB.",
        memlock / 1024,
        rss_kib / 1024
    )?;
    match full {
        Some((opened, untracked, seen, emitted, drops, closed)) => writeln!(
            out,
            "\n{opened} concurrent UDP flows ({HOLDERS} processes, each socket one datagram, \
             held 4 s, then closed): {seen} first datagrams seen, {} tracked (the table holds \
             {entries}), {untracked} not \
             (`egret_kernel_flow_untracked_total{{reason=\"udp_table_full\"}}`); at the close, \
             {emitted} final records sent, {drops} lost to a full ring buffer \
             (`egret_kernel_ringbuf_drops_total{{hook=\"udp_flow\"}}`), {closed} reached the \
             agent. Nothing else is affected: connects are still reported, a full table only \
             means new flows are counted instead of recorded.",
            seen.saturating_sub(untracked)
        )?,
        None => writeln!(out, "\n(`--short`: the {CONCURRENT}-flow step is skipped.)")?,
    }
    Ok(out)
}
