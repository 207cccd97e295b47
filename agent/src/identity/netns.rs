//! "Does this connection come from the host network namespace?"
//!
//! Events carry the socket's netns cookie (`bpf_get_netns_cookie`). The agent
//! runs in the host network namespace (hostNetwork), so the cookie of any
//! socket it opens itself is the host's; comparing the two answers the
//! question per event with no lookup, independent of any runtime.
//! [`same_netns_file`] answers it for a namespace path instead, as found in
//! an OCI spec.
use std::{io, os::unix::fs::MetadataExt, path::Path};

/// The cookie of the network namespace the calling thread is in
/// (`SO_NETNS_COOKIE`, Linux 5.14+).
pub fn current_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, out-pointer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The host network namespace, identified by its cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostNetns {
    cookie: u64,
}

impl HostNetns {
    /// Call from the agent's own (host) network namespace, at start-up.
    pub fn detect() -> io::Result<HostNetns> {
        current_netns_cookie().map(|cookie| HostNetns { cookie })
    }

    pub fn from_cookie(cookie: u64) -> HostNetns {
        HostNetns { cookie }
    }

    pub fn cookie(self) -> u64 {
        self.cookie
    }

    /// True when an event's netns cookie is the host's.
    pub fn is_host(self, netns_cookie: u64) -> bool {
        netns_cookie == self.cookie
    }
}

/// True when two namespace files (`/proc/<pid>/ns/net`, a bind mount under
/// `/var/run/netns`) name the same namespace.
pub fn same_netns_file(a: &Path, b: &Path) -> io::Result<bool> {
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cookie_is_host() {
        let host = HostNetns::detect().expect("SO_NETNS_COOKIE (Linux 5.14+)");
        assert_ne!(host.cookie(), 0);
        assert!(host.is_host(current_netns_cookie().unwrap()));
        assert!(!host.is_host(host.cookie() + 1));
    }

    #[test]
    fn same_file_same_namespace() {
        let own = Path::new("/proc/self/ns/net");
        assert!(same_netns_file(own, Path::new("/proc/thread-self/ns/net")).unwrap());
        assert!(!same_netns_file(own, Path::new("/proc/self/ns/mnt")).unwrap());
        assert!(same_netns_file(own, Path::new("/nonexistent")).is_err());
    }
}
