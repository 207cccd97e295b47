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

/// The quarantine tests' own TEST-NET ranges (other suites use others, so
/// assertions filtered by destination see only this suite's traffic).
pub const Q_V4: &str = "198.51.100.65";
/// A second address in the same /26: the rule-action trigger.
pub const Q_V4_TRIGGER: &str = "198.51.100.66";
pub const Q_V4_ALLOWED: &str = "203.0.113.65";
pub const Q_V6: &str = "2001:db8:16::1";
pub const Q_V6_ALLOWED: &str = "2001:db8:16:1::1";

/// Adds the quarantine ranges to a test namespace's `v0` (beside the kit's
/// defaults; both ends of the veth are inside the namespace).
pub fn add_quarantine_addresses(ns: &NetNs) {
    for (addr, extra) in [
        ("198.51.100.65/26", None),
        ("198.51.100.66/26", None),
        ("203.0.113.65/26", None),
        ("2001:db8:16::1/64", Some("nodad")),
        ("2001:db8:16:1::1/64", Some("nodad")),
    ] {
        let mut command = Command::new("ip");
        command.args(["-n", &ns.name, "addr", "add", addr, "dev", "v0"]);
        if let Some(extra) = extra {
            command.arg(extra);
        }
        let status = command.status().expect("ip addr add");
        assert!(status.success(), "ip addr add {addr} in {}", ns.name);
    }
}

/// A test PKI made with the openssl CLI: a CA with a server certificate for
/// 127.0.0.1 and a client certificate, and a second CA with its own client
/// certificate (which the agent must refuse).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (installed by scripts/setup.sh)");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("client.ext");
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN=Egret {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        for (name, ca, ext, cn) in [
            ("server", "ca", "server.ext", "egret-control"),
            ("client", "ca", "client.ext", "soar"),
            ("other", "other-ca", "client.ext", "intruder"),
        ] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_cert: dir.join("other.pem"),
            other_key: dir.join("other.key"),
        }
    }
}

/// `egret quarantine <args>`: (exit code, stdout, stderr).
pub fn quarantine_cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(super::agent_path())
        .arg("quarantine")
        .args(args)
        .env_remove("EGRET_CONTROL_URL")
        .env_remove("EGRET_CONTROL_TOKEN_FILE")
        .output()
        .expect("run egret quarantine");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Removes, in every cgroup hierarchy (v1 ones too on a hybrid host, where
/// runc creates the container's path in each), the directories below
/// `relative` that containers left, deepest first; and `relative` itself in
/// the v1 hierarchies (the cgroup2 one belongs to its `TestCgroup`).
pub struct CgroupTrees {
    pub relative: PathBuf,
}

impl Drop for CgroupTrees {
    fn drop(&mut self) {
        let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        for line in table.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let fstype = post.split_whitespace().next().unwrap_or("");
            if !matches!(fstype, "cgroup" | "cgroup2") {
                continue;
            }
            let Some(mount) = pre.split_whitespace().nth(4) else {
                continue;
            };
            let top = Path::new(mount).join(&self.relative);
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let _ = std::fs::remove_dir(&dir);
            }
            if fstype == "cgroup" {
                let _ = std::fs::remove_dir(&top);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
            collect_dirs(&entry.path(), out);
        }
    }
}

/// Copies `egret-probe` and the shared libraries it needs into a rootfs
/// (`/bin/egret-probe`), so containers make the same single attempts as
/// the host-side tests and print `ok` / `err <errno>`.
pub fn install_probe(rootfs: &Path) {
    let probe = super::probe_path();
    let ldd = Command::new("ldd").arg(&probe).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let Some(path) = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(Path::new)
        else {
            continue;
        };
        let inside = rootfs.join(path.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(inside.parent().expect("parent")).expect("lib dir");
        std::fs::copy(path, &inside).expect("copy library");
    }
    std::fs::copy(&probe, rootfs.join("bin/egret-probe")).expect("copy probe");
}
