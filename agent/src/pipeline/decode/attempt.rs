//! `RecordKind::Egress`: one outbound attempt from a cgroup sock_addr hook;
//! `RecordKind::Blocked`: the same layout, for what a quarantine denied.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egret_common::{
    AF_INET, AF_INET6, EgressEvent, FLAG_PACKET, FLAG_RAW_SOCKET, FLAG_V4_MAPPED, Hook, RecordKind,
};

use super::{Comm, DecodeError, read_record, socket::SocketArgs};

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

/// Falco's `evt.type` for what the hook saw. The UDP sendmsg hook (and the
/// LSM hook for raw and ping sockets) runs for sendto, sendmsg, sendmmsg
/// and io_uring sends alike and cannot tell them apart; it is reported as
/// `sendto`, the call libc resolvers, ping and most tools use.
pub fn evt_type(hook: Hook) -> &'static str {
    match hook {
        Hook::Connect4 | Hook::Connect6 => "connect",
        Hook::Sendmsg4 | Hook::Sendmsg6 | Hook::RawSend4 | Hook::RawSend6 => "sendto",
        Hook::Exec => "execve",
        Hook::SocketCreate => "socket",
        // Never on an attempt (the decoder refuses them); named for totality.
        Hook::CgroupMkdir => "mkdir",
        Hook::CgroupRmdir => "rmdir",
        Hook::ExeFile => "execve",
        Hook::ConnectResult => "connect",
        // Falco names the end of a connection `close`; interim reports of a
        // live flow share it (`flow.final` tells them apart).
        Hook::TcpFlow | Hook::UdpFlow => "close",
        // DNS messages are their own event type (enrich/dns.rs).
        Hook::DnsQuery | Hook::DnsAnswer => "dns",
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
    /// Image identity from the kernel's process tracker; 0 if untracked.
    pub exec_id: u64,
    /// Parent tgid from the kernel's process tracker; 0 if untracked.
    pub ppid: u32,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    pub l4proto: L4Proto,
    /// IP protocol number of the socket (1 for a raw ICMP socket, whose
    /// `l4proto` is `raw`); 0 for packet sockets.
    pub ip_protocol: u8,
    /// Destination; unspecified (and unused) for socket creations.
    pub daddr: IpAddr,
    pub dport: u16,
    /// The program asked for `::ffff:a.b.c.d`; `daddr` holds the IPv4 address.
    pub v4_mapped: bool,
    /// Set when a quarantine denied the attempt (`egret.action` = blocked).
    pub blocked: Option<Blocked>,
    /// A socket creation (`evt.type` = socket), not a send: no destination.
    pub socket: Option<SocketArgs>,
    /// A flow record (`evt.type` = close): the connection's volume and end.
    pub flow: Option<Box<super::FlowInfo>>,
}

/// What a quarantine's programs denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// Kernel slot of the quarantine (GET /v1/quarantines shows each one's).
    pub slot: u32,
    /// A dropped packet (ICMP, raw, existing flow) rather than a refused call;
    /// process fields are then 0.
    pub packet: bool,
}

/// `egret.action`: what happened to the attempt.
pub fn action_name(blocked: Option<Blocked>) -> &'static str {
    match blocked {
        Some(_) => "blocked",
        None => "observed",
    }
}

impl EgressAttempt {
    pub fn evt_type(&self) -> &'static str {
        evt_type(self.hook)
    }

    /// Whether the event has a destination (every kind but socket creation).
    pub fn has_destination(&self) -> bool {
        self.socket.is_none()
    }
}

pub(super) fn decode(record: &[u8], wall_offset_ns: i64) -> Result<EgressAttempt, DecodeError> {
    let raw: EgressEvent = read_record(record)?;
    let hook = match Hook::from_u8(raw.hook) {
        Some(hook)
            if !matches!(
                hook,
                Hook::Exec
                    | Hook::SocketCreate
                    | Hook::CgroupMkdir
                    | Hook::CgroupRmdir
                    | Hook::ExeFile
                    | Hook::ConnectResult
                    | Hook::TcpFlow
                    | Hook::UdpFlow
                    | Hook::DnsQuery
                    | Hook::DnsAnswer
            ) =>
        {
            hook
        }
        _ => return Err(DecodeError::UnknownHook(raw.hook)),
    };
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
        exec_id: raw.exec_id,
        ppid: raw.ppid,
        cgroup_id: raw.cgroup_id,
        netns_cookie: raw.netns_cookie,
        socket_cookie: raw.socket_cookie,
        l4proto: if raw.flags & FLAG_RAW_SOCKET != 0 {
            L4Proto::Raw
        } else {
            L4Proto::from_ip_protocol(raw.protocol)
        },
        ip_protocol: raw.protocol,
        daddr,
        dport: raw.dport,
        v4_mapped: raw.flags & FLAG_V4_MAPPED != 0,
        blocked: (raw.kind == RecordKind::Blocked as u8).then_some(Blocked {
            slot: raw.quarantine,
            packet: raw.flags & FLAG_PACKET != 0,
        }),
        socket: None,
        flow: None,
    })
}
