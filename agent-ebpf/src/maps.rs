//! Maps shared by every hook family. Names match `egret_common::*_MAP`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use egret_common::{
    CONNECT_SLOTS_MAX_ENTRIES, ConnectPending, ConnectSlot, DEFAULT_RINGBUF_BYTES, ExecArgs, Hook,
    HookCounters, IGNORE_HEADS_ENTRIES, IGNORE_MAX_ENTRIES, IgnoreBlocks, PROCS_MAX_ENTRIES,
    ProcState, QUARANTINE_ALLOW_MAX_ENTRIES, QUARANTINE_SLOTS, QuarantineCounters,
    QuarantineTarget, RAW_FLOWS_MAX_ENTRIES, RAW_OWNERS_MAX_ENTRIES, RawFlow, RawFlowKey, RawOwner,
    URING_CONNECTS_MAX_ENTRIES,
};

#[map(name = "EGRET_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Prefix → verdict; the longest match decides (`egret_common::IGNORE_MAP`).
#[map(name = "EGRET_IGNORE")]
pub static IGNORE: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(IGNORE_MAX_ENTRIES, 0);

/// Per-/8 entries read before [`IGNORE`] (`egret_common::IGNORE_HEADS_MAP`).
#[map(name = "EGRET_IGNORE_HEADS")]
pub static IGNORE_HEADS: Array<u16> = Array::with_max_entries(IGNORE_HEADS_ENTRIES, 0);

/// Blocks that split a head by the next byte, as one value
/// (`egret_common::IGNORE_BLOCKS_MAP`).
#[map(name = "EGRET_IGNORE_BLOCKS")]
pub static IGNORE_BLOCKS: Array<IgnoreBlocks> = Array::with_max_entries(1, 0);

#[map(name = "EGRET_COUNTERS")]
pub static COUNTERS: PerCpuArray<HookCounters> = PerCpuArray::with_max_entries(Hook::COUNT, 0);

/// tgid → image identity and parent, kept by `process.rs`, read per egress
/// event. LRU so threads (which the fork hook cannot tell from processes)
/// and missed exits can never fill it.
#[map(name = "EGRET_PROCS")]
pub static PROCS: LruHashMap<u32, ProcState> = LruHashMap::with_max_entries(PROCS_MAX_ENTRIES, 0);

/// argv captured at execve entry, keyed by thread id, until the exec
/// completes (or fails: then the next exec of that thread overwrites it).
#[map(name = "EGRET_EXEC_ARGS")]
pub static EXEC_ARGS: LruHashMap<u32, ExecArgs> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU scratch: ExecArgs is too large for the 512-byte BPF stack.
#[map(name = "EGRET_ARGS_TMP")]
pub static ARGS_SCRATCH: PerCpuArray<ExecArgs> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch where `exe.rs` builds the executable's path.
#[map(name = "EGRET_EXE_TMP")]
pub static EXE_SCRATCH: PerCpuArray<crate::exe::ExeScratch> = PerCpuArray::with_max_entries(1, 0);

/// Quarantined cgroup id → slot and flags (see `quarantine.rs`).
#[map(name = "EGRET_Q_TARGETS")]
pub static QUARANTINE_TARGETS: HashMap<u64, QuarantineTarget> =
    HashMap::with_max_entries(QUARANTINE_SLOTS, 0);

/// Allowed destinations per quarantine slot; the value is unused.
#[map(name = "EGRET_Q_ALLOW")]
pub static QUARANTINE_ALLOW: LpmTrie<[u8; 20], u8> =
    LpmTrie::with_max_entries(QUARANTINE_ALLOW_MAX_ENTRIES, 0);

#[map(name = "EGRET_Q_COUNTERS")]
pub static QUARANTINE_COUNTERS: PerCpuArray<QuarantineCounters> =
    PerCpuArray::with_max_entries(QUARANTINE_SLOTS, 0);

/// Raw/ping (socket, destination) pairs already reported (`sockets.rs`).
#[map(name = "EGRET_RAW_FLOWS")]
pub static RAW_FLOWS: LruHashMap<RawFlowKey, RawFlow> =
    LruHashMap::with_max_entries(RAW_FLOWS_MAX_ENTRIES, 0);

/// Raw/ping socket cookie → creating process (`sockets.rs`).
#[map(name = "EGRET_RAW_OWNERS")]
pub static RAW_OWNERS: LruHashMap<u64, RawOwner> =
    LruHashMap::with_max_entries(RAW_OWNERS_MAX_ENTRIES, 0);

/// Thread → the connect it is in, or the io_uring connect it is submitting
/// (`connect_result.rs`; see `CONNECT_SLOTS_MAP`).
#[map(name = "EGRET_CONN_SLOTS")]
pub static CONNECT_SLOTS: Array<ConnectSlot> =
    Array::with_max_entries(CONNECT_SLOTS_MAX_ENTRIES, 0);

/// io_uring request → the socket of its connect.
#[map(name = "EGRET_URING_CONNECTS")]
pub static URING_CONNECTS: LruHashMap<u64, ConnectPending> =
    LruHashMap::with_max_entries(URING_CONNECTS_MAX_ENTRIES, 0);
