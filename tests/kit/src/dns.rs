//! A real DNS server for tests: dnsmasq (Debian's `dnsmasq-base`) inside a
//! test [`NetNs`], on the namespace's TEST-NET address, authoritative for
//! the names it is given (and NXDOMAIN for everything else under
//! `.example`), never forwarding anywhere. It also points the namespace's
//! resolver at itself: `ip netns exec` bind-mounts
//! `/etc/netns/<name>/resolv.conf` over `/etc/resolv.conf`, so getaddrinfo
//! in any process of the namespace asks this server.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::netns::{NetNs, V4_SERVER, V6_SERVER};

pub struct DnsServer {
    child: Child,
    resolv_dir: PathBuf,
    pub addr: SocketAddr,
}

impl DnsServer {
    /// Serves `records` (name → IPv4 or IPv6 address; a name also answers
    /// for its subdomains, as dnsmasq's `--address` does) on
    /// 198.51.100.1:53 and [2001:db8::1]:53 (UDP and TCP) inside `ns`.
    pub fn start(ns: &NetNs, records: &[(&str, &str)]) -> DnsServer {
        let resolv_dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&resolv_dir).expect("create /etc/netns/<ns>");
        std::fs::write(
            resolv_dir.join("resolv.conf"),
            format!("nameserver {V4_SERVER}\noptions timeout:1 attempts:1\n"),
        )
        .expect("write the namespace's resolv.conf");
        let mut command = ns.command("dnsmasq");
        command.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--pid-file",
            "--log-facility=-",
            // Everything under .example is ours: unknown names get NXDOMAIN.
            "--local=/example/",
            "--cache-size=0",
        ]);
        command.arg(format!("--listen-address={V4_SERVER}"));
        command.arg(format!("--listen-address={V6_SERVER}"));
        for (name, ip) in records {
            command.arg(format!("--address=/{name}/{ip}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (apt-get install dnsmasq-base; scripts/setup.sh --tests)");
        let server = DnsServer {
            child,
            resolv_dir,
            addr: SocketAddr::new(V4_SERVER.parse().expect("address"), 53),
        };
        server.wait_listening(ns);
        server
    }

    /// dnsmasq binds before it answers; wait until port 53 is bound.
    fn wait_listening(&self, ns: &NetNs) {
        let deadline = Instant::now() + crate::agent::scaled(Duration::from_secs(10));
        while Instant::now() < deadline {
            let out = ns
                .command("ss")
                .args(["-Hlun", "sport", "= :53"])
                .output()
                .expect("run ss");
            if !out.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dnsmasq did not start listening on {}", self.addr);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.resolv_dir);
    }
}
