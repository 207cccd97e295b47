//! The in-kernel ignore list: destination networks whose connection attempts
//! are counted but never sent to userspace.
use std::collections::BTreeSet;

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

/// Trie key for a network: IPv4 networks become IPv4-mapped IPv6 prefixes,
/// matching how the kernel side looks addresses up.
pub fn trie_key(net: &IpNet) -> Key<[u8; 16]> {
    match net {
        IpNet::V4(v4) => Key::new(
            96 + u32::from(v4.prefix_len()),
            v4.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(v6) => Key::new(u32::from(v6.prefix_len()), v6.network().octets()),
    }
}

pub struct IgnoreMap {
    map: LpmTrie<MapData, [u8; 16], u8>,
    current: IgnoreSet,
}

impl IgnoreMap {
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, MapError> {
        Ok(Self {
            map: LpmTrie::try_from(map)?,
            current: IgnoreSet::default(),
        })
    }

    /// Makes the kernel map equal `wanted`, adding before removing so that
    /// traffic meant to be ignored is never briefly let through.
    pub fn replace(&mut self, wanted: &IgnoreSet) -> Result<(), MapError> {
        for net in wanted.iter().filter(|net| !self.current.0.contains(net)) {
            self.map.insert(&trie_key(net), 1, 0)?;
        }
        for net in self.current.iter().filter(|net| !wanted.0.contains(net)) {
            self.map.remove(&trie_key(net))?;
        }
        self.current = wanted.clone();
        Ok(())
    }

    pub fn current(&self) -> &IgnoreSet {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
