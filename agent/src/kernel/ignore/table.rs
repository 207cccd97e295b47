//! The ignore set as a minimal longest-prefix-match table with a verdict
//! per prefix, and the order in which the kernel map moves from one table
//! to the next.
//!
//! A rule such as "alert only for 198.51.100.1" makes the set of ignorable
//! networks the complement of one address: 128 disjoint prefixes whose
//! trie is 128 levels deep on the path every nearby address walks (1.65 µs
//! per connect against 0.38 µs with 4 prefixes). With a verdict per prefix
//! the same function is `::/0 → ignore, ::ffff:198.51.100.1/128 → emit`.
//! The table is computed by the ORTC construction (Draves, King,
//! Venkatachary, Zill, "Constructing Optimal IP Routing Tables", 1999),
//! which yields the fewest prefixes for a given address → verdict function,
//! so the table is never larger than the set plus one entry.
//!
//! In front of the trie the kernel reads heads and blocks that hold the
//! same function byte by byte ([`super::heads`]), so the lookup's cost
//! stops following the table's depth; the trie decides only where the
//! blocks ran out.
use std::collections::BTreeMap;

use egret_common::{IGNORE_VERDICT_EMIT, IGNORE_VERDICT_IGNORE, IgnoreBlock};

use super::IgnoreSet;

/// A prefix of the 128-bit lookup space (IPv4 IPv4-mapped): the trie key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub len: u32,
    pub addr: u128,
}

impl Prefix {
    #[cfg(test)]
    pub fn contains(&self, addr: u128) -> bool {
        self.len == 0 || (addr ^ self.addr) >> (128 - self.len) == 0
    }

    pub fn octets(&self) -> [u8; 16] {
        self.addr.to_be_bytes()
    }
}

/// Prefix → verdict ([`IGNORE_VERDICT_IGNORE`] / [`IGNORE_VERDICT_EMIT`]);
/// an address no prefix covers is emitted.
pub type Table = BTreeMap<Prefix, u8>;

const IGNORE: u8 = 1 << 0;
const EMIT: u8 = 1 << 1;

fn verdict_of(bits: u8) -> u8 {
    if bits & EMIT != 0 {
        IGNORE_VERDICT_EMIT
    } else {
        IGNORE_VERDICT_IGNORE
    }
}

const NONE: u32 = u32::MAX;

struct Node {
    child: [u32; 2],
    /// A prefix of the set ends here.
    ignored: bool,
    /// ORTC's candidate verdicts (IGNORE | EMIT bits).
    set: u8,
}

/// The minimal verdict table equivalent to `set` (default: emit).
pub fn build(set: &IgnoreSet) -> Table {
    let mut nodes = vec![Node {
        child: [NONE; 2],
        ignored: false,
        set: 0,
    }];
    for net in set.iter() {
        let prefix = super::prefix_of(net);
        let mut at = 0usize;
        for depth in 0..prefix.len {
            let b = ((prefix.addr >> (127 - depth)) & 1) as usize;
            if nodes[at].child[b] == NONE {
                nodes.push(Node {
                    child: [NONE; 2],
                    ignored: false,
                    set: 0,
                });
                let new = (nodes.len() - 1) as u32;
                nodes[at].child[b] = new;
            }
            at = nodes[at].child[b] as usize;
        }
        nodes[at].ignored = true;
    }
    // Pass 1 and 2: every node gets zero or two children, leaves take the
    // verdict they inherit, inner nodes the intersection of their
    // children's candidates or, when that is empty, the union.
    candidates(&mut nodes, 0, 0, false);
    // Pass 3: top down, a prefix is written only where the verdict its
    // parent passes down is not among its candidates.
    let mut table = Table::new();
    choose(&nodes, 0, Prefix { len: 0, addr: 0 }, EMIT, &mut table);
    table
}

fn candidates(nodes: &mut Vec<Node>, at: usize, depth: u32, inherited: bool) -> u8 {
    let ignored = inherited || nodes[at].ignored;
    // Below an ignored prefix everything is ignored: the subtree folds
    // into one leaf (nested prefixes of the set add nothing).
    if ignored || (nodes[at].child == [NONE; 2]) || depth == 128 {
        nodes[at].child = [NONE; 2];
        nodes[at].set = if ignored { IGNORE } else { EMIT };
        return nodes[at].set;
    }
    let mut sets = [0u8; 2];
    for (b, set) in sets.iter_mut().enumerate() {
        if nodes[at].child[b] == NONE {
            nodes.push(Node {
                child: [NONE; 2],
                ignored: false,
                set: 0,
            });
            let new = (nodes.len() - 1) as u32;
            nodes[at].child[b] = new;
        }
        let child = nodes[at].child[b] as usize;
        *set = candidates(nodes, child, depth + 1, false);
    }
    let both = sets[0] & sets[1];
    nodes[at].set = if both != 0 { both } else { sets[0] | sets[1] };
    nodes[at].set
}

fn choose(nodes: &[Node], at: usize, prefix: Prefix, passed: u8, table: &mut Table) {
    let node = &nodes[at];
    let mine = if node.set & passed != 0 {
        passed
    } else {
        // Two verdicts only: a set without the passed one has the other.
        let own = if node.set & EMIT != 0 { EMIT } else { IGNORE };
        table.insert(prefix, verdict_of(own));
        own
    };
    if node.child == [NONE; 2] {
        return;
    }
    for b in 0..2u32 {
        let len = prefix.len + 1;
        let addr = prefix.addr | (u128::from(b) << (128 - len));
        let child = node.child[b as usize] as usize;
        choose(nodes, child, Prefix { len, addr }, mine, table);
    }
}

/// The verdict `table` gives `addr` by longest-prefix match.
#[cfg(test)]
pub fn lookup(table: &Table, addr: u128) -> u8 {
    table
        .iter()
        .filter(|(p, _)| p.contains(addr))
        .max_by_key(|(p, _)| p.len)
        .map_or(IGNORE_VERDICT_EMIT, |(_, v)| *v)
}

/// One change to the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Set(Prefix, u8),
    Remove(Prefix),
    /// A head takes a new entry.
    Head(usize, u16),
    /// A block no head or block points at is written whole.
    Block(usize, Box<IgnoreBlock>),
}

/// The trie's steps from `old` to `new`, ordered so that an address both
/// emit is emitted at every intermediate state (an ignored attempt is an
/// alert lost; a spurious emit only costs a rule evaluation): 1. set the
/// new table's emit entries; 2. remove stale ignore entries; 3. set the new
/// ignore entries; 4. remove stale emit entries. After step 1 a longest
/// match is either an old entry (the old verdict, emit) or a new emit
/// entry; no later step adds an ignore entry longer than the new table's
/// own longest match for such an address.
pub fn trie_steps(old: &Table, new: &Table) -> Vec<Step> {
    let mut steps = Vec::new();
    let changed = |p: &Prefix, v: u8| old.get(p) != Some(&v);
    for (p, &v) in new {
        if v == IGNORE_VERDICT_EMIT && changed(p, v) {
            steps.push(Step::Set(*p, v));
        }
    }
    for (p, &v) in old {
        if v == IGNORE_VERDICT_IGNORE && !new.contains_key(p) {
            steps.push(Step::Remove(*p));
        }
    }
    for (p, &v) in new {
        if v == IGNORE_VERDICT_IGNORE && changed(p, v) {
            steps.push(Step::Set(*p, v));
        }
    }
    for (p, &v) in old {
        if v == IGNORE_VERDICT_EMIT && !new.contains_key(p) {
            steps.push(Step::Remove(*p));
        }
    }
    steps
}

#[cfg(test)]
pub(super) mod tests {
    use ipnet::IpNet;

    use super::*;

    pub fn set(nets: &[&str]) -> IgnoreSet {
        nets.iter().map(|n| n.parse::<IpNet>().unwrap()).collect()
    }

    pub fn addr(ip: &str) -> u128 {
        match ip.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(v4) => u128::from_be_bytes(v4.to_ipv6_mapped().octets()),
            std::net::IpAddr::V6(v6) => u128::from_be_bytes(v6.octets()),
        }
    }

    fn member(set: &IgnoreSet, a: u128) -> bool {
        set.iter().any(|n| super::super::prefix_of(n).contains(a))
    }

    /// Addresses on every prefix's edges and just outside them, plus the
    /// ends of the space: where a wrong table would differ.
    pub fn probes(set: &IgnoreSet, extra: &[u128]) -> Vec<u128> {
        let mut out = vec![
            0,
            u128::MAX,
            addr("::ffff:0.0.0.0"),
            addr("255.255.255.255"),
        ];
        out.extend_from_slice(extra);
        for net in set.iter() {
            let p = super::super::prefix_of(net);
            let last = p.addr | u128::MAX.checked_shr(p.len).unwrap_or(0);
            out.extend([p.addr, last, p.addr.wrapping_sub(1), last.wrapping_add(1)]);
        }
        out
    }

    fn assert_equivalent(set: &IgnoreSet, table: &Table, extra: &[u128]) {
        for a in probes(set, extra) {
            let want = if member(set, a) {
                IGNORE_VERDICT_IGNORE
            } else {
                IGNORE_VERDICT_EMIT
            };
            assert_eq!(lookup(table, a), want, "{a:#x} in {table:?}");
        }
    }

    #[test]
    fn the_complement_of_one_address_is_two_entries() {
        let only: IpNet = "198.51.100.1/32".parse().unwrap();
        let mut nets = crate::kernel::ignore::tests::complement_of(only);
        nets.extend(crate::kernel::ignore::tests::all_v6());
        let s: IgnoreSet = nets.into_iter().collect();
        assert!(s.len() >= 128, "{}", s.len());
        let table = build(&s);
        assert_eq!(table.len(), 2, "{table:?}");
        assert_eq!(lookup(&table, addr("198.51.100.1")), IGNORE_VERDICT_EMIT);
        assert_eq!(lookup(&table, addr("198.51.100.2")), IGNORE_VERDICT_IGNORE);
        assert_eq!(lookup(&table, addr("2001:db8::1")), IGNORE_VERDICT_IGNORE);
        assert_equivalent(&s, &table, &[addr("198.51.100.1")]);
    }

    #[test]
    fn disjoint_networks_stay_one_entry_each() {
        let s = set(&["127.0.0.0/8", "::1/128", "10.0.0.0/8", "192.168.0.0/16"]);
        let table = build(&s);
        assert_eq!(table.len(), 4);
        assert!(table.values().all(|v| *v == IGNORE_VERDICT_IGNORE));
        assert_equivalent(&s, &table, &[]);
    }

    #[test]
    fn empty_set_is_an_empty_table() {
        assert!(build(&IgnoreSet::default()).is_empty());
    }

    #[test]
    fn nested_and_adjacent_networks_fold() {
        let s = set(&["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16"]);
        let table = build(&s);
        assert_eq!(table.len(), 1, "{table:?}");
        assert_equivalent(&s, &table, &[]);
    }

    /// A fixed-seed xorshift generator: random test sets that repeat.
    pub fn xorshift() -> impl FnMut() -> u64 {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Random sets (xorshift, fixed seed): the table is equivalent on every
    /// edge and never larger than the set plus one.
    #[test]
    fn random_sets_are_equivalent_and_no_larger() {
        let mut next = xorshift();
        for _ in 0..200 {
            let n = (next() % 40) as usize;
            let mut nets = Vec::new();
            for _ in 0..n {
                // Cluster the addresses so prefixes nest and touch.
                let a = std::net::Ipv4Addr::from(0xc633_6400 | (next() as u32 & 0xffff));
                let len = 16 + (next() % 17) as u8;
                nets.push(IpNet::V4(ipnet::Ipv4Net::new(a, len).unwrap()));
            }
            let s: IgnoreSet = nets.into_iter().collect();
            let table = build(&s);
            assert!(table.len() <= s.len() + 1, "{} > {}", table.len(), s.len());
            assert_equivalent(&s, &table, &[]);
        }
    }
}
