//! Last-resort cleanup for containers containerd could not tear down
//! itself (it failed to restart, or the test died mid-way).
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::NAMESPACE;

/// The container's cgroup in every mounted hierarchy (v1 ones too on a
/// hybrid host).
pub fn container_cgroups(id: &str) -> Vec<PathBuf> {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    table
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            matches!(fstype, "cgroup" | "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .map(|mount| mount.join(NAMESPACE).join(id))
        .filter(|path| path.is_dir())
        .collect()
}

pub fn kill_cgroup_members(cgroup: &Path) {
    for pid in fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        // SAFETY: plain kill(2) of a pid inside our own test container.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Shims outlive containerd by design; ours name our socket on their
/// command line.
pub fn kill_shims_of(socket: &Path) {
    let needle = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let is_ours = cmdline
            .windows(b"containerd-shim".len())
            .any(|w| w == b"containerd-shim")
            && cmdline.windows(needle.len()).any(|w| w == needle);
        if is_ours {
            // SAFETY: plain kill(2) of a shim this harness's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Detaches any mount left below `dir` (rootfs bind mounts, overlay
/// snapshots), deepest first.
pub fn unmount_below(dir: &Path) {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let Ok(c_point) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) };
    }
}
