//! Heads and blocks: the verdict table as a multi-level array the kernel
//! reads in front of the trie, one dependent load per level.
//!
//! A head stands for a /8 (IPv4 by first octet, IPv6 outside the
//! IPv4-mapped range by first byte). Where the table has an entry strictly
//! inside a prefix, the prefix's entry points at a block of 256 entries,
//! one per value of the next byte; elsewhere it holds the verdict the
//! longest covering entry gives its whole range. A run of levels that
//! each lead one way (one byte, or one aligned range of a byte, differs
//! from a common verdict) becomes one chain block, checked as two masked
//! 64-bit compares. So "alert only for 198.51.100.1" is one chain under
//! head 198, "only 2001:db8::1" one chain of 15 bytes, the built-in ::/127
//! one chain, and the seed rule's 192.168/16 one block; where the trie cost
//! a helper call and a walk whose length followed the table, these cost
//! 1.04–1.18 of a head-decided connect (BENCHMARKS.md §6, §C).
//!
//! Blocks come from a fixed pool ([`IGNORE_BLOCKS_ENTRIES`]). A reload
//! writes a changed head's new blocks into slots nothing points at, then
//! points the head at them; the old blocks are reused only after an RCU
//! grace period ([`super::grace`]), so a program never reads a block while
//! it is written. Where the pool runs out an entry says
//! [`IGNORE_VERDICT_TRIE`] and the trie, which always holds the whole
//! table, decides.
use std::collections::{BTreeMap, BTreeSet};

use egret_common::{
    IGNORE_BLOCKS_ENTRIES, IGNORE_CHAIN_NEXT, IGNORE_CHAIN_OTHER, IGNORE_ENTRY_BLOCK,
    IGNORE_ENTRY_CHAIN, IGNORE_HEADS_ENTRIES, IGNORE_MAX_LEVELS, IGNORE_VERDICT_EMIT,
    IGNORE_VERDICT_TRIE, IgnoreBlock, IgnoreBlocks,
};

use super::table::{self, Prefix, Step, Table};

mod chain;
#[cfg(test)]
mod tests;

/// A head or block entry (`egret_common::IGNORE_HEADS_MAP`).
pub type Entry = u16;
pub const HEADS: usize = IGNORE_HEADS_ENTRIES as usize;
/// Slots in the kernel's block array.
pub const BLOCKS: usize = IGNORE_BLOCKS_ENTRIES as usize;
const TRIE: Entry = IGNORE_VERDICT_TRIE as Entry;
const EMIT: Entry = IGNORE_VERDICT_EMIT as Entry;
/// `::ffff:0:0/96`: under an IPv6 head this range is never read (IPv4
/// addresses start at their own head), so its entries take no blocks.
const MAPPED: Prefix = Prefix {
    len: 96,
    addr: 0xffff << 32,
};

fn in_mapped(p: &Prefix) -> bool {
    p.len >= MAPPED.len && p.addr >> 32 == 0xffff
}

/// The entry bits that index a block ([`BLOCKS`] is a power of two).
const SLOT: Entry = (BLOCKS - 1) as Entry;

fn is_block(entry: Entry) -> bool {
    entry & IGNORE_ENTRY_BLOCK != 0
}

fn is_chain(entry: Entry) -> bool {
    is_block(entry) && entry & IGNORE_ENTRY_CHAIN != 0
}

fn slot_of(entry: Entry) -> usize {
    usize::from(entry & SLOT)
}

/// `slot` is below [`BLOCKS`], which the common crate asserts fits below
/// the chain flag.
fn entry_of(slot: usize) -> Entry {
    IGNORE_ENTRY_BLOCK | slot as Entry
}

/// Whether a slot may hold a block. A head is rewritten in place two bytes
/// at a time, and only to or from [`IGNORE_VERDICT_TRIE`]: with no block at
/// a low byte of 1 or 2, a read half old and half new is either a block
/// entry with a low byte of 2, which the kernel takes for "ask the trie",
/// or a verdict of 0 or 3 and up, which emits (`agent-ebpf/src/ignore.rs`).
fn usable(slot: usize) -> bool {
    !matches!(slot & 0xff, 1 | 2)
}

/// What the kernel makes of a head entry it reads (see [`usable`]).
#[cfg(test)]
fn as_read(head: Entry) -> Entry {
    if is_block(head) && head & 0xff == TRIE {
        TRIE
    } else {
        head
    }
}

/// The positions of a block that hold entries: all 256, or a chain's two.
fn links(chain: bool) -> Vec<usize> {
    if chain {
        vec![IGNORE_CHAIN_NEXT, IGNORE_CHAIN_OTHER]
    } else {
        (0..256).collect()
    }
}

/// The head an address reads (the kernel's `ignore::ignored`).
#[cfg(test)]
pub fn head_of(addr: u128) -> usize {
    if addr >> 32 == 0xffff {
        ((addr >> 24) & 0xff) as usize
    } else {
        256 + (addr >> 120) as usize
    }
}

/// The /8 that head `index` stands for.
pub fn head_prefix(index: usize) -> Prefix {
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

/// Blocks the kernel walks below head `index` before it stops (it emits a
/// block entry found deeper): an IPv4 address has 3 bytes after its head.
fn levels_below(index: usize) -> usize {
    if index < 256 {
        3
    } else {
        IGNORE_MAX_LEVELS as usize
    }
}

/// The byte a head's first block splits: the second of an IPv4 address.
fn first_byte(index: usize) -> usize {
    if index < 256 { 13 } else { 1 }
}

/// The byte of `addr` right after the first `len` bits (`len` ≤ 120, a
/// multiple of 8).
fn byte_after(addr: u128, len: u32) -> usize {
    ((addr >> (120 - len)) & 0xff) as usize
}

/// The last address of `p`.
fn last_of(p: Prefix) -> u128 {
    p.addr | u128::MAX.checked_shr(p.len).unwrap_or(0)
}

/// The verdict the longest entry of `table` covering all of `p` gives it.
fn covering(table: &Table, p: Prefix) -> u8 {
    (0..=p.len)
        .rev()
        .find_map(|len| {
            let addr = p.addr & !(u128::MAX.checked_shr(len).unwrap_or(0));
            table.get(&Prefix { len, addr }).copied()
        })
        .unwrap_or(IGNORE_VERDICT_EMIT)
}

/// `slice`'s entries whose address lies in `p` (`slice` sorted by address).
fn within(slice: &[(Prefix, u8)], p: Prefix) -> &[(Prefix, u8)] {
    let last = last_of(p);
    let start = slice.partition_point(|(e, _)| e.addr < p.addr);
    let end = slice.partition_point(|(e, _)| e.addr <= last);
    &slice[start..end]
}

/// A head's subtree, blocks numbered from 0 in the order they are met
/// depth first: two trees are equal exactly when the kernel answers alike
/// under them, so an unchanged head is left in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    root: Entry,
    blocks: Vec<IgnoreBlock>,
    /// Which blocks are chains (their first 32 bytes are not entries).
    chains: Vec<bool>,
}

struct Builder {
    blocks: Vec<IgnoreBlock>,
    budget: usize,
}

impl Builder {
    /// The entry for `p` (its length a multiple of 8) whose covering
    /// entries give it `inherited`; `inside` holds the table's entries with
    /// an address in `p`, sorted by address.
    fn entry(&mut self, p: Prefix, inherited: u8, inside: &[(Prefix, u8)]) -> Entry {
        if !inside.iter().any(|(e, _)| e.len > p.len) {
            return Entry::from(inherited);
        }
        if self.budget == 0 {
            return TRIE;
        }
        self.budget -= 1;
        let index = self.blocks.len();
        self.blocks.push([EMIT; 256]);
        let child_len = p.len + 8;
        let mut painted = [inherited; 256];
        let mut shallow: Vec<&(Prefix, u8)> = inside
            .iter()
            .filter(|(e, _)| e.len > p.len && e.len <= child_len)
            .collect();
        // Longer entries paint over the shorter ones they lie in.
        shallow.sort_by_key(|(e, _)| e.len);
        for (e, verdict) in shallow {
            let first = byte_after(e.addr, p.len);
            let span = 1usize << (child_len - e.len);
            painted[first..first + span].fill(*verdict);
        }
        for (byte, verdict) in painted.iter().enumerate() {
            let child = Prefix {
                len: child_len,
                addr: p.addr | ((byte as u128) << (128 - child_len)),
            };
            let entry = self.entry(child, *verdict, within(inside, child));
            self.blocks[index][byte] = entry;
        }
        entry_of(index)
    }
}

/// The table's entries sorted by address (then length), as the builder
/// slices them.
pub fn by_address(table: &Table) -> Vec<(Prefix, u8)> {
    let mut sorted: Vec<(Prefix, u8)> = table.iter().map(|(p, v)| (*p, *v)).collect();
    sorted.sort_by_key(|(p, _)| (p.addr, p.len));
    sorted
}

/// Head `index`'s tree for `table`, built with at most `budget` blocks
/// before its chains are made (the entries past it read the trie).
pub fn tree(table: &Table, sorted: &[(Prefix, u8)], index: usize, budget: usize) -> Tree {
    let p = head_prefix(index);
    let mut builder = Builder {
        blocks: Vec::new(),
        budget,
    };
    let inside = within(sorted, p);
    let root = if index < 256 {
        builder.entry(p, covering(table, p), inside)
    } else {
        let native: Vec<(Prefix, u8)> = inside
            .iter()
            .filter(|(e, _)| !in_mapped(e))
            .copied()
            .collect();
        builder.entry(p, covering(table, p), &native)
    };
    let mut out = Tree::default();
    out.root = chain::compress(&builder.blocks, root, first_byte(index), &mut out);
    out
}

/// The most blocks one head's tree is built with before chains are made:
/// bounds the builder's transient memory (8 MiB) for any table.
const IDEAL_ROOM: usize = 4 * BLOCKS;

impl Tree {
    /// Blocks the builder used for this tree before chains were made: a
    /// plain block is one, a chain one per byte it checks. Building with
    /// this budget gives the same tree again, cut short where it was.
    pub fn built(&self) -> usize {
        self.blocks
            .iter()
            .zip(&self.chains)
            .map(|(block, chain)| {
                if *chain {
                    // The mask: entries 8..16 hold 16 bytes, nonzero where
                    // the chain checks a byte.
                    block[8..16]
                        .iter()
                        .flat_map(|e| e.to_ne_bytes())
                        .filter(|b| *b != 0)
                        .count()
                } else {
                    1
                }
            })
            .sum()
    }
}

/// What the kernel's heads and blocks hold, as written.
#[derive(Clone, Debug)]
pub struct Arrays {
    pub heads: [Entry; HEADS],
    /// Written blocks by slot, pruned after a reload to those reachable or
    /// retired (the kernel's other slots are unreferenced).
    blocks: BTreeMap<usize, IgnoreBlock>,
    /// Slots this agent may use (fewer than [`BLOCKS`] in tests of the
    /// trie fallback).
    capacity: usize,
}

impl Arrays {
    /// The kernel's zeroed maps: every head emits.
    pub fn new(capacity: usize) -> Self {
        Self {
            heads: [EMIT; HEADS],
            blocks: BTreeMap::new(),
            capacity: capacity.min(BLOCKS),
        }
    }

    /// Slots past `capacity` are not written again (those in use stay
    /// until their heads change).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.min(BLOCKS);
    }

    /// A block as the kernel holds it (an unwritten slot is zeroed: emit).
    fn block(&self, slot: usize) -> IgnoreBlock {
        self.blocks.get(&slot).copied().unwrap_or([EMIT; 256])
    }

    /// Slots some head reaches, as the kernel walks them.
    pub fn reachable(&self) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        for (index, &head) in self.heads.iter().enumerate() {
            self.mark(head, levels_below(index), &mut seen);
        }
        seen
    }

    fn mark(&self, entry: Entry, levels: usize, seen: &mut BTreeSet<usize>) {
        if !is_block(entry) || levels == 0 || !seen.insert(slot_of(entry)) {
            return;
        }
        let block = self.block(slot_of(entry));
        for at in links(is_chain(entry)) {
            self.mark(block[at], levels - 1, seen);
        }
    }

    /// Head `index`'s tree as the kernel would walk it.
    pub fn subtree(&self, index: usize) -> Tree {
        let mut out = Tree::default();
        out.root = self.decode(self.heads[index], levels_below(index), &mut out);
        out
    }

    fn decode(&self, entry: Entry, levels: usize, out: &mut Tree) -> Entry {
        if !is_block(entry) {
            return entry;
        }
        if levels == 0 {
            // The kernel stops here and emits.
            return EMIT;
        }
        let block = self.block(slot_of(entry));
        let index = out.blocks.len();
        out.blocks.push(block);
        out.chains.push(is_chain(entry));
        for at in links(is_chain(entry)) {
            let decoded = self.decode(block[at], levels - 1, out);
            out.blocks[index][at] = decoded;
        }
        entry_of(index) | (entry & IGNORE_ENTRY_CHAIN)
    }

    /// Records a step the kernel took (the trie's own steps are no-ops).
    pub fn apply(&mut self, step: &Step) {
        match step {
            Step::Head(index, entry) => self.heads[*index] = *entry,
            Step::Block(slot, block) => {
                self.blocks.insert(*slot, **block);
            }
            Step::Set(..) | Step::Remove(_) => {}
        }
    }

    /// Forgets the blocks nothing reaches any more, except those in `keep`
    /// (retired blocks a program may still read: the kernel's value is
    /// rewritten whole, so theirs must be written as it was).
    pub fn prune(&mut self, keep: &BTreeSet<usize>) {
        let reachable = self.reachable();
        self.blocks
            .retain(|slot, _| reachable.contains(slot) || keep.contains(slot));
    }

    /// The kernel's whole block value: every block this mirror holds, zero
    /// elsewhere (slots nothing points at and no program still reads).
    pub fn image(&self) -> Box<IgnoreBlocks> {
        let mut image: Box<IgnoreBlocks> = vec![[EMIT; 256]; BLOCKS]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("BLOCKS blocks"));
        for (slot, block) in &self.blocks {
            if let Some(to) = image.get_mut(*slot) {
                *to = *block;
            }
        }
        image
    }

    /// Heads whose /8 the table splits (they point at blocks, or read the
    /// trie).
    pub fn split_heads(&self) -> usize {
        self.heads
            .iter()
            .filter(|h| is_block(**h) || **h == TRIE)
            .count()
    }

    /// Entries that send a lookup to the trie (the pool ran out there).
    pub fn trie_entries(&self) -> usize {
        (0..HEADS)
            .map(|index| {
                let tree = self.subtree(index);
                let in_blocks: usize = tree
                    .blocks
                    .iter()
                    .zip(&tree.chains)
                    .map(|(block, chain)| {
                        links(*chain)
                            .into_iter()
                            .filter(|at| block[*at] == TRIE)
                            .count()
                    })
                    .sum();
                in_blocks + usize::from(tree.root == TRIE)
            })
            .sum()
    }
}

/// The steps from what the kernel holds (`arrays`, trie `old`) to `new`,
/// ordered so that an address both emit is emitted at every intermediate
/// state:
/// 1. every head whose tree changes is pointed at the trie;
/// 2. the trie moves in its own safe order ([`table::trie_steps`]);
/// 3. the changed heads' new blocks are written into free slots: neither
///    reachable nor in `retired` (unlinked since the last grace period);
/// 4. the changed heads are pointed at their new trees.
///
/// A head whose tree is unchanged is left alone: both functions agree with
/// it on its whole /8. Old blocks are never written, so a walk that began
/// before step 1 ends in the old function.
pub fn transition(
    arrays: &Arrays,
    retired: &BTreeSet<usize>,
    old: &Table,
    new: &Table,
) -> Vec<Step> {
    let reachable = arrays.reachable();
    let mut free = (0..arrays.capacity)
        .filter(|s| usable(*s) && !reachable.contains(s) && !retired.contains(s));
    let mut budget = free.clone().count();
    let sorted = by_address(new);
    let mut changed = Vec::new();
    for index in 0..HEADS {
        let was = arrays.subtree(index);
        // The tree the table wants, if the pool allowed (the builder counts
        // blocks before chains are made, so its budget is that count).
        let ideal = tree(new, &sorted, index, IDEAL_ROOM);
        if ideal == was {
            continue;
        }
        let will = if ideal.built() <= budget {
            ideal
        } else if budget <= was.built() && tree(new, &sorted, index, was.built()) == was {
            // Cut short by the pool already, and no more room now: kept, so
            // a head does not flip between its blocks and the trie as
            // slots come and go.
            continue;
        } else {
            tree(new, &sorted, index, budget)
        };
        if will == was {
            continue;
        }
        budget -= will.blocks.len();
        changed.push((index, will));
    }
    let mut steps: Vec<Step> = changed
        .iter()
        .filter(|(index, _)| arrays.heads[*index] != TRIE)
        .map(|(index, _)| Step::Head(*index, TRIE))
        .collect();
    steps.extend(table::trie_steps(old, new));
    let mut last = Vec::new();
    for (index, will) in changed {
        let slots: Vec<usize> = free.by_ref().take(will.blocks.len()).collect();
        let place = |entry: Entry| {
            if is_block(entry) {
                entry_of(slots[slot_of(entry)]) | (entry & IGNORE_ENTRY_CHAIN)
            } else {
                entry
            }
        };
        for (local, block) in will.blocks.iter().enumerate() {
            let mut block = *block;
            for at in links(will.chains[local]) {
                block[at] = place(block[at]);
            }
            steps.push(Step::Block(slots[local], Box::new(block)));
        }
        let root = place(will.root);
        if root != TRIE {
            last.push(Step::Head(index, root));
        }
    }
    steps.extend(last);
    steps
}
