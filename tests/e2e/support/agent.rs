//! The agent under test as a child process. Output is collected by reader
//! threads; dropping the guard stops the agent (SIGTERM, then SIGKILL).
use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

#[derive(Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
}

type Shared = Arc<(Mutex<Lines>, Condvar)>;

pub struct Agent {
    child: Child,
    lines: Shared,
    status: Option<ExitStatus>,
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    /// Starts `egret <args>` and waits for its "egret ready" log line.
    pub fn start(args: &[&str]) -> Agent {
        let mut agent = Agent::spawn(args);
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
        Agent::spawn_with_stdout(args, Stdio::piped())
    }

    /// Like [`Agent::spawn`] with stdout going to `stdout` (a FIFO nobody
    /// reads, say); its lines are collected only when it is `piped()`.
    pub fn spawn_with_stdout(args: &[&str], stdout: Stdio) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_egret"))
            .args(args)
            .env(
                "EGRET_LOG",
                std::env::var("EGRET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn egret");
        let lines: Shared = Arc::default();
        if let Some(stdout) = child.stdout.take() {
            collect(stdout, lines.clone(), |l| &mut l.stdout);
        }
        let stderr = child.stderr.take().expect("stderr piped");
        collect(stderr, lines.clone(), |l| &mut l.stderr);
        Agent {
            child,
            lines,
            status: None,
        }
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
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
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
