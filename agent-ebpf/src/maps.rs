//! Maps shared by every hook family. Names match `egret_common::*_MAP`.
use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, PerCpuArray, RingBuf},
};
use egret_common::{DEFAULT_RINGBUF_BYTES, Hook, HookCounters, IGNORE_MAX_ENTRIES};

#[map(name = "EGRET_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Value is unused; presence of a covering prefix is the answer.
#[map(name = "EGRET_IGNORE")]
pub static IGNORE: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(IGNORE_MAX_ENTRIES, 0);

#[map(name = "EGRET_COUNTERS")]
pub static COUNTERS: PerCpuArray<HookCounters> = PerCpuArray::with_max_entries(Hook::COUNT, 0);
