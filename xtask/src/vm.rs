//! `cargo xtask vm-test`: the kernel-hook end-to-end tests inside a guest
//! running Debian's 6.1 kernel (the LTS under Debian 12 and Amazon Linux
//! 2023), so an older kernel than the development one is tested on every run.
//!
//! Everything is built on the host; the guest (virtme-ng: the host's own
//! filesystem read-only over 9p, software emulation because nested KVM is
//! unavailable here) only runs the already-built test binary. Its output goes
//! to a file in a shared writable directory, never through the serial
//! console, and both sides have a hard timeout. Installed by
//! `scripts/setup-vm.sh` (part of `scripts/setup.sh --tests`).
use std::{
    fmt::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::test::{cargo, root};

/// The tests run in the guest: every test of `tests/e2e/kernel_hooks.rs`
/// (connect and sendmsg over IPv4/IPv6, io_uring, process attribution,
/// ignore-list filtering, detach on exit, health and start-up errors).
const FILTER: &str = "kernel_hooks::";
/// Boot plus the run. Measured: 445 s under TCG on a 2-core host at load
/// 13-16; the bound stops a wedged guest from eating CI's time.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// Left to the guest for booting and shutting down around the test run.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);
/// The test kit's waits (agent ready in 30 s, an event in 10 s, exit in
/// 10 s) times this in the guest: under TCG on a busy 2-core host a release
/// agent start took up to ~10 s and a start-up error exit over 10 s.
const TIMEOUT_SCALE: u32 = 4;
/// Kernel images tried when `--kernel` is not given: Debian's 6.1 series.
const KERNEL_GLOB_PREFIX: &str = "vmlinuz-6.1.";

struct Options {
    kernel: Option<PathBuf>,
    timeout: Duration,
    filter: String,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        kernel: std::env::var_os("EGRET_VM_KERNEL").map(PathBuf::from),
        timeout: DEFAULT_TIMEOUT,
        filter: FILTER.into(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--kernel" => options.kernel = Some(value()?.into()),
            "--timeout" => {
                let secs: u64 = value()?.parse().context("--timeout takes whole seconds")?;
                options.timeout = Duration::from_secs(secs);
            }
            "--filter" => options.filter = value()?,
            other => bail!(
                "vm-test: unknown argument {other} (use --kernel PATH, --timeout SECS, --filter NAME)"
            ),
        }
    }
    if options.timeout <= BOOT_ALLOWANCE {
        bail!(
            "--timeout must exceed the {} s boot allowance",
            BOOT_ALLOWANCE.as_secs()
        );
    }
    Ok(options)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    let kernel = match options.kernel {
        Some(path) => path,
        None => newest_kernel(Path::new("/boot"))?,
    };
    if !kernel.is_file() {
        bail!("{} is not a kernel image", kernel.display());
    }
    for tool in ["vng", "qemu-system-x86_64"] {
        if !on_path(tool) {
            bail!(
                "{tool} not found on PATH: run `bash scripts/setup.sh --tests` (scripts/setup-vm.sh)"
            );
        }
    }

    let started = Instant::now();
    let binaries = build()?;
    let built = started.elapsed();

    let dir = SharedDir::create()?;
    let script = dir.0.join("guest.sh");
    let log = dir.0.join("guest.log");
    let status_file = dir.0.join("status");
    let guest_timeout = options.timeout - BOOT_ALLOWANCE;
    std::fs::write(
        &script,
        guest_script(
            &binaries,
            &options.filter,
            guest_timeout,
            &log,
            &status_file,
        ),
    )
    .context("writing the guest script")?;

    eprintln!(
        "==> vm-test: {} under TCG, tests `{}` (timeout {} s)",
        kernel.display(),
        options.filter,
        options.timeout.as_secs()
    );
    let boot = Instant::now();
    let console = dir.0.join("console.log");
    let outcome = run_guest(&kernel, &dir.0, &script, &console, options.timeout)?;
    let in_guest = boot.elapsed();

    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let status = std::fs::read_to_string(&status_file).ok();
    eprintln!("---- guest output ({}) ----", log.display());
    eprint!("{output}");
    eprintln!("---- end of guest output ----");
    eprintln!(
        "vm-test: host build {:.0} s, guest boot + tests {:.0} s",
        built.as_secs_f64(),
        in_guest.as_secs_f64()
    );
    match outcome {
        Guest::TimedOut => {
            let console = std::fs::read_to_string(&console).unwrap_or_default();
            bail!(
                "the guest did not finish within {} s (killed); console:\n{}",
                options.timeout.as_secs(),
                tail(&console, 40)
            );
        }
        Guest::Exited(code) if status.is_none() => {
            let console = std::fs::read_to_string(&console).unwrap_or_default();
            bail!(
                "the guest exited (vng {code:?}) without running the tests; console:\n{}",
                tail(&console, 40)
            );
        }
        Guest::Exited(_) => {}
    }
    let status = status.unwrap_or_default();
    let code = status.trim();
    if code != "0" {
        bail!("tests failed in the guest (exit {code}; 124 means the guest-side timeout)");
    }
    if !output.contains("test result: ok.") || output.contains(" 0 passed;") {
        bail!("the guest reported success but no test ran");
    }
    Ok(())
}

/// Paths of the host-built binaries the guest runs.
struct Binaries {
    e2e: PathBuf,
    /// Holds `egret` and `egret-probe`; the test kit uses them as they are.
    bin_dir: PathBuf,
}

/// Builds the agent, the probe and the e2e test binary on the host. The
/// release profile: under emulation the debug agent's BTF handling alone
/// takes most of the tests' 30 s readiness budget. The test binary is found
/// from cargo's JSON messages, not from a guessed path, so it does not matter
/// which package declares it.
fn build() -> anyhow::Result<Binaries> {
    crate::test::build_release_binaries("vm-test: build agent and probe (release)")?;
    eprintln!("==> vm-test: build e2e tests (release)");
    let output = cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "egret-ebpf",
            "--test",
            "e2e",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the e2e tests failed ({})", output.status);
    }
    let e2e = e2e_executable(&String::from_utf8_lossy(&output.stdout))?;
    // target/release/deps/e2e-… → target/release, where the agent and the
    // probe are.
    let bin_dir = e2e
        .parent()
        .and_then(Path::parent)
        .context("e2e binary outside target/<profile>/deps")?
        .to_path_buf();
    for name in ["egret", "egret-probe"] {
        if !bin_dir.join(name).is_file() {
            bail!("{name} not found in {}", bin_dir.display());
        }
    }
    Ok(Binaries { e2e, bin_dir })
}

/// The executable of the test target named `e2e` among cargo's
/// `compiler-artifact` messages.
fn e2e_executable(messages: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &message["target"];
        let is_e2e = message["reason"] == "compiler-artifact"
            && target["name"] == "e2e"
            && target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(path)) = (is_e2e, message["executable"].as_str()) {
            found.push(PathBuf::from(path));
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("cargo built no test target named e2e"),
        many => bail!("several e2e test binaries: {many:?}"),
    }
}

/// The script the guest runs. Its output goes straight to a file on the
/// shared directory (mounted `sync`, so a killed guest still leaves what it
/// wrote); stdin is /dev/null so nothing can wait on the console.
fn guest_script(
    binaries: &Binaries,
    filter: &str,
    timeout: Duration,
    log: &Path,
    status: &Path,
) -> String {
    let mut s = String::new();
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let _ = writeln!(s, "exec </dev/null >{} 2>&1", q(log));
    s.push_str("echo \"guest: Linux $(uname -r), booted in $(cut -d' ' -f1 /proc/uptime) s\"\n");
    // Privileged tests must not skip, exactly as on the host in CI.
    s.push_str("export CI=true\n");
    // Nothing is built in the guest (its root is read-only, and cargo under
    // emulation takes many minutes): the kit takes the host's binaries.
    let _ = writeln!(s, "export EGRET_TEST_BIN_DIR={}", q(&binaries.bin_dir));
    let _ = writeln!(s, "export EGRET_TEST_TIMEOUT_SCALE={TIMEOUT_SCALE}");
    let _ = writeln!(s, "cd {}", q(&root()));
    let _ = writeln!(
        s,
        "timeout --kill-after=10 {} {} {} --test-threads=1",
        timeout.as_secs(),
        q(&binaries.e2e),
        shell_quote(filter)
    );
    let _ = writeln!(s, "echo $? >{}", q(status));
    s
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

enum Guest {
    Exited(Option<i32>),
    TimedOut,
}

/// Boots the guest and waits for it, killing the whole process group
/// (vng and its qemu) at the deadline, so no VM outlives the call.
fn run_guest(
    kernel: &Path,
    shared: &Path,
    script: &Path,
    console: &Path,
    timeout: Duration,
) -> anyhow::Result<Guest> {
    let console_file = std::fs::File::create(console).context("creating the console log")?;
    let mut child = Command::new("vng")
        .arg("--run")
        .arg(kernel)
        .args(["--memory", "2G", "--cpus", "2", "--disable-kvm", "--rwdir"])
        .arg(shared)
        .arg("--")
        .arg(format!(
            "bash {}",
            shell_quote(&script.display().to_string())
        ))
        .current_dir(shared)
        .stdin(Stdio::null())
        .stdout(console_file.try_clone()?)
        .stderr(console_file)
        .process_group(0)
        .spawn()
        .context("starting vng")?;
    let guard = KillGroup(&mut child);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = guard.0.try_wait().context("waiting for vng")? {
            std::mem::forget(guard);
            return Ok(Guest::Exited(status.code()));
        }
        if Instant::now() >= deadline {
            drop(guard);
            return Ok(Guest::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Kills a child's process group and reaps the child on drop.
struct KillGroup<'a>(&'a mut Child);

impl Drop for KillGroup<'_> {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // SAFETY: signals the process group this guard's child leads.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The newest `vmlinuz-6.1.*` in `boot`, by version order.
fn newest_kernel(boot: &Path) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(boot).with_context(|| format!("reading {}", boot.display()))?;
    let mut kernels: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix(KERNEL_GLOB_PREFIX)?;
            Some((version_key(version), entry.path()))
        })
        .collect();
    kernels.sort();
    match kernels.pop() {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no {}* in {}: run `bash scripts/setup.sh --tests` (scripts/setup-vm.sh) or pass --kernel",
            KERNEL_GLOB_PREFIX,
            boot.display()
        ),
    }
}

/// "0-57-amd64" → [0, 57]: the numeric parts, for ordering.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The directory shared read-write with the guest, removed afterwards.
struct SharedDir(PathBuf);

impl SharedDir {
    fn create() -> anyhow::Result<SharedDir> {
        let dir = std::env::temp_dir().join(format!("egret-vm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(SharedDir(dir))
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_e2e_binary_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"egret","kind":["bin"]},"executable":"/t/release/egret"}"#,
            "\n",
            "not json\n",
            r#"{"reason":"compiler-artifact","target":{"name":"e2e","kind":["test"]},"executable":"/t/release/deps/e2e-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            e2e_executable(messages).unwrap(),
            PathBuf::from("/t/release/deps/e2e-1")
        );
        assert!(e2e_executable("").is_err());
    }

    #[test]
    fn picks_the_newest_6_1_kernel() {
        let dir = std::env::temp_dir().join(format!("egret-vm-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-57-amd64",
            "vmlinuz-6.12.0-1-amd64",
            "config-6.1.0-60-amd64",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let newest = newest_kernel(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            newest.unwrap().file_name().unwrap(),
            "vmlinuz-6.1.0-57-amd64"
        );
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
