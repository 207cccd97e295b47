//! A throwaway cgroup v2 directory for tests that attach programs directly:
//! anything attached there sees only the test's own processes.
use std::path::{Path, PathBuf};

pub struct TestCgroup(PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let root = cgroup2_root().expect("a cgroup2 mount");
        let dir = root.join(format!("egret-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test cgroup");
        TestCgroup(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // rmdir, not remove_dir_all: a cgroup directory is removed as one.
        if let Err(err) = std::fs::remove_dir(&self.0) {
            eprintln!("could not remove {}: {err}", self.0.display());
        }
    }
}

/// Where cgroup2 is mounted (hybrid hosts mount it beside v1), from
/// /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // `… mount_point … - fstype source options`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}
