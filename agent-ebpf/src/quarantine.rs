//! Kernel hooks: quarantine enforcement. cgroup sock_addr programs
//! (`BPF_CGROUP_INET{4,6}_CONNECT`, `BPF_CGROUP_UDP{4,6}_SENDMSG`) refuse new
//! connects and named UDP sends with EPERM, and a cgroup_skb egress program
//! (`BPF_CGROUP_INET_EGRESS`) drops the rest: ICMP ping and raw sockets,
//! which no sock_addr hook sees, and optionally flows opened before the
//! quarantine.
//!
//! Why these hooks: the agent attaches them (bpf_link, stacking with the
//! node-wide monitors) only to the quarantined workload's cgroup directory,
//! so a pod's containers, including ones started later, inherit them, and
//! nothing else on the node pays for them or can be denied by them. They
//! are cgroup hooks, so they act whatever the CNI and for host-network pods
//! too. Each program finds its quarantine by looking up the acting cgroup's
//! ancestors in [`QUARANTINE_TARGETS_MAP`]; no match (a quarantine being
//! lifted) allows. Cost: see BENCHMARKS.md (kernel.bpf_stats_enabled).
use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id,
            bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, cgroup_sock_addr},
    maps::lpm_trie::Key,
    programs::{SkBuffContext, SockAddrContext},
};
use egret_common::{
    AF_INET, AF_INET6, EgressEvent, FLAG_PACKET, FLAG_V4_MAPPED, Hook, QUARANTINE_MAX_LEVEL,
    QUARANTINE_PACKET_EVENT_GAP_NS, QUARANTINE_STOP_EXISTING, QuarantineCounters, QuarantineTarget,
    RecordKind,
};

use crate::maps::{EVENTS, PROCS, QUARANTINE_ALLOW, QUARANTINE_COUNTERS, QUARANTINE_TARGETS};
use crate::net::{
    ALLOW, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, SOCK_DGRAM, SOCK_STREAM,
};

const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn egret_q_connect4(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx, Hook::Connect4).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(connect6)]
pub fn egret_q_connect6(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx, Hook::Connect6).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egret_q_sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx, Hook::Sendmsg4).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egret_q_sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx, Hook::Sendmsg6).unwrap_or(ALLOW)
}

#[cgroup_skb(egress)]
pub fn egret_q_egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx).unwrap_or(ALLOW)
}

/// The quarantine covering the current task's cgroup, outermost first.
#[inline(always)]
fn current_target() -> Option<QuarantineTarget> {
    for level in 0..QUARANTINE_MAX_LEVEL {
        // SAFETY: helper reads the current task's cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return None;
        }
        // SAFETY: map value read during the program.
        if let Some(target) = unsafe { QUARANTINE_TARGETS.get(id) } {
            return Some(*target);
        }
    }
    None
}

/// The quarantine covering the socket's cgroup of a packet.
#[inline(always)]
fn skb_target(skb: *mut __sk_buff) -> Option<QuarantineTarget> {
    for level in 0..QUARANTINE_MAX_LEVEL {
        // SAFETY: helper reads the cgroup of the skb's socket.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level) };
        if id == 0 {
            return None;
        }
        // SAFETY: map value read during the program.
        if let Some(target) = unsafe { QUARANTINE_TARGETS.get(id) } {
            return Some(*target);
        }
    }
    None
}

/// Loopback stays open (it never leaves the workload's network namespace),
/// and so does whatever the quarantine's allow list covers.
#[inline(always)]
fn allowed(slot: u32, mapped: &[u8; 16]) -> bool {
    let v4 = mapped[..10].iter().all(|b| *b == 0) && mapped[10] == 0xff && mapped[11] == 0xff;
    if (v4 && mapped[12] == 127) || (!v4 && mapped[..15].iter().all(|b| *b == 0) && mapped[15] == 1)
    {
        return true;
    }
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&slot.to_be_bytes());
    data[4..].copy_from_slice(mapped);
    QUARANTINE_ALLOW.get(Key::new(160, data)).is_some()
}

#[inline(always)]
fn counters(slot: u32) -> Option<*mut QuarantineCounters> {
    QUARANTINE_COUNTERS.get_ptr_mut(slot)
}

#[inline(always)]
fn try_sock_addr(ctx: &SockAddrContext, hook: Hook) -> Option<i32> {
    let target = current_target()?;
    let counters = counters(target.slot)?;
    let sa = ctx.sock_addr;
    // SAFETY: context pointer; 4-byte reads as the verifier requires.
    let (user_port, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).protocol),
        )
    };
    let mut words = [0u32; 4];
    if matches!(hook, Hook::Connect6 | Hook::Sendmsg6) {
        for (i, word) in words.iter_mut().enumerate() {
            // SAFETY: as above; i < 4.
            *word = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
        }
    } else {
        // SAFETY: as above.
        words[3] = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip4) };
        words[2] = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    }
    let mut mapped = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        mapped[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    if allowed(target.slot, &mapped) {
        // SAFETY: this CPU's slot, migration disabled in cgroup hooks.
        unsafe { (*counters).allowed += 1 };
        return Some(ALLOW);
    }
    // SAFETY: as above.
    unsafe {
        if matches!(hook, Hook::Connect4 | Hook::Connect6) {
            (*counters).blocked_connects += 1;
        } else {
            (*counters).blocked_sends += 1;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<EgressEvent>(0) else {
        // SAFETY: as above.
        unsafe { (*counters).ringbuf_full += 1 };
        return Some(DENY);
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    let (exec_id, ppid) = PROCS
        .get_ptr(tgid)
        // SAFETY: map value pointer valid during the program.
        .map(|state| unsafe { ((*state).exec_id, (*state).ppid) })
        .unwrap_or((0, 0));
    // SAFETY: helpers read kernel state for the current context.
    let (mono_ns, cgroup_id, netns_cookie, socket_cookie) = unsafe {
        (
            bpf_ktime_get_ns(),
            bpf_get_current_cgroup_id(),
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let (family, daddr, v4_mapped) =
        unmap(&mapped, matches!(hook, Hook::Connect6 | Hook::Sendmsg6));
    entry.write(EgressEvent {
        kind: RecordKind::Blocked as u8,
        hook: hook as u8,
        family,
        protocol: protocol as u8,
        dport: u16::from_be(user_port as u16),
        flags: if v4_mapped { FLAG_V4_MAPPED } else { 0 },
        _pad0: 0,
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        mono_ns,
        exec_id,
        ppid,
        quarantine: target.slot,
        cgroup_id,
        netns_cookie,
        socket_cookie,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    });
    entry.submit(0);
    Some(DENY)
}

/// (family, daddr as reported, was v4-mapped on a v6 socket).
#[inline(always)]
fn unmap(mapped: &[u8; 16], v6_hook: bool) -> (u8, [u8; 16], bool) {
    let v4 = mapped[..10].iter().all(|b| *b == 0) && mapped[10] == 0xff && mapped[11] == 0xff;
    let mut daddr = [0u8; 16];
    if v4 {
        daddr[..4].copy_from_slice(&mapped[12..16]);
        (AF_INET, daddr, v6_hook)
    } else {
        (AF_INET6, *mapped, false)
    }
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    let target = skb_target(skb)?;
    let counters = counters(target.slot)?;
    // SAFETY: context pointer; plain __sk_buff field read.
    // skb->protocol is a __be16, widened to u32 in the UAPI context.
    let proto =
        u32::from(u16::from_be(
            unsafe { core::ptr::read_volatile(&raw const (*skb).protocol) } as u16,
        ));
    let mut mapped = [0u8; 16];
    let (family, ip_proto) = if proto == ETH_P_IP {
        // cgroup_skb data starts at the network header.
        let dst: [u8; 4] = ctx.load(16).ok()?;
        let ip_proto: u8 = ctx.load(9).ok()?;
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&dst);
        (AF_INET, ip_proto)
    } else if proto == ETH_P_IPV6 {
        mapped = ctx.load(24).ok()?;
        let next: u8 = ctx.load(6).ok()?;
        (AF_INET6, next)
    } else {
        return Some(ALLOW);
    };
    if allowed(target.slot, &mapped) {
        return Some(ALLOW);
    }
    if target.flags & QUARANTINE_STOP_EXISTING == 0 && !icmp_or_raw_socket(skb) {
        // TCP and UDP sockets: new connects and sends were refused at the
        // sock_addr hooks, so what reaches here belongs to an existing flow,
        // which this quarantine lets continue.
        return Some(ALLOW);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot, migration disabled in cgroup hooks.
    let emit = unsafe {
        (*counters).dropped_packets += 1;
        let due =
            now.wrapping_sub((*counters).last_packet_event_ns) >= QUARANTINE_PACKET_EVENT_GAP_NS;
        if due {
            (*counters).last_packet_event_ns = now;
        }
        due
    };
    if emit {
        match EVENTS.reserve::<EgressEvent>(0) {
            Some(mut entry) => {
                let (_, daddr, _) = unmap(&mapped, false);
                // SAFETY: helper reads the skb's socket cgroup.
                let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
                entry.write(EgressEvent {
                    kind: RecordKind::Blocked as u8,
                    hook: if family == AF_INET {
                        Hook::Sendmsg4 as u8
                    } else {
                        Hook::Sendmsg6 as u8
                    },
                    family,
                    protocol: ip_proto,
                    dport: 0,
                    flags: FLAG_PACKET,
                    _pad0: 0,
                    tgid: 0,
                    pid: 0,
                    uid: 0,
                    gid: 0,
                    mono_ns: now,
                    exec_id: 0,
                    ppid: 0,
                    quarantine: target.slot,
                    cgroup_id,
                    netns_cookie: 0,
                    socket_cookie: 0,
                    daddr,
                    comm: [0u8; 16],
                });
                entry.submit(0);
            }
            // SAFETY: as above.
            None => unsafe { (*counters).ringbuf_full += 1 },
        }
    }
    Some(DENY)
}

/// Ping and raw sockets (and anything not a TCP/UDP socket): what a
/// quarantine always drops at the packet level.
#[inline(always)]
fn icmp_or_raw_socket(skb: *mut __sk_buff) -> bool {
    // SAFETY: the verifier types skb->sk as a nullable sock_common pointer;
    // bpf_sk_fullsock turns it into a full bpf_sock (or null).
    unsafe {
        let sk = core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk);
        if sk.is_null() {
            return true;
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return true;
        }
        let kind = core::ptr::read_volatile(&raw const (*full).type_);
        let protocol = core::ptr::read_volatile(&raw const (*full).protocol);
        !(kind == SOCK_STREAM || kind == SOCK_DGRAM)
            || protocol == IPPROTO_ICMP
            || protocol == IPPROTO_ICMPV6
    }
}
