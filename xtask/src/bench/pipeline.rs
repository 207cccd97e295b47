//! Scenario 3: the userspace pipeline alone (decode → enrich → rules →
//! metrics), as the criterion bench `agent/benches/pipeline.rs` measures it
//! on one core. Its throughput lines are parsed from criterion's output.
use std::{fmt::Write as _, process::Stdio};

use anyhow::{Context as _, bail};

use super::{Settings, goal};
use crate::test::cargo;

/// The bench target, as `cargo bench` names it.
pub const BENCH: [&str; 5] = ["bench", "-p", "egret", "--bench", "pipeline"];

struct Measured {
    name: &'static str,
    events_per_second: f64,
    alerts_per_event: f64,
}

pub fn run(settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> 3. pipeline throughput (criterion)");
    let output = cargo()
        .args(BENCH)
        .arg("--")
        .args(&settings.criterion)
        .stderr(Stdio::inherit())
        .output()
        .context("running the pipeline bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pipeline bench failed ({}):\n{stdout}", output.status);
    }
    let mut measured = Vec::new();
    for name in ["mixed", "alert_storm", "mixed_baseline"] {
        measured.push(Measured {
            name,
            events_per_second: throughput(&stdout, name)
                .with_context(|| format!("no throughput for pipeline/{name} in:\n{stdout}"))?,
            alerts_per_event: alerts_per_event(&stdout, name).unwrap_or(f64::NAN),
        });
    }
    let mut out = String::new();
    writeln!(out, "## 3. Pipeline throughput (no kernel)\n")?;
    writeln!(
        out,
        "`cargo bench -p egret --bench pipeline` (criterion, `{}`): ring-buffer records decoded, \
         enriched (process images cached from exec records, cgroup → container and user names \
         resolved from warm caches), evaluated against the bundled rules, alerts rendered to \
         JSON and counted in the metrics, in batches of 512 as the agent runs them; only the \
         stdout write is left out. One thread. `mixed`: mostly cluster-internal traffic, 60% \
         from pods; `alert_storm`: every event alerts; `mixed_baseline`: `mixed` with workload baselines \
         on (`baseline.enabled`).\n",
        settings.criterion.join(" ")
    )?;
    writeln!(
        out,
        "| workload | events/s (one core) | ns per event | alerts per event |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for m in &measured {
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.3} |",
            m.name,
            m.events_per_second,
            1e9 / m.events_per_second,
            m.alerts_per_event
        )?;
    }
    writeln!(
        out,
        "\nGoal: ≥ 1,000,000 events/s for the mixed workload ({}).",
        goal(measured[0].events_per_second >= 1e6)
    )?;
    Ok(out)
}

/// The middle of criterion's `thrpt: [low mid high]` for `pipeline/<name>`.
pub(super) fn throughput(stdout: &str, name: &str) -> Option<f64> {
    let header = format!("pipeline/{name} ");
    let mut lines = stdout.lines();
    lines.find(|l| l.starts_with(&header) && l.contains("time:"))?;
    let line = lines.find(|l| l.contains("thrpt:"))?;
    let inside = line.split('[').nth(1)?.split(']').next()?;
    let tokens: Vec<&str> = inside.split_whitespace().collect();
    // value unit value unit value unit
    let (value, unit) = (tokens.get(2)?, tokens.get(3)?);
    let scale = match *unit {
        "elem/s" => 1.0,
        "Kelem/s" => 1e3,
        "Melem/s" => 1e6,
        "Gelem/s" => 1e9,
        _ => return None,
    };
    Some(value.parse::<f64>().ok()? * scale)
}

/// The bench's own `pipeline/<name>: alerts per event X` line.
fn alerts_per_event(stdout: &str, name: &str) -> Option<f64> {
    let prefix = format!("pipeline/{name}: alerts per event ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criterion_output() {
        let out = "pipeline/mixed: alerts per event 0.161\n\
                   Benchmarking pipeline/mixed\n\
                   pipeline/mixed          time:   [3.5068 ms 3.5895 ms 3.6758 ms]\n\
                   \x20                       thrpt:  [1.1143 Melem/s 1.1411 Melem/s 1.1680 Melem/s]\n\
                   pipeline/alert_storm    time:   [9.5484 ms 9.8055 ms 10.087 ms]\n\
                   \x20                       thrpt:  [406.06 Kelem/s 417.72 Kelem/s 428.97 Kelem/s]\n";
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-3);
        assert!(close(throughput(out, "mixed"), 1.1411e6));
        assert!(close(throughput(out, "alert_storm"), 417.72e3));
        assert_eq!(alerts_per_event(out, "mixed"), Some(0.161));
        assert_eq!(throughput(out, "missing"), None);
    }
}
