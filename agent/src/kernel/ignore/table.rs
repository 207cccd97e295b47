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
//! In front of the trie the kernel reads a head array, one verdict per /8
//! ([`heads`]): where the table treats a /8 alike the head decides, so the
//! lookup's cost stops following the table's depth there.
use std::collections::BTreeMap;

use egret_common::{
    IGNORE_HEADS_ENTRIES, IGNORE_VERDICT_EMIT, IGNORE_VERDICT_IGNORE, IGNORE_VERDICT_TRIE,
};

use super::IgnoreSet;

/// A prefix of the 128-bit lookup space (IPv4 IPv4-mapped): the trie key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub len: u32,
    pub addr: u128,
}

impl Prefix {
    #[cfg(test)]
    fn contains(&self, addr: u128) -> bool {
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

/// What the kernel reads first: a verdict or [`IGNORE_VERDICT_TRIE`] per
/// /8, IPv4 /8s at their first octet, then the IPv6 /8s.
pub type Heads = [u8; HEADS];
pub const HEADS: usize = IGNORE_HEADS_ENTRIES as usize;

/// The head an address reads (the kernel's `ignore::ignored`).
pub fn head_of(addr: u128) -> usize {
    if addr >> 32 == 0xffff {
        ((addr >> 24) & 0xff) as usize
    } else {
        256 + (addr >> 120) as usize
    }
}

/// The /8 that head `index` stands for.
fn head_prefix(index: usize) -> Prefix {
    if index < 256 {
        Prefix {
            len: 104,
            addr: (0xffff << 32) | ((index as u128) << 24),
        }
    } else {
        Prefix {
            len: 8,
            addr: ((index - 256) as u128) << 120,
        }
    }
}

/// The heads for `table`: a /8 with an entry strictly inside it reads the
/// trie; any other takes the verdict its longest covering entry gives
/// every address in it.
pub fn heads(table: &Table) -> Heads {
    let mut heads = [IGNORE_VERDICT_EMIT; HEADS];
    for p in table.keys() {
        if p.len > 104 && p.addr >> 32 == 0xffff {
            heads[head_of(p.addr)] = IGNORE_VERDICT_TRIE;
        }
        // IPv4-mapped entries lie inside ::/8 too: its IPv6 addresses
        // (::1) read the trie.
        if p.len > 8 {
            heads[256 + (p.addr >> 120) as usize] = IGNORE_VERDICT_TRIE;
        }
    }
    for (index, head) in heads.iter_mut().enumerate() {
        if *head == IGNORE_VERDICT_TRIE {
            continue;
        }
        let at = head_prefix(index);
        *head = (0..=at.len)
            .rev()
            .find_map(|len| {
                let addr = at.addr & !(u128::MAX.checked_shr(len).unwrap_or(0));
                table.get(&Prefix { len, addr }).copied()
            })
            .unwrap_or(IGNORE_VERDICT_EMIT);
    }
    heads
}

/// One change to the kernel maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Set(Prefix, u8),
    Remove(Prefix),
    Head(usize, u8),
}

/// The steps from what the kernel holds (`old_heads`, `old`) to `new` and
/// its heads, ordered so that an address both emit is emitted at every
/// intermediate state (an ignored attempt is an alert lost; a spurious emit
/// only costs a rule evaluation). Every head that changes is first pointed
/// at the trie; the trie then moves on its own (below); the changed heads
/// take their new verdict last, when the trie already holds the new table.
///
/// The trie's own order: 1. set the new table's emit entries; 2. remove
/// stale ignore entries; 3. set the new ignore entries; 4. remove stale
/// emit entries. After step 1 a longest match is either an old entry (the
/// old verdict, emit) or a new emit entry; no later step adds an ignore
/// entry longer than the new table's own longest match for such an
/// address. A head both sides give the same verdict is left alone: both
/// functions agree with it on its whole /8.
pub fn transition(old_heads: &Heads, old: &Table, new: &Table) -> Vec<Step> {
    let new_heads = heads(new);
    let mut steps = Vec::new();
    for (index, (&was, &will)) in old_heads.iter().zip(&new_heads).enumerate() {
        if was != will && was != IGNORE_VERDICT_TRIE {
            steps.push(Step::Head(index, IGNORE_VERDICT_TRIE));
        }
    }
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
    for (index, (&was, &will)) in old_heads.iter().zip(&new_heads).enumerate() {
        if was != will && will != IGNORE_VERDICT_TRIE {
            steps.push(Step::Head(index, will));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use super::*;

    fn set(nets: &[&str]) -> IgnoreSet {
        nets.iter().map(|n| n.parse::<IpNet>().unwrap()).collect()
    }

    fn addr(ip: &str) -> u128 {
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
    fn probes(set: &IgnoreSet, extra: &[u128]) -> Vec<u128> {
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

    /// Random sets (xorshift, fixed seed): the table is equivalent on every
    /// edge and never larger than the set plus one.
    #[test]
    fn random_sets_are_equivalent_and_no_larger() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
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

    /// What the kernel answers for `a`: the head, or the trie behind it.
    fn effective(state: &State, a: u128) -> u8 {
        match state.0[head_of(a)] {
            IGNORE_VERDICT_TRIE => lookup(&state.1, a),
            verdict => verdict,
        }
    }

    type State = (Heads, Table);

    fn apply(state: &mut State, step: Step) {
        match step {
            Step::Set(p, v) => {
                state.1.insert(p, v);
            }
            Step::Remove(p) => {
                state.1.remove(&p);
            }
            Step::Head(index, v) => state.0[index] = v,
        }
    }

    /// The sets the transition tests move between: nested, complements of
    /// one address, halves of the space, empty.
    fn shapes() -> Vec<IgnoreSet> {
        vec![
            set(&["10.0.0.0/8"]),
            {
                let mut n =
                    crate::kernel::ignore::tests::complement_of("198.51.100.1/32".parse().unwrap());
                n.extend(crate::kernel::ignore::tests::all_v6());
                n.into_iter().collect()
            },
            set(&["0.0.0.0/1", "198.51.100.0/24"]),
            {
                let mut n =
                    crate::kernel::ignore::tests::complement_of("198.51.100.7/32".parse().unwrap());
                n.push("::/1".parse().unwrap());
                n.into_iter().collect()
            },
            IgnoreSet::default(),
            set(&["198.51.100.0/25", "203.0.113.0/24"]),
            seed(),
        ]
    }

    /// The built-ins plus what the seed rule (RFC 1918 excluded) ignores.
    fn seed() -> IgnoreSet {
        let mut s = IgnoreSet::builtin();
        s.extend(
            set(&["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
                .iter()
                .copied(),
        );
        s
    }

    fn probe_all(sets: &[&IgnoreSet]) -> Vec<u128> {
        let mut out = Vec::new();
        for s in sets {
            out.extend(probes(
                s,
                &[addr("198.51.100.1"), addr("198.51.100.7"), addr("::1")],
            ));
        }
        // Both ends of every /8 the heads stand for.
        for index in 0..HEADS {
            let p = head_prefix(index);
            out.extend([p.addr, p.addr | (u128::MAX >> p.len)]);
        }
        out
    }

    /// Applies the steps one by one and checks, at every state, that each
    /// address both the starting state and the new table emit is emitted;
    /// returns the final state. A head step can only change the answers
    /// inside its own /8, so only those probes are checked after it.
    fn walk(mut state: State, new: &Table, probe_addrs: &[u128], stop_after: usize) -> State {
        let start = state.clone();
        let mut by_head = vec![Vec::new(); HEADS];
        for &a in probe_addrs {
            let both_emit = effective(&start, a) == IGNORE_VERDICT_EMIT
                && lookup(new, a) == IGNORE_VERDICT_EMIT;
            if both_emit {
                by_head[head_of(a)].push(a);
            }
        }
        for step in transition(&start.0, &start.1, new)
            .into_iter()
            .take(stop_after)
        {
            apply(&mut state, step);
            let checked: Vec<&u128> = match step {
                Step::Head(index, _) => by_head[index].iter().collect(),
                _ => by_head.iter().flatten().collect(),
            };
            for &a in checked {
                assert_eq!(effective(&state, a), IGNORE_VERDICT_EMIT, "{a:#x} {step:?}");
            }
        }
        state
    }

    /// Where a reload could stop: the ends, a few points between, and every
    /// change from one kind of step to another.
    fn cuts(steps: &[Step]) -> Vec<usize> {
        let n = steps.len();
        let mut out = vec![0, n / 3, n / 2, 2 * n / 3, n.saturating_sub(1)];
        for (i, pair) in steps.windows(2).enumerate() {
            let kind = |s: &Step| std::mem::discriminant(s);
            if kind(&pair[0]) != kind(&pair[1]) {
                out.extend([i + 1, i + 2]);
            }
        }
        out.sort_unstable();
        out.dedup();
        out.retain(|c| *c < n);
        out
    }

    #[test]
    fn transitions_never_ignore_what_both_tables_emit() {
        let sets = shapes();
        for old_set in &sets {
            for new_set in &sets {
                let (old, new) = (build(old_set), build(new_set));
                let probe_addrs = probe_all(&[old_set, new_set]);
                let state = walk((heads(&old), old), &new, &probe_addrs, usize::MAX);
                assert_eq!(state.1, new);
                assert_eq!(state.0, heads(&new));
            }
        }
    }

    /// A reload that failed part-way leaves the maps between two tables;
    /// the next reload starts from there and keeps the same promise.
    #[test]
    fn transitions_from_a_state_left_part_way_keep_the_promise() {
        let sets = shapes();
        for a in &sets {
            for b in &sets {
                let (ta, tb) = (build(a), build(b));
                for cut in cuts(&transition(&heads(&ta), &ta, &tb)) {
                    let part = walk((heads(&ta), ta.clone()), &tb, &probe_all(&[a, b]), cut);
                    for c in &sets {
                        let tc = build(c);
                        let state = walk(part.clone(), &tc, &probe_all(&[a, b, c]), usize::MAX);
                        assert_eq!(state.1, tc);
                        assert_eq!(state.0, heads(&tc));
                    }
                }
            }
        }
    }

    #[test]
    fn heads_answer_like_the_table() {
        let mut all = shapes();
        all.push(IgnoreSet::builtin());
        all.push(set(&["::/0", "0.0.0.0/0"]));
        all.push(set(&["2000::/3", "10.0.0.0/7"]));
        for s in &all {
            let table = build(s);
            let state = (heads(&table), table.clone());
            for a in probe_all(&[s]) {
                assert_eq!(effective(&state, a), lookup(&table, a), "{a:#x} {table:?}");
            }
        }
    }

    /// The seed rule's table: loopback, 10/8 and every /8 it does not touch
    /// decide at the head; 172/8 and 192/8 hold exceptions-to-be and read
    /// the trie, as does ::/8 (::1, ::).
    #[test]
    fn the_seed_rules_heads() {
        let heads = heads(&build(&seed()));
        assert_eq!(heads[127], IGNORE_VERDICT_IGNORE);
        assert_eq!(heads[10], IGNORE_VERDICT_IGNORE);
        assert_eq!(heads[172], IGNORE_VERDICT_TRIE);
        assert_eq!(heads[192], IGNORE_VERDICT_TRIE);
        assert_eq!(heads[198], IGNORE_VERDICT_EMIT);
        assert_eq!(heads[0], IGNORE_VERDICT_TRIE, "0.0.0.0/32");
        assert_eq!(heads[256], IGNORE_VERDICT_TRIE, "::1");
        assert_eq!(heads[256 + 0x20], IGNORE_VERDICT_EMIT);
        let trie = heads.iter().filter(|h| **h == IGNORE_VERDICT_TRIE).count();
        assert_eq!(trie, 4, "{heads:?}");
    }
}
