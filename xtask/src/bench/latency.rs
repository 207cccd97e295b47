//! Scenario 4: alert latency, from just before connect(2) to the webhook
//! request arriving at a receiver on loopback. Both ends stamp
//! CLOCK_REALTIME on this machine; connects go to consecutive ports, so
//! each request is matched to its connect by `fd.sport` (and no two alerts
//! share a coalescing key: the agent's webhook settings stay default).
use std::{collections::HashMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use egret_testkit::{agent::Stdout, http::Receiver};

use super::{
    Settings, goal, percentile,
    procs::{Binaries, NetNs, RunningAgent, wait_until_stable},
};

/// Port and CLOCK_REALTIME nanoseconds of each alert request's arrival.
fn arrivals(receiver: &Receiver) -> Vec<(u16, u128)> {
    receiver
        .requests()
        .iter()
        .filter_map(|r| Some((sport(&String::from_utf8_lossy(&r.body))?, r.arrived_ns)))
        .collect()
}

/// `"fd.sport":N` in the alert's `output_fields`.
fn sport(body: &str) -> Option<u16> {
    let rest = &body[body.find("\"fd.sport\":")? + "\"fd.sport\":".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `probe connect-timed` inside the namespace; (port, realtime ns) each.
fn timed_connects(
    bins: &Binaries,
    ns: &NetNs,
    first_port: u16,
    count: u64,
    rate: f64,
) -> anyhow::Result<Vec<(u16, u128)>> {
    let output = ns
        .command(&bins.probe)
        .args([
            "connect-timed",
            &format!("198.51.100.1:{first_port}"),
            &count.to_string(),
            &rate.to_string(),
        ])
        .output()
        .context("running connect-timed")?;
    if !output.status.success() {
        bail!("connect-timed failed: {output:?}");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let (port, at) = l.split_once(' ').context("malformed connect-timed line")?;
            Ok((port.parse()?, at.parse()?))
        })
        .collect()
}

pub fn run(
    bins: &Binaries,
    ns: &NetNs,
    rules: &Path,
    settings: &Settings,
) -> anyhow::Result<String> {
    eprintln!("==> 4. alert latency (connect → webhook)");
    const WARM_UP: u64 = 10;
    const FIRST_PORT: u16 = 20_000;
    let receiver = Receiver::start().context("starting the webhook receiver")?;
    let url = format!("http://{}/", receiver.addr);
    let rules_arg = rules.display().to_string();
    let agent = RunningAgent::start(
        bins,
        &["--rules", &rules_arg, "--webhook", &url],
        Stdout::Discard,
    )?;
    // The first request opens the HTTP connection; measure after that.
    timed_connects(bins, ns, 10_000, WARM_UP, settings.latency_rate)?;
    wait_until_stable(|| receiver.count() as u64, WARM_UP, Duration::from_secs(5));
    let warm = receiver.count() as u64;

    let count = settings.latency_alerts;
    let sent = timed_connects(bins, ns, FIRST_PORT, count, settings.latency_rate)?;
    wait_until_stable(
        || receiver.count() as u64,
        warm + count,
        Duration::from_secs(5),
    );
    agent.stop()?;
    let arrived: HashMap<u16, u128> = arrivals(&receiver)
        .into_iter()
        .filter(|(port, _)| *port >= FIRST_PORT)
        .collect();
    drop(receiver);

    let mut latencies_ms: Vec<f64> = sent
        .iter()
        .filter_map(|(port, at)| {
            let arrival = arrived.get(port)?;
            Some((*arrival as f64 - *at as f64) / 1e6)
        })
        .collect();
    let missing = sent.len() - latencies_ms.len();
    latencies_ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = if latencies_ms.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        (
            percentile(&latencies_ms, 0.50),
            percentile(&latencies_ms, 0.99),
            latencies_ms[latencies_ms.len() - 1],
        )
    };

    let mut out = String::new();
    writeln!(
        out,
        "## 4. Alert latency (connect → webhook request received)\n"
    )?;
    writeln!(
        out,
        "{count} connects at {:.0}/s from inside the bench namespace to 198.51.100.1, each to \
         its own port (refused there; the attempt is what alerts), with the agent started as \
         `egret run --rules FILE --webhook http://127.0.0.1:PORT/` (default webhook settings). \
         Latency: CLOCK_REALTIME at the receiver once the whole request has arrived minus \
         CLOCK_REALTIME just before connect(2), matched by destination port. {WARM_UP} alerts \
         before the measured ones open the HTTP connection.\n",
        settings.latency_rate
    )?;
    writeln!(out, "| alerts | received | p50 ms | p99 ms | max ms |")?;
    writeln!(out, "|---:|---:|---:|---:|---:|")?;
    writeln!(
        out,
        "| {} | {} | {p50:.2} | {p99:.2} | {max:.2} |",
        sent.len(),
        latencies_ms.len()
    )?;
    writeln!(
        out,
        "\nGoal: p99 ≤ 10 ms ({}).",
        goal(p99 <= 10.0 && missing == 0)
    )?;
    if missing > 0 {
        writeln!(out, "\n{missing} alerts never reached the receiver.")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_in_a_payload() {
        let body =
            r#"{"output":"x","output_fields":{"fd.name":"198.51.100.1:20007","fd.sport":20007}}"#;
        assert_eq!(sport(body), Some(20007));
        assert_eq!(sport("{}"), None);
    }
}
