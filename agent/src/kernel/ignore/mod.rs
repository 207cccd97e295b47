//! The in-kernel ignore list: destination networks whose connection attempts
//! are counted but never sent to userspace. The set is written to the kernel
//! as a minimal verdict table ([`table`]) with heads and blocks in front of
//! it that hold the same function byte by byte ([`heads`]).
use std::collections::BTreeSet;

mod grace;
pub mod heads;
pub mod table;

use aya::maps::{
    Array, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use egret_common::{IGNORE_MAX_ENTRIES, IgnoreBlocks};
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

/// Input networks beyond which the table is not built (about 16 MiB of
/// trie for IPv4 prefixes): such a set is a scattered list (an IOC feed's
/// complement) that no kernel map of [`IGNORE_MAX_ENTRIES`] could hold.
pub const MAX_INPUT_NETWORKS: usize = 32_768;

#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error(
        "the ignore list ({networks} networks{}) does not fit the kernel map ({IGNORE_MAX_ENTRIES} entries)",
        entries.map(|e| format!(", {e} table entries")).unwrap_or_default()
    )]
    TooLarge {
        networks: usize,
        entries: Option<usize>,
    },
    #[error(transparent)]
    Map(#[from] MapError),
}

/// The kernel table for `wanted`, or why it cannot be written.
pub fn table_for(wanted: &IgnoreSet) -> Result<table::Table, ReplaceError> {
    // The construction's trie has up to 128 nodes per input prefix: bound
    // its transient memory before building it.
    if wanted.len() > MAX_INPUT_NETWORKS {
        return Err(ReplaceError::TooLarge {
            networks: wanted.len(),
            entries: None,
        });
    }
    let new = table::build(wanted);
    if new.len() > IGNORE_MAX_ENTRIES as usize {
        return Err(ReplaceError::TooLarge {
            networks: wanted.len(),
            entries: Some(new.len()),
        });
    }
    Ok(new)
}

pub struct IgnoreMap {
    map: LpmTrie<MapData, [u8; 16], u8>,
    heads_map: Array<MapData, u16>,
    blocks_map: Array<MapData, IgnoreBlocks>,
    /// None where the map-in-map could not be made: unlinked blocks are
    /// then never reused.
    grace: Option<grace::Grace>,
    /// What the maps hold, or None after a failed reload left them between
    /// two sets (so that no set compares equal and the next reload runs).
    current: Option<IgnoreSet>,
    /// What the kernel maps hold: `current` as a verdict table, heads and
    /// blocks (or, after a map error, the state the error left).
    table: table::Table,
    arrays: heads::Arrays,
    /// Blocks unlinked since the last grace period: a program may still be
    /// walking them, so they are not written yet.
    retired: BTreeSet<usize>,
}

impl IgnoreMap {
    /// The maps start empty (zeroed heads emit, like an empty trie).
    pub(super) fn new(
        trie: aya::maps::Map,
        heads: aya::maps::Map,
        blocks: aya::maps::Map,
    ) -> Result<Self, MapError> {
        Ok(Self {
            map: LpmTrie::try_from(trie)?,
            heads_map: Array::try_from(heads)?,
            blocks_map: Array::try_from(blocks)?,
            grace: grace::Grace::new()
                .inspect_err(|error| {
                    tracing::warn!(
                        %error,
                        "no RCU grace period for the ignore blocks: unlinked blocks are never reused"
                    );
                })
                .ok(),
            current: Some(IgnoreSet::default()),
            table: table::Table::new(),
            arrays: heads::Arrays::new(heads::BLOCKS),
            retired: BTreeSet::new(),
        })
    }

    /// Uses at most `blocks` blocks (fewer than the kernel map holds), so
    /// that a test can run the kernel out of them and see the trie decide.
    pub fn limit_blocks(&mut self, blocks: usize) {
        self.arrays.set_capacity(blocks);
    }

    /// Makes the kernel maps ignore exactly `wanted`, in an order that
    /// never ignores an address both the old and the new set emit
    /// ([`heads::transition`]). Returns the new table's size. A set whose
    /// table would not fit the trie is refused before anything is written;
    /// on a map error the maps are left part-way (never ignoring more than
    /// the old or the new set) and the next reload starts from what was
    /// written.
    pub fn replace(&mut self, wanted: &IgnoreSet) -> Result<usize, ReplaceError> {
        let new = table_for(wanted)?;
        if let (false, Some(grace)) = (self.retired.is_empty(), &self.grace) {
            match grace.wait() {
                Ok(()) => self.retired.clear(),
                // The retired blocks stay unused; if this repeats the pool
                // runs dry and the trie decides.
                Err(error) => tracing::warn!(
                    %error,
                    retired = self.retired.len(),
                    "no RCU grace period: retired ignore blocks stay unused"
                ),
            }
        }
        let before = self.arrays.reachable();
        let steps = heads::transition(&self.arrays, &self.retired, &self.table, &new);
        let written = self.write(steps);
        self.retired
            .extend(before.difference(&self.arrays.reachable()));
        self.arrays.prune(&self.retired);
        self.current = None;
        written?;
        self.current = Some(wanted.clone());
        Ok(self.table.len())
    }

    fn write(&mut self, steps: Vec<table::Step>) -> Result<(), MapError> {
        let mut steps = steps.into_iter().peekable();
        while let Some(step) = steps.next() {
            match &step {
                table::Step::Set(prefix, verdict) => {
                    self.map
                        .insert(&Key::new(prefix.len, prefix.octets()), verdict, 0)?;
                    self.table.insert(*prefix, *verdict);
                }
                table::Step::Remove(prefix) => {
                    self.map.remove(&Key::new(prefix.len, prefix.octets()))?;
                    self.table.remove(prefix);
                }
                // Indices below HEADS (512): the cast is exact.
                table::Step::Head(index, entry) => {
                    self.heads_map.set(*index as u32, entry, 0)?;
                }
                // The steps' blocks are consecutive: the value is written
                // once, after the last of them.
                table::Step::Block(..) => {
                    self.arrays.apply(&step);
                    if !matches!(steps.peek(), Some(table::Step::Block(..))) {
                        // Boxed: the value is 2 MiB, never on a stack.
                        self.blocks_map.set(0, self.arrays.image(), 0)?;
                    }
                    continue;
                }
            }
            self.arrays.apply(&step);
        }
        Ok(())
    }

    /// The set the maps hold; None after a reload failed part-way.
    pub fn current(&self) -> Option<&IgnoreSet> {
        self.current.as_ref()
    }

    /// Entries in the kernel trie.
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// /8s the table splits (the rest stop at their head).
    pub fn split_heads(&self) -> usize {
        self.arrays.split_heads()
    }

    /// Blocks the heads reach.
    pub fn blocks(&self) -> usize {
        self.arrays.reachable().len()
    }

    /// Head and block entries that send a lookup to the trie.
    pub fn trie_entries(&self) -> usize {
        self.arrays.trie_entries()
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

    /// A scattered list (an IOC feed) is refused before the map is
    /// touched, by input size or by table size; the complement of a
    /// thousand scattered addresses fits as about a thousand entries.
    #[test]
    fn oversized_sets_are_refused_before_writing() {
        let scattered = |n: u32| -> IgnoreSet {
            (0..n)
                .map(|i| {
                    let a = std::net::Ipv4Addr::from(
                        0x0100_0000 + i.wrapping_mul(2_654_435_761) % 0xdf00_0000,
                    );
                    IpNet::V4(ipnet::Ipv4Net::new(a, 32).unwrap())
                })
                .collect()
        };
        let too_many_entries = scattered(5000);
        assert!(matches!(
            table_for(&too_many_entries),
            Err(ReplaceError::TooLarge { entries: Some(n), .. }) if n > 4096
        ));
        let too_many_networks = scattered(MAX_INPUT_NETWORKS as u32 + 1);
        assert!(matches!(
            table_for(&too_many_networks),
            Err(ReplaceError::TooLarge { entries: None, .. })
        ));
        // What the rules make of `fd.sip in (1,000 IOCs)`: everything else.
        let iocs = scattered(1000);
        let items: Vec<String> = iocs.iter().map(|n| n.addr().to_string()).collect();
        let text = format!(
            "- list: iocs\n  items: [{}]\n- rule: IOC\n  desc: d\n  condition: evt.type = connect and fd.sip in (iocs)\n  output: o\n  priority: WARNING\n",
            items.join(", ")
        );
        let loaded = egret_rules::load(
            &[egret_rules::Source::new("iocs.yaml", &text)],
            &egret_rules::Options::default(),
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let complement = loaded.ruleset.kernel_ignorable_networks();
        let set: IgnoreSet = complement.into_iter().collect();
        let table = table_for(&set).expect("fits");
        assert_eq!(table.len(), 1001, "{} networks", set.len());
    }

    #[test]
    fn builtin_has_loopback_and_unspecified() {
        assert_eq!(IgnoreSet::builtin().len(), 4);
    }
}
