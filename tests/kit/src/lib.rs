//! Egret's one test kit, shared by the end-to-end suite (`tests/e2e`), the
//! agent's own integration tests and `cargo xtask bench`: RAII guards for
//! everything a test starts (network namespaces, cgroups, the agent process,
//! HTTP receivers, temp dirs), so a failing test leaves nothing behind, and
//! the paths of the built binaries.
pub mod agent;
pub mod cgroup;
pub mod dns;
pub mod feeds;
pub mod http;
pub mod netns;

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// True when privileged tests can run. Outside CI a non-root run skips with
/// a printed reason; in CI (env `CI` set) missing root is a failure, so the
/// suite can never go green by skipping.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: privileged tests must run as root in CI"
    );
    eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN, netns)");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (this crate lives in `tests/kit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/kit has a workspace root")
        .to_path_buf()
}

/// A port free on loopback a moment ago (the listener is closed before the
/// port is handed on; a collision shows up as a bind error in a log).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind loopback")
}

/// Sends `signal` to process `pid` (one this test started).
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// The built agent and probe binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub probe: PathBuf,
}

impl Binaries {
    /// The binaries of `profile_dir` (`target/<profile>`), which must exist.
    pub fn in_dir(profile_dir: &Path) -> Result<Binaries, String> {
        let bins = Binaries {
            agent: profile_dir.join("egret"),
            probe: profile_dir.join("egret-probe"),
        };
        for path in [&bins.agent, &bins.probe] {
            if !path.exists() {
                return Err(format!("{} missing", path.display()));
            }
        }
        Ok(bins)
    }
}

/// The agent and probe of this test binary's profile, built once per test
/// process with `cargo build` (cheap when they are fresh). A test binary
/// lives in `target/<profile>/deps/`, so the profile and target dir are
/// the test's own.
///
/// With `EGRET_TEST_BIN_DIR` set, the binaries already built there are used
/// and nothing is built: `cargo xtask vm-test` builds on the host and runs
/// the tests in a guest whose filesystem is read-only.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        if let Some(dir) = std::env::var_os("EGRET_TEST_BIN_DIR") {
            return Binaries::in_dir(Path::new(&dir)).unwrap_or_else(|err| panic!("{err}"));
        }
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile> directory")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target directory");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .current_dir(repo_root())
            // `--bins`, not `--bin egret`: that would select only the bin
            // named egret in both packages and never build the probe.
            .args(["build", "-p", "egret", "-p", "egret-probe", "--bins"])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        // Cargo describes this test package to the test process (CARGO_PKG_*,
        // CARGO_MANIFEST_DIR, …); build scripts that watch such variables
        // would rebuild on every alternation between `cargo test` and this
        // build, so the nested build gets the user's environment only.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            let user_setting = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name)
                || [
                    "CARGO_BUILD_",
                    "CARGO_NET_",
                    "CARGO_REGISTRIES_",
                    "CARGO_TERM_",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            if name.starts_with("CARGO_") && !user_setting {
                build.env_remove(name);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the agent and probe failed");
        Binaries::in_dir(&profile_dir).unwrap_or_else(|err| panic!("{err}"))
    })
}

/// A per-test directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("egret-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
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
