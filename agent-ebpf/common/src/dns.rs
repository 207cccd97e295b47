//! DNS capture: messages the cgroup_skb DNS programs copy ([`DnsEvent`]).

/// Array of up to [`DNS_PORTS_MAX`] extra DNS ports (u16 host order, 0 =
/// unused slot) the agent fills; port 53 is always DNS.
pub const DNS_PORTS_MAP: &str = "EGRET_DNS_PORTS";
pub const DNS_PORTS_MAX: u32 = 8;
/// Bytes of a DNS message copied into a [`DnsEvent`]: the classic UDP
/// limit, which holds the header, the question and the usual answers. The
/// rest of a longer message is cut (`msg_len` keeps its real length).
pub const DNS_PAYLOAD_BYTES: usize = 512;
/// [`DnsEvent::direction`]: sent by the socket (a query).
pub const DNS_DIR_EGRESS: u8 = 1;
/// [`DnsEvent::direction`]: received by the socket (an answer).
pub const DNS_DIR_INGRESS: u8 = 2;
/// [`DnsEvent::flags`] bit: the message came over TCP (the 2-byte length
/// prefix is stripped; only the first segment's message is copied).
pub const DNS_FLAG_TCP: u8 = 1 << 0;

/// A DNS message seen by the cgroup_skb DNS programs ([`crate::RecordKind::Dns`]).
/// Runs in softirq context for answers, so there are no process fields:
/// the agent joins them by `socket_cookie`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    /// [`crate::RecordKind::Dns`].
    pub kind: u8,
    /// [`crate::Hook::DnsQuery`] or [`crate::Hook::DnsAnswer`].
    pub hook: u8,
    /// [`DNS_DIR_EGRESS`] or [`DNS_DIR_INGRESS`].
    pub direction: u8,
    /// [`crate::AF_INET`] or [`crate::AF_INET6`].
    pub family: u8,
    pub flags: u8,
    pub _pad0: [u8; 3],
    /// Local and remote ports, host byte order.
    pub lport: u16,
    pub rport: u16,
    /// Bytes copied into `payload`.
    pub len: u16,
    /// The DNS message's length on the wire (UDP payload, or the TCP
    /// length prefix).
    pub msg_len: u16,
    pub mono_ns: u64,
    /// The socket's cgroup (`bpf_skb_cgroup_id`): the container.
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    /// Local and remote addresses; IPv4 in the first four bytes.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub payload: [u8; DNS_PAYLOAD_BYTES],
}

const _: () = assert!(core::mem::size_of::<DnsEvent>() == 72 + DNS_PAYLOAD_BYTES);
