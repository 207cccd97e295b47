//! The agent under test as a child process. Output is collected by reader
//! threads; dropping the guard stops the agent (SIGTERM, then SIGKILL).
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

#[derive(Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// What becomes of the agent's stdout (its alerts and audit lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    /// Kept line by line, for assertions on the JSON.
    Lines,
    /// Only counted, as a log collector would read it (benchmarks: a storm
    /// of alerts must not grow the test's memory).
    Count,
    /// Sent to /dev/null.
    Discard,
}

type Shared = Arc<(Mutex<Lines>, Condvar)>;

pub struct Agent {
    child: Child,
    lines: Shared,
    stdout_count: Arc<AtomicU64>,
    status: Option<ExitStatus>,
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    /// Starts `egret <args>` (the binary [`crate::binaries`] builds) and
    /// waits for its "egret ready" log line.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_with(&crate::binaries().agent, args, Stdout::Lines)
    }

    /// As [`Agent::start`], with a given binary and stdout handling.
    pub fn start_with(binary: &Path, args: &[&str], stdout: Stdout) -> Agent {
        let mut agent = Agent::spawn_with(binary, args, stdout);
        let ready = agent.wait_stderr(|line| line.contains("egret ready"), READY_TIMEOUT);
        if ready.is_none() {
            let status = agent.terminate();
            panic!(
                "agent did not become ready ({status:?}); stderr:\n{}",
                agent.stderr().join("\n")
            );
        }
        agent
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(args: &[&str]) -> Agent {
        Agent::spawn_with(&crate::binaries().agent, args, Stdout::Lines)
    }

    pub fn spawn_with(binary: &Path, args: &[&str], stdout: Stdout) -> Agent {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env(
                "EGRET_LOG",
                std::env::var("EGRET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(match stdout {
                Stdout::Discard => Stdio::null(),
                Stdout::Lines | Stdout::Count => Stdio::piped(),
            })
            .stderr(Stdio::piped());
        // Receivers are on loopback; never route them via a proxy.
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
        let mut child = command.spawn().expect("spawn egret");
        let lines: Shared = Arc::default();
        let stdout_count = Arc::new(AtomicU64::new(0));
        let stderr = child.stderr.take().expect("stderr piped");
        if let Some(out) = child.stdout.take() {
            match stdout {
                Stdout::Lines => collect(out, lines.clone(), |l| &mut l.stdout),
                Stdout::Count | Stdout::Discard => count_lines(out, stdout_count.clone()),
            }
        }
        collect(stderr, lines.clone(), |l| &mut l.stderr);
        Agent {
            child,
            lines,
            stdout_count,
            status: None,
        }
    }

    /// Lines written to stdout so far, with [`Stdout::Count`].
    pub fn stdout_count(&self) -> u64 {
        self.stdout_count.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.lines.0.lock().expect("lines lock").stderr.clone()
    }

    /// Every stdout line that parses as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = self.lines.0.lock().expect("lines lock");
        lines
            .stdout
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a JSON line satisfies `pred`.
    pub fn wait_json(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        self.wait_for(timeout, |lines| {
            lines
                .stdout
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(&pred)
        })
    }

    /// Waits until at least `count` JSON lines satisfy `pred`.
    pub fn wait_json_count(
        &self,
        pred: impl Fn(&Value) -> bool,
        count: usize,
        timeout: Duration,
    ) -> bool {
        self.wait_for(timeout, |lines| {
            let found = lines
                .stdout
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(&pred)
                .count();
            (found >= count).then_some(())
        })
        .is_some()
    }

    /// Waits for the first event reported for process `pid`.
    pub fn wait_event_for_pid(&self, pid: u32) -> Value {
        self.wait_json(|v| v["proc.pid"] == pid, EVENT_TIMEOUT)
            .unwrap_or_else(|| {
                panic!(
                    "no event for pid {pid} within {EVENT_TIMEOUT:?}; stderr:\n{}",
                    self.stderr().join("\n")
                )
            })
    }

    pub fn wait_stderr(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_for(timeout, |lines| {
            lines.stderr.iter().find(|l| pred(l)).cloned()
        })
    }

    fn wait_for<T>(&self, timeout: Duration, find: impl Fn(&Lines) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.lines;
        let mut lines = lock.lock().expect("lines lock");
        loop {
            if let Some(found) = find(&lines) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = cond
                .wait_timeout(lines, deadline - now)
                .expect("lines lock")
                .0;
        }
    }

    /// Program ids from the "egret ready" line (`program_ids=[1, 2, …]`).
    pub fn program_ids(&self) -> Vec<u32> {
        let line = self
            .wait_stderr(|l| l.contains("egret ready"), Duration::ZERO)
            .expect("agent is ready");
        let list = line
            .split("program_ids=[")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .expect("program_ids in ready line");
        list.split(',')
            .filter_map(|id| id.trim().parse().ok())
            .collect()
    }

    /// SIGTERM, then wait up to 10 s (SIGKILL after that).
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        crate::signal(self.child.id(), libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit on its own (SIGKILL after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        // Let the reader threads see EOF so the last lines are collected.
        std::thread::sleep(Duration::from_millis(50));
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn collect(
    stream: impl Read + Send + 'static,
    lines: Shared,
    pick: fn(&mut Lines) -> &mut Vec<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let (lock, cond) = &*lines;
            pick(&mut lock.lock().expect("lines lock")).push(line);
            cond.notify_all();
        }
    });
}

fn count_lines(mut stream: impl Read + Send + 'static, count: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            let newlines = buf[..n].iter().filter(|b| **b == b'\n').count();
            count.fetch_add(newlines as u64, Ordering::Relaxed);
        }
    });
}
