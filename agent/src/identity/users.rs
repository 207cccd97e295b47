//! uid → user name, as the process itself would see it.
//!
//! A container's uid 1000 is whoever its own `/etc/passwd` says, so names
//! come from `/proc/<pid>/root/etc/passwd`, keyed by the process's mount
//! namespace (processes sharing one share a root). When the process's view
//! has no passwd file at all, the host's is used.
//!
//! The container controls its `/etc/passwd`: it may be a symlink to a host
//! file, a FIFO, or huge. The file is opened with `openat2(RESOLVE_IN_ROOT)`
//! so symlinks resolve inside the container's root, non-blocking and only if
//! regular, and read up to a cap.
use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Larger passwd files are truncated (real ones are a few KiB).
const MAX_PASSWD_BYTES: u64 = 1 << 20;
/// POSIX login names are short; anything longer is not a name we report.
const MAX_NAME_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UserNamesError {
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug)]
pub struct UserNamesConfig {
    pub capacity: usize,
    /// Mount namespace inode numbers are reused after a namespace dies, so
    /// entries expire rather than live forever.
    pub ttl: Duration,
    /// The host's passwd, used when the process's root has none. In a pod
    /// with hostPID, `/proc/1/root/etc/passwd` is the node's.
    pub host_passwd: PathBuf,
    /// Where `<pid>/ns/mnt` and `<pid>/root` are found (tests point it
    /// elsewhere).
    pub proc_root: PathBuf,
}

impl Default for UserNamesConfig {
    fn default() -> Self {
        UserNamesConfig {
            capacity: 4096,
            ttl: Duration::from_secs(300),
            host_passwd: PathBuf::from("/etc/passwd"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

#[derive(Debug, Default)]
pub struct UserStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// The process was gone (or /proc unreadable) before we could look.
    pub process_gone: AtomicU64,
    /// The process's root had no readable passwd; the host's was used.
    pub host_fallbacks: AtomicU64,
    pub read_errors: AtomicU64,
}

struct Entry {
    name: Option<Arc<str>>,
    loaded: Instant,
}

pub struct UserNames {
    config: UserNamesConfig,
    /// (mount namespace inode, uid) → name; `None` caches "no such user".
    cache: RwLock<HashMap<(u64, u32), Entry>>,
    stats: UserStats,
}

impl UserNames {
    pub fn new(config: UserNamesConfig) -> UserNames {
        UserNames {
            config,
            cache: RwLock::new(HashMap::new()),
            stats: UserStats::default(),
        }
    }

    pub fn stats(&self) -> &UserStats {
        &self.stats
    }

    /// The mount namespace of `pid`, the cache key for its view of users.
    /// Costs one stat; callers that track processes can keep it.
    pub fn mount_ns(&self, pid: u32) -> io::Result<u64> {
        let path = self.config.proc_root.join(format!("{pid}/ns/mnt"));
        Ok(std::fs::metadata(path)?.ino())
    }

    /// The name of `uid` for process `pid`, or `None` when it has none or
    /// the process is already gone.
    pub fn lookup(&self, pid: u32, uid: u32) -> Option<Arc<str>> {
        match self.mount_ns(pid) {
            Ok(mnt_ns) => self.lookup_in(mnt_ns, pid, uid),
            Err(_) => {
                self.stats.process_gone.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The name of `uid` in the host's passwd (`host_passwd`), for processes
    /// whose own view is gone. Cached under a key no mount namespace has.
    pub fn host(&self, uid: u32) -> Option<Arc<str>> {
        const HOST_KEY: u64 = 0;
        let key = (HOST_KEY, uid);
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = cache.get(&key)
                && entry.loaded.elapsed() < self.config.ttl
            {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return entry.name.clone();
            }
        }
        self.stats.host_fallbacks.fetch_add(1, Ordering::Relaxed);
        let name = match read_regular(&self.config.host_passwd) {
            Ok(text) => name_for_uid(&text, uid).map(Arc::from),
            Err(err) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%err, "host passwd unreadable");
                None
            }
        };
        self.insert(key, name.clone());
        name
    }

    /// Like [`lookup`](Self::lookup) with the mount namespace already known;
    /// `pid` is only read on a cache miss.
    pub fn lookup_in(&self, mnt_ns: u64, pid: u32, uid: u32) -> Option<Arc<str>> {
        let key = (mnt_ns, uid);
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = cache.get(&key)
                && entry.loaded.elapsed() < self.config.ttl
            {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return entry.name.clone();
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let name = self.load(pid, uid).map(Arc::from);
        self.insert(key, name.clone());
        name
    }

    fn load(&self, pid: u32, uid: u32) -> Option<String> {
        let root = self.config.proc_root.join(format!("{pid}/root"));
        let text = match read_in_root(&root, "etc/passwd") {
            Ok(text) => text,
            Err(err) => {
                tracing::debug!(pid, %err, "no passwd in the process's root; using the host's");
                self.stats.host_fallbacks.fetch_add(1, Ordering::Relaxed);
                match read_regular(&self.config.host_passwd) {
                    Ok(text) => text,
                    Err(err) => {
                        self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%err, "host passwd unreadable");
                        return None;
                    }
                }
            }
        };
        name_for_uid(&text, uid).map(str::to_owned)
    }

    fn insert(&self, key: (u64, u32), name: Option<Arc<str>>) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.config.capacity && !cache.contains_key(&key) {
            let ttl = self.config.ttl;
            cache.retain(|_, e| e.loaded.elapsed() < ttl);
            if cache.len() >= self.config.capacity {
                // Still full of live entries: drop any one. Misses are cheap
                // enough that a smarter policy is not worth its bookkeeping.
                if let Some(victim) = cache.keys().next().copied() {
                    cache.remove(&victim);
                }
            }
        }
        cache.insert(
            key,
            Entry {
                name,
                loaded: Instant::now(),
            },
        );
    }
}

/// The first name for `uid` in passwd-format text. Malformed lines are
/// skipped; names with control characters are not reported.
pub fn name_for_uid(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let line_uid: u32 = fields.next()?.parse().ok()?;
        let plausible = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with('#')
            && !name.chars().any(char::is_control);
        (line_uid == uid && plausible).then_some(name)
    })
}

/// Reads `relative` with `root` as the root directory for path resolution,
/// so absolute symlinks and `..` cannot leave it.
fn read_in_root(root: &Path, relative: &str) -> Result<String, UserNamesError> {
    let open_err = |source| UserNamesError::Open {
        path: root.join(relative),
        source,
    };
    let root_dir = File::open(root).map_err(open_err)?;
    let c_rel = CString::new(relative).map_err(|_| open_err(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid dirfd, NUL-terminated path and an open_how of the size
    // passed; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_dir.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(open_err(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just handed us this fd and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    read_file(file, &root.join(relative))
}

fn read_regular(path: &Path) -> Result<String, UserNamesError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| UserNamesError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    read_file(file, path)
}

fn read_file(file: File, path: &Path) -> Result<String, UserNamesError> {
    let read_err = |source| UserNamesError::Read {
        path: path.to_path_buf(),
        source,
    };
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(UserNamesError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_PASSWD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment:x:5:5\n\
        broken line\n\
        daemon:x:1:1::/:/usr/sbin/nologin\n\
        bad\u{7}name:x:7:7::/:\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        dup:x:1000:1000::/:\n";

    #[test]
    fn parses_passwd() {
        assert_eq!(name_for_uid(PASSWD, 0), Some("root"));
        assert_eq!(name_for_uid(PASSWD, 1), Some("daemon"));
        assert_eq!(name_for_uid(PASSWD, 1000), Some("app"));
        assert_eq!(name_for_uid(PASSWD, 5), None);
        assert_eq!(name_for_uid(PASSWD, 7), None);
        assert_eq!(name_for_uid(PASSWD, 4242), None);
        assert_eq!(name_for_uid("", 0), None);
        assert_eq!(name_for_uid(":x:0:0::/:", 0), None);
        assert_eq!(name_for_uid("root:x:-1:0", u32::MAX), None);
    }

    /// A fake /proc: `<pid>/root` is a directory tree we control, and
    /// `<pid>/ns/mnt` a file whose inode stands in for the namespace.
    struct FakeProc {
        dir: PathBuf,
    }

    impl FakeProc {
        fn new(tag: &str) -> FakeProc {
            let dir =
                std::env::temp_dir().join(format!("egret-users-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeProc { dir }
        }

        fn process(&self, pid: u32, passwd: Option<&str>) -> PathBuf {
            let base = self.dir.join(pid.to_string());
            std::fs::create_dir_all(base.join("root/etc")).unwrap();
            std::fs::create_dir_all(base.join("ns")).unwrap();
            std::fs::write(base.join("ns/mnt"), "").unwrap();
            if let Some(text) = passwd {
                std::fs::write(base.join("root/etc/passwd"), text).unwrap();
            }
            base.join("root")
        }

        fn names(&self, host: &str) -> UserNames {
            let host_passwd = self.dir.join("host-passwd");
            std::fs::write(&host_passwd, host).unwrap();
            UserNames::new(UserNamesConfig {
                proc_root: self.dir.clone(),
                host_passwd,
                capacity: 2,
                ..UserNamesConfig::default()
            })
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn container_view_then_host_fallback_and_cache() {
        let fake = FakeProc::new("view");
        fake.process(10, Some("web:x:1000:1000::/:\n"));
        fake.process(11, None);
        let names = fake.names("hostuser:x:1000:1000::/:\n");
        assert_eq!(names.lookup(10, 1000).as_deref(), Some("web"));
        assert_eq!(names.lookup(11, 1000).as_deref(), Some("hostuser"));
        assert_eq!(names.stats().host_fallbacks.load(Ordering::Relaxed), 1);
        // Cached: changing the file does not matter until the entry expires.
        std::fs::write(fake.dir.join("10/root/etc/passwd"), "other:x:1000:0::/:\n").unwrap();
        assert_eq!(names.lookup(10, 1000).as_deref(), Some("web"));
        assert_eq!(names.stats().hits.load(Ordering::Relaxed), 1);
        // Unknown uid in the container's own file is not borrowed from the host.
        assert_eq!(names.lookup(10, 5), None);
        // A vanished process has no view.
        assert_eq!(names.lookup(99, 0), None);
        assert_eq!(names.stats().process_gone.load(Ordering::Relaxed), 1);
        // Capacity 2 is respected.
        assert!(names.cache.read().unwrap().len() <= 2);
    }

    #[test]
    fn hostile_passwd_stays_inside_the_root() {
        let fake = FakeProc::new("hostile");
        // An absolute symlink must resolve inside the container's root, where
        // the target does not exist, so the host fallback answers.
        let secret = fake.dir.join("secret");
        std::fs::write(&secret, "leaked:x:0:0::/:\n").unwrap();
        let root = fake.process(20, None);
        std::os::unix::fs::symlink(&secret, root.join("etc/passwd")).unwrap();
        // A FIFO must not hang us.
        let root = fake.process(21, None);
        let fifo = CString::new(
            root.join("etc/passwd")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // `..` cannot climb out either.
        let root = fake.process(22, None);
        std::os::unix::fs::symlink("../../../secret", root.join("etc/passwd")).unwrap();
        let names = fake.names("root:x:0:0::/:\n");
        for pid in [20, 21, 22] {
            assert_eq!(names.lookup(pid, 0).as_deref(), Some("root"), "pid {pid}");
        }
        assert_eq!(names.stats().host_fallbacks.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn reads_own_process_view() {
        let names = UserNames::new(UserNamesConfig::default());
        // uid 0 is root in this machine's passwd, read through /proc/self.
        assert_eq!(names.lookup(std::process::id(), 0).as_deref(), Some("root"));
    }
}
