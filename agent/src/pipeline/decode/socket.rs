//! `RecordKind::Socket`: a packet or raw socket was created (BPF LSM
//! `socket_post_create`). Decoded into an [`EgressAttempt`] without a
//! destination, so it flows through enrichment, rules and outputs like any
//! other event; `socket` carries socket(2)'s arguments.
use std::net::{IpAddr, Ipv4Addr};

use egret_common::{AF_INET, AF_INET6, AF_PACKET, Hook, SOCK_RAW, SocketEvent};

use super::{Comm, DecodeError, EgressAttempt, L4Proto, read_record};

/// socket(2)'s arguments, as Falco's `socket` event carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketArgs {
    pub domain: u16,
    pub sock_type: u32,
    pub protocol: u32,
}

impl SocketArgs {
    /// `evt.arg.domain` as Falco renders it: the family's name (its
    /// `socket_families` table), the number for families Egret never emits.
    pub fn domain_name(&self) -> Option<&'static str> {
        match self.domain {
            d if d == u16::from(AF_INET) => Some("AF_INET"),
            d if d == u16::from(AF_INET6) => Some("AF_INET6"),
            AF_PACKET => Some("AF_PACKET"),
            _ => None,
        }
    }

    /// `evt.args`: `domain=17(AF_PACKET) type=3 proto=768`, Falco's format.
    pub fn render_args(&self) -> String {
        let name = self.domain_name().unwrap_or("");
        format!(
            "domain={}({name}) type={} proto={}",
            self.domain, self.sock_type, self.protocol
        )
    }
}

pub(super) fn decode(record: &[u8], wall_offset_ns: i64) -> Result<EgressAttempt, DecodeError> {
    let raw: SocketEvent = read_record(record)?;
    if raw.hook != Hook::SocketCreate as u8 {
        return Err(DecodeError::UnknownHook(raw.hook));
    }
    let ip = raw.family == u16::from(AF_INET) || raw.family == u16::from(AF_INET6);
    if raw.family != AF_PACKET && !ip {
        return Err(DecodeError::UnknownFamily(raw.family.min(255) as u8));
    }
    Ok(EgressAttempt {
        hook: Hook::SocketCreate,
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
        l4proto: if ip && raw.sock_type == SOCK_RAW {
            L4Proto::Raw
        } else {
            L4Proto::Other(0)
        },
        ip_protocol: if ip { raw.protocol.min(255) as u8 } else { 0 },
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
        v4_mapped: false,
        blocked: None,
        socket: Some(SocketArgs {
            domain: raw.family,
            sock_type: raw.sock_type,
            protocol: raw.protocol,
        }),
        flow: None,
    })
}
