//! UAPI numbers and the cgroup program verdicts that more than one hook
//! family needs (`linux/socket.h`, `linux/in.h`, `linux/if_ether.h`).

/// A cgroup program's "let it through" return value.
pub const ALLOW: i32 = 1;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;
pub const ETH_P_IP: u32 = 0x0800;
pub const ETH_P_IPV6: u32 = 0x86dd;
