//! TCP: the sock_ops state callbacks that write a connection's record, and
//! `tcp:tcp_receive_reset` (see the module above for why these hooks).
use super::*;

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
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            // An accepted socket is never tracked: say so to this CPU's
            // segment cache, so its segments skip the table.
            remember_segments(cookie(ctx), NOT_TRACKED);
            Some(())
        }
        BPF_SOCK_OPS_STATE_CB => on_state(ctx, arg0, arg1),
        BPF_SOCK_OPS_RTO_CB => {
            // args: retransmits so far, rto, and whether they expired
            // (tcp_write_timeout: the connection is about to be dropped).
            let _ = arg0;
            if arg2 != 0 {
                let (state, _) = tcp_find(cookie(ctx))?;
                state.flags |= STATE_TIMED_OUT;
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
    let cookie = cookie(ctx);
    // The connect hook ran just before, in this syscall: if it reported
    // this socket here, the destination is not ignored and the trie can be
    // skipped. Otherwise (it ignored the connect, or the thread moved to
    // another CPU in between) the trie decides, as that hook did.
    if !super::reported_here(cookie) && ignored(&mapped) {
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
    let Some(home) = tcp_insert(cookie, &state) else {
        count_flow(|c| c.tcp_table_full += 1);
        return Some(());
    };
    // The SYN goes out next, on this CPU: its segments find the cache.
    remember_segments(cookie, start.saturating_add(interim_ns()));
    // SAFETY: 4-byte UAPI field read.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).bpf_sock_ops_cb_flags) };
    let wanted = flags | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;
    if ctx.set_cb_flags(wanted as i32).is_err() {
        tcp_remove(cookie, home);
        count_flow(|c| c.cb_flags_failed += 1);
    }
    Some(())
}

/// The handshake completed: what the counters say now is the SYN, not
/// payload.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) -> Option<()> {
    let (state, _) = tcp_find(cookie(ctx))?;
    let (acked, received) = tcp_bytes(ctx);
    state.base_out = acked;
    state.base_in = received;
    state.flags |= FLOW_STATE_ESTABLISHED;
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
pub(super) fn tcp_payload(state: &FlowState, acked: u64, received: u64) -> (u64, u64) {
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
    // Only the transitions that tell a FIN apart, and the end, need the
    // flow's state; the others (SYN_SENT → ESTABLISHED, ESTABLISHED →
    // FIN_WAIT1, CLOSE_WAIT → LAST_ACK…) cost the callback only.
    let noted = matches!(
        (old, new),
        (TCP_FIN_WAIT1, TCP_FIN_WAIT2)
            | (TCP_ESTABLISHED, TCP_CLOSE_WAIT)
            | (TCP_FIN_WAIT1, TCP_CLOSING)
    );
    if !noted && new != TCP_CLOSE {
        return Some(());
    }
    let cookie = cookie(ctx);
    let (acked, received) = tcp_bytes(ctx);
    let Some((state, home)) = tcp_find(cookie) else {
        if new == TCP_CLOSE {
            lost_close(ctx, cookie, old, acked, received);
        }
        return Some(());
    };
    // This socket's callbacks run under its lock, so nothing else writes
    // these fields but the reset tracepoint (a flag bit) and interim
    // reports.
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
    tcp_remove(cookie, home);
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
    let (state, _) = tcp_find(cookie)?;
    state.flags |= FLOW_STATE_RESET_RX;
    Some(())
}
