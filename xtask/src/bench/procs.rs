//! What the scenarios run and measure: the agent, the bpftrace peer, the
//! network namespace the traffic stays in, and /proc readings. Every one is
//! a guard that stops or removes what it started when dropped, so a failing
//! scenario leaves no agent, tracer or namespace behind.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::test::root;

pub struct Binaries {
    pub agent: PathBuf,
    pub probe: PathBuf,
}

impl Binaries {
    pub fn locate() -> anyhow::Result<Self> {
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
pub struct RunningAgent {
    child: Child,
    stderr_path: PathBuf,
    /// Alert lines read from stdout so far (when stdout is counted).
    lines: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
}

/// What becomes of the agent's stdout (its alerts).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    Discard,
    /// Read through a pipe and count the lines, as a log collector would.
    Count,
}

impl RunningAgent {
    pub fn start(bins: &Binaries, args: &[&str], stdout: Stdout) -> anyhow::Result<Self> {
        let stderr_path =
            std::env::temp_dir().join(format!("egret-bench-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut command = Command::new(&bins.agent);
        command.arg("run").args(args).stderr(stderr);
        // The webhook receiver is on loopback; never route it via a proxy.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            command.env_remove(var);
        }
        command.stdout(match stdout {
            Stdout::Discard => Stdio::null(),
            Stdout::Count => Stdio::piped(),
        });
        let mut child = command.spawn().context("starting the agent")?;
        let lines = Arc::new(AtomicU64::new(0));
        let reader = child.stdout.take().map(|mut out| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let newlines = buf[..n].iter().filter(|b| **b == b'\n').count();
                    lines.fetch_add(newlines as u64, Ordering::Relaxed);
                }
            })
        });
        let agent = RunningAgent {
            child,
            stderr_path,
            lines,
            reader,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.log().contains("egret ready") {
            if Instant::now() > deadline {
                bail!("agent not ready:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Lines the agent has written to stdout so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Waits until `want` lines arrived, or the count stopped moving for
    /// `quiet`; returns the count.
    pub fn wait_for_lines(&self, want: u64, quiet: Duration) -> u64 {
        wait_until_stable(|| self.lines(), want, quiet)
    }

    /// Stops the agent and returns its log (with the exit counters).
    pub fn stop(mut self) -> anyhow::Result<String> {
        signal(self.child.id(), SIGTERM);
        let status = self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
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
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
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

/// The agent's exit log, reduced to the numbers the scenarios report.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitCounters {
    pub seen: u64,
    pub ignored: u64,
    pub emitted: u64,
    pub ringbuf_full: u64,
    pub decoded: u64,
    pub alerts: u64,
}

impl ExitCounters {
    /// Kernel counters of every hook summed; pipeline totals as logged.
    pub fn parse(log: &str) -> ExitCounters {
        let mut c = ExitCounters::default();
        for line in log.lines() {
            if line.contains("kernel counters") {
                c.seen += field(line, "seen");
                c.ignored += field(line, "ignored");
                c.emitted += field(line, "emitted");
                c.ringbuf_full += field(line, "ringbuf_full");
            } else if line.contains("pipeline totals") {
                c.decoded = field(line, "decoded");
                c.alerts = field(line, "alerts");
            }
        }
        c
    }

    pub fn add(&mut self, other: ExitCounters) {
        self.seen += other.seen;
        self.ignored += other.ignored;
        self.emitted += other.emitted;
        self.ringbuf_full += other.ringbuf_full;
        self.decoded += other.decoded;
        self.alerts += other.alerts;
    }
}

/// `name=123` in a log line (0 when absent).
fn field(line: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    line.find(&key)
        .map(|at| &line[at + key.len()..])
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// The `connect4` kernel counters line of an exit log, for display.
pub fn connect4_counters(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("kernel counters") && l.contains("connect4"))
        .map(|l| {
            l.split("kernel counters")
                .nth(1)
                .unwrap_or(l)
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "(not logged)".into())
}

/// The peer: bpftrace printing one line per connect(2), written to a file
/// (the same job as Egret's audit stream, done the usual tracing way).
pub struct Bpftrace {
    child: Child,
    out_path: PathBuf,
}

const BPFTRACE_SCRIPT: &str =
    "tracepoint:syscalls:sys_enter_connect { printf(\"%d %s\\n\", pid, comm); }";

impl Bpftrace {
    pub fn start() -> anyhow::Result<Self> {
        let out_path =
            std::env::temp_dir().join(format!("egret-bench-bpftrace-{}.out", std::process::id()));
        let out = std::fs::File::create(&out_path)?;
        let child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let peer = Bpftrace { child, out_path };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !peer.output().contains("Attaching") {
            if Instant::now() > deadline {
                bail!("bpftrace did not attach");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // "Attaching" is printed just before the probe is live.
        std::thread::sleep(Duration::from_millis(300));
        Ok(peer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// Lines printed for connects of processes named `comm`.
    pub fn lines_for(&self, comm: &str) -> u64 {
        let suffix = format!(" {comm}");
        self.output()
            .lines()
            .filter(|l| l.ends_with(&suffix))
            .count() as u64
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        signal(self.child.id(), SIGINT);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out_path);
    }
}

/// A network namespace holding 198.51.100.1/24 on a veth pair whose both
/// ends are inside it: connects to TEST-NET addresses are answered (or
/// refused) inside the namespace and nothing can leave the machine.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create() -> anyhow::Result<NetNs> {
        let name = format!("egret-bench-{}", std::process::id());
        // A leftover of a killed run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name])?;
        // The guard exists from here on: a failing step still cleans up.
        let ns = NetNs { name };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
            &["addr", "add", "198.51.100.1/24", "dev", "v0"],
        ] {
            let mut full = vec!["-n", ns.name.as_str()];
            full.extend_from_slice(args);
            ip(&full)?;
        }
        // A single-thread connect storm to one non-loopback address runs out
        // of ephemeral ports to TIME_WAIT within seconds (the kernel reuses
        // TIME_WAIT ports only for loopback addresses by default), and the
        // port search then dominates the loop. Namespace-local settings.
        for setting in [
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ] {
            let status = ns
                .command("sysctl")
                .args(["-q", "-w", setting])
                .status()
                .context("running sysctl in the bench namespace")?;
            if !status.success() {
                bail!("sysctl -w {setting} failed in the bench namespace");
            }
        }
        Ok(ns)
    }

    /// `program` run inside the namespace (`ip netns exec` execs in place,
    /// so the process keeps the program's own name).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        command
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip (iproute2)")?;
    if !status.success() {
        bail!("ip {} failed", args.join(" "));
    }
    Ok(())
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
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc_sysconf(SC_CLK_TCK) }.max(1);
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

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
/// `_SC_CLK_TCK` on Linux.
const SC_CLK_TCK: i32 = 2;

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc_kill(pid as i32, sig) };
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    #[link_name = "sysconf"]
    fn libc_sysconf(name: i32) -> i64;
}
