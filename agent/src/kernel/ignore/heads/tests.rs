use egret_common::{IGNORE_CHAIN_AT, IGNORE_VERDICT_IGNORE, IgnoreBlocks};

use super::*;
use crate::kernel::ignore::{
    IgnoreSet,
    table::{
        build, lookup,
        tests::{addr, probes, set, xorshift},
    },
    tests::{all_v6, complement_of},
};

/// The kernel's walk (`agent-ebpf/src/ignore.rs`): head, then a block per
/// byte or a chain per run while the entry points at one, the trie where an
/// entry says so. Returns the final entry and the blocks read.
fn walk_to(state: &State, a: u128) -> (Entry, usize) {
    let index = head_of(a);
    let bytes = a.to_be_bytes();
    let (hi, lo) = (
        u64::from_ne_bytes(bytes[..8].try_into().unwrap()),
        u64::from_ne_bytes(bytes[8..].try_into().unwrap()),
    );
    let mut at = first_byte(index);
    let mut entry = as_read(state.arrays.heads[index]);
    let mut read = 0;
    for _ in 0..IGNORE_MAX_LEVELS {
        if !is_block(entry) {
            break;
        }
        // A slot the mirror does not hold is free: whatever it last held,
        // so the model reads it as hostile (all ignore).
        let block = state
            .arrays
            .blocks
            .get(&slot_of(entry))
            .copied()
            .unwrap_or([Entry::from(IGNORE_VERDICT_IGNORE); 256]);
        read += 1;
        if is_chain(entry) {
            let word = |i: usize| {
                let bytes: Vec<u8> = block[4 * i..4 * i + 4]
                    .iter()
                    .flat_map(|e| e.to_ne_bytes())
                    .collect();
                u64::from_ne_bytes(bytes.try_into().unwrap())
            };
            if hi & word(2) == word(0) && lo & word(3) == word(1) {
                entry = block[IGNORE_CHAIN_NEXT];
                at = usize::from(block[IGNORE_CHAIN_AT]);
            } else {
                entry = block[IGNORE_CHAIN_OTHER];
            }
        } else {
            let Some(byte) = bytes.get(at) else {
                return (EMIT, read);
            };
            entry = block[usize::from(*byte)];
            at += 1;
        }
    }
    (entry, read)
}

fn answer(state: &State, a: u128) -> u8 {
    match walk_to(state, a).0 {
        TRIE => lookup(&state.trie, a),
        e if e == Entry::from(IGNORE_VERDICT_IGNORE) => IGNORE_VERDICT_IGNORE,
        _ => IGNORE_VERDICT_EMIT,
    }
}

/// Blocks the walk for `a` reads.
fn depth(state: &State, a: u128) -> usize {
    walk_to(state, a).1
}

#[derive(Clone)]
struct State {
    arrays: Arrays,
    trie: Table,
    retired: BTreeSet<usize>,
    /// The kernel's block value as last written, where a test follows it.
    image: Option<Box<IgnoreBlocks>>,
}

impl State {
    fn empty(capacity: usize) -> Self {
        Self {
            arrays: Arrays::new(capacity),
            trie: Table::new(),
            retired: BTreeSet::new(),
            image: None,
        }
    }

    /// A reload as `IgnoreMap::replace` does it, stopping after `stop_after`
    /// steps, with a grace period first when `grace`.
    fn reload(&mut self, new: &Table, grace: bool, stop_after: usize) -> Vec<Step> {
        if grace {
            self.retired.clear();
        }
        let before = self.arrays.reachable();
        let steps = transition(&self.arrays, &self.retired, &self.trie, new);
        for step in steps.iter().take(stop_after) {
            self.apply(step);
        }
        let after = self.arrays.reachable();
        self.retired.extend(before.difference(&after));
        self.arrays.prune(&self.retired);
        steps
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Set(p, v) => {
                self.trie.insert(*p, *v);
            }
            Step::Remove(p) => {
                self.trie.remove(p);
            }
            Step::Block(slot, _) => {
                assert!(*slot < self.arrays.capacity, "slot {slot} past the pool");
                assert!(
                    usable(*slot),
                    "block at slot {slot}: a torn head could point here"
                );
                assert!(
                    !self.arrays.reachable().contains(slot),
                    "block {slot} written while reachable"
                );
                assert!(
                    !self.retired.contains(slot),
                    "block {slot} written before a grace period"
                );
            }
            Step::Head(..) => {}
        }
        self.arrays.apply(step);
    }
}

/// The sets the transition tests move between: nested, complements of one
/// address, halves of the space, empty.
fn shapes() -> Vec<IgnoreSet> {
    vec![
        set(&["10.0.0.0/8"]),
        {
            let mut n = complement_of("198.51.100.1/32".parse().unwrap());
            n.extend(all_v6());
            n.into_iter().collect()
        },
        set(&["0.0.0.0/1", "198.51.100.0/24"]),
        {
            let mut n = complement_of("198.51.100.7/32".parse().unwrap());
            n.push("::/1".parse().unwrap());
            n.into_iter().collect()
        },
        IgnoreSet::default(),
        set(&["198.51.100.0/25", "203.0.113.0/24"]),
        {
            let mut n = complement_of("2001:db8::1/128".parse().unwrap());
            n.push("0.0.0.0/0".parse().unwrap());
            n.into_iter().collect()
        },
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
            &[
                addr("198.51.100.1"),
                addr("198.51.100.7"),
                addr("::1"),
                addr("2001:db8::1"),
            ],
        ));
    }
    // Both ends of every /8 the heads stand for.
    for index in 0..HEADS {
        let p = head_prefix(index);
        out.extend([p.addr, last_of(p)]);
    }
    out
}

/// Reloads `state` to `new` step by step and checks, at every state, that
/// each address both the starting state and `new` emit is emitted. A head
/// step can only change answers inside its /8, and a block is written only
/// while unreachable (`State::apply` asserts it), so only the steps that can
/// change an answer are followed by the probes they can change.
fn walk(state: &mut State, new: &Table, probe_addrs: &[u128], stop_after: usize, grace: bool) {
    let start = state.clone();
    let mut by_head = vec![Vec::new(); HEADS];
    for &a in probe_addrs {
        if answer(&start, a) == IGNORE_VERDICT_EMIT && lookup(new, a) == IGNORE_VERDICT_EMIT {
            by_head[head_of(a)].push(a);
        }
    }
    if grace {
        state.retired.clear();
    }
    let before = state.arrays.reachable();
    let in_use: BTreeSet<usize> = before.union(&state.retired).copied().collect();
    let steps = transition(&state.arrays, &state.retired, &state.trie, new);
    let taken = steps.len().min(stop_after);
    for (i, step) in steps.iter().take(stop_after).enumerate() {
        let was = match step {
            Step::Head(index, _) => state.arrays.heads[*index],
            _ => 0,
        };
        state.apply(step);
        let checked: Vec<&u128> = match step {
            Step::Head(index, _) => by_head[*index].iter().collect(),
            Step::Block(..) => Vec::new(),
            _ => by_head.iter().flatten().collect(),
        };
        for &&a in &checked {
            assert_eq!(answer(state, a), IGNORE_VERDICT_EMIT, "{a:#x} {step:?}");
        }
        // A head written byte by byte: both halfway reads keep the promise.
        if let Step::Head(index, will) = step {
            for torn in [
                (was & 0xff00) | (will & 0xff),
                (will & 0xff00) | (was & 0xff),
            ] {
                let mut half = State {
                    arrays: state.arrays.clone(),
                    trie: state.trie.clone(),
                    retired: BTreeSet::new(),
                    image: None,
                };
                half.arrays.heads[*index] = torn;
                for &&a in &checked {
                    assert_eq!(
                        answer(&half, a),
                        IGNORE_VERDICT_EMIT,
                        "{a:#x} torn {torn:#x}"
                    );
                }
            }
        }
        // The block value is written once, after the last block: every
        // block in use or retired keeps its bytes.
        let last_block = matches!(step, Step::Block(..))
            && (i + 1 == taken || !matches!(steps[i + 1], Step::Block(..)));
        if let (true, Some(old)) = (last_block, &state.image) {
            let image = state.arrays.image();
            for slot in &in_use {
                assert_eq!(image[*slot], old[*slot], "slot {slot} rewritten");
            }
            state.image = Some(image);
        }
    }
    let after = state.arrays.reachable();
    state.retired.extend(before.difference(&after));
    state.arrays.prune(&state.retired);
}

fn assert_answers(state: &State, table: &Table, probe_addrs: &[u128]) {
    for &a in probe_addrs {
        assert_eq!(answer(state, a), lookup(table, a), "{a:#x} {table:?}");
    }
}

/// Pool sizes: none (every split head reads the trie), a few (the pool
/// runs out part-way down a tree), the kernel's.
const CAPACITIES: [usize; 3] = [0, 6, BLOCKS];

#[test]
fn transitions_never_ignore_what_both_tables_emit() {
    let sets = shapes();
    for capacity in CAPACITIES {
        for old_set in &sets {
            for new_set in &sets {
                let (old, new) = (build(old_set), build(new_set));
                let probe_addrs = probe_all(&[old_set, new_set]);
                let mut state = State::empty(capacity);
                state.reload(&old, true, usize::MAX);
                state.image = Some(state.arrays.image());
                // Without a grace period between: the old blocks stay off
                // limits.
                walk(&mut state, &new, &probe_addrs, usize::MAX, false);
                assert_eq!(state.trie, new);
                assert_answers(&state, &new, &probe_addrs);
                // And back, with the first tables' blocks still retired.
                walk(&mut state, &old, &probe_addrs, usize::MAX, false);
                assert_eq!(state.trie, old);
                assert_answers(&state, &old, &probe_addrs);
            }
        }
    }
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

/// A reload that failed part-way leaves the maps between two tables; the
/// next reload starts from there and keeps the same promise.
#[test]
fn transitions_from_a_state_left_part_way_keep_the_promise() {
    let sets = shapes();
    for capacity in [6, BLOCKS] {
        for a in &sets {
            for b in &sets {
                let (ta, tb) = (build(a), build(b));
                let mut start = State::empty(capacity);
                start.reload(&ta, true, usize::MAX);
                let steps = transition(&start.arrays, &start.retired, &start.trie, &tb);
                for cut in cuts(&steps) {
                    let mut part = start.clone();
                    walk(&mut part, &tb, &probe_all(&[a, b]), cut, true);
                    for c in &sets {
                        let tc = build(c);
                        let probe_addrs = probe_all(&[a, b, c]);
                        let mut state = part.clone();
                        walk(&mut state, &tc, &probe_addrs, usize::MAX, true);
                        assert_eq!(state.trie, tc);
                        assert_answers(&state, &tc, &probe_addrs);
                    }
                }
            }
        }
    }
}

#[test]
fn heads_and_blocks_answer_like_the_table() {
    let mut all = shapes();
    all.push(IgnoreSet::builtin());
    all.push(set(&["::/0", "0.0.0.0/0"]));
    all.push(set(&["2000::/3", "10.0.0.0/7"]));
    // Entries of both verdicts nested inside one block's stride: the table
    // is 10/9 ignore, 10.16/12 emit, 10.17/16 ignore.
    all.push(set(&[
        "10.0.0.0/12",
        "10.32.0.0/11",
        "10.64.0.0/10",
        "10.17.0.0/16",
    ]));
    // Random clustered sets (xorshift, fixed seed): prefixes that nest and
    // touch inside one /16, at every length.
    let mut next = xorshift();
    for _ in 0..40 {
        let nets: Vec<ipnet::IpNet> = (0..(next() % 30))
            .map(|_| {
                let a = std::net::Ipv4Addr::from(0xc633_0000 | (next() as u32 & 0xffff));
                let len = 8 + (next() % 25) as u8;
                ipnet::IpNet::V4(ipnet::Ipv4Net::new(a, len).unwrap())
            })
            .collect();
        all.push(nets.into_iter().collect());
    }
    for capacity in CAPACITIES {
        for s in &all {
            let table = build(s);
            let mut state = State::empty(capacity);
            state.reload(&table, true, usize::MAX);
            let mut probe_addrs = probe_all(&[s]);
            for _ in 0..200 {
                // Random addresses inside 198.51/16, where the sets live.
                probe_addrs.push(addr("198.51.0.0") | u128::from(next() as u16));
            }
            assert_answers(&state, &table, &probe_addrs);
        }
    }
}

/// The seed rule's structure: loopback, 10/8 and every /8 it does not
/// touch decide at the head; 172/8 and 192/8 take one block (RFC 1918's
/// /12 and /16 end on their second octet), 0/8 one chain (0.0.0.0/32),
/// ::/8 one chain of 14 zero bytes and the top 7 bits of the last (the
/// table merges ::/128 and ::1/128 into ::/127; its IPv4-mapped range is
/// never read from an IPv6 head and takes none). Nothing reads the trie.
#[test]
fn the_seed_rules_heads_and_blocks() {
    let table = build(&seed());
    let mut state = State::empty(BLOCKS);
    state.reload(&table, true, usize::MAX);
    let heads = state.arrays.heads;
    assert_eq!(heads[127], Entry::from(IGNORE_VERDICT_IGNORE));
    assert_eq!(heads[10], Entry::from(IGNORE_VERDICT_IGNORE));
    assert_eq!(heads[198], EMIT);
    assert_eq!(heads[256 + 0x20], EMIT);
    for (index, blocks) in [(172, 1), (192, 1), (0, 1), (256, 1)] {
        assert!(is_block(heads[index]), "{index}");
        assert_eq!(state.arrays.subtree(index).blocks.len(), blocks, "{index}");
    }
    assert_eq!(state.arrays.split_heads(), 4);
    assert_eq!(state.arrays.reachable().len(), 4);
    assert_eq!(state.arrays.trie_entries(), 0);
    assert_eq!(depth(&state, addr("192.168.77.1")), 1);
    assert_eq!(depth(&state, addr("172.20.0.1")), 1);
    assert_eq!(depth(&state, addr("198.51.100.1")), 0);
    assert_eq!(depth(&state, addr("0.0.0.0")), 1);
    assert_eq!(depth(&state, addr("::1")), 1);
    assert_eq!(depth(&state, addr("::2")), 1);
    assert_eq!(depth(&state, addr("::1:0")), 1, "off the chain");
}

/// "Alert only for 198.51.100.1": one chain under 198 (its three bytes
/// checked at once), the trie only where the pool ran out.
#[test]
fn one_alerted_address_is_a_chain_or_the_trie_past_the_pool() {
    let mut nets = complement_of("198.51.100.1/32".parse().unwrap());
    nets.extend(all_v6());
    let s: IgnoreSet = nets.into_iter().collect();
    let table = build(&s);
    let mut state = State::empty(BLOCKS);
    state.reload(&table, true, usize::MAX);
    assert_eq!(state.arrays.subtree(198).blocks.len(), 1);
    assert!(is_chain(state.arrays.heads[198]));
    for a in ["198.51.100.1", "198.51.100.2", "198.51.101.1", "198.0.0.1"] {
        assert_eq!(depth(&state, addr(a)), 1, "{a}");
    }
    assert_eq!(state.arrays.reachable().len(), 1);
    assert_eq!(state.arrays.trie_entries(), 0);
    // Two blocks let the builder reach 198.51.100/24 only: the chain
    // checks 51.100 and hands the last byte to the trie.
    // (Slots 1 and 2 are never used: four slots are two.)
    let mut short = State::empty(4);
    short.reload(&table, true, usize::MAX);
    assert_eq!(short.arrays.reachable().len(), 1);
    assert_eq!(short.arrays.trie_entries(), 1);
    let chain = short.arrays.block(slot_of(short.arrays.heads[198]));
    assert_eq!(chain[IGNORE_CHAIN_NEXT], TRIE);
    assert_eq!(chain[IGNORE_CHAIN_AT], 15);
    assert_answers(&short, &table, &probe_all(&[&s]));
    // And one IPv6 address: a chain of 15 bytes.
    let mut v6 = complement_of("2001:db8::1/128".parse().unwrap());
    v6.push("0.0.0.0/0".parse().unwrap());
    let v6: IgnoreSet = v6.into_iter().collect();
    let table = build(&v6);
    let mut state = State::empty(BLOCKS);
    state.reload(&table, true, usize::MAX);
    assert_eq!(state.arrays.reachable().len(), 1);
    assert_eq!(depth(&state, addr("2001:db8::2")), 1);
    assert_answers(&state, &table, &probe_all(&[&v6]));
}

/// A head whose tree does not change is not touched, so its blocks are
/// neither rewritten nor retired: also one the pool cut short, while no
/// more slots are free.
#[test]
fn unchanged_heads_are_left_alone() {
    let mut more = seed();
    more.extend(set(&["203.0.113.0/25"]).iter().copied());
    // Six slots are four usable ones: 0/8, 172/8 and 192/8 take three, and
    // ::/8 gets one block before the trie.
    for (capacity, blocks, trie) in [(6, 4, 1), (BLOCKS, 4, 0)] {
        let mut state = State::empty(capacity);
        state.reload(&build(&seed()), true, usize::MAX);
        assert_eq!(state.arrays.reachable().len(), blocks);
        assert_eq!(state.arrays.trie_entries(), trie);
        assert!(state.reload(&build(&seed()), false, usize::MAX).is_empty());
        let steps = state.reload(&build(&more), false, usize::MAX);
        let heads: BTreeSet<usize> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Head(index, _) => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(heads, BTreeSet::from([203]), "{capacity}: {steps:?}");
        assert!(state.retired.is_empty());
    }
}

/// Blocks unlinked by a reload are not written until a grace period has
/// passed; after one they are the first slots reused.
#[test]
fn unlinked_blocks_wait_for_a_grace_period() {
    let only = |a: &str| -> Table {
        let mut nets = complement_of(format!("{a}/32").parse().unwrap());
        nets.extend(all_v6());
        build(&nets.into_iter().collect())
    };
    let mut state = State::empty(1);
    state.reload(&only("198.51.100.1"), true, usize::MAX);
    assert_eq!(state.arrays.reachable(), BTreeSet::from([0]));
    state.reload(&only("203.0.113.1"), false, usize::MAX);
    // The only slot is retired: 203/8 reads the trie.
    assert_eq!(state.retired, BTreeSet::from([0]));
    assert!(state.arrays.reachable().is_empty());
    assert_eq!(state.arrays.heads[203], TRIE);
    // The same table after a grace period: the slot is reused.
    state.reload(&only("203.0.113.1"), true, usize::MAX);
    assert_eq!(state.arrays.reachable(), BTreeSet::from([0]));
    assert!(is_block(state.arrays.heads[203]));
    assert_answers(&state, &only("203.0.113.1"), &probe_all(&[]));
}
