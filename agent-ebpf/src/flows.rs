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
//! Per-flow state lives in `EGRET_FLOWS` (bounded hash, entries removed at
//! the end; a full table means a new flow is not tracked, counted in
//! `EGRET_FLOW_COUNTERS`). The interim record of an idle flow comes with its
//! next packet or its end: the kernel has no timer here.
//!
//! Monitor only: every program lets everything through.
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_tcp_sock},
    macros::{cgroup_skb, cgroup_sock, map, sock_ops, tracepoint},
    maps::{HashMap, PerCpuArray, lpm_trie::Key},
    programs::{SkBuffContext, SockContext, SockOpsContext, TracePointContext},
};
use egret_common::{
    AF_INET, AF_INET6, FLOW_END_CLOSED, FLOW_END_INTERIM, FLOW_END_REFUSED, FLOW_END_RESET,
    FLOW_END_TIMED_OUT, FLOW_FLAG_STATE_LOST, FLOW_FLAG_V4_MAPPED, FLOW_INTERIM_DEFAULT_NS,
    FLOW_STATE_ESTABLISHED, FLOW_STATE_FIN_IN, FLOW_STATE_FIN_OUT, FLOW_STATE_IGNORED,
    FLOW_STATE_RESET_RX, FLOWS_MAX_ENTRIES, FlowCounters, FlowEvent, FlowState, Hook, HookCounters,
    IGNORE_VERDICT_IGNORE, RecordKind, TP_FIELD_ABSENT,
};

use crate::maps::{COUNTERS, EVENTS, IGNORE};
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
/// `sock_cookie` offset in `tcp:tcp_receive_reset` (from tracefs).
#[unsafe(no_mangle)]
static TP_RESET_COOKIE: u32 = 64;

#[map(name = "EGRET_FLOWS")]
static FLOWS: HashMap<u64, FlowState> = HashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

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
/// then skip the flow-table lookup until the interval passes. A due time
/// here is never later than the flow's real one (its last report only
/// moves forward), so a hit can delay nothing; tracking is decided at
/// `TCP_CONNECT_CB`, before the socket's first segment, so "not tracked"
/// stays true. A program interrupting another on the same CPU can tear a
/// slot (a cookie with another socket's time): the worst case is one late
/// interim record, never a wrong count.
#[map(name = "EGRET_FLOW_SEGMENTS")]
static SEGMENT_CACHE: PerCpuArray<SegmentCache> = PerCpuArray::with_max_entries(SEGMENT_SLOTS, 0);

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

#[inline(always)]
fn ignored(mapped: &[u8; 16]) -> bool {
    IGNORE
        .get(Key::new(128, *mapped))
        .is_some_and(|verdict| *verdict == IGNORE_VERDICT_IGNORE)
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

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
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

// ---------------------------------------------------------------- TCP

#[sock_ops]
pub fn egret_flow_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    1
}

#[inline(always)]
fn try_sockops(ctx: &SockOpsContext) -> Option<()> {
    let ops = ctx.ops;
    // SAFETY: the context pointer; `op` and `args` are 4-byte UAPI fields.
    let (op, arg0, arg1, arg2) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).op),
            core::ptr::read_volatile(&raw const (*ops).__bindgen_anon_1.args[0]),
            core::ptr::read_volatile(&raw const (*ops).__bindgen_anon_1.args[1]),
            core::ptr::read_volatile(&raw const (*ops).__bindgen_anon_1.args[2]),
        )
    };
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ctx),
        BPF_SOCK_OPS_STATE_CB => on_state(ctx, arg0, arg1),
        BPF_SOCK_OPS_RTO_CB => {
            // args: retransmits so far, rto, and whether they expired
            // (tcp_write_timeout: the connection is about to be dropped).
            let _ = arg0;
            if arg2 != 0 {
                let state = FLOWS.get_ptr_mut(cookie(ctx))?;
                // SAFETY: map value pointer, valid during the program.
                unsafe { (*state).flags |= STATE_TIMED_OUT };
            }
            Some(())
        }
        _ => Some(()),
    }
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: sock_ops contexts have a socket cookie.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// (local, remote, family, v4-mapped flag) from the socket's addresses.
#[inline(always)]
fn sockops_addrs(ctx: &SockOpsContext) -> ([u8; 16], [u8; 16], u8, u8) {
    let ops = ctx.ops;
    // SAFETY: 4-byte UAPI field reads from the context.
    let family = unsafe { core::ptr::read_volatile(&raw const (*ops).family) };
    if family == u32::from(AF_INET) {
        // SAFETY: as above.
        let (local, remote) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*ops).local_ip4),
                core::ptr::read_volatile(&raw const (*ops).remote_ip4),
            )
        };
        let mut l = [0u8; 16];
        let mut r = [0u8; 16];
        l[..4].copy_from_slice(&local.to_ne_bytes());
        r[..4].copy_from_slice(&remote.to_ne_bytes());
        return (l, r, AF_INET, 0);
    }
    let mut local = [0u32; 4];
    let mut remote = [0u32; 4];
    for i in 0..4 {
        // SAFETY: as above; i < 4.
        unsafe {
            local[i] = core::ptr::read_volatile(&raw const (*ops).local_ip6[i]);
            remote[i] = core::ptr::read_volatile(&raw const (*ops).remote_ip6[i]);
        }
    }
    let local = words_to_bytes(local);
    let remote = words_to_bytes(remote);
    if is_v4_mapped(&remote) {
        (
            reported(&local),
            reported(&remote),
            AF_INET,
            FLOW_FLAG_V4_MAPPED,
        )
    } else {
        (local, remote, AF_INET6, 0)
    }
}

#[inline(always)]
fn sockops_ports(ctx: &SockOpsContext) -> (u16, u16) {
    let ops = ctx.ops;
    // SAFETY: 4-byte UAPI field reads. local_port is host order,
    // remote_port network order in the low 16 bits' place (bpf.h).
    unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).local_port) as u16,
            u32::from_be(core::ptr::read_volatile(&raw const (*ops).remote_port)) as u16,
        )
    }
}

/// connect() on a TCP socket: track it unless its destination is ignored.
#[inline(always)]
fn on_connect(ctx: &SockOpsContext) -> Option<()> {
    let (saddr, daddr, family, event_flags) = sockops_addrs(ctx);
    let mapped = if family == AF_INET {
        let mut v4 = [0u8; 4];
        v4.copy_from_slice(&daddr[..4]);
        mapped_v4(v4)
    } else {
        daddr
    };
    count(Hook::TcpFlow, |c| c.seen += 1);
    if ignored(&mapped) {
        count(Hook::TcpFlow, |c| c.ignored += 1);
        return Some(());
    }
    let (sport, dport) = sockops_ports(ctx);
    let start = now();
    let state = FlowState {
        start_ns: start,
        reported_ns: start,
        saddr,
        daddr,
        sport,
        dport,
        family,
        protocol: IPPROTO_TCP as u8,
        event_flags,
        ..FlowState::default()
    };
    let cookie = cookie(ctx);
    if FLOWS.insert(cookie, state, BPF_NOEXIST).is_err() {
        count_flow(|c| c.tcp_table_full += 1);
        return Some(());
    }
    // SAFETY: 4-byte UAPI field read.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).bpf_sock_ops_cb_flags) };
    let wanted = flags | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;
    if ctx.set_cb_flags(wanted as i32).is_err() {
        let _ = FLOWS.remove(cookie);
        count_flow(|c| c.cb_flags_failed += 1);
    }
    Some(())
}

/// The handshake completed: what the counters say now is the SYN, not
/// payload.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) -> Option<()> {
    let state = FLOWS.get_ptr_mut(cookie(ctx))?;
    let (acked, received) = tcp_bytes(ctx);
    // SAFETY: map value pointer, valid during the program.
    unsafe {
        (*state).base_out = acked;
        (*state).base_in = received;
        (*state).flags |= FLOW_STATE_ESTABLISHED;
    }
    Some(())
}

#[inline(always)]
fn tcp_bytes(ctx: &SockOpsContext) -> (u64, u64) {
    // SAFETY: 8-byte UAPI fields (the verifier allows u64 loads of these).
    unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ops).bytes_acked),
            core::ptr::read_volatile(&raw const (*ctx.ops).bytes_received),
        )
    }
}

/// Payload totals from sequence-space counters: the handshake's counts
/// (`base_*`) and each FIN (one sequence number) taken out.
#[inline(always)]
fn tcp_payload(state: &FlowState, acked: u64, received: u64) -> (u64, u64) {
    if state.flags & FLOW_STATE_ESTABLISHED == 0 {
        return (0, 0);
    }
    let fin_out = u64::from(state.flags & FLOW_STATE_FIN_OUT != 0);
    let fin_in = u64::from(state.flags & FLOW_STATE_FIN_IN != 0);
    (
        acked.saturating_sub(state.base_out).saturating_sub(fin_out),
        received
            .saturating_sub(state.base_in)
            .saturating_sub(fin_in),
    )
}

#[inline(always)]
fn on_state(ctx: &SockOpsContext, old: u32, new: u32) -> Option<()> {
    let cookie = cookie(ctx);
    let (acked, received) = tcp_bytes(ctx);
    let Some(state) = FLOWS.get_ptr_mut(cookie) else {
        if new == TCP_CLOSE {
            lost_close(ctx, cookie, old, acked, received);
        }
        return Some(());
    };
    // SAFETY: map value pointer, valid during the program; this socket's
    // callbacks run under its lock, so nothing else writes these fields
    // but the reset tracepoint (a flag bit) and interim reports.
    let state = unsafe { &mut *state };
    // Which FINs the counters include, from the transitions only a FIN
    // (ours acknowledged, or the peer's received) causes.
    match (old, new) {
        (TCP_FIN_WAIT1, TCP_FIN_WAIT2) => {
            state.flags |= FLOW_STATE_FIN_OUT;
            state.rx_at_fin_wait2 = received;
        }
        (TCP_ESTABLISHED, TCP_CLOSE_WAIT) | (TCP_FIN_WAIT1, TCP_CLOSING) => {
            state.flags |= FLOW_STATE_FIN_IN;
        }
        (TCP_CLOSING, TCP_CLOSE) | (TCP_LAST_ACK, TCP_CLOSE) => {
            state.flags |= FLOW_STATE_FIN_OUT;
        }
        // tcp_time_wait() closes the full socket from FIN_WAIT2 both when
        // the peer's FIN arrived (then bytes_received grew by it) and when
        // an orphaned socket moves to a FIN_WAIT2 timewait without one.
        (TCP_FIN_WAIT2, TCP_CLOSE) if received > state.rx_at_fin_wait2 => {
            state.flags |= FLOW_STATE_FIN_IN;
        }
        _ => {}
    }
    if new != TCP_CLOSE {
        return Some(());
    }
    let end = if state.flags & FLOW_STATE_RESET_RX != 0 {
        if state.flags & FLOW_STATE_ESTABLISHED != 0 {
            FLOW_END_RESET
        } else {
            FLOW_END_REFUSED
        }
    } else if state.flags & STATE_TIMED_OUT != 0 {
        FLOW_END_TIMED_OUT
    } else if old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT {
        // Straight to CLOSE without a RST received: we sent one (close()
        // with unread data, SO_LINGER 0, or a disconnect).
        FLOW_END_RESET
    } else {
        FLOW_END_CLOSED
    };
    let (out, inb) = tcp_payload(state, acked, received);
    let (segs_out, segs_in, retrans) = tcp_segs(ctx);
    let mut event = record(state, cookie, end, [out, inb, segs_out, segs_in]);
    event.old_state = old as u8;
    event.retrans = retrans;
    emit(Hook::TcpFlow, &event);
    let _ = FLOWS.remove(cookie);
    Some(())
}

#[inline(always)]
fn tcp_segs(ctx: &SockOpsContext) -> (u64, u64, u32) {
    // SAFETY: 4-byte UAPI field reads.
    unsafe {
        (
            u64::from(core::ptr::read_volatile(&raw const (*ctx.ops).segs_out)),
            u64::from(core::ptr::read_volatile(&raw const (*ctx.ops).segs_in)),
            core::ptr::read_volatile(&raw const (*ctx.ops).total_retrans),
        )
    }
}

/// A tracked connection closed but its entry is gone: report what the
/// socket itself still knows, flagged, and count it.
#[inline(always)]
fn lost_close(ctx: &SockOpsContext, cookie: u64, old: u32, acked: u64, received: u64) {
    count_flow(|c| c.tcp_state_lost += 1);
    let (saddr, daddr, family, event_flags) = sockops_addrs(ctx);
    let (sport, dport) = sockops_ports(ctx);
    let state = FlowState {
        saddr,
        daddr,
        sport,
        dport,
        family,
        protocol: IPPROTO_TCP as u8,
        event_flags: event_flags | FLOW_FLAG_STATE_LOST,
        ..FlowState::default()
    };
    let (segs_out, segs_in, retrans) = tcp_segs(ctx);
    let end = if old == TCP_SYN_SENT {
        FLOW_END_REFUSED
    } else {
        FLOW_END_CLOSED
    };
    let mut event = record(&state, cookie, end, [acked, received, segs_out, segs_in]);
    event.old_state = old as u8;
    event.retrans = retrans;
    emit(Hook::TcpFlow, &event);
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn egret_flow_reset(ctx: TracePointContext) -> u32 {
    let _ = try_reset(&ctx);
    0
}

#[inline(always)]
fn try_reset(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: a plain read of a global the loader may have overridden.
    let offset = unsafe { core::ptr::read_volatile(&TP_RESET_COOKIE) };
    if offset == TP_FIELD_ABSENT {
        return None;
    }
    // SAFETY: reads 8 bytes of the tracepoint record at a tracefs offset.
    let cookie: u64 = unsafe { ctx.read_at(offset as usize) }.ok()?;
    let state = FLOWS.get_ptr_mut(cookie)?;
    // SAFETY: map value pointer, valid during the program.
    unsafe { (*state).flags |= FLOW_STATE_RESET_RX };
    Some(())
}

// ---------------------------------------------------------------- packets

#[cgroup_skb(egress)]
pub fn egret_flow_egress(ctx: SkBuffContext) -> i32 {
    let _ = on_packet(&ctx, true);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn egret_flow_ingress(ctx: SkBuffContext) -> i32 {
    let _ = on_packet(&ctx, false);
    ALLOW
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, egress: bool) -> Option<()> {
    let skb = ctx.skb.skb;
    let (sk, kind, protocol) = skb_full_socket(skb)?;
    if protocol == IPPROTO_TCP {
        return if egress { tcp_interim(ctx, sk) } else { None };
    }
    if protocol != IPPROTO_UDP || kind != SOCK_DGRAM {
        return None;
    }
    // SAFETY: the packet's socket has a cookie.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    let (payload, family) = udp_payload(ctx)?;
    let state = match FLOWS.get_ptr_mut(cookie) {
        Some(state) => state,
        None if egress => return udp_start(ctx, cookie, family, payload),
        // Inbound-only sockets (servers) are not outbound flows.
        None => return None,
    };
    // SAFETY: map value pointer, valid during the program. Two CPUs may
    // update one socket's counts at once (a send and a receive): a lost
    // increment is possible there, an unsafe access is not.
    let state = unsafe { &mut *state };
    if state.flags & FLOW_STATE_IGNORED != 0 {
        return None;
    }
    if egress {
        state.bytes_out += u64::from(payload);
        state.packets_out += 1;
    } else {
        state.bytes_in += u64::from(payload);
        state.packets_in += 1;
    }
    let now = now();
    let every = interim_ns();
    if every != 0 && now.saturating_sub(state.reported_ns) >= every {
        let totals = [
            state.bytes_out,
            state.bytes_in,
            state.packets_out,
            state.packets_in,
        ];
        let event = record(state, cookie, FLOW_END_INTERIM, totals);
        state.reported_ns = now;
        state.reports += 1;
        emit(Hook::UdpFlow, &event);
    }
    Some(())
}

/// UDP payload bytes of the packet (IPv6 extension headers are counted as
/// payload) and its family.
#[inline(always)]
fn udp_payload(ctx: &SkBuffContext) -> Option<(u32, u8)> {
    let skb = ctx.skb.skb;
    // SAFETY: 4-byte context field reads.
    let (proto, len) = unsafe {
        (
            u32::from(u16::from_be(
                core::ptr::read_volatile(&raw const (*skb).protocol) as u16,
            )),
            core::ptr::read_volatile(&raw const (*skb).len),
        )
    };
    if proto == ETH_P_IP {
        let ihl = u32::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
        Some((len.saturating_sub(ihl + UDP_HEADER), AF_INET))
    } else if proto == ETH_P_IPV6 {
        Some((len.saturating_sub(IPV6_HEADER + UDP_HEADER), AF_INET6))
    } else {
        None
    }
}

/// A UDP socket's first datagram out: its flow starts, with the addresses
/// of this datagram (an unconnected socket is one flow, named after the
/// first peer it sent to).
#[inline(always)]
fn udp_start(ctx: &SkBuffContext, cookie: u64, family: u8, payload: u32) -> Option<()> {
    let (saddr_mapped, daddr_mapped, l4) = if family == AF_INET {
        let ihl = usize::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
        let src: [u8; 4] = ctx.load(12).ok()?;
        let dst: [u8; 4] = ctx.load(16).ok()?;
        (mapped_v4(src), mapped_v4(dst), ihl)
    } else {
        let src: [u8; 16] = ctx.load(8).ok()?;
        let dst: [u8; 16] = ctx.load(24).ok()?;
        (src, dst, IPV6_HEADER as usize)
    };
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    count(Hook::UdpFlow, |c| c.seen += 1);
    let start = now();
    let mut state = FlowState {
        start_ns: start,
        reported_ns: start,
        bytes_out: u64::from(payload),
        packets_out: 1,
        saddr: reported(&saddr_mapped),
        daddr: reported(&daddr_mapped),
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        family,
        protocol: IPPROTO_UDP as u8,
        ..FlowState::default()
    };
    if ignored(&daddr_mapped) {
        // Kept (flagged) so the socket's later packets skip the trie.
        state.flags = FLOW_STATE_IGNORED;
        count(Hook::UdpFlow, |c| c.ignored += 1);
    }
    if FLOWS.insert(cookie, state, BPF_NOEXIST).is_err() {
        count_flow(|c| c.udp_table_full += 1);
    }
    Some(())
}

/// A TCP segment out of a tracked connection: an interim record if the
/// interval has passed, with the kernel's counters from `bpf_tcp_sock`.
#[inline(always)]
fn tcp_interim(ctx: &SkBuffContext, sk: *mut bpf_sock) -> Option<()> {
    let every = interim_ns();
    if every == 0 {
        return None;
    }
    // SAFETY: the packet's socket has a cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let slot = SEGMENT_CACHE.get_ptr_mut((cookie as u32) & (SEGMENT_SLOTS - 1))?;
    // SAFETY: this CPU's slot, valid during the program (see SEGMENT_CACHE
    // for what a concurrent writer on this CPU can do).
    let slot = unsafe { &mut *slot };
    if slot.cookie == cookie && (slot.due_ns == NOT_TRACKED || now() < slot.due_ns) {
        return None;
    }
    let Some(state) = FLOWS.get_ptr_mut(cookie) else {
        *slot = SegmentCache {
            cookie,
            due_ns: NOT_TRACKED,
        };
        return None;
    };
    // SAFETY: map value pointer, valid during the program.
    let state = unsafe { &mut *state };
    let now = now();
    if now.saturating_sub(state.reported_ns) < every {
        *slot = SegmentCache {
            cookie,
            due_ns: state.reported_ns.saturating_add(every),
        };
        return None;
    }
    // SAFETY: `sk` is a full socket pointer; the helper checks it is TCP.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return None;
    }
    // SAFETY: fields of the bpf_tcp_sock the helper returned.
    let (acked, received, segs_out, segs_in, retrans) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*tp).bytes_acked),
            core::ptr::read_volatile(&raw const (*tp).bytes_received),
            u64::from(core::ptr::read_volatile(&raw const (*tp).segs_out)),
            u64::from(core::ptr::read_volatile(&raw const (*tp).segs_in)),
            core::ptr::read_volatile(&raw const (*tp).total_retrans),
        )
    };
    let (out, inb) = tcp_payload(state, acked, received);
    let mut event = record(
        state,
        cookie,
        FLOW_END_INTERIM,
        [out, inb, segs_out, segs_in],
    );
    event.retrans = retrans;
    state.reported_ns = now;
    state.reports += 1;
    *slot = SegmentCache {
        cookie,
        due_ns: now.saturating_add(every),
    };
    emit(Hook::TcpFlow, &event);
    Some(())
}

// ---------------------------------------------------------------- UDP end

#[cgroup_sock(sock_release)]
pub fn egret_flow_release(ctx: SockContext) -> i32 {
    let _ = try_release(&ctx);
    ALLOW
}

#[inline(always)]
fn try_release(ctx: &SockContext) -> Option<()> {
    // SAFETY: 4-byte UAPI field read from the context socket.
    let protocol = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock).protocol) };
    if protocol != IPPROTO_UDP {
        // TCP flows end at CLOSE, which may come after the release.
        return None;
    }
    // SAFETY: sock contexts have a socket cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let state = FLOWS.get_ptr(cookie)?;
    // SAFETY: map value pointer, valid during the program.
    let state = unsafe { *state };
    if state.flags & FLOW_STATE_IGNORED == 0 {
        let totals = [
            state.bytes_out,
            state.bytes_in,
            state.packets_out,
            state.packets_in,
        ];
        let event = record(&state, cookie, FLOW_END_CLOSED, totals);
        emit(Hook::UdpFlow, &event);
    }
    let _ = FLOWS.remove(cookie);
    Some(())
}
