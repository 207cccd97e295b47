//! Chains: a run of levels that each lead one way, made one block the
//! kernel checks as two masked 64-bit compares instead of a dependent load
//! per byte.
use egret_common::{
    IGNORE_CHAIN_AT, IGNORE_CHAIN_NEXT, IGNORE_CHAIN_OTHER, IGNORE_ENTRY_CHAIN, IgnoreBlock,
};

use super::{EMIT, Entry, Tree, entry_of, is_block, slot_of};

/// Writes address bytes into entries in memory order, as the kernel's
/// `chain_of` reads them back as words.
fn put_bytes(block: &mut IgnoreBlock, at: usize, bytes: &[u8; 16]) {
    for (entry, pair) in block[at..at + 8].iter_mut().zip(bytes.chunks_exact(2)) {
        *entry = Entry::from_ne_bytes([pair[0], pair[1]]);
    }
}

/// A level a chain can take: every entry holds the same verdict but those
/// of one byte, or of one aligned range of bytes (a prefix inside the
/// byte) that all hold the same verdict. Returns the byte, the mask of its
/// bits the level looks at, the entry the byte leads to and the common
/// verdict. A range ends the chain, so its entry must be a verdict.
fn one_way(block: &IgnoreBlock) -> Option<(u8, u8, Entry, Entry)> {
    // An aligned range of at most 128 bytes cannot hold both ends, so the
    // common verdict is at one of them.
    [block[0], block[255]]
        .into_iter()
        .find_map(|common| one_way_around(block, common))
}

fn one_way_around(block: &IgnoreBlock, common: Entry) -> Option<(u8, u8, Entry, Entry)> {
    if is_block(common) {
        return None;
    }
    let odd: Vec<usize> = (0..256).filter(|b| block[*b] != common).collect();
    let (&first, &last) = (odd.first()?, odd.last()?);
    let span = odd.len();
    let entry = block[first];
    let aligned = span.is_power_of_two() && first % span == 0 && last == first + span - 1;
    if !aligned
        || span > 128
        || (span > 1 && (is_block(entry) || odd.iter().any(|b| block[*b] != entry)))
    {
        return None;
    }
    Some((first as u8, !((span - 1) as u8), entry, common))
}

/// The builder's subtree at `entry` (a block of `plain` splitting byte
/// `at`) into `out`, with every run of two or more one-way levels that
/// share a verdict made one chain: one check for the run instead of a
/// dependent load per byte.
pub(super) fn compress(plain: &[IgnoreBlock], entry: Entry, at: usize, out: &mut Tree) -> Entry {
    if !is_block(entry) {
        return entry;
    }
    let mut run = Vec::new();
    let mut other = EMIT;
    let mut next = entry;
    while is_block(next) && at + run.len() < 16 {
        match one_way(&plain[slot_of(next)]) {
            Some((byte, mask, on, common)) if run.is_empty() || common == other => {
                other = common;
                run.push((byte, mask));
                next = on;
            }
            _ => break,
        }
    }
    let index = out.blocks.len();
    out.blocks.push([EMIT; 256]);
    out.chains.push(run.len() >= 2);
    if run.len() >= 2 {
        let resume = at + run.len();
        let on = compress(plain, next, resume, out);
        let (mut want, mut mask) = ([0u8; 16], [0u8; 16]);
        for (i, (byte, bits)) in run.iter().enumerate() {
            want[at + i] = *byte;
            mask[at + i] = *bits;
        }
        let block = &mut out.blocks[index];
        put_bytes(block, 0, &want);
        put_bytes(block, 8, &mask);
        block[IGNORE_CHAIN_NEXT] = on;
        block[IGNORE_CHAIN_OTHER] = other;
        // At most 16.
        block[IGNORE_CHAIN_AT] = resume as Entry;
        return entry_of(index) | IGNORE_ENTRY_CHAIN;
    }
    for (byte, child) in plain[slot_of(entry)].iter().enumerate() {
        let child = compress(plain, *child, at + 1, out);
        out.blocks[index][byte] = child;
    }
    entry_of(index)
}
