//! Sets of addresses, kept as sorted disjoint ranges so that a lookup is one
//! binary search per family whatever the number of CIDRs, and so that the
//! set algebra behind `kernel_ignorable_networks` is exact.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::netmatch::Addr;

pub(crate) const V4_MAX: u128 = u32::MAX as u128;
pub(crate) const V6_MAX: u128 = u128::MAX;
/// `::ffff:0.0.0.0/96`. Mapped addresses are compared as IPv4, so this range
/// never appears in the IPv6 half: keeping it out makes complements and the
/// exported networks agree with how the kernel's trie maps IPv4.
pub(crate) const MAPPED: (u128, u128) = (0xffff_0000_0000, 0xffff_ffff_ffff);

/// Inclusive (start, end).
type Range = (u128, u128);
type Ranges = Vec<Range>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NetSet {
    v4: Ranges,
    v6: Ranges,
}

/// Parses an address or CIDR literal; host bits of a CIDR are cleared.
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        text.parse::<IpNet>().ok().map(|net| net.trunc())
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

impl NetSet {
    pub fn all() -> Self {
        NetSet {
            v4: vec![(0, V4_MAX)],
            v6: without_mapped(vec![(0, V6_MAX)]),
        }
    }

    #[cfg(test)]
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let nets = nets.into_iter();
        // Most feeds are mostly IPv4; sized once rather than doubled.
        let mut v4 = Vec::with_capacity(nets.size_hint().0);
        let mut v6 = Vec::new();
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => v4.push((
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                )),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self::from_ranges(v4, v6)
    }

    #[cfg(test)]
    fn from_ranges(mut v4: Ranges, v6: Ranges) -> Self {
        let v6 = normalize(v6);
        for (start, end) in intersect(&v6, &[MAPPED]) {
            v4.push((start - MAPPED.0, end - MAPPED.0));
        }
        NetSet {
            v4: normalize(v4),
            v6: without_mapped(v6),
        }
    }

    /// From ranges already disjoint, sorted and merged, without mapped
    /// addresses in the IPv6 half.
    pub(crate) fn from_disjoint(v4: Ranges, v6: Ranges) -> Self {
        NetSet { v4, v6 }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Disjoint ranges, IPv4 half then IPv6 half (mapped addresses are in
    /// the IPv4 half as plain IPv4 numbers).
    pub fn ranges(&self) -> (&[Range], &[Range]) {
        (&self.v4, &self.v6)
    }

    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Events are matched through [`crate::netmatch::NetMatch`]; this is the reference it is
    /// tested against.
    #[cfg(test)]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => lookup(&self.v4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => lookup(&self.v6, u128::from(v6)),
        }
    }

    pub fn union(&self, other: &NetSet) -> NetSet {
        let join = |a: &Ranges, b: &Ranges| normalize(a.iter().chain(b).copied().collect());
        NetSet {
            v4: join(&self.v4, &other.v4),
            v6: join(&self.v6, &other.v6),
        }
    }

    pub fn intersect(&self, other: &NetSet) -> NetSet {
        NetSet {
            v4: intersect(&self.v4, &other.v4),
            v6: intersect(&self.v6, &other.v6),
        }
    }

    pub fn complement(&self) -> NetSet {
        NetSet {
            v4: complement(&self.v4, V4_MAX),
            v6: without_mapped(complement(&self.v6, V6_MAX)),
        }
    }

    /// The fewest CIDRs covering exactly this set, IPv4 first.
    #[cfg(test)]
    pub fn to_nets(&self) -> Vec<IpNet> {
        self.to_nets_bounded(usize::MAX).unwrap_or_default()
    }

    /// [`to_nets`](Self::to_nets), or `None` as soon as it takes more than
    /// `max` networks.
    pub fn to_nets_bounded(&self, max: usize) -> Option<Vec<IpNet>> {
        let mut nets = Vec::new();
        for &(start, end) in &self.v4 {
            if nets.len() > max {
                return None;
            }
            for (base, prefix) in cidrs(start, end, 32) {
                // Ranges in the IPv4 half never exceed u32::MAX.
                if let Ok(addr) = u32::try_from(base)
                    && let Ok(net) = Ipv4Net::new(Ipv4Addr::from(addr), prefix)
                {
                    nets.push(IpNet::V4(net));
                }
            }
        }
        for &(start, end) in &self.v6 {
            if nets.len() > max {
                return None;
            }
            for (base, prefix) in cidrs(start, end, 128) {
                if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(base), prefix) {
                    nets.push(IpNet::V6(net));
                }
            }
        }
        (nets.len() <= max).then_some(nets)
    }
}

#[cfg(test)]
fn lookup(ranges: &[(u128, u128)], x: u128) -> bool {
    let i = ranges.partition_point(|&(_, end)| end < x);
    ranges.get(i).is_some_and(|&(start, _)| start <= x)
}

/// Sorts and merges in place: at a million entries a second vector was
/// the largest allocation of a rule load.
pub(crate) fn normalize<T: Addr>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut kept = 0;
    for i in 0..ranges.len() {
        let (start, end) = ranges[i];
        if kept > 0 && start.wide() <= ranges[kept - 1].1.wide().saturating_add(1) {
            ranges[kept - 1].1 = ranges[kept - 1].1.max(end);
        } else {
            ranges[kept] = (start, end);
            kept += 1;
        }
    }
    ranges.truncate(kept);
    ranges
}

pub(crate) fn intersect(a: &[(u128, u128)], b: &[(u128, u128)]) -> Ranges {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while let (Some(&(a0, a1)), Some(&(b0, b1))) = (a.get(i), b.get(j)) {
        let (start, end) = (a0.max(b0), a1.min(b1));
        if start <= end {
            out.push((start, end));
        }
        if a1 < b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn complement(ranges: &[(u128, u128)], max: u128) -> Ranges {
    let mut out = Vec::new();
    let mut next = Some(0u128);
    for &(start, end) in ranges {
        if let Some(from) = next
            && from < start
        {
            out.push((from, start - 1));
        }
        next = end.checked_add(1);
    }
    if let Some(from) = next
        && from <= max
    {
        out.push((from, max));
    }
    out
}

pub(crate) fn without_mapped(ranges: Ranges) -> Ranges {
    // Feeds list no IPv4-mapped ranges: then the ranges are the answer, and
    // a million of them are not copied.
    if !ranges.iter().any(|&(a, b)| a <= MAPPED.1 && b >= MAPPED.0) {
        return ranges;
    }
    intersect(&ranges, &complement(&[MAPPED], V6_MAX))
}

/// Splits an inclusive range into aligned blocks of `bits`-wide addresses.
fn cidrs(mut start: u128, end: u128, bits: u8) -> Vec<(u128, u8)> {
    let mask = |host: u32| {
        if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        }
    };
    let mut out = Vec::new();
    loop {
        let mut host = start.trailing_zeros().min(u32::from(bits));
        while host > 0 && start.saturating_add(mask(host)) > end {
            host -= 1;
        }
        out.push((start, bits - host as u8));
        let block_end = start.saturating_add(mask(host));
        if block_end >= end {
            return out;
        }
        start = block_end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> NetSet {
        NetSet::from_nets(items.iter().map(|s| parse_net(s).unwrap()))
    }

    fn nets(set: &NetSet) -> Vec<String> {
        set.to_nets().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn membership_and_mapping() {
        let s = set(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(s.contains("10.255.0.1".parse().unwrap()));
        assert!(s.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(s.contains("192.168.1.7".parse().unwrap()));
        assert!(!s.contains("192.168.1.8".parse().unwrap()));
        assert!(s.contains("fd12::1".parse().unwrap()));
        assert!(!s.contains("11.0.0.0".parse().unwrap()));
        assert!(!s.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn mapped_cidr_becomes_ipv4() {
        let s = set(&["::ffff:10.0.0.0/104"]);
        assert_eq!(nets(&s), ["10.0.0.0/8"]);
        assert!(s.contains("10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_cleared_and_ranges_merge() {
        let s = set(&["10.1.2.3/8", "11.0.0.0/8"]);
        assert_eq!(nets(&s), ["10.0.0.0/7"]);
    }

    #[test]
    fn algebra() {
        let private = set(&["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
        let ten = set(&["10.0.0.0/8"]);
        assert_eq!(nets(&private.intersect(&ten)), ["10.0.0.0/8"]);
        assert_eq!(private.complement().complement(), private);
        assert!(private.intersect(&private.complement()).is_empty());
        assert_eq!(NetSet::all().complement(), NetSet::default());
        assert_eq!(
            nets(&NetSet::all()).first().map(String::as_str),
            Some("0.0.0.0/0")
        );
        let union = ten.union(&set(&["172.16.0.0/12", "192.168.0.0/16"]));
        assert_eq!(union, private);
    }

    #[test]
    fn full_ipv6_range_splits_around_mapped_space() {
        let all = NetSet::all();
        assert!(
            !all.to_nets()
                .iter()
                .any(|n| n.contains(&"::ffff:1.2.3.4".parse::<IpAddr>().unwrap()))
        );
        assert!(all.contains("::ffff:1.2.3.4".parse().unwrap()));
        assert!(all.contains("2001:db8::".parse().unwrap()));
    }
}
