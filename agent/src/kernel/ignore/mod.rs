//! The in-kernel ignore list: destination networks whose connection attempts
//! are counted but never sent to userspace. The set is written to the kernel
//! as a minimal verdict table ([`table`]).
use std::collections::BTreeSet;

pub mod table;

use aya::maps::{
    MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;

/// Networks to ignore, normalised (host bits cleared, duplicates removed) so
/// that comparing two sets tells whether the kernel map needs touching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreSet(BTreeSet<IpNet>);

impl IgnoreSet {
    /// Loopback and unspecified: connects there never leave the host.
    pub fn builtin() -> Self {
        ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: impl IntoIterator<Item = IpNet>) {
        self.0.extend(other.into_iter().map(|net| net.trunc()));
    }
}

impl FromIterator<IpNet> for IgnoreSet {
    fn from_iter<T: IntoIterator<Item = IpNet>>(iter: T) -> Self {
        let mut set = IgnoreSet::default();
        set.extend(iter);
        set
    }
}

/// A network in the trie's 128-bit space: IPv4 networks become IPv4-mapped
/// IPv6 prefixes, matching how the kernel side looks addresses up.
pub fn prefix_of(net: &IpNet) -> table::Prefix {
    let (len, octets) = match net {
        IpNet::V4(v4) => (
            96 + u32::from(v4.prefix_len()),
            v4.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.network().octets()),
    };
    table::Prefix {
        len,
        addr: u128::from_be_bytes(octets),
    }
}

/// Trie key for a network.
#[cfg(test)]
fn trie_key(net: &IpNet) -> Key<[u8; 16]> {
    let prefix = prefix_of(net);
    Key::new(prefix.len, prefix.octets())
}

pub struct IgnoreMap {
    map: LpmTrie<MapData, [u8; 16], u8>,
    current: IgnoreSet,
    /// What the kernel map holds: `current` as a verdict table.
    table: table::Table,
}

impl IgnoreMap {
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, MapError> {
        Ok(Self {
            map: LpmTrie::try_from(map)?,
            current: IgnoreSet::default(),
            table: table::Table::new(),
        })
    }

    /// Makes the kernel map ignore exactly `wanted`, in an order that never
    /// ignores an address both the old and the new set emit
    /// ([`table::transition`]). Returns the new table's size. On an error
    /// the map is left part-way; the next reload starts from what was
    /// written.
    pub fn replace(&mut self, wanted: &IgnoreSet) -> Result<usize, MapError> {
        let new = table::build(wanted);
        for step in table::transition(&self.table, &new) {
            match step {
                table::Step::Set(prefix, verdict) => {
                    self.map
                        .insert(&Key::new(prefix.len, prefix.octets()), verdict, 0)?;
                    self.table.insert(prefix, verdict);
                }
                table::Step::Remove(prefix) => {
                    self.map.remove(&Key::new(prefix.len, prefix.octets()))?;
                    self.table.remove(&prefix);
                }
            }
        }
        self.current = wanted.clone();
        Ok(self.table.len())
    }

    pub fn current(&self) -> &IgnoreSet {
        &self.current
    }

    /// Entries in the kernel map.
    pub fn entries(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The networks of `only`'s family that cover everything else in it
    /// (one per prefix bit), as the rule engine's `NetSet` writes them.
    pub fn complement_of(only: IpNet) -> Vec<IpNet> {
        match only {
            IpNet::V4(only) => {
                let base = u32::from(only.network());
                (0..only.prefix_len())
                    .map(|len| {
                        let flipped = base ^ (1 << (31 - len));
                        IpNet::V4(ipnet::Ipv4Net::new(flipped.into(), len + 1).unwrap()).trunc()
                    })
                    .collect()
            }
            IpNet::V6(only) => {
                let base = u128::from(only.network());
                (0..only.prefix_len())
                    .map(|len| {
                        let flipped = base ^ (1 << (127 - len));
                        IpNet::V6(ipnet::Ipv6Net::new(flipped.into(), len + 1).unwrap()).trunc()
                    })
                    .collect()
            }
        }
    }

    /// IPv6 without the IPv4-mapped range, as `NetSet::all()` keeps it.
    pub fn all_v6() -> Vec<IpNet> {
        complement_of("::ffff:0:0/96".parse().unwrap())
    }

    #[test]
    fn ipv4_networks_are_mapped_into_v6_space() {
        let key = trie_key(&"10.1.2.3/8".parse::<IpNet>().unwrap().trunc());
        assert_eq!(key.prefix_len(), 104);
        assert_eq!(
            key.data(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0]
        );
    }

    #[test]
    fn ipv6_networks_are_used_as_is() {
        let key = trie_key(&"2001:db8::/32".parse().unwrap());
        assert_eq!(key.prefix_len(), 32);
        assert_eq!(&key.data()[..4], &[0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn set_normalises_and_dedups() {
        let set: IgnoreSet = ["10.1.2.3/8", "10.0.0.0/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(set.len(), 1);
        assert_eq!(set.iter().next().unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn builtin_has_loopback_and_unspecified() {
        assert_eq!(IgnoreSet::builtin().len(), 4);
    }
}
