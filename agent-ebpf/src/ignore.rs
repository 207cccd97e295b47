//! The in-kernel ignore verdict every emitting hook asks before it reserves
//! a record: a per-/8 array first, the LPM trie only inside /8s the table
//! splits.
//!
//! The trie alone made the cost of an ignored connect follow the rule set:
//! an LPM lookup walks one node per prefix on the address's path, so the
//! seed rule's six entries read 133 ns against 114 for the four built-in
//! prefixes (BENCHMARKS.md §6). The head array is a BPF_MAP_TYPE_ARRAY,
//! whose lookup the verifier inlines into a bounds check and an add, so an
//! address in a /8 the table treats alike (loopback, RFC 1918's 10/8, any
//! public /8 the rules do not single out) costs the same under any rules.
//! Measured with the old and new builds attached at once, so every connect
//! ran both (BENCHMARKS.md §6, §C): an ignored connect decided at its head
//! takes 0.44–0.60 of the trie-only program's time (about 95 ns against
//! 185–205); one inside a split /8 still pays the trie walk (about 170).
use aya_ebpf::maps::lpm_trie::Key;
use egret_common::{IGNORE_VERDICT_IGNORE, IGNORE_VERDICT_TRIE};

use crate::maps::{IGNORE, IGNORE_HEADS};

/// `::ffff:a.b.c.d`: an IPv4 address as the ignore table stores it.
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Whether the ignore table drops an attempt to `mapped` (IPv4
/// IPv4-mapped). A missing head (never: the index is below 512) emits.
#[inline(always)]
pub fn ignored(mapped: &[u8; 16]) -> bool {
    let head = if is_v4_mapped(mapped) {
        u32::from(mapped[12])
    } else {
        256 + u32::from(mapped[0])
    };
    match IGNORE_HEADS.get(head) {
        Some(&IGNORE_VERDICT_IGNORE) => true,
        Some(&IGNORE_VERDICT_TRIE) => IGNORE
            .get(Key::new(128, *mapped))
            .is_some_and(|verdict| *verdict == IGNORE_VERDICT_IGNORE),
        _ => false,
    }
}
