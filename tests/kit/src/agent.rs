//! The agent under test as a child process. Output is collected by reader
//! threads; dropping the guard stops the agent (SIGTERM, then SIGKILL).
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// What the reader threads have collected, under the lock they append
/// with (held only to append, or to take or copy out new lines).
#[derive(Default)]
struct Lines {
    /// Stdout lines read and not parsed yet.
    stdout: Vec<String>,
    /// Stdout lines read so far.
    stdout_read: usize,
    stderr: Vec<String>,
}

/// The lines, a condvar signalled when some arrive, and every stdout line
/// parsed: each is parsed once, by the first wait (or [`Agent::json_lines`])
/// that needs it, after taking it out of [`Lines`], so neither the parsing
/// nor a wait's predicate ever keeps a reader from appending.
#[derive(Default)]
struct Collected {
    lines: Mutex<Lines>,
    arrived: Condvar,
    /// One entry per stdout line, in order; `None` when it is not JSON.
    /// Locked before `lines` whenever both are.
    parsed: Mutex<Vec<Option<Arc<Value>>>>,
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

type Shared = Arc<Collected>;

pub struct Agent {
    child: Child,
    collected: Shared,
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
        let stdio = match stdout {
            Stdout::Discard => Stdio::null(),
            Stdout::Lines | Stdout::Count => Stdio::piped(),
        };
        Agent::spawn_inner(binary, args, stdout, stdio)
    }

    /// Starts the agent with stdout going to `stdio` (a FIFO nobody reads,
    /// say); nothing of it is collected.
    pub fn spawn_with_stdio(binary: &Path, args: &[&str], stdio: Stdio) -> Agent {
        Agent::spawn_inner(binary, args, Stdout::Discard, stdio)
    }

    fn spawn_inner(binary: &Path, args: &[&str], stdout: Stdout, stdio: Stdio) -> Agent {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env(
                "EGRET_LOG",
                std::env::var("EGRET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(stdio)
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
        let collected: Shared = Arc::default();
        let stdout_count = Arc::new(AtomicU64::new(0));
        let stderr = child.stderr.take().expect("stderr piped");
        if let Some(out) = child.stdout.take() {
            match stdout {
                Stdout::Lines => collect(out, collected.clone(), |l, batch| {
                    l.stdout_read += batch.len();
                    l.stdout.append(batch);
                }),
                Stdout::Count | Stdout::Discard => count_lines(out, stdout_count.clone()),
            }
        }
        collect(stderr, collected.clone(), |l, batch| l.stderr.append(batch));
        Agent {
            child,
            collected,
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
        self.lines().stderr.clone()
    }

    /// Every stdout line that parses as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        let parsed: Vec<Arc<Value>> = self.parsed().iter().flatten().cloned().collect();
        parsed.iter().map(|v| Value::clone(v)).collect()
    }

    /// Waits until a JSON line satisfies `pred` (lines printed before the
    /// wait began included).
    pub fn wait_json(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        self.wait_stdout(timeout, |new| {
            new.iter().find(|v| pred(v)).map(|v| Value::clone(v))
        })
    }

    /// Waits until at least `count` JSON lines satisfy `pred` (lines printed
    /// before the wait began included).
    pub fn wait_json_count(
        &self,
        pred: impl Fn(&Value) -> bool,
        count: usize,
        timeout: Duration,
    ) -> bool {
        let mut found = 0;
        self.wait_stdout(timeout, |new| {
            found += new.iter().filter(|v| pred(v)).count();
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

    /// Waits until a stderr line satisfies `pred` (lines logged before the
    /// wait began included).
    pub fn wait_stderr(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_for(
            timeout,
            |seen| {
                let lines = self.lines();
                let new = lines.stderr[*seen..].to_vec();
                *seen = lines.stderr.len();
                new
            },
            |l| l.stderr.len(),
            |new| new.iter().find(|l| pred(l)).cloned(),
        )
    }

    /// [`Agent::wait_for`] over the stdout lines that are JSON.
    fn wait_stdout<T>(
        &self,
        timeout: Duration,
        scan: impl FnMut(&[Arc<Value>]) -> Option<T>,
    ) -> Option<T> {
        self.wait_for(
            timeout,
            |seen| {
                let parsed = self.parsed();
                let new = parsed[*seen..].iter().flatten().cloned().collect();
                *seen = parsed.len();
                new
            },
            |l| l.stdout_read,
            scan,
        )
    }

    /// Shows `scan` each line of one stream once, in order, in batches of
    /// the lines that arrived since its last look (the first batch: every
    /// line so far), until it answers or `timeout` passes. `fetch` copies
    /// out the lines after the first `seen` and moves `seen` past them;
    /// `read` is how many lines the reader has appended (the same count).
    /// No lock is held while `scan` runs, and each wake-up costs only the
    /// new lines, however many the agent printed before.
    fn wait_for<L, T>(
        &self,
        timeout: Duration,
        fetch: impl Fn(&mut usize) -> Vec<L>,
        read: fn(&Lines) -> usize,
        mut scan: impl FnMut(&[L]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + scaled(timeout);
        let mut seen = 0;
        loop {
            if let Some(found) = scan(&fetch(&mut seen)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut lines = self.lines();
            while read(&lines) == seen {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                lines = self
                    .collected
                    .arrived
                    .wait_timeout(lines, deadline - now)
                    .expect("lines lock")
                    .0;
            }
        }
    }

    fn lines(&self) -> MutexGuard<'_, Lines> {
        self.collected.lines.lock().expect("lines lock")
    }

    /// Every stdout line so far, parsed: the lines read since the last call
    /// are taken from the reader's vector and parsed here, outside its lock.
    fn parsed(&self) -> MutexGuard<'_, Vec<Option<Arc<Value>>>> {
        let mut parsed = self.collected.parsed.lock().expect("parsed lock");
        let unparsed = std::mem::take(&mut self.lines().stdout);
        parsed.extend(
            unparsed
                .iter()
                .map(|l| serde_json::from_str(l).ok().map(Arc::new)),
        );
        parsed
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
        let deadline = Instant::now() + scaled(timeout);
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

/// Reads `stream` line by line on a thread of its own and hands the lines
/// to `append`, under the lock. Lines already in the read buffer go
/// together, so a flood costs one lock and one wake-up per buffer, not per
/// line; nothing else is done with them here, so the pipe drains as fast as
/// the agent writes.
fn collect(
    stream: impl Read + Send + 'static,
    collected: Shared,
    append: fn(&mut Lines, &mut Vec<String>),
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        let mut raw = Vec::new();
        let mut batch = Vec::new();
        let flush = |batch: &mut Vec<String>| {
            if !batch.is_empty() {
                append(&mut collected.lines.lock().expect("lines lock"), batch);
                collected.arrived.notify_all();
            }
        };
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            batch.push(String::from_utf8_lossy(text).into_owned());
            if !reader.buffer().contains(&b'\n') {
                flush(&mut batch);
            }
        }
        flush(&mut batch);
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

/// `timeout` times `EGRET_TEST_TIMEOUT_SCALE` (a whole number, default 1):
/// under software emulation (`cargo xtask vm-test`) everything runs many
/// times slower, and a wait that is generous on hardware is not there.
pub fn scaled(timeout: Duration) -> Duration {
    let factor = std::env::var("EGRET_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|f| *f > 0)
        .unwrap_or(1);
    timeout * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in agent: `sh -c script`, collected as the agent's output is.
    fn sh(script: &str) -> Agent {
        Agent::spawn_with(Path::new("/bin/sh"), &["-c", script], Stdout::Lines)
    }

    #[test]
    fn waits_see_the_lines_before_they_began_and_after() {
        let agent = sh(r#"
            awk 'BEGIN { for (i = 1; i <= 5000; i++) printf "{\"n\":%d}\n", i }'
            echo 'not json'
            printf '{"n":5001}\r\n'
            echo printed >&2
            sleep 0.3
            echo '{"n":0}'
            echo late >&2
            exec sleep 30
        "#);
        assert!(
            agent
                .wait_stderr(|l| l == "printed", EVENT_TIMEOUT)
                .is_some()
        );
        // Printed before the waits began, first and last.
        assert_eq!(
            agent.wait_json(|v| v["n"] == 1, EVENT_TIMEOUT).unwrap()["n"],
            1
        );
        assert!(agent.wait_json(|v| v["n"] == 5001, EVENT_TIMEOUT).is_some());
        assert!(agent.wait_json_count(|v| v["n"].as_u64() > Some(0), 5001, EVENT_TIMEOUT));
        assert!(agent.wait_json_count(|_| false, 0, Duration::ZERO));
        // Printed after.
        assert!(agent.wait_json(|v| v["n"] == 0, EVENT_TIMEOUT).is_some());
        assert!(agent.wait_stderr(|l| l == "late", EVENT_TIMEOUT).is_some());
        assert!(
            agent
                .wait_stderr(|l| l == "printed", Duration::ZERO)
                .is_some()
        );
        assert!(!agent.wait_json_count(|v| v["n"] == 1, 2, Duration::from_millis(100)));
        assert!(
            agent
                .wait_json(|v| v["n"] == -1, Duration::from_millis(100))
                .is_none()
        );
        let lines = agent.json_lines();
        assert_eq!(lines.len(), 5002, "the line that is not JSON is left out");
        assert!(lines.iter().zip(1..=5001).all(|(v, n)| v["n"] == n));
        assert_eq!(lines[5001]["n"], 0);
        assert_eq!(agent.stderr(), ["printed", "late"]);
    }
}
