//! Test plumbing for the end-to-end suite. The guards shared with the agent's
//! tests and the benchmarks live in the test kit (`tests/kit`); this module
//! re-exports them under the names the tests use, and adds what needs the
//! agent's library or is specific to these tests.
pub mod containerd;
pub mod prometheus;

use std::path::{Path, PathBuf};

pub use egret_testkit::{TempDir, agent, cgroup, free_port, http, netns, privileged, repo_root};

/// The agent binary (built by the test kit once per test process).
pub fn agent_path() -> &'static Path {
    &egret_testkit::binaries().agent
}

/// `egret-probe`, built with the agent.
pub fn probe_path() -> PathBuf {
    egret_testkit::binaries().probe.clone()
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
