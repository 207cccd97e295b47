//! Wire types shared by the kernel programs and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, padded explicitly and free of
//! `bool`, so the kernel and userspace agree on layout byte for byte; the
//! size assertions at the bottom fail the build if that ever drifts.
#![no_std]

/// Ring buffer carrying [`EgressEvent`] records to userspace.
pub const EVENTS_MAP: &str = "EGRET_EVENTS";
/// LPM trie of destination prefixes, each with a verdict
/// ([`IGNORE_VERDICT_IGNORE`] or [`IGNORE_VERDICT_EMIT`]): the longest
/// matching prefix decides whether the kernel drops an attempt before
/// userspace; no match means emit. Keys are `{prefix_len: u32, addr: [u8;
/// 16]}` with IPv4 stored IPv4-mapped (`::ffff:0:0/96` + prefix) so one trie
/// serves both families. Verdicts keep the table minimal: "everything but
/// one address" is two entries, not the 128 prefixes of its complement,
/// and the lookup cost follows the table's depth. Read only where
/// [`IGNORE_HEADS_MAP`] says [`IGNORE_VERDICT_TRIE`].
pub const IGNORE_MAP: &str = "EGRET_IGNORE";
/// [`IGNORE_MAP`] value: count the attempt, send nothing to userspace.
pub const IGNORE_VERDICT_IGNORE: u8 = 1;
/// [`IGNORE_MAP`] value: send the attempt to userspace (an exception inside
/// a shorter ignored prefix).
pub const IGNORE_VERDICT_EMIT: u8 = 0;
/// Array of [`IGNORE_HEADS_ENTRIES`] `u16` entries read before
/// [`IGNORE_MAP`]: one per IPv4 /8 (index = first octet) and one per IPv6
/// /8 outside the IPv4-mapped range (index = 256 + first byte). An entry is
/// a verdict ([`IGNORE_VERDICT_EMIT`], [`IGNORE_VERDICT_IGNORE`]),
/// [`IGNORE_VERDICT_TRIE`], or [`IGNORE_ENTRY_BLOCK`] with the index of a
/// block in [`IGNORE_BLOCKS_MAP`] that splits the /8 by its next byte.
/// The head lookup is a few inlined instructions and each block level one
/// dependent load (a run of one-way levels is one chain), so the cost
/// follows the levels the table needs on an address's path, not its size;
/// the trie (always the whole table) is walked only where the blocks ran
/// out. A head is rewritten in place byte by byte, only to and from
/// [`IGNORE_VERDICT_TRIE`], and no block index has a low byte of 1 or 2:
/// so a head block entry with a low byte of 2 (a read half done) asks the
/// trie.
pub const IGNORE_HEADS_MAP: &str = "EGRET_IGNORE_HEADS";
/// Entries of [`IGNORE_HEADS_MAP`]: 256 IPv4 /8s, then 256 IPv6 /8s.
pub const IGNORE_HEADS_ENTRIES: u32 = 512;
/// Head or block entry: the trie decides (the blocks ran out here, or the
/// /8 is changing).
pub const IGNORE_VERDICT_TRIE: u8 = 2;
/// Head or block entry flag: the low 12 bits index a block.
pub const IGNORE_ENTRY_BLOCK: u16 = 0x8000;
/// With [`IGNORE_ENTRY_BLOCK`]: the block is a chain, a run of levels that
/// each hold one verdict but for one byte, checked at once. Its first 16
/// bytes are the address bytes the run expects, the next 16 a mask of the
/// bytes it covers, compared as two `u64`s; entry [`IGNORE_CHAIN_NEXT`]
/// follows on a match, [`IGNORE_CHAIN_OTHER`] otherwise, and the walk
/// resumes at byte [`IGNORE_CHAIN_AT`]. "Alert only for 2001:db8::1" is one
/// chain of 15 bytes, not 15 blocks.
pub const IGNORE_ENTRY_CHAIN: u16 = 0x4000;
/// Entries of a chain block: the entry on a match, the entry otherwise,
/// the byte the walk goes on at.
pub const IGNORE_CHAIN_NEXT: usize = 16;
pub const IGNORE_CHAIN_OTHER: usize = 17;
pub const IGNORE_CHAIN_AT: usize = 18;
/// Array of one [`IgnoreBlocks`] value: [`IGNORE_BLOCKS_ENTRIES`] blocks of
/// 256 entries (as in [`IGNORE_HEADS_MAP`]), one per value of the address's
/// next byte. One value, so a program looks it up once and then indexes
/// it: each further level is one dependent load, not a lookup through a
/// key on the stack. The agent rewrites the value whole; a block changes
/// only while no head or block points at it, and is reused only after an
/// RCU grace period has passed since it was unlinked, and every other
/// byte is rewritten with the value it had, so a program never reads a
/// block half written.
pub const IGNORE_BLOCKS_MAP: &str = "EGRET_IGNORE_BLOCKS";
/// Blocks in [`IGNORE_BLOCKS_MAP`] (2 MiB of kernel memory; a power of
/// two, so a program masks a block index into range).
pub const IGNORE_BLOCKS_ENTRIES: u32 = 4096;
/// Blocks on one path below a head: an IPv6 /8 down to its /128 (IPv4 uses
/// at most 3).
pub const IGNORE_MAX_LEVELS: u32 = 15;
/// One block of [`IGNORE_BLOCKS_MAP`].
pub type IgnoreBlock = [u16; 256];
/// The one value of [`IGNORE_BLOCKS_MAP`].
pub type IgnoreBlocks = [IgnoreBlock; IGNORE_BLOCKS_ENTRIES as usize];

/// Per-CPU [`HookCounters`], one slot per [`Hook`].
pub const COUNTERS_MAP: &str = "EGRET_COUNTERS";
/// LRU hash tgid (or, for threads, tid) → [`ProcState`], kept by the process
/// lifecycle tracepoints and read by the egress hooks.
pub const PROCS_MAP: &str = "EGRET_PROCS";
/// Capacity of [`PROCS_MAP`]: live processes and threads on a busy node.
pub const PROCS_MAX_ENTRIES: u32 = 131_072;

/// Globals the agent overrides at load time with tracepoint field offsets read
/// from tracefs, because these layouts differ between kernel versions.
pub const TP_EXEC_FILENAME_GLOBAL: &str = "TP_EXEC_FILENAME";
pub const TP_EXEC_OLD_PID_GLOBAL: &str = "TP_EXEC_OLD_PID";
pub const TP_FORK_CHILD_PID_GLOBAL: &str = "TP_FORK_CHILD_PID";
pub const TP_EXIT_GROUP_DEAD_GLOBAL: &str = "TP_EXIT_GROUP_DEAD";
pub const TP_EXECVE_ARGV_GLOBAL: &str = "TP_EXECVE_ARGV";
pub const TP_EXECVEAT_ARGV_GLOBAL: &str = "TP_EXECVEAT_ARGV";
/// `cgroup:cgroup_mkdir`/`cgroup_rmdir` (one event class, one layout).
pub const TP_CGROUP_ROOT_GLOBAL: &str = "TP_CGROUP_ROOT";
pub const TP_CGROUP_LEVEL_GLOBAL: &str = "TP_CGROUP_LEVEL";
pub const TP_CGROUP_ID_GLOBAL: &str = "TP_CGROUP_ID";
pub const TP_CGROUP_PATH_GLOBAL: &str = "TP_CGROUP_PATH";
/// Global holding [`ExeOffsets`], set by the agent from kernel BTF.
pub const EXE_OFFSETS_GLOBAL: &str = "EXE_OFFSETS";
/// Offset value meaning "this kernel's tracepoint has no such field".
pub const TP_FIELD_ABSENT: u32 = u32::MAX;

/// Default ring buffer size; the agent may override it at load time.
pub const DEFAULT_RINGBUF_BYTES: u32 = 8 * 1024 * 1024;
/// Capacity of the ignore trie (networks, not addresses).
pub const IGNORE_MAX_ENTRIES: u32 = 4096;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Which kernel hook produced an event. Values index [`COUNTERS_MAP`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 0,
    Connect6 = 1,
    Sendmsg4 = 2,
    Sendmsg6 = 3,
    /// sched_process_exec: counts exec records (not an egress hook).
    Exec = 4,
    /// cgroup:cgroup_mkdir on the v2 hierarchy: cgroup records.
    CgroupMkdir = 5,
    /// cgroup:cgroup_rmdir on the v2 hierarchy.
    CgroupRmdir = 6,
    /// The executable file of each exec, resolved in sched_process_exec:
    /// `seen` execs, `emitted` with a full path, `ignored` without one.
    ExeFile = 7,
    /// cgroup_skb egress: an IPv4 packet from a raw or ICMP ping socket.
    RawSend4 = 8,
    /// cgroup_skb egress: an IPv6 packet from a raw or ICMPv6 ping socket.
    RawSend6 = 9,
    /// Packet sockets (sys_enter_socket) and raw IP sockets (cgroup
    /// sock_create) created.
    SocketCreate = 10,
    /// The result of an emitted connect: `sys_exit_connect` and
    /// `io_uring_complete` (`connect_result.rs`). `seen` counts results
    /// found for an emitted connect, not every syscall exit.
    ConnectResult = 11,
    /// cgroup_skb egress: a DNS query (UDP or TCP, to a DNS port) left a
    /// socket; `seen` counts every packet the program ran for.
    DnsQuery = 12,
    /// cgroup_skb ingress: a DNS answer (from a DNS port) reached a socket.
    DnsAnswer = 13,
    /// TCP flow accounting (sock_ops + cgroup_skb egress): `seen` tracked
    /// connects, `ignored` connects to ignored destinations (counted, never
    /// recorded), `emitted` flow records (interim and final).
    TcpFlow = 14,
    /// UDP flow accounting (cgroup_skb + sock_release): `seen` sockets
    /// whose first datagram was counted, the rest as for [`Hook::TcpFlow`].
    UdpFlow = 15,
}

impl Hook {
    /// Counter slots: highest hook value + 1 (every slot has its hook).
    pub const COUNT: u32 = 16;
    /// Every hook, in slot order: whoever reads the counters reads them all
    /// (a hook left out here is a count nobody ever sees).
    pub const ALL: [Hook; Hook::COUNT as usize] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::Exec,
        Hook::CgroupMkdir,
        Hook::CgroupRmdir,
        Hook::ExeFile,
        Hook::RawSend4,
        Hook::RawSend6,
        Hook::SocketCreate,
        Hook::ConnectResult,
        Hook::DnsQuery,
        Hook::DnsAnswer,
        Hook::TcpFlow,
        Hook::UdpFlow,
    ];
    /// The hooks whose records are outbound attempts (the exec slot counts
    /// process records, socket_create counts socket creations).
    pub const EGRESS: [Hook; 6] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::RawSend4,
        Hook::RawSend6,
    ];

    pub const fn from_u8(raw: u8) -> Option<Hook> {
        match raw {
            0 => Some(Hook::Connect4),
            1 => Some(Hook::Connect6),
            2 => Some(Hook::Sendmsg4),
            3 => Some(Hook::Sendmsg6),
            4 => Some(Hook::Exec),
            5 => Some(Hook::CgroupMkdir),
            6 => Some(Hook::CgroupRmdir),
            7 => Some(Hook::ExeFile),
            8 => Some(Hook::RawSend4),
            9 => Some(Hook::RawSend6),
            10 => Some(Hook::SocketCreate),
            11 => Some(Hook::ConnectResult),
            12 => Some(Hook::DnsQuery),
            13 => Some(Hook::DnsAnswer),
            14 => Some(Hook::TcpFlow),
            15 => Some(Hook::UdpFlow),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::Sendmsg4 => "sendmsg4",
            Hook::Sendmsg6 => "sendmsg6",
            Hook::Exec => "exec",
            Hook::RawSend4 => "raw_send4",
            Hook::RawSend6 => "raw_send6",
            Hook::SocketCreate => "socket_create",
            Hook::CgroupMkdir => "cgroup_mkdir",
            Hook::CgroupRmdir => "cgroup_rmdir",
            Hook::ExeFile => "exe_file",
            Hook::ConnectResult => "connect_result",
            Hook::DnsQuery => "dns_query",
            Hook::DnsAnswer => "dns_answer",
            Hook::TcpFlow => "tcp_flow",
            Hook::UdpFlow => "udp_flow",
        }
    }
}

/// Tag in the first byte of every ring buffer record, so new record kinds can
/// share the buffer without breaking older decoders.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Egress = 1,
    Exec = 2,
    /// An [`EgressEvent`] a quarantine denied; `quarantine` names its slot.
    Blocked = 3,
    /// A [`CgroupEvent`]: a v2 cgroup was created or removed.
    Cgroup = 4,
    /// A [`ConnectResultEvent`]: what an emitted connect returned.
    ConnectResult = 5,
    /// A [`SocketEvent`]: a packet or raw socket was created.
    Socket = 6,
    /// A [`DnsEvent`]: a DNS message a socket sent or received.
    Dns = 7,
    /// A [`FlowEvent`]: a TCP connection or UDP flow ended, or an interim
    /// report of a long-lived one.
    Flow = 8,
}

/// `flags` bit: the destination was an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) and is reported as the IPv4 address it is.
pub const FLAG_V4_MAPPED: u8 = 1 << 0;
/// `flags` bit of a [`RecordKind::Blocked`] record: a packet dropped by the
/// cgroup_skb egress program (ICMP, raw, or an existing flow), not a call a
/// sock_addr hook refused; process fields are then 0 (softirq context).
pub const FLAG_PACKET: u8 = 1 << 1;
/// `flags` bit: the send came from a SOCK_RAW socket (`fd.l4proto` = raw;
/// `protocol` is then the socket's IP protocol, e.g. 1 for a raw ICMP one).
pub const FLAG_RAW_SOCKET: u8 = 1 << 2;

/// One outbound connection attempt, as seen by a cgroup sock_addr hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressEvent {
    /// [`RecordKind::Egress`].
    pub kind: u8,
    /// [`Hook`] value.
    pub hook: u8,
    /// Family of `daddr` after unmapping: [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// IP protocol number of the socket (6 TCP, 17 UDP, 1/58 ICMP ping).
    pub protocol: u8,
    /// Destination port, host byte order.
    pub dport: u16,
    pub flags: u8,
    pub _pad0: u8,
    /// Thread group id (the process id users know).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub mono_ns: u64,
    /// Identity of the program image the process runs ([`ProcState`]); 0
    /// when the process is unknown to the lifecycle tracker.
    pub exec_id: u64,
    /// Parent tgid from the lifecycle tracker; 0 when unknown.
    pub ppid: u32,
    /// [`RecordKind::Blocked`]: the quarantine slot that denied; else 0.
    pub quarantine: u32,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// Destination address; IPv4 occupies the first four bytes, network order.
    pub daddr: [u8; 16],
    /// Task comm, NUL padded.
    pub comm: [u8; 16],
}

/// Hash cgroup id → [`QuarantineTarget`]: the cgroups the enforcing
/// programs are attached to. The programs find their quarantine by looking
/// up each ancestor of the acting cgroup.
pub const QUARANTINE_TARGETS_MAP: &str = "EGRET_Q_TARGETS";
/// LPM trie of allowed destinations per quarantine. Keys are
/// `{prefix_len: u32, data: [u8; 20]}`: the slot (big-endian u32, always
/// fully matched: prefix_len = 32 + network prefix) then the address,
/// IPv4-mapped like [`IGNORE_MAP`].
pub const QUARANTINE_ALLOW_MAP: &str = "EGRET_Q_ALLOW";
/// Per-CPU [`QuarantineCounters`], one per slot.
pub const QUARANTINE_COUNTERS_MAP: &str = "EGRET_Q_COUNTERS";
/// Most quarantines at once (slots 1..QUARANTINE_SLOTS; 0 means none).
pub const QUARANTINE_SLOTS: u32 = 256;
/// Allow-list networks over all quarantines.
pub const QUARANTINE_ALLOW_MAX_ENTRIES: u32 = 4096;
/// Deepest cgroup level the programs search for a quarantined ancestor.
pub const QUARANTINE_MAX_LEVEL: i32 = 32;
/// Blocked-packet events per slot per CPU are at most one per this many
/// nanoseconds, so a flood from a quarantined workload cannot crowd the ring
/// buffer (drops are still all counted).
pub const QUARANTINE_PACKET_EVENT_GAP_NS: u64 = 10_000_000;

/// [`QuarantineTarget::flags`] bit: the cgroup_skb program drops every
/// non-allowed packet, stopping flows that were open before the quarantine
/// (without it, only ICMP, raw and other non-TCP/UDP sockets are dropped).
pub const QUARANTINE_STOP_EXISTING: u32 = 1 << 0;

/// Value of [`QUARANTINE_TARGETS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineTarget {
    /// 1..[`QUARANTINE_SLOTS`].
    pub slot: u32,
    pub flags: u32,
}

/// Value of [`QUARANTINE_COUNTERS_MAP`], summed across CPUs by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineCounters {
    /// connect() calls refused with EPERM.
    pub blocked_connects: u64,
    /// UDP sends to a named destination refused with EPERM.
    pub blocked_sends: u64,
    /// Packets the egress program dropped.
    pub dropped_packets: u64,
    /// Attempts let through because the destination is allow-listed.
    pub allowed: u64,
    /// Blocked records lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Time of the last blocked-packet event (rate limit, not a count).
    pub last_packet_event_ns: u64,
}

/// Per-hook counters, summed across CPUs by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounters {
    /// Every invocation of the hook.
    pub seen: u64,
    /// Dropped in kernel because the destination is in the ignore trie.
    pub ignored: u64,
    /// Submitted to the ring buffer.
    pub emitted: u64,
    /// Lost because the ring buffer had no room (reserve failed).
    pub ringbuf_full: u64,
    /// Sends whose destination an earlier event already reported, counted
    /// instead of emitted: UDP sends to the peer a socket is connected to
    /// (the connect hook reported it), and raw/ping sends to a (socket,
    /// destination) reported less than [`RAW_REPORT_GAP_NS`] ago.
    pub repeat_of_connect: u64,
}

/// LRU hash [`RawFlowKey`] → [`RawFlow`]: the (socket, destination) pairs
/// of raw and ping sockets already reported, so a tunnel of a million
/// packets costs one event per [`RAW_REPORT_GAP_NS`] and a counter.
pub const RAW_FLOWS_MAP: &str = "EGRET_RAW_FLOWS";
/// Capacity of [`RAW_FLOWS_MAP`]; an evicted pair is simply reported again.
pub const RAW_FLOWS_MAX_ENTRIES: u32 = 16_384;
/// A reported (socket, destination) is reported again after this long, so a
/// long-lived tunnel stays visible (one event a minute, not one per packet).
pub const RAW_REPORT_GAP_NS: u64 = 60_000_000_000;

/// Key of [`RAW_FLOWS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFlowKey {
    pub socket_cookie: u64,
    /// Destination, IPv4-mapped for IPv4 (as in [`IGNORE_MAP`]).
    pub daddr: [u8; 16],
}

/// Value of [`RAW_FLOWS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFlow {
    /// When this pair was last emitted (bpf_ktime_get_ns).
    pub reported_ns: u64,
    /// Sends seen for this pair, the reported ones included.
    pub sends: u64,
}

/// LRU hash socket cookie → [`RawOwner`]: who created each raw or ping
/// socket, recorded by the sock_create hook for the packets it sends.
pub const RAW_OWNERS_MAP: &str = "EGRET_RAW_OWNERS";
pub const RAW_OWNERS_MAX_ENTRIES: u32 = 16_384;

/// Value of [`RAW_OWNERS_MAP`]: the creating process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawOwner {
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ppid: u32,
    pub _pad: u32,
    pub exec_id: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub comm: [u8; 16],
}

/// sys_enter_socket field offsets, from tracefs like the exec ones.
pub const TP_SOCKET_FAMILY_GLOBAL: &str = "TP_SOCKET_FAMILY";
pub const TP_SOCKET_TYPE_GLOBAL: &str = "TP_SOCKET_TYPE";
pub const TP_SOCKET_PROTOCOL_GLOBAL: &str = "TP_SOCKET_PROTOCOL";

pub const AF_PACKET: u16 = 17;
pub const SOCK_RAW: u32 = 3;

/// A packet socket (any type) or a raw IP socket was created
/// ([`RecordKind::Socket`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// [`RecordKind::Socket`].
    pub kind: u8,
    /// [`Hook`] value ([`Hook::SocketCreate`]).
    pub hook: u8,
    /// socket(2) `domain` (AF_PACKET, AF_INET, …).
    pub family: u16,
    /// socket(2) `type`, without SOCK_NONBLOCK/SOCK_CLOEXEC.
    pub sock_type: u32,
    /// socket(2) `protocol` as passed (for AF_PACKET, a network-order
    /// ethertype: ETH_P_ALL is 768).
    pub protocol: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Parent tgid from the lifecycle tracker; 0 when unknown.
    pub ppid: u32,
    pub mono_ns: u64,
    pub exec_id: u64,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    pub comm: [u8; 16],
}

/// Value of [`PROCS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcState {
    /// Monotonic time of the exec that loaded the current image (unique per
    /// exec in practice); a forked child inherits its parent's. Processes
    /// found at agent start get a synthetic id with [`EXEC_ID_SEEDED`] set.
    pub exec_id: u64,
    pub ppid: u32,
    pub _pad: u32,
}

/// Bit set in synthetic exec ids the agent seeds for pre-existing processes.
pub const EXEC_ID_SEEDED: u64 = 1 << 63;

pub const EXEC_FILENAME_BYTES: usize = 256;
/// argv bytes kept (NUL-separated); longer command lines are truncated.
pub const EXEC_ARGS_BYTES: usize = 1024;
/// The most argv entries read from user memory.
pub const EXEC_ARGS_MAX: usize = 32;
/// Largest single argument read; the buffer has this much slack after
/// [`EXEC_ARGS_BYTES`] so every bounded read stays inside it.
pub const EXEC_ARG_CHUNK: usize = 256;

/// `ExecEvent.flags` bit: argv was longer than what was kept.
pub const EXEC_FLAG_ARGS_TRUNCATED: u8 = 1 << 0;
/// `ExecEvent.flags` bit: no argv was captured at syscall entry.
pub const EXEC_FLAG_NO_ARGS: u8 = 1 << 1;

/// Bytes kept of the executable's path (`d_path`, NUL terminated).
pub const EXE_PATH_BYTES: usize = 256;
/// Longest path component copied; a longer name fails the resolution.
pub const EXE_NAME_MAX: usize = 255;
/// Most path components walked (directories plus mount crossings).
pub const EXE_MAX_DEPTH: u32 = 40;

/// Kernel struct member offsets (bytes) the executable-file resolution
/// reads, from `/sys/kernel/btf/vmlinux` at load time (no CO-RE in Rust
/// eBPF). `valid` is 0 when the agent had no BTF: then nothing is read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeOffsets {
    pub valid: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub mm_exe_file: u32,
    pub fs_root: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub inode_i_nlink: u32,
    pub inode_i_sb: u32,
    pub inode_size: u32,
    pub sb_s_magic: u32,
    pub _pad: u32,
}

/// `ExeFile.flags` bit: the kernel's executable file was read (no BTF
/// offsets: not set, and nothing else is).
pub const EXE_KNOWN: u32 = 1 << 0;
/// The executable's inode has no links left (deleted, or a memfd).
pub const EXE_NO_LINKS: u32 = 1 << 1;
/// The file is on tmpfs/hugetlbfs, where memfds live.
pub const EXE_ON_SHMEM: u32 = 1 << 2;
/// The file is on overlayfs.
pub const EXE_ON_OVERLAY: u32 = 1 << 3;
/// On overlayfs, and the inode has an upper (writable layer) dentry.
pub const EXE_UPPER: u32 = 1 << 4;
/// The path could not be built (longer than [`EXE_PATH_BYTES`], deeper
/// than [`EXE_MAX_DEPTH`], or a read failed); it is empty.
pub const EXE_PATH_ERR: u32 = 1 << 5;

/// What the kernel says about the file an exec runs (`mm->exe_file`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExeFile {
    pub flags: u32,
    /// Path bytes, without the NUL.
    pub len: u32,
    /// Absolute in the exec'ing task's root, like `d_path`, NUL terminated.
    pub path: [u8; EXE_PATH_BYTES],
}

/// Captured argv, built at execve entry and consumed at sched_process_exec.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgs {
    pub len: u32,
    pub truncated: u32,
    pub buf: [u8; EXEC_ARGS_BYTES + EXEC_ARG_CHUNK],
}

/// A successful exec: the new image of process `tgid`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// [`RecordKind::Exec`].
    pub kind: u8,
    pub flags: u8,
    pub filename_len: u16,
    pub args_len: u16,
    pub _pad0: u16,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub mono_ns: u64,
    pub exec_id: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub filename: [u8; EXEC_FILENAME_BYTES],
    pub args: [u8; EXEC_ARGS_BYTES + EXEC_ARG_CHUNK],
    /// The executable file as the kernel resolved it ([`ExeFile`]).
    pub exe: ExeFile,
}

/// Path bytes kept from `cgroup_mkdir`; Kubernetes paths are ~200 bytes.
/// A longer path is flagged and left to the agent's tree walk.
pub const CGROUP_PATH_BYTES: usize = 512;
/// [`CgroupEvent::op`]: the cgroup was created.
pub const CGROUP_OP_MKDIR: u8 = 1;
/// [`CgroupEvent::op`]: the cgroup was removed.
pub const CGROUP_OP_RMDIR: u8 = 2;
/// [`CgroupEvent::flags`] bit: the path did not fit in `path`.
pub const CGROUP_FLAG_PATH_TRUNCATED: u8 = 1 << 0;

/// A cgroup v2 directory created or removed, from the `cgroup:cgroup_mkdir`
/// and `cgroup:cgroup_rmdir` tracepoints. Sent so that the agent knows a
/// cgroup's path even when the cgroup is gone before its first event is
/// enriched (one-shot containers).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    /// [`RecordKind::Cgroup`].
    pub kind: u8,
    /// [`CGROUP_OP_MKDIR`] or [`CGROUP_OP_RMDIR`].
    pub op: u8,
    pub flags: u8,
    pub _pad0: u8,
    /// Depth below the root (the root is 0).
    pub level: u32,
    /// The cgroup id: what `bpf_get_current_cgroup_id` returns for its tasks.
    pub id: u64,
    pub mono_ns: u64,
    /// Path from the hierarchy root, NUL terminated (`/a/b`).
    pub path: [u8; CGROUP_PATH_BYTES],
}

pub use connect_result::*;
pub use dns::*;
pub use flow::*;
mod connect_result;
mod dns;
mod flow;

const _: () = assert!(core::mem::size_of::<CgroupEvent>() == 24 + CGROUP_PATH_BYTES);
const _: () = assert!(core::mem::size_of::<EgressEvent>() == 104);
const _: () = assert!(core::mem::size_of::<ProcState>() == 16);
const _: () = assert!(core::mem::size_of::<ExeFile>() == 8 + EXE_PATH_BYTES);
const _: () = assert!(core::mem::size_of::<ExeOffsets>() == 88);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 1600 + 8 + EXE_PATH_BYTES);
const _: () = assert!(EXEC_ARGS_BYTES.is_power_of_two());
const _: () = assert!(core::mem::align_of::<EgressEvent>() == 8);
const _: () = assert!(core::mem::size_of::<HookCounters>() == 40);
const _: () = assert!(core::mem::size_of::<QuarantineTarget>() == 8);
const _: () = assert!(core::mem::size_of::<QuarantineCounters>() == 48);
const _: () = assert!(core::mem::size_of::<SocketEvent>() == 88);
const _: () = assert!(core::mem::size_of::<RawFlowKey>() == 24);
const _: () = assert!(core::mem::size_of::<RawFlow>() == 16);
const _: () = assert!(core::mem::size_of::<RawOwner>() == 64);
const _: () = assert!(core::mem::size_of::<IgnoreBlock>() == 512);
const _: () = assert!(IGNORE_BLOCKS_ENTRIES <= IGNORE_ENTRY_CHAIN as u32);
const _: () = assert!(IGNORE_BLOCKS_ENTRIES.is_power_of_two());
const _: () = assert!(core::mem::size_of::<IgnoreBlocks>() == 2 << 20);

#[cfg(feature = "user")]
mod pod;

// `Hook::ALL` lists every slot in order (its length is `Hook::COUNT`), each
// round-tripping through `from_u8`.
const _: () = {
    let mut i = 0;
    while i < Hook::ALL.len() {
        let slot = Hook::ALL[i] as u8;
        assert!((slot as u32) < Hook::COUNT);
        assert!(i == 0 || (Hook::ALL[i - 1] as u8) < slot);
        assert!(matches!(Hook::from_u8(slot), Some(h) if h as u8 == slot));
        i += 1;
    }
    assert!(Hook::ALL[Hook::ALL.len() - 1] as u32 + 1 == Hook::COUNT);
};
