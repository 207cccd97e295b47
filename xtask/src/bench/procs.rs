//! What the scenarios run and measure: the agent, the bpftrace and tcplife
//! peers, the network namespace the traffic stays in, and /proc readings.
//! The agent and namespace guards are the test kit's (`tests/kit`), shared
//! with the end-to-end suite; every guard stops or removes what it started when
//! dropped, so a failing scenario leaves no agent, tracer or namespace behind.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use egret_testkit::{Binaries, netns::NetNs};
use egret_testkit::{
    TempDir,
    agent::{Agent, Stdout},
    signal,
};

use crate::test::root;

/// The release agent and probe, built by `cargo xtask bench` beforehand.
pub fn binaries() -> anyhow::Result<Binaries> {
    Binaries::in_dir(&root().join("target/release")).map_err(anyhow::Error::msg)
}

/// The bench namespace: the kit's, plus settings a connect storm needs.
pub fn bench_netns() -> anyhow::Result<NetNs> {
    let ns = NetNs::create("bench").context("creating the bench network namespace")?;
    // A single-thread connect storm to one non-loopback address runs out
    // of ephemeral ports to TIME_WAIT within seconds (the kernel reuses
    // TIME_WAIT ports only for loopback addresses by default), and the
    // port search then dominates the loop. Namespace-local settings.
    for setting in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ] {
        ns.sysctl(setting)
            .context("configuring the bench network namespace")?;
    }
    Ok(ns)
}

/// The agent as a background process (the kit's guard), stopped with
/// SIGTERM; its totals come from `--summary`, not from its log.
pub struct RunningAgent {
    agent: Agent,
    summary: PathBuf,
    _dir: TempDir,
}

impl RunningAgent {
    /// `Stdout::Count` reads the alerts through a pipe and counts them, as
    /// a log collector would; `Stdout::Discard` sends them to /dev/null.
    pub fn start(bins: &Binaries, args: &[&str], stdout: Stdout) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench-agent");
        let summary = dir.path().join("summary.json");
        let summary_arg = summary.display().to_string();
        let mut full = vec!["run", "--summary", &summary_arg];
        full.extend_from_slice(args);
        let agent = Agent::start_with(&bins.agent, &full, stdout);
        Ok(RunningAgent {
            agent,
            summary,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.agent.pid()
    }

    /// Kernel ids of the programs the agent attached.
    pub fn program_ids(&self) -> Vec<u32> {
        self.agent.program_ids()
    }

    /// What the agent logged so far.
    pub fn stderr(&self) -> Vec<String> {
        self.agent.stderr()
    }

    /// Lines the agent has written to stdout so far.
    pub fn lines(&self) -> u64 {
        self.agent.stdout_count()
    }

    /// Waits until `want` lines arrived, or the count stopped moving for
    /// `quiet`; returns the count.
    pub fn wait_for_lines(&self, want: u64, quiet: Duration) -> u64 {
        wait_until_stable(|| self.lines(), want, quiet)
    }

    /// Stops the agent and returns its exit summary.
    pub fn stop(mut self) -> anyhow::Result<serde_json::Value> {
        let status = self.agent.terminate();
        if !status.success() {
            bail!(
                "agent exited with {status}:\n{}",
                self.agent.stderr().join("\n")
            );
        }
        let text = std::fs::read_to_string(&self.summary)
            .with_context(|| format!("reading {}", self.summary.display()))?;
        serde_json::from_str(&text).context("parsing the exit summary")
    }
}

/// Polls `count` until it reaches `want` or has not changed for `quiet`.
pub fn wait_until_stable(count: impl Fn() -> u64, want: u64, quiet: Duration) -> u64 {
    let mut last = count();
    let mut since = Instant::now();
    loop {
        if last >= want || since.elapsed() >= quiet {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// The agent's exit summary, reduced to the numbers the scenarios report.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitCounters {
    pub seen: u64,
    pub ignored: u64,
    pub emitted: u64,
    pub ringbuf_full: u64,
    /// Egress events evaluated.
    pub events: u64,
    pub alerts: u64,
    /// Alert lines the stdout queue dropped (full, write error, shutdown).
    pub stdout_lost: u64,
}

impl ExitCounters {
    /// Kernel counters of every hook summed; pipeline totals.
    pub fn from_summary(summary: &serde_json::Value) -> ExitCounters {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let mut c = ExitCounters::default();
        if let Some(hooks) = summary["kernel"].as_object() {
            for hook in hooks.values() {
                c.seen += n(&hook["seen"]);
                c.ignored += n(&hook["ignored"]);
                c.emitted += n(&hook["emitted"]);
                c.ringbuf_full += n(&hook["ringbuf_full"]);
            }
        }
        c.events = n(&summary["pipeline"]["events"]);
        c.alerts = n(&summary["pipeline"]["alerts_written"]);
        c.stdout_lost = n(&summary["pipeline"]["stdout_lost"]);
        c
    }

    pub fn add(&mut self, other: ExitCounters) {
        self.seen += other.seen;
        self.ignored += other.ignored;
        self.emitted += other.emitted;
        self.ringbuf_full += other.ringbuf_full;
        self.stdout_lost += other.stdout_lost;
        self.events += other.events;
        self.alerts += other.alerts;
    }
}

/// The `connect4` kernel counters of an exit summary, for display.
pub fn connect4_counters(summary: &serde_json::Value) -> String {
    match summary["kernel"]["connect4"].as_object() {
        Some(c) => c
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        None => "(not read)".into(),
    }
}

/// A tracing peer writing to a file: started, waited for until its output
/// says it is attached, interrupted (SIGINT, so it flushes) and its file
/// removed when dropped.
struct Tracer {
    child: Child,
    out_path: PathBuf,
}

impl Tracer {
    fn start(
        name: &str,
        mut command: Command,
        attached: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Tracer> {
        let out_path =
            std::env::temp_dir().join(format!("egret-bench-{name}-{}.out", std::process::id()));
        let out = std::fs::File::create(&out_path)?;
        let child = command
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut tracer = Tracer { child, out_path };
        let deadline = Instant::now() + timeout;
        while !attached(&tracer.output()) {
            if let Ok(Some(status)) = tracer.child.try_wait() {
                bail!("{name} exited with {status} before attaching");
            }
            if Instant::now() > deadline {
                bail!("{name} did not attach");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tracer)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGINT);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out_path);
    }
}

/// The peer: bpftrace printing one line per connect(2), written to a file
/// (the same job as Egret's audit stream, done the usual tracing way).
pub struct Bpftrace(Tracer);

const BPFTRACE_SCRIPT: &str =
    "tracepoint:syscalls:sys_enter_connect { printf(\"%d %s\\n\", pid, comm); }";

impl Bpftrace {
    pub fn start() -> anyhow::Result<Self> {
        let mut command = Command::new("bpftrace");
        command.args(["-e", BPFTRACE_SCRIPT]);
        let tracer = Tracer::start(
            "bpftrace",
            command,
            |out| out.contains("Attaching"),
            Duration::from_secs(60),
        )
        .context("bpftrace (apt-get install bpftrace)")?;
        // "Attaching" is printed just before the probe is live.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Bpftrace(tracer))
    }

    pub fn pid(&self) -> u32 {
        self.0.child.id()
    }

    /// Lines printed for connects of processes named `comm`.
    pub fn lines_for(&self, comm: &str) -> u64 {
        let suffix = format!(" {comm}");
        self.0
            .output()
            .lines()
            .filter(|l| l.ends_with(&suffix))
            .count() as u64
    }
}

/// The flow-accounting peer: libbpf-tools' `tcplife` (Debian package
/// `libbpf-tools`; CO-RE, the `sock:inet_sock_set_state` tracepoint), one
/// line per TCP connection with its bytes at the close, node-wide, written
/// to a file. It prints the column header once its program is attached.
pub struct Tcplife(Tracer);

impl Tcplife {
    pub fn start() -> anyhow::Result<Self> {
        // Line-buffered: a file is fully buffered by default, which would
        // hide the header (and count lines late). libbpf needs tracefs,
        // which the agent has mounted if it was missing.
        let mut command = Command::new("stdbuf");
        command.args(["-oL", "tcplife"]);
        let tracer = Tracer::start(
            "tcplife",
            command,
            |out| out.starts_with("PID"),
            Duration::from_secs(30),
        )
        .context("tcplife (apt-get install libbpf-tools)")?;
        Ok(Tcplife(tracer))
    }

    /// Connection lines (after the header) printed so far.
    pub fn connections(&self) -> u64 {
        self.0.output().lines().skip(1).count() as u64
    }
}

/// utime + stime of a whole process (all threads), in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The comm may contain spaces and parentheses: fields start after ')'.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state(0) … utime(11) stime(12).
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()
        .context("parsing utime/stime")?;
    let per_second = clock_ticks();
    Ok(ticks as f64 / per_second as f64)
}

/// A `/proc/<pid>/status` size field (`VmRSS`, `VmHWM`) in KiB.
pub fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// `_SC_CLK_TCK` ticks per second.
fn clock_ticks() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1)
}

/// [`probe_in`] pinned to one CPU (`taskset`), threads included.
pub fn probe_on_cpu(
    bins: &Binaries,
    cpu: usize,
    cgroup: &std::path::Path,
    netns: &str,
    args: &[&str],
) -> anyhow::Result<f64> {
    let probe = bins.probe.display().to_string();
    let cpu = cpu.to_string();
    let mut pinned = vec!["-c", &cpu, &probe];
    pinned.extend_from_slice(args);
    let output = egret_testkit::netns::command_in_cgroup(netns, cgroup, "taskset", &pinned)
        .output()
        .context("running the probe under taskset")?;
    parse_probe(args, output)
}

/// [`probe_on_cpu`] started in `cgroup`, with the `cgroup.procs` of each
/// of `joins` on descriptors 3, 4… for a probe mode that moves there
/// itself; returns what it printed.
pub fn probe_on_cpu_joining(
    bins: &Binaries,
    cpu: usize,
    cgroup: &std::path::Path,
    joins: &[&std::path::Path],
    netns: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let probe = bins.probe.display().to_string();
    let cpu = cpu.to_string();
    let mut pinned = vec!["-c", &cpu, &probe];
    pinned.extend_from_slice(args);
    let output =
        egret_testkit::netns::command_in_cgroup_joining(netns, cgroup, joins, "taskset", &pinned)
            .output()
            .context("running the probe under taskset")?;
    if !output.status.success() {
        bail!("probe {args:?} failed: {output:?}");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs the probe with `args` as a process of `cgroup`, inside the
/// namespace named `netns`, and parses the number it prints.
pub fn probe_in(
    bins: &Binaries,
    cgroup: &std::path::Path,
    netns: &str,
    args: &[&str],
) -> anyhow::Result<f64> {
    let output = egret_testkit::netns::command_in_cgroup(netns, cgroup, &bins.probe, args)
        .output()
        .context("running the probe")?;
    parse_probe(args, output)
}

fn parse_probe(args: &[&str], output: std::process::Output) -> anyhow::Result<f64> {
    if !output.status.success() {
        bail!("probe {args:?} failed: {output:?}");
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .with_context(|| format!("probe {args:?} printed {output:?}"))
}
