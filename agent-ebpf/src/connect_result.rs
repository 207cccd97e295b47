//! Kernel hooks for the result of a connect the sock_addr hooks emitted
//! (Falco's `evt.res`/`evt.rawres`: the call's return, not the attempt).
//!
//! The sock_addr connect hooks run before the kernel connects, with the
//! kernel's own copy of the address; they file the socket cookie per thread
//! ([`remember`]) and the result is matched to the attempt by that cookie:
//!
//! - `syscalls/sys_exit_connect`: connect(2)'s return in the same thread
//!   (0, -EINPROGRESS for a non-blocking socket, or the error). Chosen over
//!   a kretprobe on `__sys_connect`: stable, offsets from tracefs, no
//!   kernel symbol. A connect that was not emitted costs one array read.
//! - `io_uring/io_uring_submit_req` (`io_uring_submit_sqe` before 6.3, same
//!   fields; the agent attaches to whichever exists) marks a thread submitting an
//!   IORING_OP_CONNECT with the request pointer; the sock_addr hook, which
//!   runs inline in that thread when the request is issued, files request →
//!   cookie; `io_uring/io_uring_complete` emits the CQE's `res` (io_uring
//!   waits for the handshake itself, so it is the final result). Requests
//!   issued from io-wq workers (IOSQE_ASYNC, or punted) are not matched:
//!   their results never come and the agent's deadline applies.
//!
//! All optional: a kernel without these tracepoints loses the results only.
//! Measured cost: BENCHMARKS.md ("Connect results").
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use egret_common::{
    CONNECT_RESULT_IO_URING, CONNECT_RESULT_SYSCALL, CONNECT_SLOTS_MAX_ENTRIES, ConnectPending,
    ConnectResultEvent, ConnectSlot, Hook, IO_URING_REQ_F_FORCE_ASYNC, IORING_OP_CONNECT,
    RecordKind,
};

use crate::maps::{CONNECT_SLOTS, COUNTERS, EVENTS, URING_CONNECTS};

// Field offsets; the agent overrides them from tracefs (these are 6.18's).
#[unsafe(no_mangle)]
static TP_CONNECT_EXIT_RET: u32 = 16;
#[unsafe(no_mangle)]
static TP_URING_SUBMIT_REQ: u32 = 16;
#[unsafe(no_mangle)]
static TP_URING_SUBMIT_OPCODE: u32 = 32;
#[unsafe(no_mangle)]
static TP_URING_SUBMIT_FLAGS: u32 = 40;
#[unsafe(no_mangle)]
static TP_URING_COMPLETE_REQ: u32 = 16;
#[unsafe(no_mangle)]
static TP_URING_COMPLETE_RES: u32 = 32;

#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: reading our own global; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(value) }
}

/// This thread's slot (shared with the threads whose ids are a multiple of
/// the slot count away: see `CONNECT_SLOTS_MAP`).
#[inline(always)]
fn slot(pid_tgid: u64) -> Option<&'static mut ConnectSlot> {
    let slot = CONNECT_SLOTS.get_ptr_mut((pid_tgid as u32) & (CONNECT_SLOTS_MAX_ENTRIES - 1))?;
    // SAFETY: an array element, valid for the program's run.
    Some(unsafe { &mut *slot })
}

/// Called by the sock_addr connect hooks after they emitted an attempt:
/// files its socket for the result. One array element read and written
/// per emitted connect.
#[inline(always)]
pub fn remember(pid_tgid: u64, socket_cookie: u64) {
    let Some(slot) = slot(pid_tgid) else {
        return;
    };
    if slot.pid_tgid == pid_tgid && slot.uring_req != 0 {
        let pending = ConnectPending {
            socket_cookie,
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
        };
        let _ = URING_CONNECTS.insert(slot.uring_req, pending, 0);
        *slot = ConnectSlot::default();
        return;
    }
    *slot = ConnectSlot {
        pid_tgid,
        socket_cookie,
        uring_req: 0,
    };
}

/// sys_exit_connect: the syscall's return for a connect that was emitted.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn egret_connect_exit(ctx: TracePointContext) -> u32 {
    let _ = try_connect_exit(&ctx);
    0
}

#[inline(always)]
fn try_connect_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = slot(pid_tgid)?;
    if slot.pid_tgid != pid_tgid || slot.socket_cookie == 0 {
        return None;
    }
    let pending = ConnectPending {
        socket_cookie: slot.socket_cookie,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
    };
    *slot = ConnectSlot::default();
    // SAFETY: offset from tracefs, inside the tracepoint record (`long`).
    let ret: i64 = unsafe { ctx.read_at(global(&TP_CONNECT_EXIT_RET) as usize) }.ok()?;
    emit(&pending, ret as i32, CONNECT_RESULT_SYSCALL);
    Some(())
}

/// io_uring_submit_req: marks the submitting thread for an inline connect.
/// One opcode read per submitted request; connects also one slot write.
#[tracepoint(category = "io_uring", name = "io_uring_submit_req")]
pub fn egret_uring_submit(ctx: TracePointContext) -> u32 {
    let _ = try_uring_submit(&ctx);
    0
}

#[inline(always)]
fn try_uring_submit(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets from tracefs, inside the tracepoint record.
    let opcode: u8 = unsafe { ctx.read_at(global(&TP_URING_SUBMIT_OPCODE) as usize) }.ok()?;
    if opcode != IORING_OP_CONNECT {
        return None;
    }
    // The low 32 bits: `flags` is u32 on 6.1 and u64 later (little endian).
    // SAFETY: as above.
    let flags: u32 = unsafe { ctx.read_at(global(&TP_URING_SUBMIT_FLAGS) as usize) }.ok()?;
    if flags & IO_URING_REQ_F_FORCE_ASYNC != 0 {
        return None;
    }
    // SAFETY: as above.
    let req: u64 = unsafe { ctx.read_at(global(&TP_URING_SUBMIT_REQ) as usize) }.ok()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    *slot(pid_tgid)? = ConnectSlot {
        pid_tgid,
        socket_cookie: 0,
        uring_req: req,
    };
    Some(())
}

/// io_uring_complete: the CQE of a connect that was emitted. One failed
/// lookup for every other completion.
#[tracepoint(category = "io_uring", name = "io_uring_complete")]
pub fn egret_uring_complete(ctx: TracePointContext) -> u32 {
    let _ = try_uring_complete(&ctx);
    0
}

#[inline(always)]
fn try_uring_complete(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets from tracefs, inside the tracepoint record.
    let req: u64 = unsafe { ctx.read_at(global(&TP_URING_COMPLETE_REQ) as usize) }.ok()?;
    // SAFETY: copied out before the entry is removed.
    let pending = unsafe { URING_CONNECTS.get(req) }.copied()?;
    let _ = URING_CONNECTS.remove(req);
    // SAFETY: as above (`int res`).
    let res: i32 = unsafe { ctx.read_at(global(&TP_URING_COMPLETE_RES) as usize) }.ok()?;
    emit(&pending, res, CONNECT_RESULT_IO_URING);
    Some(())
}

#[inline(always)]
fn emit(pending: &ConnectPending, ret: i32, source: u8) {
    let Some(counters) = COUNTERS.get_ptr_mut(Hook::ConnectResult as u32) else {
        return;
    };
    let reserved = EVENTS.reserve::<ConnectResultEvent>(0);
    // SAFETY: this CPU's slot; tracepoint programs run with migration
    // disabled.
    unsafe { (*counters).seen += 1 };
    let Some(mut entry) = reserved else {
        // SAFETY: as above.
        unsafe { (*counters).ringbuf_full += 1 };
        return;
    };
    entry.write(ConnectResultEvent {
        kind: RecordKind::ConnectResult as u8,
        hook: Hook::ConnectResult as u8,
        source,
        _pad0: 0,
        ret,
        tgid: pending.tgid,
        pid: pending.pid,
        // SAFETY: helper without arguments.
        mono_ns: unsafe { bpf_ktime_get_ns() },
        socket_cookie: pending.socket_cookie,
    });
    entry.submit(0);
    // SAFETY: as above.
    unsafe { (*counters).emitted += 1 };
}
