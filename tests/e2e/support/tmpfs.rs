//! A small tmpfs the test mounts, for faults a real file system produces
//! (`ENOSPC` when it is full); unmounted on drop, even after a failure.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `1m`) at `dir`, created if needed.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("tmpfs mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("egret-test")
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Fills the file system up to `leave` free bytes with `name`.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        // SAFETY: statvfs writes into the zeroed struct we own.
        let free = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes())
                .expect("path without NUL");
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0, "statvfs");
            st.f_bavail * st.f_frsize
        };
        let filler = self.0.join(name);
        let bytes = free.saturating_sub(leave);
        std::fs::write(&filler, vec![b'x'; usize::try_from(bytes).expect("size")])
            .expect("write filler");
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not keep the
        // mount (and the test's temp dir) alive.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
