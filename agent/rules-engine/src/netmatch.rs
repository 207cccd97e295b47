//! [`NetMatch`]: an address set prepared for matching events, built
//! straight from list values. Each family keeps its single addresses (an IOC
//! feed's entries) and its networks as sorted arrays with a bucket index on
//! their top bits, so a lookup is two short searches inside one bucket
//! whatever the list's size, and the arrays are 4 bytes a host for IPv4
//! (16 for IPv6) where a hash set took 10–20.
//!
//! Being sorted, the set can also answer "which of its ranges fall inside
//! these few ranges" without being rebuilt: the kernel ignore analysis asks
//! only that ([`NetMatch::within`]), so a million-entry list no longer costs
//! a copy, a complement and a union of a million ranges on every load.
use std::net::IpAddr;

use crate::netset::{MAPPED, NetSet, V4_MAX, intersect, normalize, without_mapped};

/// Below this many keys a plain binary search is as fast as the index.
const INDEX_MIN: usize = 64;
/// Keys per bucket aimed at (a power-of-two bucket count is chosen).
const PER_BUCKET: usize = 4;
/// At most 2^20 buckets (4 MiB of index for a family).
const MAX_BUCKETS: usize = 1 << 20;

/// An address of one family: IPv4 kept as `u32` (4 bytes a host), IPv6 as
/// `u128`; arithmetic is done in `u128`.
pub(crate) trait Addr: Copy + Ord + std::fmt::Debug {
    fn wide(self) -> u128;
    /// `x` is within the family's range (callers only pass such values).
    fn narrow(x: u128) -> Self;
}

impl Addr for u32 {
    fn wide(self) -> u128 {
        u128::from(self)
    }
    fn narrow(x: u128) -> u32 {
        u32::try_from(x).unwrap_or(u32::MAX)
    }
}

impl Addr for u128 {
    fn wide(self) -> u128 {
        self
    }
    fn narrow(x: u128) -> u128 {
        x
    }
}

/// Ascending keys with a bucket index: `starts[k]` is the first key at or
/// above `base + (k << shift)`, so a search stays inside one bucket.
#[derive(Debug, Default)]
struct Sorted<T> {
    keys: Box<[T]>,
    base: u128,
    shift: u32,
    /// Empty below [`INDEX_MIN`] keys; else one entry per bucket, plus the
    /// key count.
    starts: Box<[u32]>,
}

impl<T: Addr> Sorted<T> {
    fn new(keys: Vec<T>) -> Self {
        let keys = keys.into_boxed_slice();
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Sorted::empty(keys);
        };
        if keys.len() < INDEX_MIN || u32::try_from(keys.len()).is_err() {
            return Sorted::empty(keys);
        }
        let base = first.wide();
        let span = last.wide() - base;
        let buckets = (keys.len() / PER_BUCKET)
            .next_power_of_two()
            .min(MAX_BUCKETS) as u128;
        let mut shift = 0;
        while span.checked_shr(shift).unwrap_or(0) >= buckets {
            shift += 1;
        }
        let used = span.checked_shr(shift).unwrap_or(0) as usize + 1;
        let mut starts = Vec::with_capacity(used + 1);
        let mut i = 0;
        for k in 0..used {
            let lo = base + ((k as u128) << shift);
            while keys.get(i).is_some_and(|key| key.wide() < lo) {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(keys.len() as u32);
        Sorted {
            keys,
            base,
            shift,
            starts: starts.into_boxed_slice(),
        }
    }

    fn empty(keys: Box<[T]>) -> Self {
        Sorted {
            keys,
            base: 0,
            shift: 0,
            starts: Box::new([]),
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The first index whose key is at or above `x`.
    fn lower_bound(&self, x: u128) -> usize {
        if self.starts.is_empty() {
            return self.keys.partition_point(|k| k.wide() < x);
        }
        if x <= self.base {
            return 0;
        }
        let k = ((x - self.base) >> self.shift) as usize;
        let (Some(&lo), Some(&hi)) = (self.starts.get(k), self.starts.get(k + 1)) else {
            return self.keys.len();
        };
        let (lo, hi) = (lo as usize, hi as usize);
        lo + self
            .keys
            .get(lo..hi)
            .map_or(0, |b| b.partition_point(|k| k.wide() < x))
    }

    /// The first index whose key is above `x`.
    fn upper_bound(&self, x: u128) -> usize {
        match x.checked_add(1) {
            Some(next) => self.lower_bound(next),
            None => self.keys.len(),
        }
    }
}

/// One family: single addresses, and the disjoint networks (ranges of two
/// addresses or more, as parallel start and end arrays; the index is on the
/// ends). No host is inside or next to a network: the ranges were merged.
#[derive(Debug, Default)]
struct Family<T> {
    hosts: Sorted<T>,
    ends: Sorted<T>,
    starts: Box<[T]>,
}

impl<T: Addr> Family<T> {
    /// `ranges`: disjoint, sorted and merged (as [`normalize`] leaves them).
    fn new(ranges: &[(T, T)]) -> Self {
        let singles = ranges.iter().filter(|(a, b)| a == b).count();
        let mut hosts = Vec::with_capacity(singles);
        let mut starts = Vec::with_capacity(ranges.len() - singles);
        let mut ends = Vec::with_capacity(ranges.len() - singles);
        for &(a, b) in ranges {
            if a == b {
                hosts.push(a);
            } else {
                starts.push(a);
                ends.push(b);
            }
        }
        Family {
            hosts: Sorted::new(hosts),
            ends: Sorted::new(ends),
            starts: starts.into_boxed_slice(),
        }
    }

    fn contains(&self, x: u128) -> bool {
        let i = self.hosts.lower_bound(x);
        if self.hosts.keys.get(i).is_some_and(|h| h.wide() == x) {
            return true;
        }
        let j = self.ends.lower_bound(x);
        self.starts.get(j).is_some_and(|s| s.wide() <= x)
    }

    fn range_count(&self) -> usize {
        self.hosts.len() + self.ends.len()
    }

    /// Appends the parts of the set inside `[a, b]`, sorted; `false` (with
    /// `out` partly filled) once `out` would pass `cap` ranges.
    fn within(&self, a: u128, b: u128, cap: usize, out: &mut Vec<(u128, u128)>) -> bool {
        let (h0, h1) = (self.hosts.lower_bound(a), self.hosts.upper_bound(b));
        if out.len().saturating_add(h1.saturating_sub(h0)) > cap {
            return false;
        }
        let mut hosts = self.hosts.keys.get(h0..h1).unwrap_or(&[]).iter().peekable();
        let mut j = self.ends.lower_bound(a);
        loop {
            let net = match (self.starts.get(j), self.ends.keys.get(j)) {
                (Some(s), Some(e)) if s.wide() <= b => Some((s.wide().max(a), e.wide().min(b))),
                _ => None,
            };
            let next = match (hosts.peek(), net) {
                (Some(h), Some(n)) if h.wide() < n.0 => hosts.next().map(|h| (h.wide(), h.wide())),
                (_, Some(n)) => {
                    j += 1;
                    Some(n)
                }
                (Some(_), None) => hosts.next().map(|h| (h.wide(), h.wide())),
                (None, None) => None,
            };
            let Some(range) = next else { return true };
            if out.len() >= cap {
                return false;
            }
            out.push(range);
        }
    }
}

/// An address set for matching events (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct NetMatch {
    v4: Family<u32>,
    v6: Family<u128>,
}

impl NetMatch {
    /// From ranges in any order, overlapping or not; IPv4-mapped IPv6
    /// ranges move to the IPv4 half, as in [`NetSet`].
    pub fn from_ranges(mut v4: Vec<(u32, u32)>, v6: Vec<(u128, u128)>) -> NetMatch {
        let v6 = normalize(v6);
        for (start, end) in intersect(&v6, &[MAPPED]) {
            v4.push((u32::narrow(start - MAPPED.0), u32::narrow(end - MAPPED.0)));
        }
        let v6 = without_mapped(v6);
        let v4 = normalize(v4);
        NetMatch {
            v4: Family::new(&v4),
            v6: Family::new(&v6),
        }
    }

    /// From a normalized set (tests and small sets).
    #[cfg(test)]
    pub fn new(set: NetSet) -> NetMatch {
        let (v4, v6) = set.ranges();
        NetMatch::from_ranges(
            v4.iter()
                .map(|&(a, b)| (u32::narrow(a), u32::narrow(b)))
                .collect(),
            v6.to_vec(),
        )
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.v4.contains(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => self.v6.contains(u128::from(v6)),
        }
    }

    /// The set's ranges: what bounds the cost of set algebra on it.
    pub fn range_bound(&self) -> usize {
        self.v4.range_count() + self.v6.range_count()
    }

    /// The part of the set inside `window`, or `None` once it would take
    /// more than `cap` ranges (per family): the cost is that of the answer,
    /// not of the set.
    pub fn within(&self, window: &NetSet, cap: usize) -> Option<NetSet> {
        let (w4, w6) = window.ranges();
        let mut v4 = Vec::new();
        for &(a, b) in w4 {
            if !self.v4.within(a, b.min(V4_MAX), cap, &mut v4) {
                return None;
            }
        }
        let mut v6 = Vec::new();
        for &(a, b) in w6 {
            if !self.v6.within(a, b, cap, &mut v6) {
                return None;
            }
        }
        Some(NetSet::from_disjoint(normalize(v4), normalize(v6)))
    }

    /// The whole set again.
    #[cfg(test)]
    pub fn to_set(&self) -> NetSet {
        self.within(&NetSet::all(), usize::MAX).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ipnet::IpNet;

    use super::*;
    use crate::netset::parse_net;

    fn set(items: &[&str]) -> NetSet {
        NetSet::from_nets(items.iter().map(|s| parse_net(s).unwrap()))
    }

    /// The index answers as the plain set does, on hosts, on networks, and
    /// next to both, for IPv4, IPv6 and IPv4-mapped IPv6, small and indexed.
    #[test]
    fn lookup_equals_the_set() {
        for hosts in [3u32, 100, 5000] {
            let mut nets: Vec<IpNet> = (0..hosts)
                .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i * 2))))
                .collect();
            nets.extend((0..hosts).map(|i| {
                format!("2001:db8:{:x}::{:x}/128", i % 7, i * 3)
                    .parse::<IpNet>()
                    .unwrap()
            }));
            nets.extend(
                [
                    "203.0.113.0/25",
                    "2001:db8::/64",
                    "2001:db8:1::7/128",
                    "0.0.0.0/8",
                    "255.255.255.254/31",
                    "::ffff:10.0.0.0/120",
                ]
                .map(|n| n.parse::<IpNet>().unwrap()),
            );
            let set = NetSet::from_nets(nets);
            let indexed = NetMatch::new(set.clone());
            assert_eq!(indexed.to_set(), set);
            let mut probes: Vec<IpAddr> = (0..(hosts * 2 + 10))
                .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)))
                .collect();
            probes.extend((0..hosts * 3 + 5).map(|i| {
                format!("2001:db8:{:x}::{:x}", i % 7, i)
                    .parse::<IpAddr>()
                    .unwrap()
            }));
            probes.extend(
                [
                    "203.0.113.5",
                    "203.0.113.200",
                    "0.0.0.0",
                    "0.255.255.255",
                    "1.0.0.0",
                    "255.255.255.255",
                    "255.255.255.253",
                    "10.0.0.9",
                    "::ffff:10.0.0.9",
                    "10.0.1.0",
                    "2001:db8::1",
                    "2001:db8:1::7",
                    "2001:db8:1::8",
                    "::ffff:198.51.100.2",
                    "::ffff:198.51.100.3",
                    "ffff::1",
                    "::",
                ]
                .map(|a| a.parse::<IpAddr>().unwrap()),
            );
            for ip in probes {
                assert_eq!(
                    indexed.contains(ip),
                    set.contains(ip),
                    "{ip} ({hosts} hosts)"
                );
            }
        }
    }

    /// `within` is the intersection, and refuses answers over the cap.
    #[test]
    fn within_is_the_intersection() {
        let hosts: Vec<IpNet> = (0..1000u32)
            .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 5))))
            .chain(["10.0.2.0/24", "2001:db8::/48"].map(|n| n.parse().unwrap()))
            .collect();
        let full = NetSet::from_nets(hosts);
        let m = NetMatch::new(full.clone());
        for window in [
            set(&[
                "10.0.0.0/30",
                "10.0.2.128/25",
                "10.0.3.0/28",
                "2001:db8::/32",
            ]),
            set(&["0.0.0.0/0"]),
            NetSet::all(),
            NetSet::default(),
            set(&["10.0.0.5"]),
        ] {
            assert_eq!(m.within(&window, usize::MAX), Some(full.intersect(&window)));
        }
        assert_eq!(m.within(&NetSet::all(), 100), None);
        assert_eq!(
            m.within(&set(&["10.0.0.0/28"]), 100)
                .map(|s| s.range_count()),
            Some(4)
        );
    }
}
