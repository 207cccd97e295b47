//! Kernel hooks: `cgroup:cgroup_mkdir` and `cgroup:cgroup_rmdir`.
//!
//! Why: a one-shot container (`kubectl run --rm`, a job whose only process
//! connects and exits) can have its cgroup created, used and removed before
//! the agent enriches the first event, and then neither `/proc/<pid>/cgroup`
//! nor a walk of the tree can name it. These stable tracepoints carry the
//! cgroup id, level and full path at creation, so the path reaches the agent
//! (in ring buffer order, ahead of any event from inside the cgroup) by
//! design rather than by luck. They fire only on cgroup creation and removal,
//! never on the connect path. The record layout comes from tracefs at load
//! time, like the process tracepoints' (see `process.rs`).
use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_kernel_str},
    macros::tracepoint,
    programs::TracePointContext,
};
use egret_common::{
    CGROUP_FLAG_PATH_TRUNCATED, CGROUP_OP_MKDIR, CGROUP_OP_RMDIR, CGROUP_PATH_BYTES, CgroupEvent,
    Hook, RecordKind,
};

use crate::maps::{COUNTERS, EVENTS};

// Defaults are the reference kernel's (6.18, and 6.1 has the same layout);
// the agent overrides them with what tracefs says on the running kernel.
#[unsafe(no_mangle)]
static TP_CGROUP_ROOT: u32 = 8;
#[unsafe(no_mangle)]
static TP_CGROUP_LEVEL: u32 = 12;
#[unsafe(no_mangle)]
static TP_CGROUP_ID: u32 = 16;
#[unsafe(no_mangle)]
static TP_CGROUP_PATH: u32 = 24;

/// The v2 (default) hierarchy's id: `0::` in `/proc/<pid>/cgroup`. Hybrid
/// hosts also create v1 cgroups, whose ids are from other id spaces.
const DEFAULT_HIERARCHY: i32 = 0;

#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: reading our own global; volatile so the loader's value is used
    // instead of the compile-time default.
    unsafe { core::ptr::read_volatile(value) }
}

#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn egret_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup(&ctx, Hook::CgroupMkdir, CGROUP_OP_MKDIR);
    0
}

#[tracepoint(category = "cgroup", name = "cgroup_rmdir")]
pub fn egret_cgroup_rmdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup(&ctx, Hook::CgroupRmdir, CGROUP_OP_RMDIR);
    0
}

fn try_cgroup(ctx: &TracePointContext, hook: Hook, op: u8) -> Result<(), i64> {
    let counters = COUNTERS.get_ptr_mut(hook as u32).ok_or(0i64)?;
    // SAFETY: this CPU's counters slot (see sock_addr.rs on plain increments).
    unsafe { (*counters).seen += 1 };
    // SAFETY: offsets from tracefs, inside the tracepoint record.
    let root: i32 = unsafe { ctx.read_at(global(&TP_CGROUP_ROOT) as usize) }.map_err(i64::from)?;
    if root != DEFAULT_HIERARCHY {
        // A v1 hierarchy's cgroup: counted, not sent.
        // SAFETY: as above.
        unsafe { (*counters).ignored += 1 };
        return Ok(());
    }
    // SAFETY: as above.
    let id: u64 = unsafe { ctx.read_at(global(&TP_CGROUP_ID) as usize) }.map_err(i64::from)?;
    // SAFETY: as above.
    let level: i32 =
        unsafe { ctx.read_at(global(&TP_CGROUP_LEVEL) as usize) }.map_err(i64::from)?;
    // SAFETY: as above; __data_loc: low 16 bits offset, high 16 bits length
    // (with the NUL).
    let loc: u32 = unsafe { ctx.read_at(global(&TP_CGROUP_PATH) as usize) }.map_err(i64::from)?;

    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        // SAFETY: as above.
        unsafe { (*counters).ringbuf_full += 1 };
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at reserved ring buffer memory of CgroupEvent
    // size; every header field is written before submit and the path is
    // NUL terminated by the helper (the bytes after it are not read).
    unsafe {
        (*event).kind = RecordKind::Cgroup as u8;
        (*event).op = op;
        (*event).flags = if (loc >> 16) as usize > CGROUP_PATH_BYTES {
            CGROUP_FLAG_PATH_TRUNCATED
        } else {
            0
        };
        (*event)._pad0 = 0;
        (*event).level = level as u32;
        (*event).id = id;
        (*event).mono_ns = bpf_ktime_get_ns();
        let read = bpf_probe_read_kernel_str(
            (*event).path.as_mut_ptr().cast(),
            CGROUP_PATH_BYTES as u32,
            ctx.as_ptr()
                .cast::<u8>()
                .add((loc & 0xffff) as usize)
                .cast(),
        );
        if read <= 0 {
            (*event).path[0] = 0;
        }
    }
    entry.submit(0);
    // SAFETY: as above.
    unsafe { (*counters).emitted += 1 };
    Ok(())
}
