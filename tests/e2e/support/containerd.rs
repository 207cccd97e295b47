//! A private containerd for tests: its own config, root, state and socket
//! under a temporary directory (never the system instance), containers run
//! with `ctr`, and everything killed, unmounted and removed on drop.
//!
//! Containers get their own empty network namespace by default (`ctr run`
//! does not set up networking), so a connection attempt fails with
//! ENETUNREACH: the kernel hooks still see it, and nothing leaves the
//! machine. Tests only ever target TEST-NET (198.51.100.0/24,
//! 203.0.113.0/24, 2001:db8::/32) or loopback. `scripts/setup-containerd.sh`
//! installs containerd, runc and busybox-static.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// The CRI namespace, where the agent looks by default.
pub const NAMESPACE: &str = "k8s.io";
/// A uid that exists in the test rootfs's passwd but not on the host.
pub const APP_UID: u32 = 1234;
pub const APP_USER: &str = "egretapp";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CTR_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// busybox applets linked into the rootfs.
const APPLETS: [&str; 14] = [
    "sh", "nc", "wget", "sleep", "cat", "echo", "id", "ls", "true", "false", "ip", "ping",
    "arping", "head",
];

mod cleanup;
mod image;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call, valid as a containerd id.
pub fn unique_id(tag: &str) -> String {
    format!(
        "egret-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// As [`unique_id`], in the 64-hex shape CRI gives containers: the agent
/// reads an id from a kubelet-shaped cgroup path (`RunSpec::cgroup`) only
/// in that shape.
pub fn unique_hex_id() -> String {
    format!(
        "{:032x}{:032x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    /// Containers this harness created, for cleanup.
    created: Mutex<Vec<String>>,
}

impl Containerd {
    /// Starts containerd and waits until it answers.
    pub fn start() -> Containerd {
        // Short: the socket path must fit in sun_path (108 bytes).
        let dir = PathBuf::from(format!("/tmp/{}", unique_id("ctd")));
        fs::create_dir_all(&dir).expect("containerd test dir");
        let socket = dir.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
# No CRI (it wants CNI) and no snapshotters this kernel/filesystem lacks.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
            dir = dir.display(),
            sock = socket.display()
        );
        fs::write(dir.join("config.toml"), config).expect("write containerd config");
        let mut containerd = Containerd {
            dir,
            socket,
            child: None,
            created: Mutex::new(Vec::new()),
        };
        containerd.launch();
        containerd
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Scratch space that is removed with the harness.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn launch(&mut self) {
        if let Err(err) = self.try_launch() {
            panic!("{err}");
        }
    }

    /// Never panics, so cleanup in `drop` can use it.
    fn try_launch(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("containerd already running".into());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .map_err(|e| format!("containerd log: {e}"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| format!("log fd: {e}"))?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn containerd (run scripts/setup-containerd.sh): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.socket.exists()
                && self
                    .try_ctr(&["version"])
                    .is_some_and(|o| o.status.success())
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("containerd exited ({status}):\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(format!(
            "containerd did not come up in {START_TIMEOUT:?}:\n{}",
            self.log()
        ))
    }

    /// Stops containerd (SIGTERM, then SIGKILL). Shims and their containers
    /// keep running, as they do when a real node's containerd restarts.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                let _ = fs::remove_file(&self.socket);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_file(&self.socket);
    }

    /// Starts containerd again on the same root and state, after `stop`.
    pub fn restart(&mut self) {
        self.launch();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `ctr --address <ours> -n k8s.io <args>`, failing the test on timeout.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.try_ctr(args)
            .unwrap_or_else(|| panic!("ctr {args:?} timed out after {CTR_TIMEOUT:?}"))
    }

    fn try_ctr(&self, args: &[&str]) -> Option<Output> {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", NAMESPACE])
            .args(args);
        output_within(command, CTR_TIMEOUT)
    }

    fn ctr_ok(&self, args: &[&str]) -> Output {
        let output = self.ctr(args);
        assert!(
            output.status.success(),
            "ctr {args:?} failed: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            tail(&self.log(), 20)
        );
        output
    }

    /// Runs a container in the foreground until its command exits, then
    /// removes it. Returns the command's output.
    pub fn run(&self, spec: &RunSpec) -> Output {
        let args = spec.ctr_args(&["--rm"]);
        self.created.lock().unwrap().push(spec.id.clone());
        self.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Starts a container in the background and returns its init pid.
    pub fn run_detached(&self, spec: &RunSpec) -> u32 {
        let pid_file = self.dir.join(format!("{}.pid", spec.id));
        let pid_arg = format!("--pid-file={}", pid_file.display());
        let args = spec.ctr_args(&["--detach", "--null-io", &pid_arg]);
        self.created.lock().unwrap().push(spec.id.clone());
        self.ctr_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let text = fs::read_to_string(&pid_file).expect("ctr wrote the pid file");
        text.trim().parse().expect("pid in pid file")
    }

    /// Runs `args` inside the running container `id` (`ctr task exec`: the
    /// process joins the container's namespaces and cgroup).
    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        let exec_id = format!("x{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut full = vec!["task", "exec", "--exec-id", &exec_id, id];
        full.extend_from_slice(args);
        self.ctr(&full)
    }

    /// Kills and deletes a container (task and record). Best effort and
    /// never panics: also used from `drop`.
    pub fn remove(&self, id: &str) {
        let _ = self.try_ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        let deadline = Instant::now() + STOP_TIMEOUT;
        // The task must have exited before it can be deleted.
        while Instant::now() < deadline {
            let Some(out) = self.try_ctr(&["task", "delete", "--force", id]) else {
                break;
            };
            if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.try_ctr(&["container", "delete", id]);
    }

    /// Packs `rootfs` as a single-layer OCI image named `name` and imports
    /// it, so containers can run from a real image reference.
    pub fn import_image(&self, rootfs: &Path, name: &str) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let archive = image::oci_archive(rootfs, name, &self.dir.join(format!("image-{n}")));
        self.ctr_ok(&["image", "import", &archive.display().to_string()]);
        let listed = self.ctr_ok(&["image", "ls", "--quiet"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.lines().any(|l| l == name),
            "image {name} not imported: {listed}"
        );
    }

    fn cleanup_containers(&mut self) {
        let ids = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        if ids.is_empty() {
            return;
        }
        // containerd must run to tear its containers down cleanly.
        if !self.is_running()
            && let Err(err) = self.try_launch()
        {
            eprintln!("restarting containerd for cleanup: {err}");
        }
        if self.is_running() {
            for id in &ids {
                self.remove(id);
            }
        }
        // Whatever survived (containerd failed to restart): kill by cgroup.
        for id in &ids {
            for cgroup in cleanup::container_cgroups(id) {
                cleanup::kill_cgroup_members(&cgroup);
                let _ = fs::remove_dir(&cgroup);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup_containers();
        self.stop();
        cleanup::kill_shims_of(&self.socket);
        cleanup::unmount_below(&self.dir);
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {err}", self.dir.display());
        }
    }
}

/// Where the image comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An unpacked directory (`ctr run --rootfs`); the record has no image.
    Rootfs(PathBuf),
    /// An imported image reference.
    Image(String),
}

/// One `ctr run`.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub id: String,
    pub source: Source,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub net_host: bool,
    /// Join this network namespace (`--with-ns network:<path>`), as a pod's
    /// containers join their sandbox's.
    pub join_netns: Option<PathBuf>,
    /// cgroup path relative to the cgroup2 mount (`ctr run --cgroup`), e.g.
    /// a kubelet-shaped path below a test cgroup.
    pub cgroup: Option<String>,
    pub args: Vec<String>,
}

/// CRI-style identity of a simulated pod.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl RunSpec {
    pub fn new(id: &str, source: Source, args: &[&str]) -> RunSpec {
        RunSpec {
            id: id.to_owned(),
            source,
            labels: Vec::new(),
            annotations: Vec::new(),
            net_host: false,
            join_netns: None,
            cgroup: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> RunSpec {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> RunSpec {
        self.annotations.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The labels the CRI plugin puts on a pod's containers.
    pub fn in_pod(self, pod: &Pod, container: &str) -> RunSpec {
        self.label("io.kubernetes.pod.name", &pod.name)
            .label("io.kubernetes.pod.namespace", &pod.namespace)
            .label("io.kubernetes.pod.uid", &pod.uid)
            .label("io.kubernetes.container.name", container)
    }

    /// A pod sandbox record: CRI's kind label plus the pod's identity.
    pub fn sandbox_of(self, pod: &Pod) -> RunSpec {
        self.label("io.cri-containerd.kind", "sandbox")
            .label("io.kubernetes.pod.name", &pod.name)
            .label("io.kubernetes.pod.namespace", &pod.namespace)
            .label("io.kubernetes.pod.uid", &pod.uid)
    }

    pub fn net_host(mut self) -> RunSpec {
        self.net_host = true;
        self
    }

    pub fn join_netns(mut self, path: PathBuf) -> RunSpec {
        self.join_netns = Some(path);
        self
    }

    pub fn cgroup(mut self, path: String) -> RunSpec {
        self.cgroup = Some(path);
        self
    }

    fn ctr_args(&self, mode: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(mode.iter().map(|m| m.to_string()));
        // Without an image config there is no PATH; busybox lives in /bin.
        args.push("--env=PATH=/bin".into());
        for (key, value) in &self.labels {
            args.push(format!("--label={key}={value}"));
        }
        for (key, value) in &self.annotations {
            args.push(format!("--annotation={key}={value}"));
        }
        if self.net_host {
            args.push("--net-host".into());
        }
        if let Some(path) = &self.join_netns {
            args.push(format!("--with-ns=network:{}", path.display()));
        }
        if let Some(path) = &self.cgroup {
            args.push(format!("--cgroup={path}"));
        }
        // Flags must precede the positional arguments.
        match &self.source {
            Source::Rootfs(dir) => {
                args.push("--rootfs".into());
                args.push(dir.display().to_string());
            }
            Source::Image(name) => args.push(name.clone()),
        }
        args.push(self.id.clone());
        args.extend(self.args.iter().cloned());
        args
    }
}

/// A minimal root filesystem: static busybox with its applets, and a passwd
/// that knows [`APP_USER`].
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox (run scripts/setup-containerd.sh)");
    fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for applet in APPLETS {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    fs::write(
        dir.join("etc/passwd"),
        format!("root:x:0:0:root:/root:/bin/sh\n{APP_USER}:x:{APP_UID}:{APP_UID}::/tmp:/bin/sh\n"),
    )
    .unwrap();
    fs::write(
        dir.join("etc/group"),
        format!("root:x:0:\n{APP_USER}:x:{APP_UID}:\n"),
    )
    .unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    dir.to_path_buf()
}

/// The cgroup v2 directory of a container run by this harness (ctr puts it
/// at `/<namespace>/<id>`).
pub fn container_cgroup_v2(id: &str) -> PathBuf {
    egret::kernel::cgroup::cgroup2_root()
        .expect("cgroup2 mount")
        .join(NAMESPACE)
        .join(id)
}

/// Runs `command` to completion, or kills it and returns `None` after
/// `limit`. Output goes through files so a chatty child cannot block on a
/// full pipe while we poll.
fn output_within(mut command: Command, limit: Duration) -> Option<Output> {
    let dir = std::env::temp_dir();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("egret-ctr-{}-{n}.out", std::process::id()));
    let err_path = dir.join(format!("egret-ctr-{}-{n}.err", std::process::id()));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).ok()?)
        .stderr(fs::File::create(&err_path).ok()?)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = fs::read(&out_path).unwrap_or_default();
    let stderr = fs::read(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
