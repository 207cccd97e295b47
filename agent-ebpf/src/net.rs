//! UAPI numbers and the cgroup program verdicts that more than one hook
//! family needs (`linux/socket.h`, `linux/in.h`, `linux/if_ether.h`), and
//! the packet's socket for the cgroup_skb programs.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::bpf_sk_fullsock,
};

/// A cgroup program's "let it through" return value.
pub const ALLOW: i32 = 1;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;
pub const ETH_P_IP: u32 = 0x0800;
pub const ETH_P_IPV6: u32 = 0x86dd;

/// The packet's full socket: (pointer, type, protocol).
#[inline(always)]
pub fn skb_full_socket(skb: *mut __sk_buff) -> Option<(*mut bpf_sock, u32, u32)> {
    // SAFETY: `sk` is a context field the verifier types as a nullable
    // socket pointer; the fullsock helper checks it.
    unsafe {
        let sk = core::ptr::read_volatile(&raw const (*skb).__bindgen_anon_2.sk);
        if sk.is_null() {
            return None;
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return None;
        }
        Some((
            full,
            core::ptr::read_volatile(&raw const (*full).type_),
            core::ptr::read_volatile(&raw const (*full).protocol),
        ))
    }
}
