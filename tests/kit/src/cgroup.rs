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

    /// A cgroup below this one, removed (before its parent) on drop.
    pub fn child(&self, name: &str) -> TestCgroup {
        let dir = self.0.join(name);
        std::fs::create_dir(&dir).expect("create child test cgroup");
        TestCgroup(dir)
    }

    /// Removes the cgroup now, waiting out the moment after its last task
    /// is reaped during which the kernel still counts it populated.
    pub fn remove(self) -> std::io::Result<()> {
        let mut attempts = 0;
        loop {
            match std::fs::remove_dir(&self.0) {
                Ok(()) => {
                    std::mem::forget(self);
                    return Ok(());
                }
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(err) => return Err(err),
            }
        }
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
