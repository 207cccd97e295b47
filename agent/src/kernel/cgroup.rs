//! Finding (or, on a bare host, mounting) the cgroup v2 hierarchy the
//! programs attach to. Hybrid hosts mount it somewhere other than
//! /sys/fs/cgroup, so the mount table is the only reliable source.
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    MountInfo {
        path: &'static str,
        source: io::Error,
    },
    #[error(
        "no cgroup2 filesystem is mounted and mounting one at {path} failed: {source} \
         (the kernel needs CONFIG_CGROUPS and cgroup v2 support; pass --cgroup to choose a mount)"
    )]
    Mount { path: PathBuf, source: io::Error },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
}

const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where we mount cgroup2 when the host has none mounted.
const FALLBACK_MOUNT: &str = "/run/egret/cgroup2";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup v2 root to attach to: the first cgroup2 mount, mounting one if
/// the host has none.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let table = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::MountInfo {
        path: MOUNTINFO,
        source,
    })?;
    if let Some(path) = find_cgroup2_mount(&table) {
        return Ok(path);
    }
    mount_cgroup2(Path::new(FALLBACK_MOUNT))?;
    Ok(PathBuf::from(FALLBACK_MOUNT))
}

/// Checks that a user-supplied path really is cgroup v2, so a typo does not
/// turn into a confusing attach error.
pub fn ensure_cgroup2(path: &Path) -> Result<(), CgroupError> {
    let not_cgroup = || CgroupError::NotCgroup2 {
        path: path.to_path_buf(),
    };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| not_cgroup())?;
    // SAFETY: statfs is plain C data; all-zero is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and an out-pointer to a zeroed statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 || stat.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(not_cgroup());
    }
    Ok(())
}

/// Mount point of the first cgroup2 entry in a mountinfo table.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(unescape_mount_path))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> PathBuf {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

fn mount_cgroup2(target: &Path) -> Result<(), CgroupError> {
    let fail = |source| CgroupError::Mount {
        path: target.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(target).map_err(fail)?;
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| fail(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            c_target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let table = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
31 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2_mount(table),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn skips_optional_fields_and_unescapes() {
        let table = "40 1 0:30 / /mnt/my\\040cg rw shared:7 master:1 - cgroup2 none rw\n";
        assert_eq!(find_cgroup2_mount(table), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn none_when_only_v1() {
        let table = "26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2_mount(table), None);
    }

    #[test]
    fn rejects_non_cgroup_directory() {
        assert!(ensure_cgroup2(Path::new("/")).is_err());
    }
}
