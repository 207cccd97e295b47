//! Connect results: what an emitted connect returned, from
//! `sys_exit_connect` and io_uring completions ([`ConnectResultEvent`]).

/// Array of [`ConnectSlot`], direct-mapped by thread id: the socket of the
/// connect a thread is in, filed by the sock_addr connect hooks when they
/// emit and taken by `sys_exit_connect`, or the io_uring connect the thread
/// is submitting (`io_uring_submit_req`), until its sock_addr hook. An
/// array element costs no hashing, helper call or lock, where an LRU hash
/// update and a failed lookup were a third of an emitted connect's cost
/// (BENCHMARKS.md scenario 6). Two threads whose ids are a multiple of
/// [`CONNECT_SLOTS_MAX_ENTRIES`] apart, both inside connect() at once, share
/// a slot: the first one's result is then not sent and the agent's
/// deadline applies to it, as to a connect whose exit never comes.
pub const CONNECT_SLOTS_MAP: &str = "EGRET_CONN_SLOTS";
/// Slots of [`CONNECT_SLOTS_MAP`] (a power of two).
pub const CONNECT_SLOTS_MAX_ENTRIES: u32 = 16_384;
const _: () = assert!(CONNECT_SLOTS_MAX_ENTRIES.is_power_of_two());
/// LRU hash io_uring request pointer → [`ConnectPending`], taken by
/// `io_uring_complete`. LRU, so a request whose completion never comes is
/// evicted instead of filling the map; that connect meets its deadline.
pub const URING_CONNECTS_MAP: &str = "EGRET_URING_CONNECTS";
/// Capacity of [`URING_CONNECTS_MAP`]: io_uring connects in flight at once.
pub const URING_CONNECTS_MAX_ENTRIES: u32 = 16_384;
/// `sys_exit_connect`.`ret`, `io_uring_submit_req`.`req`/`opcode`/`flags`
/// and `io_uring_complete`.`req`/`res` offsets, from tracefs.
pub const TP_CONNECT_EXIT_RET_GLOBAL: &str = "TP_CONNECT_EXIT_RET";
pub const TP_URING_SUBMIT_REQ_GLOBAL: &str = "TP_URING_SUBMIT_REQ";
pub const TP_URING_SUBMIT_OPCODE_GLOBAL: &str = "TP_URING_SUBMIT_OPCODE";
pub const TP_URING_SUBMIT_FLAGS_GLOBAL: &str = "TP_URING_SUBMIT_FLAGS";
pub const TP_URING_COMPLETE_REQ_GLOBAL: &str = "TP_URING_COMPLETE_REQ";
pub const TP_URING_COMPLETE_RES_GLOBAL: &str = "TP_URING_COMPLETE_RES";
/// io_uring's opcode for connect (UAPI `IORING_OP_CONNECT`).
pub const IORING_OP_CONNECT: u8 = 16;
/// `REQ_F_FORCE_ASYNC` (= `IOSQE_ASYNC`, bit 4 of the request flags): the
/// request is issued from an io-wq worker, another thread, so the thread
/// mark would never be met; such connects are not marked.
pub const IO_URING_REQ_F_FORCE_ASYNC: u32 = 1 << 4;
/// [`ConnectResultEvent::source`]: the connect(2) syscall's return.
pub const CONNECT_RESULT_SYSCALL: u8 = 1;
/// [`ConnectResultEvent::source`]: an io_uring CQE's `res`.
pub const CONNECT_RESULT_IO_URING: u8 = 2;

/// Value of [`CONNECT_SLOTS_MAP`]: whose the slot is (`pid_tgid`, 0: free)
/// and what it holds, a connect's socket or an io_uring request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectSlot {
    pub pid_tgid: u64,
    /// The emitted connect's socket; 0 while an io_uring request is marked.
    pub socket_cookie: u64,
    /// The io_uring request being submitted; 0 for a connect(2).
    pub uring_req: u64,
}

/// Value of [`URING_CONNECTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectPending {
    pub socket_cookie: u64,
    pub tgid: u32,
    pub pid: u32,
}

/// What an emitted connect returned ([`crate::RecordKind::ConnectResult`]),
/// matched to its [`crate::EgressEvent`] by `socket_cookie`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectResultEvent {
    /// [`crate::RecordKind::ConnectResult`].
    pub kind: u8,
    /// [`crate::Hook::ConnectResult`].
    pub hook: u8,
    /// [`CONNECT_RESULT_SYSCALL`] or [`CONNECT_RESULT_IO_URING`].
    pub source: u8,
    pub _pad0: u8,
    /// 0 or minus the errno (-115 EINPROGRESS for a non-blocking socket).
    pub ret: i32,
    /// The thread that connected (for io_uring, the submitter).
    pub tgid: u32,
    pub pid: u32,
    /// CLOCK_MONOTONIC nanoseconds when the result was seen.
    pub mono_ns: u64,
    pub socket_cookie: u64,
}

const _: () = assert!(core::mem::size_of::<ConnectPending>() == 16);
const _: () = assert!(core::mem::size_of::<ConnectSlot>() == 24);
const _: () = assert!(core::mem::size_of::<ConnectResultEvent>() == 32);
