//! Kernel hooks for the sockets the sock_addr hooks never see: raw IP and
//! ICMP ping sockets (their sends), and packet and raw sockets (their
//! creation).
//!
//! - `cgroup/sock_create` (`BPF_CGROUP_INET_SOCK_CREATE`): runs in the
//!   creating process for every AF_INET/AF_INET6 socket; for raw and ping
//!   sockets it records who owns the socket (by cookie), and it reports raw
//!   socket creation. Context `struct bpf_sock` is stable UAPI.
//! - `cgroup_skb/egress` (`BPF_CGROUP_INET_EGRESS`): sees every packet a
//!   socket sends, with its `bpf_sock` (type, protocol) and the IP header,
//!   so the destination is the one actually sent (an IP_HDRINCL header
//!   included), whatever call sent it (sendto, sendmsg, write, io_uring).
//!   Packets of TCP and UDP sockets leave after three loads.
//! - `syscalls/sys_enter_socket`: AF_PACKET sockets bypass the IP stack and
//!   every cgroup hook; socket(2)'s entry is where they can be seen (field
//!   offsets from tracefs, as for the other syscall tracepoints).
//!
//! Why not BPF LSM `socket_sendmsg`/`socket_post_create`: nicer (process
//! context at the send), but BPF LSM programs cannot be loaded everywhere
//! Egret runs (the reference machine refuses them with EPERM), and these
//! hooks need no kernel struct offsets. Measured cost: BENCHMARKS.md.
//!
//! Sockets created before the agent started have no recorded owner: their
//! packets are reported without process fields (multicast from them, which
//! is what the kernel's own sockets send, is counted as ignored).
//!
//! Monitor only: every program allows.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns,
        },
    },
    macros::{cgroup_skb, cgroup_sock, tracepoint},
    programs::{SkBuffContext, SockContext, TracePointContext},
};
use egret_common::{
    AF_INET, AF_INET6, AF_PACKET, EgressEvent, FLAG_RAW_SOCKET, Hook, RAW_REPORT_GAP_NS, RawFlow,
    RawFlowKey, RawOwner, RecordKind, SOCK_RAW, SocketEvent, TP_FIELD_ABSENT,
};

use crate::maps::{COUNTERS, EVENTS, PROCS, RAW_FLOWS, RAW_OWNERS};
use crate::net::{
    ALLOW, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, SOCK_DGRAM, skb_full_socket,
};

const SOCK_TYPE_MASK: u32 = 0xf;

// sys_enter_socket field offsets; the agent overrides them from tracefs.
#[unsafe(no_mangle)]
static TP_SOCKET_FAMILY: u32 = 16;
#[unsafe(no_mangle)]
static TP_SOCKET_TYPE: u32 = 24;
#[unsafe(no_mangle)]
static TP_SOCKET_PROTOCOL: u32 = 32;

#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: reading our own global; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(value) }
}

/// Raw IP sockets and ICMP ping sockets: what no sock_addr hook sees.
#[inline(always)]
fn raw_or_ping(kind: u32, protocol: u32) -> Option<bool> {
    if kind == SOCK_RAW {
        Some(true)
    } else if kind == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6) {
        Some(false)
    } else {
        None
    }
}

#[inline(always)]
fn count(hook: Hook, update: impl FnOnce(&mut egret_common::HookCounters)) {
    if let Some(counters) = COUNTERS.get_ptr_mut(hook as u32) {
        // SAFETY: this CPU's slot; cgroup and tracepoint programs run with
        // migration disabled.
        update(unsafe { &mut *counters });
    }
}

/// Who is running now: the owner recorded for a socket, or a creator.
#[inline(always)]
fn current_owner(netns_cookie: u64) -> RawOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    let (exec_id, ppid) = PROCS
        .get_ptr(tgid)
        // SAFETY: map value pointer valid during the program.
        .map(|state| unsafe { ((*state).exec_id, (*state).ppid) })
        .unwrap_or((0, 0));
    RawOwner {
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        ppid,
        _pad: 0,
        exec_id,
        // SAFETY: helper reads the current task's cgroup.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    }
}

#[cgroup_sock(sock_create)]
pub fn egret_sock_create(ctx: SockContext) -> i32 {
    let _ = try_sock_create(&ctx);
    ALLOW
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext) -> Option<()> {
    let sk = ctx.sock;
    // SAFETY: context pointer; 4-byte UAPI field reads.
    let (family, kind, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).family),
            core::ptr::read_volatile(&raw const (*sk).type_),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    let raw = raw_or_ping(kind, protocol)?;
    // SAFETY: helpers valid for cgroup/sock programs.
    let (socket_cookie, netns_cookie) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    let owner = current_owner(netns_cookie);
    // A full LRU evicts the oldest socket: its sends then report no process.
    let _ = RAW_OWNERS.insert(socket_cookie, owner, 0);
    if raw {
        emit_socket(&owner, family as u16, kind, protocol, socket_cookie);
    }
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn egret_socket_enter(ctx: TracePointContext) -> u32 {
    let _ = try_socket_enter(&ctx);
    0
}

#[inline(always)]
fn try_socket_enter(ctx: &TracePointContext) -> Option<()> {
    let offset = global(&TP_SOCKET_FAMILY);
    if offset == TP_FIELD_ABSENT {
        return None;
    }
    // SAFETY: offsets from tracefs, inside the tracepoint record.
    let family: u64 = unsafe { ctx.read_at(offset as usize) }.ok()?;
    if family != u64::from(AF_PACKET) {
        return None;
    }
    // SAFETY: as above.
    let (kind, protocol): (u64, u64) = unsafe {
        (
            ctx.read_at(global(&TP_SOCKET_TYPE) as usize).ok()?,
            ctx.read_at(global(&TP_SOCKET_PROTOCOL) as usize).ok()?,
        )
    };
    // The syscall has not run yet: no socket, no cookies.
    let owner = current_owner(0);
    emit_socket(
        &owner,
        AF_PACKET,
        kind as u32 & SOCK_TYPE_MASK,
        protocol as u32,
        0,
    );
    Some(())
}

#[inline(always)]
fn emit_socket(owner: &RawOwner, family: u16, kind: u32, protocol: u32, socket_cookie: u64) {
    let emitted = match EVENTS.reserve::<SocketEvent>(0) {
        Some(mut entry) => {
            entry.write(SocketEvent {
                kind: RecordKind::Socket as u8,
                hook: Hook::SocketCreate as u8,
                family,
                sock_type: kind,
                protocol,
                tgid: owner.tgid,
                pid: owner.pid,
                uid: owner.uid,
                gid: owner.gid,
                ppid: owner.ppid,
                // SAFETY: helper without arguments.
                mono_ns: unsafe { bpf_ktime_get_ns() },
                exec_id: owner.exec_id,
                cgroup_id: owner.cgroup_id,
                netns_cookie: owner.netns_cookie,
                socket_cookie,
                comm: owner.comm,
            });
            entry.submit(0);
            true
        }
        None => false,
    };
    count(Hook::SocketCreate, |c| {
        c.seen += 1;
        if emitted {
            c.emitted += 1;
        } else {
            c.ringbuf_full += 1;
        }
    });
}

#[cgroup_skb(egress)]
pub fn egret_raw_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_raw_egress(&ctx);
    ALLOW
}

enum Outcome {
    Ignored,
    Repeat,
    Emitted,
    RingbufFull,
}

#[inline(always)]
fn try_raw_egress(ctx: &SkBuffContext) -> Option<()> {
    let skb = ctx.skb.skb;
    let (_, kind, protocol) = skb_full_socket(skb)?;
    let raw = raw_or_ping(kind, protocol)?;
    // SAFETY: context pointer; skb->protocol is a __be16 in a u32.
    let proto =
        u32::from(u16::from_be(
            unsafe { core::ptr::read_volatile(&raw const (*skb).protocol) } as u16,
        ));
    let mut mapped = [0u8; 16];
    // cgroup_skb data starts at the network header.
    let (hook, ip_proto) = if proto == ETH_P_IP {
        let dst: [u8; 4] = ctx.load(16).ok()?;
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&dst);
        (Hook::RawSend4, ctx.load::<u8>(9).ok()?)
    } else if proto == ETH_P_IPV6 {
        mapped = ctx.load(24).ok()?;
        (Hook::RawSend6, ctx.load::<u8>(6).ok()?)
    } else {
        return None;
    };
    let outcome = report(ctx, hook, &mapped, raw, ip_proto);
    count(hook, |c| {
        c.seen += 1;
        match outcome {
            Outcome::Ignored => c.ignored += 1,
            Outcome::Repeat => c.repeat_of_connect += 1,
            Outcome::Emitted => c.emitted += 1,
            Outcome::RingbufFull => c.ringbuf_full += 1,
        }
    });
    Some(())
}

#[inline(always)]
fn report(ctx: &SkBuffContext, hook: Hook, mapped: &[u8; 16], raw: bool, ip_proto: u8) -> Outcome {
    // The longest matching prefix's verdict decides (an exception inside
    // an ignored network says emit).
    if crate::ignore::ignored(mapped) {
        return Outcome::Ignored;
    }
    // SAFETY: helpers valid for cgroup_skb programs.
    let (socket_cookie, now) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_ktime_get_ns()) };
    let key = RawFlowKey {
        socket_cookie,
        daddr: *mapped,
    };
    match RAW_FLOWS.get_ptr_mut(key) {
        Some(flow) => {
            // SAFETY: map value pointer valid during the program. Two CPUs
            // sending on one socket at once may lose an increment of this
            // per-pair count; the per-hook counters stay exact.
            let due = unsafe {
                (*flow).sends += 1;
                let due = now.wrapping_sub((*flow).reported_ns) >= RAW_REPORT_GAP_NS;
                if due {
                    (*flow).reported_ns = now;
                }
                due
            };
            if !due {
                return Outcome::Repeat;
            }
        }
        None => {
            let flow = RawFlow {
                reported_ns: now,
                sends: 1,
            };
            // A full LRU evicts the oldest pair, which is then reported
            // again: more events, never fewer.
            let _ = RAW_FLOWS.insert(key, flow, 0);
        }
    }
    // SAFETY: map value read during the program.
    let owner = unsafe { RAW_OWNERS.get(socket_cookie) }.copied();
    if owner.is_none() && is_multicast(mapped) {
        // Kernel sockets (neighbour discovery, IGMP/MLD) have no owner and
        // talk to the link; that is not egress.
        return Outcome::Ignored;
    }
    let Some(mut entry) = EVENTS.reserve::<EgressEvent>(0) else {
        return Outcome::RingbufFull;
    };
    let owner = owner.unwrap_or(RawOwner {
        tgid: 0,
        pid: 0,
        uid: 0,
        gid: 0,
        ppid: 0,
        _pad: 0,
        exec_id: 0,
        cgroup_id: 0,
        netns_cookie: 0,
        comm: [0u8; 16],
    });
    let is_v4 = hook == Hook::RawSend4;
    let mut daddr = [0u8; 16];
    if is_v4 {
        daddr[..4].copy_from_slice(&mapped[12..16]);
    } else {
        daddr = *mapped;
    }
    entry.write(EgressEvent {
        kind: RecordKind::Egress as u8,
        hook: hook as u8,
        family: if is_v4 { AF_INET } else { AF_INET6 },
        protocol: ip_proto,
        // Raw and ping sockets have no destination port.
        dport: 0,
        flags: if raw { FLAG_RAW_SOCKET } else { 0 },
        _pad0: 0,
        tgid: owner.tgid,
        pid: owner.pid,
        uid: owner.uid,
        gid: owner.gid,
        mono_ns: now,
        exec_id: owner.exec_id,
        ppid: owner.ppid,
        quarantine: 0,
        cgroup_id: owner.cgroup_id,
        netns_cookie: owner.netns_cookie,
        socket_cookie,
        daddr,
        comm: owner.comm,
    });
    entry.submit(0);
    Outcome::Emitted
}

/// 224.0.0.0/4 (IPv4-mapped) or ff00::/8.
#[inline(always)]
fn is_multicast(mapped: &[u8; 16]) -> bool {
    let v4 = mapped[..10].iter().all(|b| *b == 0) && mapped[10] == 0xff && mapped[11] == 0xff;
    if v4 {
        mapped[12] & 0xf0 == 0xe0
    } else {
        mapped[0] == 0xff
    }
}
