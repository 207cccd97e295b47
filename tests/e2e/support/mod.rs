//! Shared test plumbing: RAII guards for the agent process and network
//! namespaces, and a runner for the probe program.
pub mod agent;
pub mod cgroup;
pub mod containerd;
pub mod netns;
pub mod prometheus;

use std::path::PathBuf;

/// True when privileged tests can run. Outside CI a non-root run skips with
/// a printed reason; in CI (env `CI` set) missing root is a failure, so the
/// suite can never go green by skipping.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: privileged tests must run as root in CI"
    );
    eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN, netns)");
    false
}

/// `egret-probe`, built by cargo as an example next to this test binary.
pub fn probe_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/examples/egret-probe
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    let probe = profile_dir.join("examples").join("egret-probe");
    assert!(
        probe.exists(),
        "{} missing: run the suite with `cargo test` (which builds examples)",
        probe.display()
    );
    probe
}

/// The cgroup v2 root the agent attaches to by default.
pub fn cgroup_root() -> PathBuf {
    egret::kernel::cgroup::cgroup2_root().expect("cgroup2 mount")
}

/// Ids of the programs attached to `cgroup`, as the kernel reports them.
pub fn attached_program_ids(cgroup: &std::path::Path) -> Vec<u32> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (installed by scripts/setup.sh)");
    assert!(
        output.status.success(),
        "bpftool cgroup show failed: {output:?}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_str(&text).expect("bpftool JSON");
    json.as_array()
        .map(|progs| {
            progs
                .iter()
                .filter_map(|p| p["id"].as_u64().map(|id| id as u32))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a program with this id is still loaded anywhere in the kernel.
pub fn program_loaded(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// A per-test directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("egret-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
