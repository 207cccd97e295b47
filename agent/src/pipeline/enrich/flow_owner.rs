//! Who owns a flow: the kernel's flow records carry no process (a TCP
//! connection often ends in softirq context), so the process, cgroup and
//! network namespace come from the socket's connect or send event, joined
//! by socket cookie. The connect is always ahead of its flow record in the
//! ring buffer.
//!
//! Bounded: two generations of at most [`GENERATION_CAP`] sockets each;
//! when the young one fills, the old one is dropped. A flow whose owner
//! was dropped (more than one generation of sockets opened while it lived
//! without reporting) gets no process fields, counted in
//! `egret_flow_owner_unknown_total`. Interim reports move a live flow's
//! owner into the young generation, so long-lived flows keep theirs.
//!
//! It also keeps, per process, the distinct destinations of its flows that
//! ended in the current minute (`flow.proc_peers`, for scan rules): at most
//! [`PEER_PROCESSES`] processes (all forgotten when more appear) and
//! [`PEER_ADDRESSES`] addresses each (the count stops there).
use std::net::IpAddr;

use super::{FastMap, owner::SocketOwner};
use crate::pipeline::decode::{EgressAttempt, L4Proto};
use egret_common::Hook;

/// Sockets per generation.
pub const GENERATION_CAP: usize = 65_536;
/// Processes whose recent flow destinations are counted.
pub const PEER_PROCESSES: usize = 4_096;
/// Distinct destinations counted per process and window.
pub const PEER_ADDRESSES: usize = 1_024;
/// The `flow.proc_peers` window.
const PEER_WINDOW_NS: u64 = 60_000_000_000;

/// The connect-time fields a flow record borrows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    process: SocketOwner,
    cgroup_id: u64,
    /// Byte totals of the flow's last record (interim), for deltas.
    reported_out: u64,
    reported_in: u64,
    reported_duration: u64,
}

/// One process's destinations in the current window.
struct RecentPeers {
    since_ns: u64,
    addrs: FastMap<IpAddr, ()>,
}

#[derive(Default)]
pub struct FlowOwners {
    young: FastMap<u64, Owner>,
    old: FastMap<u64, Owner>,
    peers: FastMap<u32, RecentPeers>,
}

impl FlowOwners {
    /// Remembers the owner of an attempt's socket (TCP/UDP connects and
    /// sends: the sockets the kernel accounts flows for).
    pub fn observe(&mut self, attempt: &EgressAttempt) {
        let flow_hook = matches!(
            attempt.hook,
            Hook::Connect4 | Hook::Connect6 | Hook::Sendmsg4 | Hook::Sendmsg6
        );
        if !flow_hook
            || attempt.socket_cookie == 0
            || attempt.blocked.is_some()
            || !matches!(attempt.l4proto, L4Proto::Tcp | L4Proto::Udp)
        {
            return;
        }
        self.insert(
            attempt.socket_cookie,
            Owner {
                process: SocketOwner::of(attempt),
                cgroup_id: attempt.cgroup_id,
                reported_out: 0,
                reported_in: 0,
                reported_duration: 0,
            },
        );
    }

    fn insert(&mut self, cookie: u64, mut owner: Owner) {
        // A socket's later sends (unconnected UDP) keep what its flow
        // already reported, so deltas are not counted twice.
        if let Some(known) = self.young.get(&cookie).or_else(|| self.old.get(&cookie)) {
            owner.reported_out = known.reported_out;
            owner.reported_in = known.reported_in;
            owner.reported_duration = known.reported_duration;
        }
        if self.young.len() >= GENERATION_CAP && !self.young.contains_key(&cookie) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(cookie, owner);
    }

    /// Fills a flow record's process fields from its socket's owner; false
    /// when the owner is unknown. A final record forgets the socket.
    pub fn attribute(&mut self, attempt: &mut EgressAttempt) -> bool {
        let cookie = attempt.socket_cookie;
        let Some(flow) = attempt.flow.as_deref_mut() else {
            return false;
        };
        // Both generations, so no stale copy outlives the flow (the old one
        // is often empty: then it costs nothing).
        let old = if self.old.is_empty() {
            None
        } else {
            self.old.remove(&cookie)
        };
        let Some(mut owner) = self.young.remove(&cookie).or(old) else {
            return false;
        };
        // Totals only grow; a smaller one (hostile record) is a delta of 0.
        flow.delta_out = flow.bytes_out.saturating_sub(owner.reported_out);
        flow.delta_in = flow.bytes_in.saturating_sub(owner.reported_in);
        flow.prev_bytes_out = owner.reported_out;
        flow.prev_duration_ns = owner.reported_duration;
        owner.reported_out = owner.reported_out.max(flow.bytes_out);
        owner.reported_in = owner.reported_in.max(flow.bytes_in);
        owner.reported_duration = owner.reported_duration.max(flow.duration_ns.unwrap_or(0));
        if flow.is_final() {
            flow.proc_peers = self.count_peer(owner.process.tgid, attempt.daddr, attempt.mono_ns);
        } else {
            self.insert(cookie, owner);
        }
        owner.process.apply(attempt);
        attempt.cgroup_id = owner.cgroup_id;
        true
    }

    /// Adds `daddr` to the process's window; its distinct destinations.
    fn count_peer(&mut self, tgid: u32, daddr: IpAddr, now_ns: u64) -> u32 {
        if self.peers.len() >= PEER_PROCESSES && !self.peers.contains_key(&tgid) {
            self.peers.clear();
        }
        let recent = self.peers.entry(tgid).or_insert_with(|| RecentPeers {
            since_ns: now_ns,
            addrs: FastMap::default(),
        });
        if now_ns.saturating_sub(recent.since_ns) >= PEER_WINDOW_NS {
            recent.since_ns = now_ns;
            recent.addrs.clear();
        }
        if recent.addrs.len() < PEER_ADDRESSES {
            recent.addrs.insert(daddr, ());
        }
        recent.addrs.len() as u32
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::{Comm, FlowEnd, FlowInfo};

    fn connect(cookie: u64, tgid: u32) -> EgressAttempt {
        EgressAttempt {
            hook: Hook::Connect4,
            mono_ns: 1,
            wall_ns: 1,
            tgid,
            tid: tgid,
            uid: 1000,
            gid: 1000,
            comm: Comm::from_raw(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
            exec_id: 5,
            ppid: 1,
            cgroup_id: 9,
            netns_cookie: 3,
            socket_cookie: cookie,
            l4proto: L4Proto::Tcp,
            ip_protocol: 6,
            daddr: "198.51.100.7".parse().unwrap(),
            dport: 443,
            v4_mapped: false,
            blocked: None,
            socket: None,
            flow: None,
        }
    }

    fn flow(cookie: u64, end: FlowEnd) -> EgressAttempt {
        let mut a = connect(cookie, 0);
        a.hook = Hook::TcpFlow;
        a.tgid = 0;
        a.cgroup_id = 0;
        a.flow = Some(Box::new(FlowInfo {
            end,
            saddr: "198.51.100.1".parse().unwrap(),
            sport: 1,
            bytes_out: 0,
            bytes_in: 0,
            packets_out: 0,
            packets_in: 0,
            duration_ns: None,
            retransmits: None,
            delta_out: 0,
            delta_in: 0,
            prev_bytes_out: 0,
            prev_duration_ns: 0,
            proc_peers: 0,
            reports: 0,
            old_state: 0,
        }));
        a
    }

    #[test]
    fn joins_by_cookie_and_forgets_at_the_end() {
        let mut owners = FlowOwners::default();
        owners.observe(&connect(7, 42));
        let mut interim = flow(7, FlowEnd::Interim);
        interim.flow.as_mut().unwrap().bytes_out = 100;
        assert!(owners.attribute(&mut interim));
        assert_eq!((interim.tgid, interim.cgroup_id), (42, 9));
        assert_eq!(interim.flow.as_ref().unwrap().delta_out, 100);
        let mut last = flow(7, FlowEnd::Closed);
        last.flow.as_mut().unwrap().bytes_out = 250;
        assert!(owners.attribute(&mut last));
        assert_eq!(last.comm.as_str(), "curl");
        assert_eq!(last.flow.as_ref().unwrap().delta_out, 150);
        assert_eq!(last.flow.as_ref().unwrap().prev_bytes_out, 100);
        assert_eq!(last.flow.as_ref().unwrap().proc_peers, 1);
        assert_eq!(owners.len(), 0);
        assert!(!owners.attribute(&mut flow(7, FlowEnd::Closed)));
    }

    #[test]
    fn later_sends_keep_what_was_reported() {
        let mut owners = FlowOwners::default();
        owners.observe(&connect(7, 42));
        let mut interim = flow(7, FlowEnd::Interim);
        interim.flow.as_mut().unwrap().bytes_out = 100;
        assert!(owners.attribute(&mut interim));
        owners.observe(&connect(7, 42));
        let mut last = flow(7, FlowEnd::Closed);
        last.flow.as_mut().unwrap().bytes_out = 130;
        assert!(owners.attribute(&mut last));
        assert_eq!(last.flow.as_ref().unwrap().delta_out, 30);
    }

    #[test]
    fn bounded_by_two_generations() {
        let mut owners = FlowOwners::default();
        for cookie in 1..=(3 * GENERATION_CAP as u64) {
            owners.observe(&connect(cookie, 1));
        }
        assert!(owners.len() <= 2 * GENERATION_CAP);
        assert!(!owners.attribute(&mut flow(1, FlowEnd::Closed)));
        assert!(owners.attribute(&mut flow(3 * GENERATION_CAP as u64, FlowEnd::Closed)));
    }

    #[test]
    fn counts_distinct_peers_per_process_and_window() {
        let mut owners = FlowOwners::default();
        for (cookie, ip) in [
            (1, "198.51.100.1"),
            (2, "198.51.100.2"),
            (3, "198.51.100.1"),
        ] {
            owners.observe(&connect(cookie, 42));
            let mut f = flow(cookie, FlowEnd::Closed);
            f.daddr = ip.parse().unwrap();
            assert!(owners.attribute(&mut f));
            let expected = if cookie == 1 { 1 } else { 2 };
            assert_eq!(f.flow.unwrap().proc_peers, expected);
        }
        owners.observe(&connect(4, 42));
        let mut later = flow(4, FlowEnd::Closed);
        later.mono_ns = 1 + PEER_WINDOW_NS;
        assert!(owners.attribute(&mut later));
        assert_eq!(later.flow.unwrap().proc_peers, 1);
    }

    #[test]
    fn ignores_blocked_raw_and_cookieless() {
        let mut owners = FlowOwners::default();
        let mut blocked = connect(1, 1);
        blocked.blocked = Some(crate::pipeline::decode::Blocked {
            slot: 1,
            packet: false,
        });
        owners.observe(&blocked);
        owners.observe(&connect(0, 1));
        let mut raw = connect(2, 1);
        raw.l4proto = L4Proto::Raw;
        owners.observe(&raw);
        assert_eq!(owners.len(), 0);
    }
}
