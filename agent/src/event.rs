//! Decoding kernel records into the agent's event model.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egret_common::{AF_INET, AF_INET6, EgressEvent, FLAG_V4_MAPPED, Hook, RecordKind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an egress event")]
    Truncated(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unknown hook {0}")]
    UnknownHook(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
}

/// Layer-4 protocol of the socket, as Falco names it in `fd.l4proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
    Icmp,
    Raw,
    Other(u8),
}

impl L4Proto {
    fn from_ip_protocol(protocol: u8) -> Self {
        match protocol {
            6 => L4Proto::Tcp,
            17 => L4Proto::Udp,
            1 | 58 => L4Proto::Icmp,
            255 => L4Proto::Raw,
            other => L4Proto::Other(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Icmp => "icmp",
            L4Proto::Raw => "raw",
            L4Proto::Other(_) => "unknown",
        }
    }
}

/// Falco's `evt.type` for what the hook saw. The UDP sendmsg hook runs for
/// sendto, sendmsg, sendmmsg and io_uring sends alike and cannot tell them
/// apart; it is reported as `sendto`, the call libc resolvers and most tools
/// use for unconnected UDP.
pub fn evt_type(hook: Hook) -> &'static str {
    match hook {
        Hook::Connect4 | Hook::Connect6 => "connect",
        Hook::Sendmsg4 | Hook::Sendmsg6 => "sendto",
    }
}

/// Task comm: at most 15 bytes, not necessarily UTF-8.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    pub fn from_raw(raw: [u8; 16]) -> Self {
        let len = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        Comm {
            bytes: raw,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Lossy: invalid UTF-8 in a comm (attackers can set any bytes) becomes U+FFFD.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

/// One outbound connection attempt, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressAttempt {
    pub hook: Hook,
    /// CLOCK_MONOTONIC nanoseconds when the hook ran.
    pub mono_ns: u64,
    /// Nanoseconds since the Unix epoch, derived from `mono_ns`.
    pub wall_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    pub l4proto: L4Proto,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The program asked for `::ffff:a.b.c.d`; `daddr` holds the IPv4 address.
    pub v4_mapped: bool,
}

impl EgressAttempt {
    pub fn evt_type(&self) -> &'static str {
        evt_type(self.hook)
    }
}

/// Decodes one ring buffer record. `wall_offset_ns` is realtime − monotonic,
/// sampled by the caller once per batch.
pub fn decode(record: &[u8], wall_offset_ns: i64) -> Result<EgressAttempt, DecodeError> {
    if record.len() < size_of::<EgressEvent>() {
        return Err(DecodeError::Truncated(record.len()));
    }
    // SAFETY: length checked; EgressEvent is Pod and read unaligned.
    let raw: EgressEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    if raw.kind != RecordKind::Egress as u8 {
        return Err(DecodeError::UnknownKind(raw.kind));
    }
    let hook = Hook::from_u8(raw.hook).ok_or(DecodeError::UnknownHook(raw.hook))?;
    let daddr = match raw.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(
            raw.daddr[0],
            raw.daddr[1],
            raw.daddr[2],
            raw.daddr[3],
        )),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(raw.daddr)),
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok(EgressAttempt {
        hook,
        mono_ns: raw.mono_ns,
        wall_ns: raw.mono_ns.saturating_add_signed(wall_offset_ns),
        tgid: raw.tgid,
        tid: raw.pid,
        uid: raw.uid,
        gid: raw.gid,
        comm: Comm::from_raw(raw.comm),
        cgroup_id: raw.cgroup_id,
        netns_cookie: raw.netns_cookie,
        socket_cookie: raw.socket_cookie,
        l4proto: L4Proto::from_ip_protocol(raw.protocol),
        daddr,
        dport: raw.dport,
        v4_mapped: raw.flags & FLAG_V4_MAPPED != 0,
    })
}

/// realtime − monotonic in nanoseconds: add to a `bpf_ktime_get_ns` stamp to
/// get wall time. Sampled per batch so clock steps are picked up quickly.
pub fn wall_offset_ns() -> i64 {
    fn now(clock: libc::clockid_t) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_event() -> EgressEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        EgressEvent {
            kind: RecordKind::Egress as u8,
            hook: Hook::Connect6 as u8,
            family: AF_INET,
            protocol: 6,
            dport: 443,
            flags: FLAG_V4_MAPPED,
            _pad0: 0,
            tgid: 100,
            pid: 101,
            uid: 1000,
            gid: 1001,
            mono_ns: 5_000,
            cgroup_id: 77,
            netns_cookie: 4096,
            socket_cookie: 9,
            daddr: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm,
        }
    }

    fn bytes(event: &EgressEvent) -> Vec<u8> {
        // SAFETY: EgressEvent is repr(C) with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const EgressEvent).cast::<u8>(),
                size_of::<EgressEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn layout_matches_kernel_contract() {
        assert_eq!(size_of::<EgressEvent>(), 88);
        assert_eq!(std::mem::offset_of!(EgressEvent, tgid), 8);
        assert_eq!(std::mem::offset_of!(EgressEvent, mono_ns), 24);
        assert_eq!(std::mem::offset_of!(EgressEvent, daddr), 56);
        assert_eq!(std::mem::offset_of!(EgressEvent, comm), 72);
    }

    #[test]
    fn decodes_mapped_ipv4() {
        let event = decode(&bytes(&raw_event()), 1_000).unwrap();
        assert_eq!(event.daddr, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert!(event.v4_mapped);
        assert_eq!(event.dport, 443);
        assert_eq!(event.l4proto, L4Proto::Tcp);
        assert_eq!(event.comm.to_string_lossy(), "curl");
        assert_eq!(event.wall_ns, 6_000);
        assert_eq!(event.evt_type(), "connect");
        assert_eq!(
            (event.tgid, event.tid, event.uid, event.gid),
            (100, 101, 1000, 1001)
        );
    }

    #[test]
    fn decodes_ipv6_sendmsg() {
        let mut raw = raw_event();
        raw.family = AF_INET6;
        raw.hook = Hook::Sendmsg6 as u8;
        raw.protocol = 17;
        raw.flags = 0;
        raw.daddr = "2001:db8::53".parse::<Ipv6Addr>().unwrap().octets();
        let event = decode(&bytes(&raw), 0).unwrap();
        assert_eq!(event.daddr, "2001:db8::53".parse::<IpAddr>().unwrap());
        assert_eq!(event.evt_type(), "sendto");
        assert_eq!(event.l4proto.as_str(), "udp");
    }

    #[test]
    fn rejects_hostile_records() {
        let good = bytes(&raw_event());
        assert_eq!(decode(&good[..10], 0), Err(DecodeError::Truncated(10)));
        let mut bad = raw_event();
        bad.kind = 9;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownKind(9)));
        let mut bad = raw_event();
        bad.hook = 200;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownHook(200)));
        let mut bad = raw_event();
        bad.family = 1;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownFamily(1)));
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8() {
        let comm = Comm::from_raw([0xff; 16]);
        assert_eq!(comm.as_bytes().len(), 16);
        assert!(comm.to_string_lossy().contains('\u{fffd}'));
    }

    #[test]
    fn wall_offset_is_plausible() {
        // Realtime is after 2020 and monotonic is small, so the offset is large and positive.
        assert!(wall_offset_ns() > 1_577_836_800_000_000_000);
    }
}
