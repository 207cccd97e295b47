//! Kernel hooks: flow accounting. Bytes, packets, duration and end state of
//! every outbound TCP connection and UDP socket, one [`FlowEvent`] at the
//! end (and an interim one on the first packet after each interval).
//!
//! - TCP: a `BPF_PROG_TYPE_SOCK_OPS` program (attached to the agent's
//!   cgroup). Why: `struct bpf_sock_ops` is stable UAPI and carries the
//!   kernel's own per-connection counters (`bytes_acked`, `bytes_received`,
//!   `segs_in/out`, `total_retrans`), so nothing is counted per packet. At
//!   `TCP_CONNECT_CB` (process context of connect(), only outbound
//!   connections) it enables the state and RTO callbacks for that socket
//!   alone; at the state change to CLOSE it sends the record. Cost: one
//!   callback per state change and per RTO of tracked sockets only.
//! - UDP: cgroup_skb egress/ingress count datagrams per socket, and
//!   cgroup/sock_release ends the flow. Why: UDP has no kernel counters per
//!   socket, and these hooks see every datagram with its socket. Cost: one
//!   hash lookup per UDP packet. An outgoing TCP segment is checked for a
//!   due interim record (how long-lived TCP flows get them, from
//!   `bpf_tcp_sock`) through a small per-CPU cache first, so a stream's
//!   segments skip the table ([`SEGMENT_CACHE`]); an incoming one costs the
//!   socket check only. Measured: BENCHMARKS.md scenario 10.
//! - `tcp:tcp_receive_reset` (fires only on a RST received, before the
//!   state change) marks the flow, so a RST tells reset/refused from the
//!   orderly close the state change alone cannot.
//!
//! Per-flow state of TCP connections lives in the slot array
//! `EGRET_TCP_SLOTS` ([`TCP_SLOTS`]), of UDP sockets (and of TCP connections
//! whose slot is held) in `EGRET_FLOWS` (bounded hash, entries removed at
//! the end; a full table means a new flow is not tracked, counted in
//! `EGRET_FLOW_COUNTERS`). The interim record of an idle flow comes with its
//! next packet or its end: the kernel has no timer here.
//!
//! Monitor only: every program lets everything through.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock,
    },
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_tcp_sock,
    },
    macros::{cgroup_skb, cgroup_sock, map, sock_ops, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SkBuffContext, SockContext, SockOpsContext, TracePointContext},
};
use egret_common::{
    AF_INET, AF_INET6, FLOW_END_CLOSED, FLOW_END_INTERIM, FLOW_END_REFUSED, FLOW_END_RESET,
    FLOW_END_TIMED_OUT, FLOW_FLAG_STATE_LOST, FLOW_FLAG_V4_MAPPED, FLOW_INTERIM_DEFAULT_NS,
    FLOW_STATE_ESTABLISHED, FLOW_STATE_FIN_IN, FLOW_STATE_FIN_OUT, FLOW_STATE_IGNORED,
    FLOW_STATE_RESET_RX, FLOWS_MAX_ENTRIES, FlowCounters, FlowEvent, FlowState, Hook, HookCounters,
    RecordKind, TCP_SLOTS_MAX_ENTRIES, TP_FIELD_ABSENT,
};

use crate::ignore::{ignored, is_v4_mapped};
use crate::maps::{COUNTERS, EVENTS};
use crate::net::{ALLOW, ETH_P_IP, ETH_P_IPV6, SOCK_DGRAM, skb_full_socket};

/// [`FlowState::flags`] bit local to the kernel: an RTO callback said the
/// retransmissions expired (the kernel is about to give up).
const STATE_TIMED_OUT: u32 = 1 << 5;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const BPF_NOEXIST: u64 = 1;
/// `include/net/tcp_states.h`.
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;
const UDP_HEADER: u32 = 8;
const IPV6_HEADER: u32 = 40;

/// Interim interval in ns (0: none); the agent overrides it at load.
#[unsafe(no_mangle)]
static FLOW_INTERIM_NS: u64 = FLOW_INTERIM_DEFAULT_NS;
/// The slot count of [`TCP_SLOTS`] minus one; the agent overrides it with
/// the map's size (an index past the map finds no slot: the hash then).
#[unsafe(no_mangle)]
static FLOW_TCP_SLOT_MASK: u32 = TCP_SLOTS_MAX_ENTRIES - 1;
/// `sock_cookie` offset in `tcp:tcp_receive_reset` (from tracefs).
#[unsafe(no_mangle)]
static TP_RESET_COOKIE: u32 = 64;

#[map(name = "EGRET_FLOWS")]
static FLOWS: HashMap<u64, FlowState> = HashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

/// A TCP flow's state in [`TCP_SLOTS`]: the slot is the flow's while
/// `cookie` is its socket's (0: free).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpSlot {
    cookie: u64,
    state: FlowState,
}

/// TCP flow state, direct-mapped by the socket cookie's low bits: an array
/// element is found without hashing, a helper call or a lock, where the
/// hash's insert and delete were the costliest part of a short connection
/// (BENCHMARKS.md scenario 10). Cookies are handed out in sequence, so
/// live connections rarely share a slot; one that finds its slot taken
/// goes to `EGRET_FLOWS` instead, as UDP flows do. Two connects claiming
/// one slot at the same instant (their cookies a multiple of the slot
/// count apart) can leave one flow without state: its end is then sent
/// from the kernel's counters and counted (`tcp_state_lost`).
#[map(name = "EGRET_TCP_SLOTS")]
static TCP_SLOTS: Array<TcpSlot> = Array::with_max_entries(TCP_SLOTS_MAX_ENTRIES, 0);

const _: () = assert!(core::mem::size_of::<TcpSlot>() == 128);

/// Where a TCP flow's state is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Home {
    Slot,
    Table,
}

#[inline(always)]
fn tcp_slot(cookie: u64) -> Option<&'static mut TcpSlot> {
    // SAFETY: a plain read of a global the loader sets before load.
    let mask = unsafe { core::ptr::read_volatile(&FLOW_TCP_SLOT_MASK) };
    let slot = TCP_SLOTS.get_ptr_mut((cookie as u32) & mask)?;
    // SAFETY: an array element, valid for the program's run (arrays are
    // never freed under a program); a torn write is the race above.
    Some(unsafe { &mut *slot })
}

/// A new TCP flow's state: its slot, else a table entry; `None` when both
/// are taken (counted by the caller).
#[inline(always)]
fn tcp_insert(cookie: u64, state: &FlowState) -> Option<Home> {
    if let Some(slot) = tcp_slot(cookie)
        && (slot.cookie == 0 || slot.cookie == cookie)
    {
        slot.cookie = cookie;
        slot.state = *state;
        return Some(Home::Slot);
    }
    count_flow(|c| c.tcp_slot_taken += 1);
    FLOWS
        .insert(cookie, *state, BPF_NOEXIST)
        .ok()
        .map(|()| Home::Table)
}

/// A tracked TCP flow's state and where it lives.
#[inline(always)]
fn tcp_find(cookie: u64) -> Option<(&'static mut FlowState, Home)> {
    if let Some(slot) = tcp_slot(cookie)
        && slot.cookie == cookie
    {
        return Some((&mut slot.state, Home::Slot));
    }
    let state = FLOWS.get_ptr_mut(cookie)?;
    // SAFETY: map value pointer, valid during the program.
    Some((unsafe { &mut *state }, Home::Table))
}

/// Frees a TCP flow's state.
#[inline(always)]
fn tcp_remove(cookie: u64, home: Home) {
    match home {
        Home::Slot => {
            if let Some(slot) = tcp_slot(cookie)
                && slot.cookie == cookie
            {
                slot.cookie = 0;
            }
        }
        Home::Table => {
            let _ = FLOWS.remove(cookie);
        }
    }
}

#[map(name = "EGRET_FLOW_COUNTERS")]
static FLOW_COUNTERS: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(1, 0);

/// Slots of [`SEGMENT_CACHE`] (a power of two).
const SEGMENT_SLOTS: u32 = 16;

/// What a CPU last learned about a TCP socket's outgoing segments: when its
/// next interim record can be due ([`NOT_TRACKED`]: never). Kernel-only.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentCache {
    cookie: u64,
    due_ns: u64,
}

const NOT_TRACKED: u64 = u64::MAX;

/// Per CPU, direct-mapped by the cookie's low bits: a bulk stream's
/// segments (and, on loopback, the receiver's ACKs, from another socket)
/// then skip the flow-table lookup until the interval passes. The sock_ops
/// program fills a slot before a socket's first segment (a tracked
/// connect's, on the CPU that sends its SYN; "never" for an accepted
/// socket), so a short connection's segments rarely reach the table. A due time
/// here is never later than the flow's real one (its last report only
/// moves forward), so a hit can delay nothing; tracking is decided at
/// `TCP_CONNECT_CB`, before the socket's first segment, so "not tracked"
/// stays true. A program interrupting another on the same CPU can tear a
/// slot (a cookie with another socket's time): the worst case is one late
/// interim record, never a wrong count.
#[map(name = "EGRET_FLOW_SEGMENTS")]
static SEGMENT_CACHE: PerCpuArray<SegmentCache> = PerCpuArray::with_max_entries(SEGMENT_SLOTS, 0);

/// The socket a connect hook (sock_addr.rs) last reported on this CPU.
/// Kernel-only.
#[map(name = "EGRET_FLOW_REPORTED")]
static REPORTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Called by the connect hooks for every connect they report (not for
/// ignored ones), so `TCP_CONNECT_CB`, which follows in the same syscall,
/// knows the destination is not ignored without a second trie lookup.
#[inline(always)]
pub fn connect_reported(cookie: u64) {
    if let Some(slot) = REPORTED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for the program's run.
        unsafe { *slot = cookie };
    }
}

/// Whether the connect hook reported `cookie` on this CPU just now.
#[inline(always)]
fn reported_here(cookie: u64) -> bool {
    REPORTED.get(0).is_some_and(|last| *last == cookie)
}

/// Notes in this CPU's [`SEGMENT_CACHE`] when `cookie`'s next interim
/// record can be due ([`NOT_TRACKED`]: never).
#[inline(always)]
fn remember_segments(cookie: u64, due_ns: u64) {
    if let Some(slot) = SEGMENT_CACHE.get_ptr_mut((cookie as u32) & (SEGMENT_SLOTS - 1)) {
        // SAFETY: this CPU's slot, valid during the program (see
        // SEGMENT_CACHE for what a concurrent writer on this CPU can do).
        unsafe { *slot = SegmentCache { cookie, due_ns } };
    }
}

#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: reads the coarse monotonic clock, no arguments. It is at
    // most a tick behind `now()`, never ahead.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn interim_ns() -> u64 {
    // SAFETY: a plain read of a global the loader may have overridden.
    unsafe { core::ptr::read_volatile(&FLOW_INTERIM_NS) }
}

#[inline(always)]
fn count(hook: Hook, update: impl FnOnce(&mut HookCounters)) {
    if let Some(counters) = COUNTERS.get_ptr_mut(hook as u32) {
        // SAFETY: this CPU's slot, valid for the program's run (cgroup and
        // sock_ops programs run with migration disabled).
        update(unsafe { &mut *counters });
    }
}

#[inline(always)]
fn count_flow(update: impl FnOnce(&mut FlowCounters)) {
    if let Some(counters) = FLOW_COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in `count`.
        update(unsafe { &mut *counters });
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: reads the monotonic clock, no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// `::ffff:a.b.c.d` for an IPv4 address in network order.
#[inline(always)]
fn mapped_v4(ip4: [u8; 4]) -> [u8; 16] {
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&ip4);
    mapped
}

/// An address as reported: IPv4 in the first four bytes.
#[inline(always)]
fn reported(mapped: &[u8; 16]) -> [u8; 16] {
    if is_v4_mapped(mapped) {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&mapped[12..]);
        out
    } else {
        *mapped
    }
}

#[inline(always)]
fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// Sends one record; counts it in `hook`'s slot.
#[inline(always)]
fn emit(hook: Hook, event: &FlowEvent) {
    let sent = match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
            true
        }
        None => false,
    };
    count(hook, |c| {
        if sent {
            c.emitted += 1;
        } else {
            c.ringbuf_full += 1;
        }
    });
    if sent && event.end == FLOW_END_INTERIM {
        count_flow(|c| c.interim += 1);
    }
}

/// A record from a flow's state and its current totals.
#[inline(always)]
fn record(state: &FlowState, cookie: u64, end: u8, totals: [u64; 4]) -> FlowEvent {
    FlowEvent {
        kind: RecordKind::Flow as u8,
        hook: if state.protocol as u32 == IPPROTO_TCP {
            Hook::TcpFlow as u8
        } else {
            Hook::UdpFlow as u8
        },
        family: state.family,
        protocol: state.protocol,
        end,
        flags: state.event_flags,
        old_state: 0,
        _pad0: 0,
        sport: state.sport,
        dport: state.dport,
        retrans: 0,
        start_ns: state.start_ns,
        mono_ns: now(),
        socket_cookie: cookie,
        bytes_out: totals[0],
        bytes_in: totals[1],
        packets_out: totals[2],
        packets_in: totals[3],
        saddr: state.saddr,
        daddr: state.daddr,
        reports: state.reports,
        _pad1: 0,
    }
}

mod packets;
mod tcp;
