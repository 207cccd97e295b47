//! Quarantine test plumbing: a minimal HTTP/1.1 client for the control API,
//! workload cgroups shaped like the kubelet's (so pod and container targets
//! resolve), and running the probe inside one of them and a test netns.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use super::netns::NetNs;

pub struct ControlClient {
    pub addr: SocketAddr,
    pub token: String,
}

impl ControlClient {
    /// (status, JSON body) of one request with this client's token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_with(method, path, body, Some(&self.token))
    }

    /// As [`call`](Self::call) with any token (or none).
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .expect("connect to the control API");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let body = body.unwrap_or("");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: egret\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Ids listed by GET /v1/quarantines.
    pub fn ids(&self) -> Vec<String> {
        let (status, body) = self.call("GET", "/v1/quarantines", None);
        assert_eq!(status, 200, "{body}");
        body["quarantines"]
            .as_array()
            .expect("quarantines array")
            .iter()
            .filter_map(|q| q["id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Nested cgroup directories under a test cgroup; removed deepest first.
pub struct Workload {
    dirs: Vec<PathBuf>,
}

impl Workload {
    /// Creates `parent/relative` and every directory on the way.
    pub fn new(parent: &Path, relative: &str) -> Workload {
        let mut dirs = Vec::new();
        let mut dir = parent.to_path_buf();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).expect("create workload cgroup");
                dirs.push(dir.clone());
            }
        }
        Workload { dirs }
    }

    pub fn path(&self) -> &Path {
        self.dirs.last().expect("at least one directory")
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            if let Err(err) = std::fs::remove_dir(dir) {
                eprintln!("could not remove {}: {err}", dir.display());
            }
        }
    }
}

/// Runs `egret-probe report-<mode> <addr>` in `cgroup` and `ns`; returns
/// what it printed (`ok` or `err <errno>`).
pub fn probe_in(cgroup: &Path, ns: &NetNs, mode: &str, addr: &str) -> String {
    let procs = cgroup.join("cgroup.procs");
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1" && exec ip netns exec "$2" "$3" "report-$4" "$5""#)
        .arg("sh")
        .arg(&procs)
        .arg(&ns.name)
        .arg(super::probe_path())
        .arg(mode)
        .arg(addr)
        .output()
        .expect("run probe");
    assert!(output.status.success(), "probe failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The probe's `err <errno>` line for EPERM.
pub fn eperm() -> String {
    format!("err {}", libc::EPERM)
}

/// A TCP listener in `ns` (killed on drop), so connects there succeed.
pub struct Listener(std::process::Child);

impl Listener {
    pub fn start(ns: &NetNs, addr: &str) -> Listener {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(super::probe_path())
            .args(["listen", addr])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn listener");
        let mut line = [0u8; 10];
        let stdout = child.stdout.as_mut().expect("stdout piped");
        stdout
            .read_exact(&mut line)
            .expect("listener says listening");
        Listener(child)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
