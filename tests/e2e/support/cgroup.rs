//! A throwaway cgroup v2 directory for tests that attach programs directly:
//! anything attached there sees only the test's own processes.
use std::path::{Path, PathBuf};

pub struct TestCgroup(PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let dir = super::cgroup_root().join(format!("egret-test-{tag}-{}", std::process::id()));
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
