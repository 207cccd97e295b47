//! Per-packet hooks: cgroup_skb for UDP datagrams and TCP interim records,
//! and cgroup/sock_release for the end of a UDP flow.
use super::{tcp::tcp_payload, *};

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
    // The coarse clock, never ahead of `now()`, can only make a record
    // a tick late here.
    if slot.cookie == cookie && (slot.due_ns == NOT_TRACKED || coarse_now() < slot.due_ns) {
        return None;
    }
    let Some((state, _)) = tcp_find(cookie) else {
        *slot = SegmentCache {
            cookie,
            due_ns: NOT_TRACKED,
        };
        return None;
    };
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
