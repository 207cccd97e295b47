//! `cargo xtask bench`: measured speed, printed as a table and written to
//! BENCHMARKS.md. Run as root. `--short` runs few iterations so CI keeps the
//! harness working; it never asserts on timings.
use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::test::{cargo, root, run_step};

struct Settings {
    rounds: usize,
    connects: u64,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let short = args.iter().any(|a| a == "--short");
    let settings = if short {
        Settings {
            rounds: 2,
            connects: 2_000,
        }
    } else {
        Settings {
            rounds: 7,
            connects: 20_000,
        }
    };
    run_step(
        "build (release)",
        cargo().args(["build", "--release", "-p", "egret", "--bins", "--examples"]),
    )?;
    let bins = Binaries::locate()?;

    let mut report = String::new();
    writeln!(report, "# Egret benchmarks\n")?;
    writeln!(report, "{}\n", machine_description())?;
    let overhead = connect_overhead(&bins, &settings)?;
    writeln!(report, "{overhead}")?;
    print!("{report}");
    if !short {
        std::fs::write(root().join("BENCHMARKS.md"), &report).context("writing BENCHMARKS.md")?;
        eprintln!("wrote BENCHMARKS.md");
    }
    Ok(())
}

struct Binaries {
    agent: PathBuf,
    probe: PathBuf,
}

impl Binaries {
    fn locate() -> anyhow::Result<Self> {
        let release = root().join("target/release");
        let bins = Binaries {
            agent: release.join("egret"),
            probe: release.join("examples/egret-probe"),
        };
        for path in [&bins.agent, &bins.probe] {
            if !path.exists() {
                bail!("{} missing after build", path.display());
            }
        }
        Ok(bins)
    }
}

/// The agent as a background process, stopped with SIGTERM on drop.
struct RunningAgent {
    child: Child,
    stderr_path: PathBuf,
}

impl RunningAgent {
    fn start(bins: &Binaries, args: &[&str]) -> anyhow::Result<Self> {
        let stderr_path =
            std::env::temp_dir().join(format!("egret-bench-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path)?;
        let child = Command::new(&bins.agent)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting the agent")?;
        let agent = RunningAgent { child, stderr_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.log().contains("egret ready") {
            if Instant::now() > deadline {
                bail!("agent not ready:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stops the agent and returns its log (with the exit counters).
    fn stop(mut self) -> anyhow::Result<String> {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("agent exited with {status}:\n{}", self.log());
        }
        Ok(self.log())
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The peer: bpftrace printing one line per connect(2), written to a file
/// (the same job as Egret's audit stream, done the usual tracing way).
struct Bpftrace {
    child: Child,
}

const BPFTRACE_SCRIPT: &str =
    "tracepoint:syscalls:sys_enter_connect { printf(\"%d %s\\n\", pid, comm); }";

impl Bpftrace {
    fn start() -> anyhow::Result<Self> {
        let out_path =
            std::env::temp_dir().join(format!("egret-bench-bpftrace-{}.out", std::process::id()));
        let out = std::fs::File::create(&out_path)?;
        let child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let peer = Bpftrace { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .contains("Attaching")
        {
            if Instant::now() > deadline {
                bail!("bpftrace did not attach");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // "Attaching" is printed just before the probe is live.
        std::thread::sleep(Duration::from_millis(300));
        Ok(peer)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let _ = self.child.wait();
    }
}

fn connect_rate(bins: &Binaries, count: u64) -> anyhow::Result<f64> {
    let output = Command::new(&bins.probe)
        .args(["connect-loop", "127.0.0.1:0", &count.to_string()])
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Scenario 1: loopback connects, which the in-kernel ignore list drops.
/// Runs rotate between no monitor, Egret and bpftrace so that drift on the
/// shared machine hits all three equally.
fn connect_overhead(bins: &Binaries, settings: &Settings) -> anyhow::Result<String> {
    eprintln!("==> connect overhead, filtered traffic");
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut peer = Vec::new();
    let mut last_log = String::new();
    for _ in 0..settings.rounds {
        without.push(connect_rate(bins, settings.connects)?);
        let agent = RunningAgent::start(bins, &[])?;
        with.push(connect_rate(bins, settings.connects)?);
        last_log = agent.stop()?;
        let bpftrace = Bpftrace::start()?;
        peer.push(connect_rate(bins, settings.connects)?);
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
    let counters = last_log
        .lines()
        .find(|l| l.contains("kernel counters") && l.contains("connect4"))
        .map(|l| {
            l.split("kernel counters")
                .nth(1)
                .unwrap_or(l)
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "(not logged)".into());
    writeln!(out, "`{counters}`")?;
    Ok(out)
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
