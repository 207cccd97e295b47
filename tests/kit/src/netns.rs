//! A network namespace holding TEST-NET addresses on a veth pair whose both
//! ends are inside it, so "external" connection attempts stay on this
//! machine: they are answered (or refused) inside the namespace.
use std::{
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
}

/// Addresses configured in every test namespace.
pub const V4_SERVER: &str = "198.51.100.1";
pub const V4_OTHER_NET: &str = "203.0.113.1";
pub const V6_SERVER: &str = "2001:db8::1";

impl NetNs {
    /// Creates the namespace, panicking on failure (for tests).
    pub fn new(tag: &str) -> NetNs {
        NetNs::create(tag).unwrap_or_else(|err| panic!("network namespace {tag}: {err}"))
    }

    pub fn create(tag: &str) -> std::io::Result<NetNs> {
        let name = format!(
            "egret-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A leftover of a killed run with the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name])?;
        // Guard exists from here on, so a failing step below still cleans up.
        let ns = NetNs { name };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
            &["addr", "add", "198.51.100.1/24", "dev", "v0"],
            &["addr", "add", "203.0.113.1/24", "dev", "v0"],
            &["addr", "add", "2001:db8::1/64", "dev", "v0", "nodad"],
        ] {
            let mut full = vec!["-n", ns.name.as_str()];
            full.extend_from_slice(args);
            ip(&full)?;
        }
        Ok(ns)
    }

    /// Runs `program args…` inside the namespace and returns its pid (the
    /// pid the kernel reports: `ip netns exec` execs in place) and status.
    pub fn run(&self, program: &Path, args: &[&str]) -> (u32, ExitStatus) {
        let mut child = self
            .command(program)
            .args(args)
            .spawn()
            .expect("spawn ip netns exec");
        let pid = child.id();
        let status = child.wait().expect("wait for probe");
        (pid, status)
    }

    /// Like [`NetNs::run`], with the process placed in `cgroup` before it
    /// execs, so an agent attached to that cgroup sees it (and nothing that
    /// other tests run at the same time).
    pub fn run_in_cgroup(
        &self,
        cgroup: &std::path::Path,
        program: &Path,
        args: &[&str],
    ) -> (u32, ExitStatus) {
        let mut child = command_in_cgroup(&self.name, cgroup, program, args)
            .spawn()
            .expect("spawn sh for ip netns exec");
        let pid = child.id();
        let status = child.wait().expect("wait for probe");
        (pid, status)
    }

    /// Like [`NetNs::run_in_cgroup`], capturing stdout and stderr.
    pub fn output_in_cgroup(
        &self,
        cgroup: &std::path::Path,
        program: &Path,
        args: &[&str],
    ) -> (u32, std::process::Output) {
        let child = command_in_cgroup(&self.name, cgroup, program, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh for ip netns exec");
        let pid = child.id();
        let output = child.wait_with_output().expect("wait for program");
        (pid, output)
    }

    /// Starts `program args…` in the namespace and waits until it prints a
    /// line `listening` (servers of egret-probe do); killed on drop.
    pub fn server(&self, program: &Path, args: &[&str]) -> Server {
        use std::io::BufRead;
        let mut child = self
            .command(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "listening", "server {args:?} did not start");
        Server(child)
    }

    /// `program` run inside the namespace (`ip netns exec` execs in place,
    /// so the process keeps the program's own name and pid).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        command
    }

    /// A namespace-local sysctl, e.g. `net.ipv4.tcp_tw_reuse=1`.
    pub fn sysctl(&self, setting: &str) -> std::io::Result<()> {
        let status = self
            .command("sysctl")
            .args(["-q", "-w", setting])
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "sysctl -w {setting} failed in {}",
                self.name
            )));
        }
        Ok(())
    }
}

/// A server process in a namespace ([`NetNs::server`]); killed on drop.
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let status = Command::new("ip").args(args).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "ip {} failed",
            args.join(" ")
        )));
    }
    Ok(())
}

/// [`command_in_cgroup`] for a program that joins other cgroups itself
/// later: the `cgroup.procs` of `joins[i]` is open on descriptor `3 + i`
/// (`/dev/fd/3`… in the program's arguments), since `ip netns exec`
/// remounts /sys and hides the cgroup mount. At most three.
pub fn command_in_cgroup_joining(
    netns: &str,
    cgroup: &Path,
    joins: &[&Path],
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
) -> Command {
    assert!(joins.len() <= 3, "at most three cgroups to join");
    let mut script = String::from("exec");
    for i in 0..joins.len() {
        script.push_str(&format!(" {}>\"${}/cgroup.procs\"", 3 + i, 2 + i));
    }
    script.push_str(&format!(
        " && echo $$ > \"$1/cgroup.procs\" && shift {} && exec ip netns exec \"$@\"",
        1 + joins.len()
    ));
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg("sh").arg(cgroup);
    for join in joins {
        command.arg(join);
    }
    command.arg(netns).arg(program).args(args);
    command
}

/// `program args…` as a process of `cgroup`, inside the namespace named
/// `netns`. The shell writes its own pid and execs in place, so the pid the
/// kernel reports for the program is the child's pid. Takes the name, not a
/// [`NetNs`], so threads that outlive a borrow can build it.
pub fn command_in_cgroup(
    netns: &str,
    cgroup: &Path,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@""#)
        .arg("sh")
        .arg(cgroup)
        .arg(netns)
        .arg(program)
        .args(args);
    command
}
