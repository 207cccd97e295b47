//! The in-kernel ignore verdict every emitting hook asks before it reserves
//! a record: a per-/8 head array, blocks that split a head byte by byte
//! (or chains that check a run of bytes at once) where the table does, and
//! the LPM trie only where the blocks ran out.
//!
//! The trie alone made the cost of an ignored connect follow the rule set:
//! an LPM lookup is a helper call that walks one node per prefix on the
//! address's path (75–190 ns on this VM). Heads are an array whose lookup
//! the verifier inlines into a bounds check and an add; the blocks are one
//! array value looked up once and then indexed, so each level is one
//! dependent load. Measured with one agent per rule shape attached at
//! once, so every connect ran each (BENCHMARKS.md §C): decided at its head
//! an ignored connect costs 46–52 ns under every shape; one block (the
//! seed rule's 192.168/16) 1.04–1.08 of that, one chain (198.51.100.2 next
//! to the one alerted address, 2001:db8::2, ::1) 1.10–1.18.
use aya_ebpf::maps::lpm_trie::Key;
use egret_common::{
    IGNORE_BLOCKS_ENTRIES, IGNORE_CHAIN_AT, IGNORE_CHAIN_NEXT, IGNORE_CHAIN_OTHER,
    IGNORE_ENTRY_BLOCK, IGNORE_ENTRY_CHAIN, IGNORE_MAX_LEVELS, IGNORE_VERDICT_IGNORE,
    IGNORE_VERDICT_TRIE, IgnoreBlock,
};

use crate::maps::{IGNORE, IGNORE_BLOCKS, IGNORE_HEADS};

/// `::ffff:a.b.c.d`: an IPv4 address as the ignore table stores it.
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// The address as two words in memory order, as a chain stores its bytes.
#[inline(always)]
fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    (u64::from_ne_bytes(hi), u64::from_ne_bytes(lo))
}

/// A chain block's expected bytes and mask, each as two words.
#[inline(always)]
fn chain_of(block: &IgnoreBlock) -> ((u64, u64), (u64, u64)) {
    // SAFETY: a block is 512 bytes at a multiple of 512 in the map value
    // (8-aligned), so its first 32 bytes are four aligned words; any bit
    // pattern is a valid u64. Four word loads instead of sixteen halfword
    // loads and shifts.
    let words = unsafe { &*block.as_ptr().cast::<[u64; 4]>() };
    ((words[0], words[1]), (words[2], words[3]))
}

/// Byte `at` of the address from its two words: a shift, where indexing
/// the stack array by a value read from a map would be a variable-offset
/// stack read (refused before 5.12).
#[inline(always)]
fn byte_at(hi: u64, lo: u64, at: usize) -> Option<u8> {
    let word = match at {
        0..8 => hi,
        8..16 => lo,
        _ => return None,
    };
    let i = (at % 8) as u32;
    let shift = if cfg!(target_endian = "little") {
        8 * i
    } else {
        8 * (7 - i)
    };
    Some((word >> shift) as u8)
}

/// Whether the ignore table drops an attempt to `mapped` (IPv4
/// IPv4-mapped). Anything missing (a head or block index out of range, a
/// block past the address's last byte: never written so) emits.
#[inline(always)]
pub fn ignored(mapped: &[u8; 16]) -> bool {
    let (head, mut at) = if is_v4_mapped(mapped) {
        (u32::from(mapped[12]), 13)
    } else {
        (256 + u32::from(mapped[0]), 1)
    };
    let Some(&first) = IGNORE_HEADS.get(head) else {
        return false;
    };
    let mut entry = first;
    // A head is rewritten in place, and the kernel copies its two bytes
    // one at a time: read half old, half new, it could point at a block no
    // head owns. Heads change only to and from "ask the trie" (2), and no
    // block's index has a low byte of 1 or 2, so a block entry with a low
    // byte of 2 is such a read and asks the trie; the other mix, a high
    // byte of 0, is a verdict of 0 or 3 and up: emit.
    if entry & IGNORE_ENTRY_BLOCK != 0 && entry & 0xff == u16::from(IGNORE_VERDICT_TRIE) {
        entry = u16::from(IGNORE_VERDICT_TRIE);
    }
    if entry & IGNORE_ENTRY_BLOCK != 0 {
        let Some(blocks) = IGNORE_BLOCKS.get(0) else {
            return false;
        };
        let (hi, lo) = halves(mapped);
        for _ in 0..IGNORE_MAX_LEVELS {
            if entry & IGNORE_ENTRY_BLOCK == 0 {
                break;
            }
            // The mask keeps the index inside the value (the agent never
            // writes a larger one).
            let block = &blocks[usize::from(entry) & (IGNORE_BLOCKS_ENTRIES as usize - 1)];
            if entry & IGNORE_ENTRY_CHAIN != 0 {
                let (want, mask) = chain_of(block);
                if hi & mask.0 == want.0 && lo & mask.1 == want.1 {
                    entry = block[IGNORE_CHAIN_NEXT];
                    at = usize::from(block[IGNORE_CHAIN_AT]);
                } else {
                    entry = block[IGNORE_CHAIN_OTHER];
                }
            } else {
                let Some(byte) = byte_at(hi, lo, at) else {
                    return false;
                };
                entry = block[usize::from(byte)];
                at += 1;
            }
        }
    }
    if entry == u16::from(IGNORE_VERDICT_IGNORE) {
        true
    } else if entry == u16::from(IGNORE_VERDICT_TRIE) {
        IGNORE
            .get(Key::new(128, *mapped))
            .is_some_and(|verdict| *verdict == IGNORE_VERDICT_IGNORE)
    } else {
        false
    }
}
