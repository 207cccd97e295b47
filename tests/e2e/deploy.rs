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
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
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

/// Every file the kustomization names, recursively through the bases it
/// includes.
fn kustomization_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let kustomization = dir.join("kustomization.yaml");
    assert!(
        kustomization.is_file(),
        "{} missing",
        kustomization.display()
    );
    let k = yaml_one(&kustomization);
    for resource in k["resources"].as_sequence().into_iter().flatten() {
        let path = dir.join(resource.as_str().expect("resource path"));
        if path.is_dir() {
            kustomization_files(&path, out);
        } else {
            assert!(path.is_file(), "{} listed but missing", path.display());
            out.push(path);
        }
    }
    for generator in k["configMapGenerator"].as_sequence().into_iter().flatten() {
        for file in generator["files"].as_sequence().into_iter().flatten() {
            let path = dir.join(file.as_str().expect("generator file"));
            assert!(path.is_file(), "{} listed but missing", path.display());
            // Generated ConfigMaps carry YAML or JSON; both must parse.
            let text = fs::read_to_string(&path).unwrap();
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else {
                yaml_docs_of(&text, &path.display().to_string());
            }
        }
    }
}

/// The manifests as kustomize renders them, or `None` without kubectl.
fn rendered() -> Option<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("UTF-8"))
}

#[test]
fn kustomization_files_exist_and_render() {
    let mut files = Vec::new();
    kustomization_files(&deploy(), &mut files);
    let mut kinds = BTreeSet::new();
    for file in &files {
        for doc in yaml_docs(file) {
            kinds.insert(str_at(&doc, &["kind"]).to_owned());
        }
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "Secret",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    // kubectl is not a Debian package; where it exists (it bundles
    // kustomize), the real rendering is checked too.
    let Some(text) = rendered() else {
        eprintln!("kubectl not installed: checked the listed files, not the rendering");
        return;
    };
    let docs = yaml_docs_of(&text, "kubectl kustomize");
    for doc in &docs {
        if doc["kind"] != "Namespace" {
            assert_eq!(
                doc["metadata"]["namespace"],
                "egret-system",
                "{}",
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
    }
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "egret-grafana-dashboard")
        .expect("dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = str_at(dashboard, &["data", "egret-dashboard.json"]);
    serde_json::from_str::<Value>(json).expect("dashboard JSON");
    // The DaemonSet mounts the generated (hash-suffixed) ConfigMaps.
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let volumes = seq(at(ds, &["spec", "template", "spec", "volumes"]));
    for (volume, prefix) in [("config", "egret-config-"), ("rules", "egret-rules-")] {
        let v = volumes.iter().find(|v| v["name"] == volume).unwrap();
        let name = str_at(v, &["configMap", "name"]);
        assert!(name.starts_with(prefix), "{volume}: {name}");
        assert!(
            docs.iter()
                .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name),
            "{name} not rendered"
        );
    }
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    const TEST: &str = "manifests_validate_against_kubernetes_schemas";
    if !have_tool(
        TEST,
        Command::new("python3").args(["-c", "import kubernetes_validate"]),
        "python3 kubernetes-validate",
    ) {
        return;
    }
    let mut files = Vec::new();
    kustomization_files(&deploy(), &mut files);
    let dir = std::env::temp_dir().join(unique_id("kv"));
    fs::create_dir_all(&dir).unwrap();
    if let Some(text) = rendered() {
        let path = dir.join("rendered.yaml");
        fs::write(&path, text).unwrap();
        files.push(path);
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
        ])
        .arg(KUBERNETES_VERSION)
        .args(&files)
        .output()
        .expect("python3 -m kubernetes_validate");
    let _ = fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "validation failed:\n{report}");
    let mut passed = BTreeSet::new();
    for line in report.lines() {
        if let Some(rest) = line.split(" passed for resource ").nth(1) {
            passed.insert(rest.split(' ').next().unwrap_or("").to_owned());
        } else if line.contains("Couldn't find schema for kind") {
            assert!(
                CRD_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "a resource skipped for lack of a schema: {line}"
            );
        } else if line.starts_with("ERROR") || line.starts_with("WARN") {
            panic!("unexpected report line: {line}\n{report}");
        }
    }
    for resource in [
        "namespace/egret-system",
        "serviceaccount/egret",
        "secret/egret-webhook",
        "service/egret",
        "daemonset/egret",
    ] {
        assert!(
            passed.contains(resource),
            "{resource} not validated:\n{report}"
        );
    }
}

#[test]
fn manifests_are_consistent_with_each_other_and_the_config() {
    let dir = deploy();
    let container = daemonset_container();
    let ds = yaml_one(&dir.join("daemonset.yaml"));
    let pod = at(&ds, &["spec", "template"]);
    let spec = &pod["spec"];

    // Not privileged; hardened otherwise.
    let sc = &container["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(
        seq(&spec["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint"
    );
    let caps = daemonset_capabilities();
    assert!(
        !caps.iter().any(|c| c == "SYS_ADMIN"),
        "CAP_SYS_ADMIN is not needed on 5.8+"
    );

    // Probes and the Service use the container's named port, which is the
    // port egret.yaml listens on.
    let config = yaml_one(&dir.join("egret.yaml"));
    let listen = str_at(&config, &["listen"]);
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = seq(&container["ports"]);
    let metrics = ports.iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(metrics["containerPort"].as_u64(), Some(port));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    let args: Vec<&str> = seq(&container["args"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args, ["--config", "/etc/egret/egret.yaml"]);
    assert!(
        seq(&container["env"])
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );

    let service = yaml_one(&dir.join("service.yaml"));
    let labels = &pod["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &labels[key.as_str().unwrap()],
            value,
            "Service selects the pods"
        );
    }
    let service_port = &seq(&service["spec"]["ports"])[0];
    assert_eq!(service_port["name"], "metrics");
    assert_eq!(service_port["port"].as_u64(), Some(port));
    assert_eq!(service_port["targetPort"], "metrics");
    let monitor = yaml_one(&dir.join("servicemonitor.yaml"));
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key.as_str().unwrap()], value);
    }
    let endpoint = &seq(&monitor["spec"]["endpoints"])[0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    // The alerting rules select job=~".*egret.*"; the job is the value of
    // the Service label named by jobLabel.
    let job_label = str_at(&monitor, &["spec", "jobLabel"]);
    assert!(str_at(&service, &["metadata", "labels", job_label]).contains("egret"));

    // Every path egret.yaml names is mounted where the DaemonSet puts it.
    let mounts = seq(&container["volumeMounts"]);
    let mount = |name: &str| -> &str {
        let m = mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"));
        assert_eq!(m["readOnly"], true, "{name} is mounted read-only");
        m["mountPath"].as_str().unwrap()
    };
    assert_eq!(mount("config"), "/etc/egret/egret.yaml");
    let rules_files: Vec<&str> = seq(&config["rules_files"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        rules_files,
        ["/usr/share/egret/rules.d", mount("rules")],
        "bundled rules (from the image), then the egret-rules ConfigMap"
    );
    assert_eq!(
        str_at(&config, &["identity", "host_passwd"]),
        mount("host-passwd")
    );
    assert_eq!(
        str_at(&config, &["identity", "containerd_socket"]),
        mount("containerd-socket")
    );
    assert_eq!(mount("cgroup"), "/sys/fs/cgroup");
    assert_eq!(mount("tracefs"), "/sys/kernel/tracing");
    let secrets_dir = mount("webhook-secret");
    let secret = yaml_one(&dir.join("webhook-secret.yaml"));
    let volumes = seq(&spec["volumes"]);
    let secret_volume = volumes
        .iter()
        .find(|v| v["name"] == "webhook-secret")
        .unwrap();
    assert_eq!(
        secret_volume["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let hook = &seq(&config["webhooks"])[0];
    for file in [
        str_at(hook, &["bearer_token", "file"]),
        str_at(hook, &["hmac", "secret", "file"]),
    ] {
        let key = file
            .strip_prefix(&format!("{secrets_dir}/"))
            .unwrap_or_else(|| panic!("{file} is not under {secrets_dir}"));
        assert!(
            !secret["stringData"][key].is_null(),
            "Secret has no key {key}"
        );
    }

    // The image reference matches what `cargo xtask image` builds.
    let kustomization = yaml_one(&dir.join("kustomization.yaml"));
    let image = &seq(&kustomization["images"])[0];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(image["name"], "localhost/egret");
    assert_eq!(image["newTag"], version);
    assert_eq!(
        container["image"].as_str(),
        Some(format!("localhost/egret:{version}").as_str())
    );
}

/// The configuration the ConfigMap ships passes the agent's own checker.
#[test]
fn shipped_config_passes_egret_config_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["config", "check"])
        .arg(deploy().join("egret.yaml"))
        .output()
        .expect("egret config check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules ConfigMap's files load after the bundled rules, as the
/// shipped `rules_files` orders them.
#[test]
fn shipped_rules_load_after_the_bundled_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_egret"))
        .args(["rules", "check"])
        .arg(repo().join("rules"))
        .arg(deploy().join("rules"))
        .output()
        .expect("egret rules check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The agent under exactly the DaemonSet's capabilities (root)

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET path` on loopback; the status code, or 0 when nothing answers.
fn http_status(port: u16, path: &str) -> u16 {
    http_get(port, path).0
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
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
        .arg(env!("CARGO_BIN_EXE_egret"))
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

#[test]
fn agent_runs_with_exactly_the_daemonset_capabilities() {
    const TEST: &str = "agent_runs_with_exactly_the_daemonset_capabilities";
    if !support::privileged(TEST) || !have_setpriv(TEST) {
        return;
    }
    let caps = daemonset_capabilities();
    let ns = NetNs::new("caps");
    let mut early = EarlyProcess::start(&ns, 8081);
    let early_exe = early.exe();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = agent_with_caps(&caps, &["run", "--audit", "-", "--listen", &listen]);
    wait_ready(&mut agent, port);

    // The running agent holds those capabilities and no others.
    let mask = format!("{:016x}", cap_mask(&caps));
    let pid = agent.child.id();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            proc_status_field(pid, set).as_deref(),
            Some(mask.as_str()),
            "{set}"
        );
    }

    // A process born after the start: fields from the kernel's records.
    let (probe_pid, _) = ns.run(
        &support::probe_path(),
        &["tcp", &format!("{V4_SERVER}:8080")],
    );
    let event = agent
        .wait_json(EVENT_TIMEOUT, |v| v["proc.pid"] == probe_pid)
        .unwrap_or_else(|| panic!("no event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(event["fd.sip"], V4_SERVER, "{event}");
    assert_eq!(event["proc.name"], "egret-probe", "{event}");
    assert_eq!(
        event["proc.exepath"],
        support::probe_path().display().to_string(),
        "{event}"
    );
    assert!(
        event["proc.cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("egret-probe tcp")),
        "{event}"
    );
    assert_eq!(event["user.name"], "root", "{event}");
    assert_eq!(event["container.id"], "host", "{event}");

    // A process that predates the agent: its executable comes from
    // /proc/<pid>/exe, readable thanks to CAP_SYS_PTRACE.
    let early_pid = early.pid();
    early.go();
    let event = agent
        .wait_json(EVENT_TIMEOUT, |v| v["proc.pid"] == early_pid)
        .unwrap_or_else(|| panic!("no event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(event["proc.name"], "bash", "{event}");
    assert_eq!(
        event["proc.exepath"],
        early_exe.display().to_string(),
        "{event}"
    );
    agent.terminate();
    assert!(
        agent.status.is_some_and(|s| s.success()),
        "clean exit: {:?}\n{}",
        agent.status,
        agent.stderr().join("\n")
    );
}

/// What the agent says when a capability is missing: the cause (the
/// kernel's answer) and a hint naming the capabilities, on one line.
fn expected_failure(cap: &str) -> Option<&'static [&'static str]> {
    match cap {
        // bpf(BPF_MAP_CREATE) is refused.
        "BPF" => Some(&["failed to create map", "Operation not permitted", "CAP_"]),
        // The verifier treats the programs as unprivileged and rejects
        // their pointer arithmetic.
        "PERFMON" => Some(&["BPF_PROG_LOAD", "Permission denied", "CAP_"]),
        // cgroup sock_addr programs are networking programs.
        "NET_ADMIN" => Some(&["BPF_PROG_LOAD", "Operation not permitted", "CAP_"]),
        _ => None,
    }
}

#[test]
fn each_daemonset_capability_is_needed() {
    const TEST: &str = "each_daemonset_capability_is_needed";
    if !support::privileged(TEST) || !have_setpriv(TEST) {
        return;
    }
    let caps = daemonset_capabilities();
    let mut problems = Vec::new();
    for cap in &caps {
        let fewer = without(&caps, cap);
        if cap == "SYS_PTRACE" {
            sys_ptrace_is_needed_for_proc_fields(&fewer);
            continue;
        }
        let Some(expected) = expected_failure(cap) else {
            problems.push(format!(
                "CAP_{cap} is in the DaemonSet, but this test does not know why it is needed"
            ));
            continue;
        };
        if let Err(problem) = fails_clearly_without(cap, &fewer, expected) {
            problems.push(problem);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Runs the agent with `caps` (one short of the DaemonSet's) and checks
/// that it exits non-zero, never ready, with one `egret: error:` line that
/// is its last and names the cause.
fn fails_clearly_without(cap: &str, caps: &[String], expected: &[&str]) -> Result<(), String> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = agent_with_caps(caps, &["run", "--audit", "-", "--listen", &listen]);
    let status = agent.wait_exit(READY_TIMEOUT);
    let stderr = agent.stderr();
    let all = stderr.join("\n");
    if status.is_none_or(|s| s.success()) {
        return Err(format!(
            "without CAP_{cap} the agent must fail ({status:?}):\n{all}"
        ));
    }
    if stderr.iter().any(|l| l.contains("egret ready")) {
        return Err(format!("without CAP_{cap} the agent became ready:\n{all}"));
    }
    let errors: Vec<&String> = stderr
        .iter()
        .filter(|l| l.starts_with("egret: error:"))
        .collect();
    if errors.len() != 1 || stderr.last() != Some(errors[0]) {
        return Err(format!(
            "without CAP_{cap}: the error must be one line, the last one; stderr:\n{}",
            all.chars().take(2000).collect::<String>()
        ));
    }
    for needle in expected {
        if !errors[0].contains(needle) {
            return Err(format!(
                "without CAP_{cap}: `{needle}` not in {}",
                errors[0]
            ));
        }
    }
    eprintln!(
        "without CAP_{cap}: {}",
        errors[0].chars().take(300).collect::<String>()
    );
    Ok(())
}

/// Without CAP_SYS_PTRACE the agent runs, but /proc/<pid>/exe of processes
/// with more privileges than the agent is unreadable: the executable path of
/// a process it only knows from /proc is empty.
fn sys_ptrace_is_needed_for_proc_fields(caps: &[String]) {
    let ns = NetNs::new("noptrace");
    let mut early = EarlyProcess::start(&ns, 8082);
    early.exe();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = agent_with_caps(caps, &["run", "--audit", "-", "--listen", &listen]);
    wait_ready(&mut agent, port);
    let early_pid = early.pid();
    early.go();
    let event = agent
        .wait_json(EVENT_TIMEOUT, |v| v["proc.pid"] == early_pid)
        .unwrap_or_else(|| panic!("no event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(event["proc.name"], "bash", "{event}");
    assert_eq!(
        event["proc.exepath"], "",
        "without CAP_SYS_PTRACE /proc/<pid>/exe is unreadable: {event}"
    );
    eprintln!("without CAP_SYS_PTRACE: proc.exepath is empty for processes found in /proc");
}

// ---------------------------------------------------------------------------
// The image under containerd, run the way the DaemonSet runs it (root)

/// Kills and deletes a container on drop.
struct Running<'a> {
    containerd: &'a Containerd,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.containerd.remove(&self.id);
    }
}

/// `cargo xtask image`, in its own target directory so it never waits for
/// the lock of the `cargo test` that runs this.
fn build_image(binary: &Path, output: &Path, name: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args(["run", "--quiet", "-p", "xtask", "--", "image", "--binary"])
        .arg(binary)
        .arg("--output")
        .arg(output)
        .args(["--name", name])
        .env("CARGO_TARGET_DIR", repo().join("target/xtask-e2e"))
        .output()
        .expect("cargo xtask image");
    assert!(
        out.status.success(),
        "cargo xtask image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.is_file(), "{} not written", output.display());
}

/// The shipped egret.yaml with only what a test machine needs changed: the
/// listen port (the node's 9464 may be taken), audit on stdout so events
/// can be read, and the webhook pointed at a closed loopback port (the
/// example URL must never be resolved from a test).
fn test_config(port: u16) -> String {
    let text = fs::read_to_string(deploy().join("egret.yaml")).unwrap();
    let shipped_url = "https://soar.example.internal/egret";
    assert!(text.contains(shipped_url));
    let text = text
        .replace(shipped_url, "https://127.0.0.1:9/egret")
        .replace("listen: 0.0.0.0:9464", &format!("listen: 127.0.0.1:{port}"))
        .replace("audit: {path: \"\",", "audit: {path: \"-\",");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("path: \"-\""));
    // Network safety: no webhook may point anywhere but loopback.
    for line in text.lines().filter(|l| l.contains("url:")) {
        assert!(
            line.contains("://127.0.0.1:"),
            "a webhook URL this test would call: {line}"
        );
    }
    text
}

#[test]
fn image_runs_under_containerd_like_the_daemonset() {
    const TEST: &str = "image_runs_under_containerd_like_the_daemonset";
    if !support::privileged(TEST)
        || !have_tool(TEST, Command::new("buildah").arg("--version"), "buildah")
    {
        return;
    }
    let containerd = Containerd::start();
    let work = containerd.dir().join("deploy");
    fs::create_dir_all(&work).unwrap();
    let image = format!("localhost/egret:e2e-{}", std::process::id());
    let archive = work.join("egret-image.tar");
    build_image(Path::new(env!("CARGO_BIN_EXE_egret")), &archive, &image);
    let imported = containerd.ctr(&["image", "import", &archive.display().to_string()]);
    assert!(imported.status.success(), "{imported:?}");

    // What the DaemonSet mounts: config (ConfigMap), rules (ConfigMap),
    // webhook secrets (Secret), and the host paths.
    let port = free_port();
    let config = work.join("egret.yaml");
    fs::write(&config, test_config(port)).unwrap();
    let secrets = work.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    fs::write(secrets.join("token"), "e2e-token\n").unwrap();
    fs::write(secrets.join("hmac"), "e2e-hmac-key\n").unwrap();
    let cgroup = support::cgroup_root();
    let mounts = [
        (config.clone(), "/etc/egret/egret.yaml"),
        (deploy().join("rules"), "/etc/egret/rules.d"),
        (secrets.clone(), "/etc/egret/secrets"),
        (cgroup.clone(), "/sys/fs/cgroup"),
        (PathBuf::from("/sys/kernel/tracing"), "/sys/kernel/tracing"),
        (
            containerd.socket().to_path_buf(),
            "/run/containerd/containerd.sock",
        ),
        (PathBuf::from("/etc/passwd"), "/host/etc/passwd"),
    ];

    let caps = daemonset_capabilities();
    let id = unique_id("agent");
    let log = work.join("agent.log");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        format!("--log-uri=file://{}", log.display()),
        // hostNetwork and hostPID (ctr cannot say "host pid", so the
        // container joins this test's pid namespace, the host's).
        "--net-host".into(),
        format!("--with-ns=pid:/proc/{}/ns/pid", std::process::id()),
        // readOnlyRootFilesystem, seccomp RuntimeDefault (containerd's
        // default profile); no-new-privileges is ctr's default.
        "--read-only".into(),
        "--seccomp".into(),
        // The image's entrypoint (`/egret run`) with the config by env:
        // ctr replaces the whole command line when given arguments.
        "--env=EGRET_CONFIG=/etc/egret/egret.yaml".into(),
        "--env=NODE_NAME=e2e-node".into(),
    ];
    // capabilities: drop [ALL], add [...]. ctr 1.6 has no "ALL", so every
    // capability the kernel knows that is not added is dropped by name.
    for cap in CAPABILITIES {
        if caps.iter().any(|c| c == cap) {
            args.push(format!("--cap-add=CAP_{cap}"));
        } else {
            args.push(format!("--cap-drop=CAP_{cap}"));
        }
    }
    for (src, dst) in &mounts {
        let options = if src.is_dir() { "rbind:ro" } else { "bind:ro" };
        args.push(format!(
            "--mount=type=bind,src={},dst={dst},options={options}",
            src.display()
        ));
    }
    args.push(image.clone());
    args.push(id.clone());
    let run = containerd.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let _agent = Running {
        containerd: &containerd,
        id: id.clone(),
    };
    assert!(
        run.status.success(),
        "ctr run: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        containerd.log()
    );
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !log_text().contains("egret ready") {
        assert!(
            Instant::now() < deadline && !log_text().contains("egret: error"),
            "agent container not ready; its output:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_status(port, "/readyz"), 200);
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("egret_"), "{metrics}");

    // The agent process: the DaemonSet's capabilities, nothing else, no
    // new privileges, a seccomp filter.
    let tasks = containerd.ctr(&["task", "ls"]);
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    let agent_pid: u32 = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id.as_str())).then(|| f.next().unwrap().parse().unwrap())
        })
        .expect("agent task");
    let mask = format!("{:016x}", cap_mask(&caps));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            proc_status_field(agent_pid, set).as_deref(),
            Some(mask.as_str()),
            "{set}"
        );
    }
    assert_eq!(
        proc_status_field(agent_pid, "NoNewPrivs").as_deref(),
        Some("1")
    );
    assert_eq!(
        proc_status_field(agent_pid, "Seccomp").as_deref(),
        Some("2")
    );

    // Another container, in its own empty network namespace: TEST-NET is
    // unreachable there, and the hook sees the attempt anyway.
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let pod = Pod {
        name: "shop-web-1".into(),
        namespace: "shop".into(),
        uid: "0b6c1f8e-2a5d-4f3c-9e7a-1d2c3b4a5f60".into(),
    };
    let app = unique_id("app");
    let spec = RunSpec::new(
        &app,
        Source::Rootfs(rootfs),
        &["sh", "-c", "nc -w1 198.51.100.7 443; sleep 1"],
    )
    .in_pod(&pod, "web");
    let output = containerd.run(&spec);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unreachable"),
        "{output:?}"
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let event = loop {
        let found = log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fd.sip"] == "198.51.100.7" && v["proc.name"] == "nc");
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no event from the other container; agent output:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["fd.sport"], 443, "{event}");
    assert_eq!(event["proc.cmdline"], "nc -w1 198.51.100.7 443", "{event}");
    assert_eq!(event["container.id"], &app[..12], "{event}");
    assert_eq!(event["container.name"], "web", "{event}");
    assert_eq!(event["k8s.pod.name"], pod.name, "{event}");
    assert_eq!(event["k8s.ns.name"], pod.namespace, "{event}");
    assert_eq!(event["container.host_network"], false, "{event}");
    assert!(
        !log_text().contains("egret: error"),
        "agent output:\n{}",
        log_text()
    );
}
