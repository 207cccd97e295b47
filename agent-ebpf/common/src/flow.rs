//! Flow accounting: per-connection byte, packet and duration records
//! ([`FlowEvent`]), kept per socket in [`FLOWS_MAP`] while the socket lives.

/// Hash socket cookie → [`FlowState`]: one entry per tracked UDP socket or
/// TCP connection whose [`TCP_SLOTS_MAP`] slot was taken, removed at its end (TCP CLOSE, UDP socket
/// release), so nothing is evicted behind a live flow's back. A plain hash,
/// not an LRU, on purpose: when it is full a *new* flow is not tracked and
/// that is counted ([`FlowCounters`] `tcp_table_full`/`udp_table_full`),
/// where an LRU would silently drop an old flow's counts.
pub const FLOWS_MAP: &str = "EGRET_FLOWS";
/// Capacity of [`FLOWS_MAP`] (preallocated: about 180 bytes per entry
/// with the kernel's per-element overhead, so ~12 MiB).
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;
/// Array of TCP flow states, direct-mapped by socket cookie (the kernel
/// crate's `TcpSlot`: the cookie, then a [`FlowState`]); a connection whose
/// slot is taken uses [`FLOWS_MAP`].
pub const TCP_SLOTS_MAP: &str = "EGRET_TCP_SLOTS";
/// Default slots of [`TCP_SLOTS_MAP`] (a power of two; 128 bytes each,
/// 4 MiB); the agent sizes the map (`kernel.flow_tcp_slots`) and sets
/// [`FLOW_TCP_SLOT_MASK_GLOBAL`] to match.
pub const TCP_SLOTS_MAX_ENTRIES: u32 = 32_768;
const _: () = assert!(TCP_SLOTS_MAX_ENTRIES.is_power_of_two());
/// Global (u32): the slot count minus one, which picks a cookie's slot.
pub const FLOW_TCP_SLOT_MASK_GLOBAL: &str = "FLOW_TCP_SLOT_MASK";
/// Per-CPU [`FlowCounters`] (one slot).
pub const FLOW_COUNTERS_MAP: &str = "EGRET_FLOW_COUNTERS";
/// Global (u64, ns): a live flow gets an interim record on its first packet
/// after this long since its last record; 0 turns interim records off.
pub const FLOW_INTERIM_NS_GLOBAL: &str = "FLOW_INTERIM_NS";
/// Default interim interval (60 s).
pub const FLOW_INTERIM_DEFAULT_NS: u64 = 60_000_000_000;
/// `tcp:tcp_receive_reset` `sock_cookie` offset, from tracefs.
pub const TP_RESET_COOKIE_GLOBAL: &str = "TP_RESET_COOKIE";

/// [`FlowEvent::end`]: not the end, an interim report of a live flow.
pub const FLOW_END_INTERIM: u8 = 0;
/// Orderly end: FINs exchanged (TCP), or the socket was released (UDP).
pub const FLOW_END_CLOSED: u8 = 1;
/// A RST ended an established connection (received, or sent when the
/// application closed with unread data or SO_LINGER 0).
pub const FLOW_END_RESET: u8 = 2;
/// The connect was answered with a RST (nothing listening).
pub const FLOW_END_REFUSED: u8 = 3;
/// The kernel gave up retransmitting (SYN or data), or the application
/// closed a connect that had retransmitted its SYN without an answer.
pub const FLOW_END_TIMED_OUT: u8 = 4;

/// [`FlowEvent::flags`]: a tracked TCP connection ended without its entry
/// in [`FLOWS_MAP`] (should not happen; counted as `tcp_state_lost`): the
/// start time is unknown, the counters are the kernel's own.
pub const FLOW_FLAG_STATE_LOST: u8 = 1 << 0;
/// [`FlowEvent::flags`]: the destination was IPv4-mapped on a v6 socket.
pub const FLOW_FLAG_V4_MAPPED: u8 = 1 << 1;

/// [`FlowState::flags`]: a RST was received (`tcp:tcp_receive_reset`).
pub const FLOW_STATE_RESET_RX: u32 = 1 << 0;
/// [`FlowState::flags`]: the handshake completed.
pub const FLOW_STATE_ESTABLISHED: u32 = 1 << 1;
/// [`FlowState::flags`]: our FIN was acknowledged (it counts one byte of
/// sequence space in `bytes_acked`).
pub const FLOW_STATE_FIN_OUT: u32 = 1 << 2;
/// [`FlowState::flags`]: the peer's FIN reached the full socket (it counts
/// one byte in `bytes_received`).
pub const FLOW_STATE_FIN_IN: u32 = 1 << 3;
/// [`FlowState::flags`]: a UDP socket whose destination is ignored: its
/// packets are not counted and its end is not recorded.
pub const FLOW_STATE_IGNORED: u32 = 1 << 4;

/// Value of [`FLOWS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// bpf_ktime_get_ns at connect (TCP) or first datagram (UDP).
    pub start_ns: u64,
    /// When the last record (interim) was sent; `start_ns` before any.
    pub reported_ns: u64,
    /// TCP: `bytes_acked`/`bytes_received` when the handshake completed
    /// (the SYN's sequence number is not payload). UDP: unused.
    pub base_out: u64,
    pub base_in: u64,
    /// UDP payload bytes and datagrams (TCP reads the kernel's counters).
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// TCP: `bytes_received` on entering FIN_WAIT2 (tells a FIN that
    /// arrived there from a FIN_WAIT2 timewait without one).
    pub rx_at_fin_wait2: u64,
    /// Local and remote address; IPv4 in the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `FLOW_STATE_*` bits.
    pub flags: u32,
    pub family: u8,
    pub protocol: u8,
    /// `FLOW_FLAG_V4_MAPPED` if so.
    pub event_flags: u8,
    pub _pad0: u8,
    /// Interim records sent so far.
    pub reports: u32,
}

/// A flow's end (or an interim report): [`RecordKind::Flow`](crate::RecordKind).
/// Counters are totals since the flow started; an interim record's are the
/// totals so far, so the last record of a flow holds its whole volume.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// [`RecordKind::Flow`](crate::RecordKind).
    pub kind: u8,
    /// [`Hook::TcpFlow`](crate::Hook) or [`Hook::UdpFlow`](crate::Hook).
    pub hook: u8,
    /// [`AF_INET`](crate::AF_INET) or [`AF_INET6`](crate::AF_INET6).
    pub family: u8,
    /// IP protocol: 6 or 17.
    pub protocol: u8,
    /// `FLOW_END_*`.
    pub end: u8,
    /// `FLOW_FLAG_*`.
    pub flags: u8,
    /// TCP: the state the socket left for CLOSE (`TCP_*` numbers); else 0.
    pub old_state: u8,
    pub _pad0: u8,
    /// Local (client) port and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// TCP `total_retrans` (segments retransmitted, SYNs included).
    pub retrans: u32,
    /// bpf_ktime_get_ns at the flow's start; 0 when its state was lost.
    pub start_ns: u64,
    /// bpf_ktime_get_ns when this record was made.
    pub mono_ns: u64,
    pub socket_cookie: u64,
    /// TCP: payload bytes the peer acknowledged / we received in order
    /// (sequence space minus SYN and FIN). UDP: datagram payload bytes.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// TCP: segments sent/received (`segs_out`/`segs_in`, handshake and
    /// pure ACKs included). UDP: datagrams.
    pub packets_out: u64,
    pub packets_in: u64,
    /// Local (client) address and remote address; IPv4 in the first four
    /// bytes, network order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Interim records sent before this one.
    pub reports: u32,
    pub _pad1: u32,
}

/// Value of [`FLOW_COUNTERS_MAP`], summed across CPUs by the agent: what
/// flow accounting could not keep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// A TCP connect found its [`TCP_SLOTS_MAP`] slot taken and
    /// [`FLOWS_MAP`] full: that connection has no flow record (its connect
    /// event is still reported).
    pub tcp_table_full: u64,
    /// A UDP socket's first datagram found [`FLOWS_MAP`] full: not tracked
    /// (each later datagram retries, and counts here again).
    pub udp_table_full: u64,
    /// A tracked TCP connection ended without its entry
    /// ([`FLOW_FLAG_STATE_LOST`]).
    pub tcp_state_lost: u64,
    /// bpf_sock_ops_cb_flags_set failed: the connection is not tracked.
    pub cb_flags_failed: u64,
    /// Tracked TCP connections whose [`TCP_SLOTS_MAP`] slot held a live
    /// flow, kept in [`FLOWS_MAP`] instead (a share of the connections
    /// about the live TCP flows over the slots: a sizing signal, not a loss).
    pub tcp_slot_taken: u64,
    /// Interim records among the emitted ones (TCP and UDP).
    pub interim: u64,
}

const _: () = assert!(core::mem::size_of::<FlowState>() == 120);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 112);
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 48);
