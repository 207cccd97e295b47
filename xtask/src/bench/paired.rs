//! The with/without method of the throughput ratios (scenarios 9 and 10).
//! Run-to-run noise on this 2-core VM is ±5% to ±30%, more than the
//! programs cost, so the ratio is always a median over rounds, and each
//! value in it is the geometric mean of two adjacent rounds' ratios: the
//! sides swap cores (concurrent) or order (sequential) from one round to
//! the next, so a bias of a core or of going first enters such a pair once
//! each way and cancels (seen here: the two vCPUs differed by up to 30%
//! for minutes, which per-round ratios alone turned into an A/A of 1.06):
//! - [`Paired::concurrent`]: both sides at the same time, each pinned to a
//!   core of its own, for the same fixed interval, so they share whatever
//!   the machine does meanwhile; an A/A run (one side twice) measures the
//!   method's own noise;
//! - [`Paired::run`]: where the sides cannot run together (an agent
//!   attached to the whole node, a peer tracing everything), back to back
//!   in every round, alternating which goes first;
//! - [`Alternated`]: one process switching between the two sides' cgroups
//!   every 100 ms on one core (the probe's `connect-alternate`), for a
//!   rate small costs must be told apart in: concurrent rounds here read
//!   A/A pair values from 0.90 to 1.06 for connects, where blocks this
//!   short, in ABBA order, cancel the machine's drift (runs of 40 blocks
//!   repeated within 0.01 of each other).
//!
//! The kernel's own accounting then bounds the cost independently: see
//! [`ProgramShare`].
use std::time::Instant;

use super::{
    hooks::{ProgStats, StatsEnabled, programs_of},
    median,
};

/// Throughput samples of both sides, one per round each.
#[derive(Default)]
pub(super) struct Paired {
    pub(super) off: Vec<f64>,
    pub(super) on: Vec<f64>,
}

impl Paired {
    /// `rounds` rounds of `off` and `on`, alternating which runs first.
    pub(super) fn run(
        rounds: usize,
        mut off: impl FnMut() -> anyhow::Result<f64>,
        mut on: impl FnMut() -> anyhow::Result<f64>,
    ) -> anyhow::Result<Paired> {
        let mut paired = Paired::default();
        for round in 0..rounds {
            if round % 2 == 0 {
                paired.off.push(off()?);
                paired.on.push(on()?);
            } else {
                paired.on.push(on()?);
                paired.off.push(off()?);
            }
        }
        Ok(paired)
    }

    /// `rounds` rounds of `off` and `on` running at the same time, each
    /// pinned to a core of its own (the closures get the CPU number) and
    /// swapping cores every round: each side has a core to itself, both
    /// share whatever the machine does meanwhile (another VM's load, the
    /// host's frequency) for the same interval, and any difference between
    /// the cores cancels over the rounds. Each side must run for a fixed
    /// time, not a fixed amount of work. The same with one side twice
    /// ("A/A") gives the method's own noise floor.
    pub(super) fn concurrent(
        rounds: usize,
        off: impl Fn(usize) -> anyhow::Result<f64> + Sync,
        on: impl Fn(usize) -> anyhow::Result<f64> + Sync,
    ) -> anyhow::Result<Paired> {
        let mut paired = Paired::default();
        for round in 0..rounds {
            let (off_cpu, on_cpu) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
            let (a, b) = std::thread::scope(|scope| {
                let a = scope.spawn(|| off(off_cpu));
                let b = on(on_cpu);
                (a.join(), b)
            });
            let a = a.map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
            paired.off.push(a);
            paired.on.push(b?);
        }
        Ok(paired)
    }

    /// The per-round ratios on/off folded into adjacent pairs: the
    /// geometric mean of rounds i and i + 1 (whose cores or order are
    /// swapped), for every i; a single round is its own value.
    fn ratios(&self) -> Vec<f64> {
        let rounds: Vec<f64> = self
            .off
            .iter()
            .zip(&self.on)
            .filter(|(off, _)| **off > 0.0)
            .map(|(off, on)| on / off)
            .collect();
        if rounds.len() < 2 {
            return rounds;
        }
        rounds.windows(2).map(|w| (w[0] * w[1]).sqrt()).collect()
    }

    /// Median of the pair values on/off (see [`Paired::ratios`]).
    pub(super) fn ratio(&self) -> f64 {
        median(&mut self.ratios())
    }

    /// Lowest and highest pair value.
    pub(super) fn ratio_range(&self) -> (f64, f64) {
        let ratios = self.ratios();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }

    pub(super) fn medians(&self) -> (f64, f64) {
        (median(&mut self.off.clone()), median(&mut self.on.clone()))
    }
}

/// Runs of the probe's `connect-alternate`: per run, both sides' rates and
/// the median over its block pairs of on/off.
#[derive(Default)]
pub(super) struct Alternated {
    pub(super) off: Vec<f64>,
    pub(super) on: Vec<f64>,
    pub(super) ratios: Vec<f64>,
}

impl Alternated {
    /// Adds a run from the probe's output, `<on rate> <off rate> <ratio>`
    /// (the probe's side A is on).
    pub(super) fn push(&mut self, printed: &str) -> anyhow::Result<()> {
        let numbers: Vec<f64> = printed
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|err| anyhow::anyhow!("connect-alternate printed {printed:?}: {err}"))?;
        let [on, off, ratio] = numbers[..] else {
            anyhow::bail!("connect-alternate printed {printed:?}");
        };
        self.on.push(on);
        self.off.push(off);
        self.ratios.push(ratio);
        Ok(())
    }

    /// Median over runs of the runs' on/off.
    pub(super) fn ratio(&self) -> f64 {
        median(&mut self.ratios.clone())
    }

    pub(super) fn ratio_range(&self) -> (f64, f64) {
        let low = self.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = self
            .ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }

    pub(super) fn medians(&self) -> (f64, f64) {
        (median(&mut self.off.clone()), median(&mut self.on.clone()))
    }
}

/// What some programs cost over a stretch of traffic, from the kernel's
/// accounting (`kernel.bpf_stats_enabled` on while it ran): runs, ns per
/// run, and their total run time as a share of the wall time. The share is
/// CPU time the programs took from the traffic: on a stream that keeps one
/// core busy it bounds the throughput they can cost.
pub(super) struct ProgramShare {
    pub(super) rows: Vec<(String, u64, u64)>,
    pub(super) wall_ns: u64,
}

impl ProgramShare {
    /// Runs `traffic` with `kernel.bpf_stats_enabled` on (only then: the
    /// accounting costs two clock reads per run) and returns what the
    /// programs of process `agent` named with one of `prefixes` cost over it.
    pub(super) fn measure(
        agent: u32,
        prefixes: &[&str],
        traffic: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<ProgramShare> {
        let _stats = StatsEnabled::new()?;
        let before = programs_of(agent)?;
        let started = Instant::now();
        traffic()?;
        let after = programs_of(agent)?;
        Ok(ProgramShare::between(&before, &after, prefixes, started))
    }

    /// Deltas of the programs whose names start with one of `prefixes`
    /// between two snapshots taken `started` apart.
    fn between(
        before: &[ProgStats],
        after: &[ProgStats],
        prefixes: &[&str],
        started: Instant,
    ) -> ProgramShare {
        let wall_ns = started.elapsed().as_nanos() as u64;
        let rows = after
            .iter()
            .filter(|p| prefixes.iter().any(|pre| p.name.starts_with(pre)))
            .map(|p| {
                let old = before.iter().find(|b| b.name == p.name);
                let runs = p.run_cnt - old.map_or(0, |b| b.run_cnt.min(p.run_cnt));
                let ns = p.run_time_ns - old.map_or(0, |b| b.run_time_ns.min(p.run_time_ns));
                (p.name.clone(), runs, ns)
            })
            .collect();
        ProgramShare { rows, wall_ns }
    }

    /// Total run time of the programs over the wall time, in percent.
    pub(super) fn percent(&self) -> f64 {
        let ns: u64 = self.rows.iter().map(|r| r.2).sum();
        100.0 * ns as f64 / self.wall_ns.max(1) as f64
    }

    /// A markdown table: program, runs, runs/s, ns/run, % of one core.
    pub(super) fn table(&self) -> String {
        let secs = self.wall_ns as f64 / 1e9;
        let mut out = String::from(
            "| program | runs | runs/s | ns/run | % of one core |\n|---|---:|---:|---:|---:|\n",
        );
        for (name, runs, ns) in &self.rows {
            let per = if *runs > 0 {
                format!("{:.0}", *ns as f64 / *runs as f64)
            } else {
                "–".to_string()
            };
            out.push_str(&format!(
                "| `{name}` | {runs} | {:.0} | {per} | {:.2} |\n",
                *runs as f64 / secs.max(1e-9),
                100.0 * *ns as f64 / self.wall_ns.max(1) as f64
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternates_and_takes_the_median_of_round_ratios() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut off_values = [100.0, 100.0, 90.0].into_iter();
        let mut on_values = [99.0, 80.0, 90.0].into_iter();
        let paired = Paired::run(
            3,
            || {
                order.borrow_mut().push("off");
                Ok(off_values.next().unwrap_or(0.0))
            },
            || {
                order.borrow_mut().push("on");
                Ok(on_values.next().unwrap_or(0.0))
            },
        )
        .expect("rounds");
        assert_eq!(*order.borrow(), ["off", "on", "on", "off", "off", "on"]);
        // Round ratios 0.99, 0.8, 1.0 → pairs √(0.99·0.8), √(0.8·1.0).
        let (a, b) = ((0.99f64 * 0.8).sqrt(), 0.8f64.sqrt());
        // Of two values, `median` takes the upper one.
        assert!((paired.ratio() - b).abs() < 1e-9);
        let (low, high) = paired.ratio_range();
        assert!((low - a).abs() < 1e-9 && (high - b).abs() < 1e-9);
    }

    #[test]
    fn a_core_bias_that_alternates_cancels_in_pairs() {
        // The on side is truly 0.95 of off; whichever side has core 0 runs
        // 30% faster, and the sides swap cores every round.
        let rounds = std::sync::atomic::AtomicUsize::new(0);
        let paired = Paired::concurrent(
            6,
            |cpu| Ok(if cpu == 0 { 130.0 } else { 100.0 }),
            |cpu| {
                rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(0.95 * if cpu == 0 { 130.0 } else { 100.0 })
            },
        )
        .expect("rounds");
        assert_eq!(rounds.into_inner(), 6);
        assert!((paired.ratio() - 0.95).abs() < 1e-9, "{}", paired.ratio());
        let (low, high) = paired.ratio_range();
        assert!((low - 0.95).abs() < 1e-9 && (high - 0.95).abs() < 1e-9);
        let single = Paired {
            off: vec![100.0],
            on: vec![90.0],
        };
        assert!((single.ratio() - 0.9).abs() < 1e-9);
    }

    #[test]
    fn program_share_is_the_delta_over_wall_time() {
        let p = |name: &str, cnt, ns| ProgStats {
            name: name.into(),
            run_cnt: cnt,
            run_time_ns: ns,
        };
        let share = ProgramShare {
            rows: Vec::new(),
            wall_ns: 0,
        };
        assert_eq!(share.percent(), 0.0);
        let before = [p("egret_dns_egres", 10, 1_000), p("egret_exec", 1, 5)];
        let after = [p("egret_dns_egres", 110, 11_000), p("egret_exec", 2, 10)];
        let mut share = ProgramShare::between(&before, &after, &["egret_dns"], Instant::now());
        share.wall_ns = 1_000_000;
        assert_eq!(share.rows, [("egret_dns_egres".to_string(), 100, 10_000)]);
        assert!((share.percent() - 1.0).abs() < 1e-9);
    }
}
