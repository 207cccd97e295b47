//! Kernel hooks: process lifecycle tracepoints (`sched_process_fork`,
//! `sys_enter_execve(at)`, `sched_process_exec`, `sched_process_exit`).
//!
//! Why: an egress event must name the program that made it even when the
//! process has exited before userspace looks (attackers' curl/nc/sh are
//! short-lived), and pid reuse must not mix two processes up. These stable
//! tracepoints fire only on process lifecycle changes, so they cost nothing on
//! the connect path. Their field offsets differ between kernels, so the agent
//! reads them from tracefs and sets the globals below at load time; no CO-RE
//! is needed. argv lives in user memory and is gone after exec, so it is
//! captured at execve entry and emitted when the exec succeeds.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str,
            bpf_probe_read_user_str,
        },
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use egret_common::{
    EXEC_ARG_CHUNK, EXEC_ARGS_BYTES, EXEC_ARGS_MAX, EXEC_FILENAME_BYTES, EXEC_FLAG_ARGS_TRUNCATED,
    EXEC_FLAG_NO_ARGS, ExecEvent, Hook, ProcState, RecordKind, TP_FIELD_ABSENT,
};

use crate::maps::{ARGS_SCRATCH, COUNTERS, EVENTS, EXEC_ARGS, PROCS};

// Defaults are this project's reference kernel (6.18); the agent overrides
// them with what tracefs says on the running kernel.
#[unsafe(no_mangle)]
static TP_EXEC_FILENAME: u32 = 8;
#[unsafe(no_mangle)]
static TP_EXEC_OLD_PID: u32 = 16;
#[unsafe(no_mangle)]
static TP_FORK_CHILD_PID: u32 = 20;
#[unsafe(no_mangle)]
static TP_EXIT_GROUP_DEAD: u32 = 32;
#[unsafe(no_mangle)]
static TP_EXECVE_ARGV: u32 = 24;
#[unsafe(no_mangle)]
static TP_EXECVEAT_ARGV: u32 = 32;

#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: reading our own global; volatile so the loader's value is used
    // instead of the compile-time default.
    unsafe { core::ptr::read_volatile(value) }
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn egret_fork(ctx: TracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

/// The child inherits the parent's image identity: until it execs, it runs
/// the parent's program. Runs in the parent's context.
fn try_fork(ctx: &TracePointContext) -> Result<(), i64> {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: offset from tracefs, inside the tracepoint record.
    let child: i32 =
        unsafe { ctx.read_at(global(&TP_FORK_CHILD_PID) as usize) }.map_err(i64::from)?;
    let exec_id = PROCS
        .get_ptr(parent_tgid)
        // SAFETY: map value pointer valid during the program.
        .map(|state| unsafe { (*state).exec_id })
        .unwrap_or(0);
    let state = ProcState {
        exec_id,
        ppid: parent_tgid,
        _pad: 0,
    };
    PROCS.insert(child as u32, state, 0).map_err(i64::from)
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn egret_execve(ctx: TracePointContext) -> u32 {
    let _ = capture_args(&ctx, global(&TP_EXECVE_ARGV));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn egret_execveat(ctx: TracePointContext) -> u32 {
    let _ = capture_args(&ctx, global(&TP_EXECVEAT_ARGV));
    0
}

/// Copies argv (NUL-separated, bounded) into EXEC_ARGS[tid].
fn capture_args(ctx: &TracePointContext, argv_offset: u32) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: offset from tracefs, inside the tracepoint record.
    let argv: *const *const u8 = unsafe { ctx.read_at(argv_offset as usize) }.map_err(i64::from)?;
    let scratch = ARGS_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: this CPU's scratch slot, exclusively ours during the program.
    let args = unsafe { &mut *scratch };
    args.len = 0;
    args.truncated = 0;
    let mut len: usize = 0;
    for i in 0..EXEC_ARGS_MAX {
        // SAFETY: reading a user pointer with the checked helper.
        let Ok(arg) = (unsafe { bpf_probe_read_user(argv.wrapping_add(i)) }) else {
            break;
        };
        if arg.is_null() {
            break;
        }
        if len >= EXEC_ARGS_BYTES {
            args.truncated = 1;
            break;
        }
        // Masking proves to the verifier that the write stays inside buf
        // (EXEC_ARGS_BYTES is a power of two; buf has EXEC_ARG_CHUNK slack).
        let offset = len & (EXEC_ARGS_BYTES - 1);
        // SAFETY: destination range [offset, offset + CHUNK) lies inside buf.
        let read = unsafe {
            bpf_probe_read_user_str(
                args.buf.as_mut_ptr().add(offset).cast(),
                EXEC_ARG_CHUNK as u32,
                arg.cast(),
            )
        };
        if read <= 0 {
            break;
        }
        len += read as usize;
        if read as usize == EXEC_ARG_CHUNK {
            args.truncated = 1;
        }
        if i == EXEC_ARGS_MAX - 1 {
            args.truncated = 1;
        }
    }
    args.len = len.min(EXEC_ARGS_BYTES) as u32;
    EXEC_ARGS.insert(tid, args, 0).map_err(i64::from)
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn egret_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let counters = COUNTERS.get_ptr_mut(Hook::Exec as u32).ok_or(0i64)?;
    // SAFETY: this CPU's counters slot (see sock_addr.rs on plain increments).
    unsafe { (*counters).seen += 1 };

    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The exec'ing thread may not have been the leader; argv is under its
    // old thread id.
    let old_pid = match global(&TP_EXEC_OLD_PID) {
        TP_FIELD_ABSENT => tgid,
        // SAFETY: offset from tracefs, inside the tracepoint record.
        offset => unsafe { ctx.read_at::<i32>(offset as usize) }.map_err(i64::from)? as u32,
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let ppid = PROCS
        .get_ptr(tgid)
        // SAFETY: map value pointer valid during the program.
        .map(|state| unsafe { (*state).ppid })
        .unwrap_or(0);
    let state = ProcState {
        exec_id: now,
        ppid,
        _pad: 0,
    };
    PROCS.insert(tgid, state, 0).map_err(i64::from)?;

    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        // SAFETY: as above.
        unsafe { (*counters).ringbuf_full += 1 };
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `event` points at reserved ring buffer memory of ExecEvent size;
    // every field is written before submit.
    unsafe {
        (*event).kind = RecordKind::Exec as u8;
        (*event).flags = 0;
        (*event)._pad0 = 0;
        (*event).tgid = tgid;
        (*event).ppid = ppid;
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).mono_ns = now;
        (*event).exec_id = now;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).comm = bpf_get_current_comm().unwrap_or([0u8; 16]);

        // __data_loc: low 16 bits offset of the string in the record.
        let loc: u32 = ctx.read_at(global(&TP_EXEC_FILENAME) as usize).unwrap_or(0);
        let read = bpf_probe_read_kernel_str(
            (*event).filename.as_mut_ptr().cast(),
            EXEC_FILENAME_BYTES as u32,
            ctx.as_ptr()
                .cast::<u8>()
                .add((loc & 0xffff) as usize)
                .cast(),
        );
        (*event).filename_len = if read > 0 { (read - 1) as u16 } else { 0 };

        // The file the kernel runs, not the execve string (exe.rs).
        crate::exe::resolve(&mut (*event).exe);

        match EXEC_ARGS.get_ptr(old_pid) {
            Some(args) => {
                // A fixed-size copy: a variable-length one would need more
                // work to satisfy the verifier, and 1 KiB per exec is cheap.
                let copied = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    (*event).args.as_mut_ptr().cast(),
                    EXEC_ARGS_BYTES as u32,
                    (*args).buf.as_ptr().cast(),
                );
                let len = ((*args).len as usize).min(EXEC_ARGS_BYTES);
                (*event).args_len = if copied == 0 { len as u16 } else { 0 };
                if (*args).truncated != 0 {
                    (*event).flags |= EXEC_FLAG_ARGS_TRUNCATED;
                }
                let _ = EXEC_ARGS.remove(old_pid);
            }
            None => {
                (*event).args_len = 0;
                (*event).flags |= EXEC_FLAG_NO_ARGS;
            }
        }
    }
    entry.submit(0);
    // SAFETY: as above.
    unsafe { (*counters).emitted += 1 };
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn egret_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

/// Forget exited tasks so a reused pid starts clean. A thread's entry goes
/// at once; the process's entry only when the whole group is dead (its other
/// threads may still connect), or at leader exit on kernels without
/// `group_dead`.
fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    if tid != tgid {
        let _ = PROCS.remove(tid);
    }
    let group_dead = match global(&TP_EXIT_GROUP_DEAD) {
        TP_FIELD_ABSENT => tid == tgid,
        // SAFETY: offset from tracefs, inside the tracepoint record.
        offset => unsafe { ctx.read_at::<u8>(offset as usize) }.map_err(i64::from)? != 0,
    };
    if group_dead {
        let _ = PROCS.remove(tgid);
    }
    Ok(())
}
