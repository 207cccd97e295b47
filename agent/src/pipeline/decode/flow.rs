//! `RecordKind::Flow`: a TCP connection's or UDP socket's end, or an interim
//! report of a live one (`agent-ebpf/src/flows.rs`). Decoded into an
//! [`EgressAttempt`] with `evt.type = close` and a [`FlowInfo`], so it
//! goes through enrichment, rules and outputs like any event. The kernel
//! record has no process: enrichment fills it from the socket's connect
//! (or send) event, joined by socket cookie.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egret_common::{
    AF_INET, AF_INET6, FLOW_END_CLOSED, FLOW_END_INTERIM, FLOW_END_REFUSED, FLOW_END_RESET,
    FLOW_END_TIMED_OUT, FLOW_FLAG_STATE_LOST, FLOW_FLAG_V4_MAPPED, FlowEvent, Hook,
};

use super::{Comm, DecodeError, EgressAttempt, L4Proto, read_record};

/// How a flow ended (`flow.end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowEnd {
    /// Not ended: a periodic report of a live flow.
    Interim,
    /// FINs exchanged (TCP) or the socket released (UDP).
    Closed,
    /// A RST ended an established connection (either side's).
    Reset,
    /// The connect was answered with a RST.
    Refused,
    /// The kernel gave up retransmitting.
    TimedOut,
}

impl FlowEnd {
    pub const ALL: [FlowEnd; 5] = [
        FlowEnd::Interim,
        FlowEnd::Closed,
        FlowEnd::Reset,
        FlowEnd::Refused,
        FlowEnd::TimedOut,
    ];

    fn from_raw(raw: u8) -> Option<FlowEnd> {
        Some(match raw {
            FLOW_END_INTERIM => FlowEnd::Interim,
            FLOW_END_CLOSED => FlowEnd::Closed,
            FLOW_END_RESET => FlowEnd::Reset,
            FLOW_END_REFUSED => FlowEnd::Refused,
            FLOW_END_TIMED_OUT => FlowEnd::TimedOut,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FlowEnd::Interim => "interim",
            FlowEnd::Closed => "closed",
            FlowEnd::Reset => "reset",
            FlowEnd::Refused => "refused",
            FlowEnd::TimedOut => "timed_out",
        }
    }
}

/// What a flow record adds to the attempt fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    pub end: FlowEnd,
    /// `fd.cip`/`fd.cport`: the local end.
    pub saddr: IpAddr,
    pub sport: u16,
    /// Totals since the flow started (interim records included).
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// ns from the start to this record; `None` when the kernel lost the
    /// flow's start.
    pub duration_ns: Option<u64>,
    /// TCP only.
    pub retransmits: Option<u32>,
    /// Bytes since this flow's previous record (the whole totals on its
    /// first): set by enrichment, which remembers the previous totals.
    pub delta_out: u64,
    pub delta_in: u64,
    /// `flow.prev_bytes_out`/`flow.prev_duration`: this flow's totals at its
    /// previous record (0 on its first), so a rule can fire once, on the
    /// record that crosses a threshold. Set by enrichment.
    pub prev_bytes_out: u64,
    pub prev_duration_ns: u64,
    /// `flow.proc_peers`: distinct destinations of the owning process's
    /// ended flows in the current minute (this one included); 0 unknown.
    pub proc_peers: u32,
    /// Interim records sent before this one.
    pub reports: u32,
    /// TCP: the state the socket left for CLOSE (`TCP_*` number).
    pub old_state: u8,
}

impl FlowInfo {
    pub fn is_final(&self) -> bool {
        self.end != FlowEnd::Interim
    }
}

fn addr(family: u8, raw: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(raw))),
        other => Err(DecodeError::UnknownFamily(other)),
    }
}

pub(super) fn decode(record: &[u8], wall_offset_ns: i64) -> Result<EgressAttempt, DecodeError> {
    let raw: FlowEvent = read_record(record)?;
    let hook = match Hook::from_u8(raw.hook) {
        Some(hook @ (Hook::TcpFlow | Hook::UdpFlow)) => hook,
        _ => return Err(DecodeError::UnknownHook(raw.hook)),
    };
    let end = FlowEnd::from_raw(raw.end).ok_or(DecodeError::UnknownFlowEnd(raw.end))?;
    let state_lost = raw.flags & FLOW_FLAG_STATE_LOST != 0;
    let flow = FlowInfo {
        end,
        saddr: addr(raw.family, raw.saddr)?,
        sport: raw.sport,
        bytes_out: raw.bytes_out,
        bytes_in: raw.bytes_in,
        packets_out: raw.packets_out,
        packets_in: raw.packets_in,
        // A start after the record (hostile or corrupt) is no duration.
        duration_ns: (!state_lost && raw.start_ns != 0)
            .then(|| raw.mono_ns.checked_sub(raw.start_ns))
            .flatten(),
        retransmits: (hook == Hook::TcpFlow).then_some(raw.retrans),
        delta_out: raw.bytes_out,
        delta_in: raw.bytes_in,
        prev_bytes_out: 0,
        prev_duration_ns: 0,
        proc_peers: 0,
        reports: raw.reports,
        old_state: raw.old_state,
    };
    Ok(EgressAttempt {
        hook,
        mono_ns: raw.mono_ns,
        wall_ns: raw.mono_ns.saturating_add_signed(wall_offset_ns),
        // The process comes from the socket's connect, in enrichment.
        tgid: 0,
        tid: 0,
        uid: 0,
        gid: 0,
        comm: Comm::from_raw([0; 16]),
        exec_id: 0,
        ppid: 0,
        cgroup_id: 0,
        netns_cookie: 0,
        socket_cookie: raw.socket_cookie,
        l4proto: if hook == Hook::TcpFlow {
            L4Proto::Tcp
        } else {
            L4Proto::Udp
        },
        ip_protocol: raw.protocol,
        daddr: addr(raw.family, raw.daddr)?,
        dport: raw.dport,
        v4_mapped: raw.flags & FLOW_FLAG_V4_MAPPED != 0,
        blocked: None,
        socket: None,
        flow: Some(Box::new(flow)),
    })
}

#[cfg(test)]
mod tests {
    use egret_common::RecordKind;

    use super::*;

    fn raw() -> FlowEvent {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[198, 51, 100, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[198, 51, 100, 2]);
        FlowEvent {
            kind: RecordKind::Flow as u8,
            hook: Hook::TcpFlow as u8,
            family: AF_INET,
            protocol: 6,
            end: FLOW_END_CLOSED,
            sport: 40000,
            dport: 443,
            retrans: 2,
            start_ns: 1_000,
            mono_ns: 5_000,
            socket_cookie: 77,
            bytes_out: 5_000_000,
            bytes_in: 10,
            packets_out: 100,
            packets_in: 50,
            saddr,
            daddr,
            reports: 1,
            ..FlowEvent::default()
        }
    }

    fn bytes(event: &FlowEvent) -> Vec<u8> {
        // SAFETY: FlowEvent is repr(C) with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const FlowEvent).cast::<u8>(),
                size_of::<FlowEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_tcp_close() {
        let attempt = decode(&bytes(&raw()), 10).unwrap();
        assert_eq!(attempt.evt_type(), "close");
        assert_eq!(attempt.daddr, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert_eq!(attempt.dport, 443);
        assert_eq!(attempt.wall_ns, 5_010);
        assert_eq!(attempt.socket_cookie, 77);
        let flow = attempt.flow.as_deref().unwrap();
        assert_eq!(flow.saddr, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(flow.sport, 40000);
        assert_eq!(flow.bytes_out, 5_000_000);
        assert_eq!(flow.duration_ns, Some(4_000));
        assert_eq!(flow.retransmits, Some(2));
        assert_eq!(flow.end, FlowEnd::Closed);
        assert!(flow.is_final());
    }

    #[test]
    fn udp_has_no_retransmits_and_lost_state_no_duration() {
        let mut r = raw();
        r.hook = Hook::UdpFlow as u8;
        r.protocol = 17;
        r.end = FLOW_END_INTERIM;
        r.flags = FLOW_FLAG_STATE_LOST;
        let attempt = decode(&bytes(&r), 0).unwrap();
        let flow = attempt.flow.as_deref().unwrap();
        assert_eq!(attempt.l4proto, L4Proto::Udp);
        assert_eq!(flow.retransmits, None);
        assert_eq!(flow.duration_ns, None);
        assert!(!flow.is_final());
    }

    #[test]
    fn hostile_records_are_errors_not_panics() {
        let good = bytes(&raw());
        for len in 0..good.len() {
            assert!(decode(&good[..len], 0).is_err(), "truncated to {len}");
        }
        let mut r = raw();
        r.hook = Hook::Connect4 as u8;
        assert_eq!(
            decode(&bytes(&r), 0),
            Err(DecodeError::UnknownHook(Hook::Connect4 as u8))
        );
        let mut r = raw();
        r.end = 200;
        assert_eq!(decode(&bytes(&r), 0), Err(DecodeError::UnknownFlowEnd(200)));
        let mut r = raw();
        r.family = 99;
        assert_eq!(decode(&bytes(&r), 0), Err(DecodeError::UnknownFamily(99)));
        // A start after the record, extreme stamps and offsets: no panic.
        let mut r = raw();
        r.start_ns = u64::MAX;
        r.mono_ns = u64::MAX;
        let attempt = decode(&bytes(&r), i64::MIN).unwrap();
        assert_eq!(attempt.flow.unwrap().duration_ns, Some(0));
        r.start_ns = 10;
        r.mono_ns = 5;
        let attempt = decode(&bytes(&r), i64::MAX).unwrap();
        assert_eq!(attempt.flow.unwrap().duration_ns, None);
        // Every byte pattern in the tag fields either decodes or errs.
        for b in 0..=255u8 {
            let mut r = raw();
            r.hook = b;
            r.end = b;
            r.family = b;
            let _ = decode(&bytes(&r), 0);
        }
    }
}
