//! Address aggregation: the observed addresses of one family grouped by
//! their network at the widening limit, each group written as the smallest
//! CIDR that covers it. A limit of /32 (/128) keeps one block per address;
//! a wider limit trades unseen addresses allowed for shorter policies, and
//! never allows anything outside the limit's network of a seen address.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The shortest prefixes an aggregate may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widening {
    pub v4: u8,
    pub v6: u8,
}

impl Default for Widening {
    /// One /24 (IPv4) or /64 (IPv6): the subnet a provider's addresses
    /// usually rotate within.
    fn default() -> Self {
        Widening { v4: 24, v6: 64 }
    }
}

/// The covering blocks of `addrs`, sorted, IPv4 first.
pub fn aggregate(addrs: impl IntoIterator<Item = IpAddr>, limit: Widening) -> Vec<IpNet> {
    let mut v4: Vec<u32> = Vec::new();
    let mut v6: Vec<u128> = Vec::new();
    for addr in addrs {
        match addr {
            IpAddr::V4(a) => v4.push(a.to_bits()),
            IpAddr::V6(a) => v6.push(a.to_bits()),
        }
    }
    let mut out: Vec<IpNet> = groups(v4, limit.v4.min(32), 32)
        .into_iter()
        .filter_map(|(bits, len)| Ipv4Net::new(Ipv4Addr::from_bits(bits as u32), len).ok())
        .map(IpNet::V4)
        .collect();
    out.extend(
        groups(v6, limit.v6.min(128), 128)
            .into_iter()
            .filter_map(|(bits, len)| Ipv6Net::new(Ipv6Addr::from_bits(bits), len).ok())
            .map(IpNet::V6),
    );
    out
}

/// Groups `addrs` (of `width` bits) by their top `limit` bits; each group
/// becomes its longest common prefix: (network bits, prefix length).
fn groups<T: Into<u128> + Copy + Ord>(mut addrs: Vec<T>, limit: u8, width: u8) -> Vec<(u128, u8)> {
    addrs.sort_unstable();
    addrs.dedup();
    let shift = u32::from(width - limit);
    let top = |a: u128| if shift >= 128 { 0 } else { a >> shift };
    let mut out = Vec::new();
    let mut i = 0;
    while i < addrs.len() {
        let first: u128 = addrs[i].into();
        let mut j = i + 1;
        while j < addrs.len() && top(addrs[j].into()) == top(first) {
            j += 1;
        }
        // Sorted, so the first and last differ in the most bits.
        let last: u128 = addrs[j - 1].into();
        let differing = 128 - (first ^ last).leading_zeros();
        let len = u32::from(width).saturating_sub(differing) as u8;
        let len = len.max(limit);
        let mask = if len == 0 {
            0
        } else {
            (!0u128 << (128 - u32::from(len))) >> (128 - u32::from(width))
        };
        out.push((first & mask, len));
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(addrs: &[&str], limit: Widening) -> Vec<String> {
        aggregate(addrs.iter().map(|a| a.parse().unwrap()), limit)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn smallest_cover_under_the_limit() {
        let w = Widening::default();
        assert_eq!(agg(&["198.51.100.7"], w), ["198.51.100.7/32"]);
        assert_eq!(
            agg(&["198.51.100.7", "198.51.100.7"], w),
            ["198.51.100.7/32"]
        );
        assert_eq!(
            agg(&["198.51.100.6", "198.51.100.7"], w),
            ["198.51.100.6/31"]
        );
        assert_eq!(
            agg(&["198.51.100.1", "198.51.100.14"], w),
            ["198.51.100.0/28"]
        );
        // Different /24s are never merged.
        assert_eq!(
            agg(&["198.51.100.7", "203.0.113.9", "198.51.100.200"], w),
            ["198.51.100.0/24", "203.0.113.9/32"]
        );
        assert_eq!(
            agg(
                &[
                    "2001:db8::1",
                    "2001:db8::3",
                    "2001:db8:1::1",
                    "198.51.100.7"
                ],
                w
            ),
            ["198.51.100.7/32", "2001:db8::/126", "2001:db8:1::1/128"]
        );
    }

    #[test]
    fn limits_at_the_edges() {
        let exact = Widening { v4: 32, v6: 128 };
        assert_eq!(
            agg(&["198.51.100.6", "198.51.100.7", "2001:db8::1"], exact),
            ["198.51.100.6/32", "198.51.100.7/32", "2001:db8::1/128"]
        );
        let any = Widening { v4: 0, v6: 0 };
        assert_eq!(
            agg(&["0.0.0.1", "255.255.255.255", "::", "ffff::"], any),
            ["0.0.0.0/0", "::/0"]
        );
        assert_eq!(agg(&["0.0.0.0", "0.0.0.0"], any), ["0.0.0.0/32"]);
    }

    #[test]
    fn every_address_is_covered() {
        let mut seed = 7u64;
        for limit in [0u8, 8, 16, 24, 28, 32] {
            let addrs: Vec<IpAddr> = (0..200)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    IpAddr::V4(Ipv4Addr::from_bits((seed >> 32) as u32 & 0xc0ff_00ff))
                })
                .collect();
            let nets = aggregate(addrs.iter().copied(), Widening { v4: limit, v6: 64 });
            for a in &addrs {
                assert_eq!(
                    nets.iter().filter(|n| n.contains(a)).count(),
                    1,
                    "{a} /{limit}"
                );
            }
            assert!(nets.iter().all(|n| n.prefix_len() >= limit));
        }
    }
}
