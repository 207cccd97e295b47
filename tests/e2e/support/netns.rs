//! A network namespace holding TEST-NET addresses, so "external" connection
//! attempts stay on this machine: the destinations are local to the
//! namespace (or routed into a veth that leads nowhere else).
use std::{
    path::Path,
    process::{Command, ExitStatus},
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
    pub fn new(tag: &str) -> NetNs {
        let name = format!(
            "egret-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
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
            ip(&full);
        }
        ns
    }

    /// Runs `program args…` inside the namespace and returns its pid (the
    /// pid the kernel reports: `ip netns exec` execs in place) and status.
    pub fn run(&self, program: &Path, args: &[&str]) -> (u32, ExitStatus) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .spawn()
            .expect("spawn ip netns exec");
        let pid = child.id();
        let status = child.wait().expect("wait for probe");
        (pid, status)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}
