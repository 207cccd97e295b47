//! DNS capture: the messages sockets send to and receive from DNS ports,
//! so the agent can name the addresses workloads resolved (`fd.sip.name`)
//! and see queries themselves (tunnelling through a private resolver,
//! which no connect-based rule sees).
//!
//! Hooks: `cgroup_skb/egress` (queries) and `cgroup_skb/ingress` (answers),
//! attached to the agent's cgroup like the sock_addr programs. Chosen
//! because they see every packet of every socket in the cgroup subtree,
//! UDP and TCP, IPv4 and IPv6, whatever call sent it (sendmsg, write,
//! io_uring), with the socket's cookie and cgroup, on every kernel Egret
//! supports and without struct offsets. Not merged with
//! `egret_raw_egress` (sockets.rs): cgroup_skb programs multi-attach, and
//! each stays small enough to read; the cost of two programs is measured
//! in BENCHMARKS.md (scenario 9).
//!
//! A non-DNS TCP segment costs the packet's socket (`bpf_sk_fullsock`) and
//! a compare of its peer port against 53 and the configured ports
//! ([`DNS_PORTS`], filled by the agent); no packet bytes are read. A non-DNS
//! UDP datagram costs a protocol check and two or three header loads (the
//! IP protocol, the ports), since UDP sockets may send anywhere. Only a DNS
//! packet touches the counters and the ring buffer.
//!
//! What is copied: up to [`DNS_PAYLOAD_BYTES`] of the DNS message (UDP
//! payload; for TCP the message after the 2-byte length prefix of the
//! segment's first message; a message spread over several segments is cut
//! at the first one's end, and a continuation segment is sent too: the
//! agent counts it as malformed). IPv6 extension headers and IPv4
//! fragments other than the first are not followed (counted as ignored).
//!
//! Answers arrive in softirq context: no process fields are read. The
//! record carries the socket's cookie and cgroup (`bpf_skb_cgroup_id`);
//! the agent joins the process by cookie. `bpf_get_netns_cookie` is not
//! available to cgroup_skb on Linux 6.1, so the agent scopes names by the
//! cgroup's container (or the host) instead.
//!
//! Monitor only: both programs always return "allow".
use aya_ebpf::{
    EbpfContext,
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, map},
    maps::Array,
    programs::SkBuffContext,
};
use egret_common::{
    AF_INET, AF_INET6, DNS_DIR_EGRESS, DNS_DIR_INGRESS, DNS_FLAG_TCP, DNS_PAYLOAD_BYTES,
    DNS_PORTS_MAX, DnsEvent, Hook, RecordKind,
};

use crate::maps::{COUNTERS, EVENTS};
use crate::net::{ALLOW, ETH_P_IP, ETH_P_IPV6, skb_full_socket};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const DNS_PORT: u16 = 53;

/// Extra DNS ports (host order), 0 = unused; see `DNS_PORTS_MAP`.
#[map(name = "EGRET_DNS_PORTS")]
static DNS_PORTS: Array<u16> = Array::with_max_entries(DNS_PORTS_MAX, 0);

#[cgroup_skb(egress)]
pub fn egret_dns_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, true);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn egret_dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, false);
    ALLOW
}

#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    if port == DNS_PORT {
        return true;
    }
    if port == 0 {
        return false;
    }
    let mut i = 0;
    while i < DNS_PORTS_MAX {
        match DNS_PORTS.get(i) {
            Some(p) if *p == port => return true,
            // Slots are filled from the front.
            Some(p) if *p == 0 => return false,
            None => return false,
            _ => {}
        }
        i += 1;
    }
    false
}

enum Outcome {
    /// A DNS-port packet without a message (TCP handshake, ACK), or one
    /// not followed (fragment, extension header).
    Ignored,
    Emitted,
    RingbufFull,
}

#[inline(always)]
fn count(hook: Hook, outcome: Outcome) {
    if let Some(c) = COUNTERS.get_ptr_mut(hook as u32) {
        // SAFETY: this CPU's slot; cgroup_skb runs with migration disabled.
        let c = unsafe { &mut *c };
        c.seen += 1;
        match outcome {
            Outcome::Ignored => c.ignored += 1,
            Outcome::Emitted => c.emitted += 1,
            Outcome::RingbufFull => c.ringbuf_full += 1,
        }
    }
}

#[inline(always)]
fn try_dns(ctx: &SkBuffContext, egress: bool) -> Option<()> {
    let skb = ctx.skb.skb;
    // Every segment of a TCP socket has the socket's peer port, so bulk
    // TCP traffic leaves here after one helper and two socket field reads,
    // without loading packet bytes. A UDP socket can send to any port
    // (sendto, connected or not): its datagrams' headers are read below.
    if let Some((sk, _, protocol)) = skb_full_socket(skb)
        && protocol == u32::from(IPPROTO_TCP)
    {
        // SAFETY: a full socket from the helper; `dst_port` is a UAPI
        // field in network order.
        let port = u16::from_be(unsafe { core::ptr::read_volatile(&raw const (*sk).dst_port) });
        if !is_dns_port(port) {
            return None;
        }
    }
    // SAFETY: context pointer; skb->protocol is a __be16 in a u32.
    let proto =
        u32::from(u16::from_be(
            unsafe { core::ptr::read_volatile(&raw const (*skb).protocol) } as u16,
        ));
    // cgroup_skb data starts at the network header.
    let (family, l4, ip_proto) = if proto == ETH_P_IP {
        let ihl = usize::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
        let ip_proto = ctx.load::<u8>(9).ok()?;
        if ip_proto != IPPROTO_UDP && ip_proto != IPPROTO_TCP {
            return None;
        }
        // Later fragments have no L4 header.
        if u16::from_be(ctx.load::<u16>(6).ok()?) & 0x1fff != 0 {
            return None;
        }
        (AF_INET, ihl, ip_proto)
    } else if proto == ETH_P_IPV6 {
        let next = ctx.load::<u8>(6).ok()?;
        if next != IPPROTO_UDP && next != IPPROTO_TCP {
            return None;
        }
        (AF_INET6, 40usize, next)
    } else {
        return None;
    };
    if !(20..=60).contains(&l4) {
        return None;
    }
    let sport = u16::from_be(ctx.load::<u16>(l4).ok()?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
    let (lport, rport) = if egress {
        (sport, dport)
    } else {
        (dport, sport)
    };
    if !is_dns_port(rport) {
        return None;
    }
    let hook = if egress {
        Hook::DnsQuery
    } else {
        Hook::DnsAnswer
    };
    let outcome = emit(ctx, egress, family, l4, ip_proto, lport, rport);
    count(hook, outcome);
    Some(())
}

#[inline(always)]
fn emit(
    ctx: &SkBuffContext,
    egress: bool,
    family: u8,
    l4: usize,
    ip_proto: u8,
    lport: u16,
    rport: u16,
) -> Outcome {
    let skb_len = ctx.len() as usize;
    let (start, msg_len) = if ip_proto == IPPROTO_UDP {
        let start = l4 + 8;
        (start, skb_len.saturating_sub(start))
    } else {
        let Ok(doff) = ctx.load::<u8>(l4 + 12) else {
            return Outcome::Ignored;
        };
        let start = l4 + usize::from(doff >> 4) * 4;
        // A segment without data (handshake, ACK) has nothing to parse.
        let Ok(prefix) = ctx.load::<u16>(start) else {
            return Outcome::Ignored;
        };
        (start + 2, usize::from(u16::from_be(prefix)))
    };
    let avail = skb_len.saturating_sub(start);
    if avail == 0 || start > 0xffff {
        return Outcome::Ignored;
    }
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        return Outcome::RingbufFull;
    };
    let ev = entry.as_mut_ptr();
    // Bounded for the verifier: 1..=DNS_PAYLOAD_BYTES.
    let n = core::cmp::min(avail, DNS_PAYLOAD_BYTES);
    let n = ((n - 1) & (DNS_PAYLOAD_BYTES - 1)) + 1;
    // SAFETY: `ev` points at a reserved DnsEvent; the payload array holds
    // DNS_PAYLOAD_BYTES and n is at most that.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            start as u32,
            (&raw mut (*ev).payload).cast(),
            n as u32,
        )
    };
    if loaded != 0 {
        entry.discard(0);
        return Outcome::Ignored;
    }
    let mut laddr = [0u8; 16];
    let mut raddr = [0u8; 16];
    let (src_off, dst_off, alen) = if family == AF_INET {
        (12usize, 16usize, 4usize)
    } else {
        (8, 24, 16)
    };
    let (l_off, r_off) = if egress {
        (src_off, dst_off)
    } else {
        (dst_off, src_off)
    };
    if alen == 4 {
        if let (Ok(l), Ok(r)) = (ctx.load::<[u8; 4]>(l_off), ctx.load::<[u8; 4]>(r_off)) {
            laddr[..4].copy_from_slice(&l);
            raddr[..4].copy_from_slice(&r);
        }
    } else if let (Ok(l), Ok(r)) = (ctx.load::<[u8; 16]>(l_off), ctx.load::<[u8; 16]>(r_off)) {
        laddr = l;
        raddr = r;
    }
    // SAFETY: helpers valid for cgroup_skb programs; `ev` is reserved.
    unsafe {
        (*ev).kind = RecordKind::Dns as u8;
        (*ev).hook = if egress {
            Hook::DnsQuery as u8
        } else {
            Hook::DnsAnswer as u8
        };
        (*ev).direction = if egress {
            DNS_DIR_EGRESS
        } else {
            DNS_DIR_INGRESS
        };
        (*ev).family = family;
        (*ev).flags = if ip_proto == IPPROTO_TCP {
            DNS_FLAG_TCP
        } else {
            0
        };
        (*ev)._pad0 = [0; 3];
        (*ev).lport = lport;
        (*ev).rport = rport;
        (*ev).len = n as u16;
        (*ev).msg_len = msg_len.min(0xffff) as u16;
        (*ev).mono_ns = bpf_ktime_get_ns();
        (*ev).cgroup_id = bpf_skb_cgroup_id(ctx.as_ptr().cast());
        (*ev).socket_cookie = bpf_get_socket_cookie(ctx.as_ptr());
        (*ev).laddr = laddr;
        (*ev).raddr = raddr;
    }
    entry.submit(0);
    Outcome::Emitted
}
