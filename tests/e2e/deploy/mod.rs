//! Issue 6, deployment: the Kubernetes manifests are valid and consistent,
//! the agent works with exactly the capabilities the DaemonSet grants (and
//! each one is needed), and the image built by `cargo xtask image` runs
//! under containerd the way the DaemonSet runs it and sees another
//! container's connection.
//!
//! Network safety: connections only go to TEST-NET addresses inside test
//! network namespaces or containers' empty ones, or to loopback; the shipped
//! webhook URL is replaced by a loopback one before any agent runs with it.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

use crate::support::{
    self,
    containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs, unique_id},
    netns::{NetNs, V4_SERVER},
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Resource kinds without a schema in kubernetes-validate (CRDs of the
/// Prometheus Operator); they are checked structurally below instead.
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
/// The Kubernetes version whose schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.37.0";

fn repo() -> PathBuf {
    crate::support::repo_root()
}

fn deploy() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_docs_of(&text, &path.display().to_string())
}

fn yaml_docs_of(text: &str, name: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}")))
        .filter(|doc: &Yaml| !doc.is_null())
        .collect()
}

fn yaml_one(path: &Path) -> Yaml {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

fn str_at<'a>(value: &'a Yaml, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn at<'a>(value: &'a Yaml, path: &[&str]) -> &'a Yaml {
    let mut here = value;
    for key in path {
        here = match key.parse::<usize>() {
            Ok(i) => &here[i],
            Err(_) => &here[*key],
        };
    }
    here
}

fn seq(value: &Yaml) -> &Vec<Yaml> {
    value.as_sequence().expect("a YAML sequence")
}

/// The DaemonSet's egret container.
fn daemonset_container() -> Yaml {
    let ds = yaml_one(&deploy().join("daemonset.yaml"));
    let containers = seq(at(&ds, &["spec", "template", "spec", "containers"]));
    containers
        .iter()
        .find(|c| c["name"] == "egret")
        .expect("container egret")
        .clone()
}

/// The capabilities the DaemonSet adds (its `add:` list), without CAP_.
fn daemonset_capabilities() -> Vec<String> {
    let container = daemonset_container();
    let caps = at(&container, &["securityContext", "capabilities"]);
    let drop: Vec<&str> = seq(&caps["drop"]).iter().filter_map(Yaml::as_str).collect();
    assert_eq!(drop, ["ALL"], "the DaemonSet drops every capability first");
    let add: Vec<String> = seq(&caps["add"])
        .iter()
        .map(|c| c.as_str().expect("capability name").to_owned())
        .collect();
    assert!(!add.is_empty());
    add
}

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|name| {
            let bit = CAPABILITIES
                .iter()
                .position(|c| c == name)
                .unwrap_or_else(|| panic!("unknown capability {name}"));
            1u64 << bit
        })
        .fold(0, |a, b| a | b)
}

/// `CapEff` etc. of a process, from /proc/<pid>/status.
fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

// ---------------------------------------------------------------------------
// Manifests (no root needed)

/// A tool the deployment tests need; in CI its absence is a failure.
fn have_tool(test: &str, check: &mut Command, what: &str) -> bool {
    let ok = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {what} missing in CI (scripts/setup-deploy.sh installs it)"
        );
        eprintln!("skipping {test}: {what} missing (run scripts/setup-deploy.sh)");
    }
    ok
}

mod caps;
mod image;
mod manifests;

/// (stdout, stderr) lines so far, and a condvar signalled on each new one.
type Lines = Arc<(Mutex<(Vec<String>, Vec<String>)>, Condvar)>;

/// A child process whose output lines are collected by reader threads.
struct Proc {
    child: Child,
    lines: Lines,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines: Lines = Arc::default();
        for (stream, is_err) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                false,
            ),
            (Box::new(child.stderr.take().unwrap()), true),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let (lock, cond) = &*lines;
                    let mut guard = lock.lock().unwrap();
                    if is_err {
                        guard.1.push(line);
                    } else {
                        guard.0.push(line);
                    }
                    cond.notify_all();
                }
            });
        }
        Proc {
            child,
            lines,
            status: None,
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().1.clone()
    }

    /// Waits until `find` answers from (stdout, stderr) or the process
    /// exits (then one last look).
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        find: impl Fn(&[String], &[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let (lock, cond) = &*self.lines;
                let guard = lock.lock().unwrap();
                if let Some(found) = find(&guard.0, &guard.1) {
                    return Some(found);
                }
                let _ = cond.wait_timeout(guard, Duration::from_millis(50)).unwrap();
            }
            if self.status.is_none()
                && let Ok(Some(status)) = self.child.try_wait()
            {
                self.status = Some(status);
                // Let the readers collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let guard = self.lines.0.lock().unwrap();
                return find(&guard.0, &guard.1);
            }
            if self.status.is_some() || Instant::now() >= deadline {
                return None;
            }
        }
    }

    fn wait_json(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_for(timeout, |out, _| {
            out.iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(&pred)
        })
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.status.is_none() && Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                std::thread::sleep(Duration::from_millis(100));
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.status
    }

    fn terminate(&mut self) {
        if self.status.is_none() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                self.status = self.child.wait().ok();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

use crate::support::free_port;

/// `GET path` on loopback; the status code, or 0 when nothing answers.
fn http_status(port: u16, path: &str) -> u16 {
    crate::support::http::status((std::net::Ipv4Addr::LOCALHOST, port).into(), path)
}

/// `GET path` on loopback: status code and body, `(0, "")` when nothing
/// answers.
fn http_get(port: u16, path: &str) -> (u16, String) {
    crate::support::http::get((std::net::Ipv4Addr::LOCALHOST, port).into(), path)
        .unwrap_or_default()
}

/// `egret run <args>` as root with exactly `caps` in its bounding,
/// permitted, effective, inheritable and ambient sets (what a container
/// with `drop: [ALL], add: caps` gets).
fn agent_with_caps(caps: &[String], args: &[&str]) -> Proc {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("setpriv");
    command
        .args([
            "--bounding-set",
            &set,
            "--inh-caps",
            &set,
            "--ambient-caps",
            &set,
        ])
        .arg("--")
        .arg(crate::support::agent_path())
        .args(args)
        .env("EGRET_LOG", "info");
    Proc::spawn(command)
}

fn without(caps: &[String], dropped: &str) -> Vec<String> {
    caps.iter().filter(|c| *c != dropped).cloned().collect()
}

fn have_setpriv(test: &str) -> bool {
    have_tool(
        test,
        Command::new("setpriv").arg("--version"),
        "setpriv (util-linux)",
    )
}

/// A bash started before the agent that connects (itself, no exec) to
/// `V4_SERVER:port` once `trigger` exists: the agent knows it only from
/// /proc, which needs CAP_SYS_PTRACE for /proc/<pid>/exe.
struct EarlyProcess {
    child: Child,
    trigger: PathBuf,
}

impl EarlyProcess {
    fn start(ns: &NetNs, port: u16) -> EarlyProcess {
        let trigger = std::env::temp_dir().join(unique_id("trigger"));
        let script = format!(
            "until [ -e {t} ]; do sleep 0.05; done; echo > /dev/tcp/{V4_SERVER}/{port}; sleep 1",
            t = trigger.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bash", "-c", &script])
            .stderr(Stdio::null())
            .spawn()
            .expect("bash");
        EarlyProcess { child, trigger }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The executable once `ip netns exec` has exec'd into bash.
    fn exe(&self) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let exe = fs::read_link(format!("/proc/{}/exe", self.pid())).expect("bash alive");
            if exe
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bash"))
            {
                return exe;
            }
            assert!(
                Instant::now() < deadline,
                "bash did not start: {}",
                exe.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn go(&mut self) {
        fs::write(&self.trigger, b"").unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for EarlyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.trigger);
    }
}

fn wait_ready(agent: &mut Proc, port: u16) {
    let ready = agent.wait_for(READY_TIMEOUT, |_, err| {
        err.iter().any(|l| l.contains("egret ready")).then_some(())
    });
    assert!(
        ready.is_some(),
        "agent did not become ready ({:?}); stderr:\n{}",
        agent.status,
        agent.stderr().join("\n")
    );
    assert_eq!(http_status(port, "/readyz"), 200);
    assert_eq!(http_status(port, "/healthz"), 200);
}
