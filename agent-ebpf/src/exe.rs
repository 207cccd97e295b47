//! The executable file of an exec, resolved in `sched_process_exec`
//! (`process.rs` calls [`resolve`] while filling the exec record).
//!
//! Why here: `proc.exepath` must be the file the kernel runs, not the
//! string given to execve, which a symlink, `/proc/self/fd/N` or `fexecve`
//! of a memfd disguise. When `sched_process_exec` fires, the exec is done
//! and `current->mm->exe_file` is the new image's file (a script's
//! interpreter, as `/proc/<pid>/exe` shows). `bpf_d_path` would be simpler
//! but only BPF LSM and fentry programs may call it, and neither program
//! type loads on every kernel Egret runs on (the reference kernel refuses
//! both with EPERM), so the path is rebuilt the way `d_path` does it: walk
//! `d_parent` up to the task's root, crossing mounts through `struct mount`.
//! Every read is a `bpf_probe_read_kernel` at an offset from kernel BTF (no
//! CO-RE in Rust eBPF); without BTF the agent leaves `valid` at 0 and the
//! record says "unknown". Cost: one walk per exec, none on the connect path.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated};
use egret_common::{
    EXE_KNOWN, EXE_MAX_DEPTH, EXE_NAME_MAX, EXE_NO_LINKS, EXE_ON_OVERLAY, EXE_ON_SHMEM,
    EXE_PATH_BYTES, EXE_PATH_ERR, EXE_UPPER, ExeFile, ExeOffsets, Hook,
};

use crate::maps::{COUNTERS, EXE_SCRATCH};

/// Set by the agent from BTF; all zero (`valid` 0) means "do not read".
#[unsafe(no_mangle)]
static EXE_OFFSETS: ExeOffsets = ExeOffsets {
    valid: 0,
    task_mm: 0,
    task_fs: 0,
    mm_exe_file: 0,
    fs_root: 0,
    file_f_path: 0,
    file_f_inode: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    inode_i_nlink: 0,
    inode_i_sb: 0,
    inode_size: 0,
    sb_s_magic: 0,
    _pad: 0,
};

const TMPFS_MAGIC: u64 = 0x0102_1994;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// Per-CPU scratch: the path is built backwards from the middle of `buf`
/// (at most [`EXE_PATH_BYTES`] bytes before it, one name of slack after).
#[repr(C)]
pub struct ExeScratch {
    /// Where the path starts in `buf`; kept in map memory (volatile) so
    /// the verifier sees an unknown bound-checked value each iteration and
    /// prunes the walk's states instead of exploring every length.
    pub pos: u64,
    pub buf: [u8; 2 * EXE_PATH_BYTES],
}

#[inline(always)]
fn offset(field: &'static u32) -> usize {
    // SAFETY: reading our own global; volatile so the loader's value is used.
    (unsafe { core::ptr::read_volatile(field) }) as usize
}

#[inline(always)]
fn read<T>(base: u64, at: usize) -> Result<T, i64> {
    // SAFETY: a checked kernel read; a bad pointer is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base as usize + at) as *const T) }.map_err(|e| e as i64)
}

/// Fills `exe` for the current task. Never fails: what cannot be read is
/// reported through the flags.
#[inline(always)]
pub fn resolve(exe: &mut ExeFile) {
    exe.len = 0;
    exe.path[0] = 0;
    exe.flags = 0;
    let o = &EXE_OFFSETS;
    if offset(&o.valid) == 0 {
        return;
    }
    let Some(counters) = COUNTERS.get_ptr_mut(Hook::ExeFile as u32) else {
        return;
    };
    // SAFETY: this CPU's counters slot (see sock_addr.rs on plain increments).
    unsafe { (*counters).seen += 1 };
    match try_resolve(exe, o) {
        Ok(()) => {
            // SAFETY: as above.
            unsafe { (*counters).emitted += 1 };
        }
        Err(_) => {
            exe.flags |= EXE_PATH_ERR;
            exe.len = 0;
            exe.path[0] = 0;
            // SAFETY: as above.
            unsafe { (*counters).ignored += 1 };
        }
    }
}

fn try_resolve(exe: &mut ExeFile, o: &'static ExeOffsets) -> Result<(), i64> {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = read(task, offset(&o.task_mm))?;
    let file: u64 = read(mm, offset(&o.mm_exe_file))?;
    if file == 0 {
        return Err(0);
    }
    exe.flags = EXE_KNOWN;
    let inode: u64 = read(file, offset(&o.file_f_inode))?;
    let nlink: u32 = read(inode, offset(&o.inode_i_nlink))?;
    let sb: u64 = read(inode, offset(&o.inode_i_sb))?;
    let magic: u64 = read(sb, offset(&o.sb_s_magic))?;
    if nlink == 0 {
        exe.flags |= EXE_NO_LINKS;
    }
    match magic {
        TMPFS_MAGIC | HUGETLBFS_MAGIC => exe.flags |= EXE_ON_SHMEM,
        OVERLAYFS_SUPER_MAGIC => {
            exe.flags |= EXE_ON_OVERLAY;
            // overlayfs keeps the upper dentry right after the VFS inode it
            // embeds (struct ovl_inode { …; struct inode vfs_inode; struct
            // dentry *__upperdentry; … }, unchanged since 4.13). overlay is a
            // module whose BTF may be absent, so vmlinux's sizeof(struct
            // inode) is what locates it.
            let upper: u64 = read(inode, offset(&o.inode_size))?;
            if upper != 0 {
                exe.flags |= EXE_UPPER;
            }
        }
        _ => {}
    }
    build_path(exe, o, task, file)
}

/// `d_path` of the file, relative to the task's root.
fn build_path(exe: &mut ExeFile, o: &'static ExeOffsets, task: u64, file: u64) -> Result<(), i64> {
    let fs: u64 = read(task, offset(&o.task_fs))?;
    let root = offset(&o.fs_root);
    let root_mnt: u64 = read(fs, root + offset(&o.path_mnt))?;
    let root_dentry: u64 = read(fs, root + offset(&o.path_dentry))?;
    let f_path = offset(&o.file_f_path);
    let mut mnt: u64 = read(file, f_path + offset(&o.path_mnt))?;
    let mut dentry: u64 = read(file, f_path + offset(&o.path_dentry))?;
    let mount_mnt = offset(&o.mount_mnt) as u64;
    let mut mount = mnt.wrapping_sub(mount_mnt);

    let scratch = EXE_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: this CPU's scratch slot, exclusively ours during the program.
    let s = unsafe { &mut *scratch };
    s.buf[EXE_PATH_BYTES] = 0;
    set_pos(s, EXE_PATH_BYTES as u64);
    let mut done = false;
    for _ in 0..EXE_MAX_DEPTH {
        if dentry == root_dentry && mnt == root_mnt {
            done = true;
            break;
        }
        let mnt_root: u64 = read(mnt, offset(&o.vfsmount_mnt_root))?;
        if dentry == mnt_root {
            let parent: u64 = read(mount, offset(&o.mount_mnt_parent))?;
            if parent == mount {
                // The top of this namespace's tree (or an internal mount).
                done = true;
                break;
            }
            dentry = read(mount, offset(&o.mount_mnt_mountpoint))?;
            mount = parent;
            mnt = parent.wrapping_add(mount_mnt);
            continue;
        }
        let name = offset(&o.dentry_d_name);
        let len: u32 = read(dentry, name + offset(&o.qstr_len))?;
        let name_ptr: u64 = read(dentry, name + offset(&o.qstr_name))?;
        let len = len as u64;
        let pos = get_pos(s);
        if len > EXE_NAME_MAX as u64 || len + 1 > pos {
            return Err(0);
        }
        // Masks prove to the verifier what the checks above already ensure:
        // the slash and the name land inside `buf`.
        let at = ((pos - len - 1) as usize) & (EXE_PATH_BYTES - 1);
        s.buf[at] = b'/';
        // SAFETY: [at + 1, at + 1 + len) lies inside buf (at < 256, len < 256).
        let copied = unsafe {
            generated::bpf_probe_read_kernel(
                s.buf.as_mut_ptr().add(at + 1).cast(),
                (len as u32) & EXE_NAME_MAX as u32,
                name_ptr as *const _,
            )
        };
        if copied != 0 {
            return Err(copied);
        }
        set_pos(s, at as u64);
        let parent: u64 = read(dentry, offset(&o.dentry_d_parent))?;
        if parent == dentry {
            // A disconnected or pseudo dentry (a memfd's): its own name is
            // all there is, as d_path shows it.
            done = true;
            break;
        }
        dentry = parent;
    }
    if !done {
        return Err(0);
    }
    let mut pos = get_pos(s) as usize;
    if pos >= EXE_PATH_BYTES {
        // The file is its filesystem's root: not an executable, but say "/".
        pos = EXE_PATH_BYTES - 1;
        s.buf[pos] = b'/';
    }
    let start = pos & (EXE_PATH_BYTES - 1);
    // SAFETY: [start, start + EXE_PATH_BYTES) lies inside buf; the path
    // ends with the NUL at buf[EXE_PATH_BYTES].
    let copied = unsafe {
        generated::bpf_probe_read_kernel(
            exe.path.as_mut_ptr().cast(),
            EXE_PATH_BYTES as u32,
            s.buf.as_ptr().add(start).cast(),
        )
    };
    if copied != 0 {
        return Err(copied);
    }
    exe.len = (EXE_PATH_BYTES - start) as u32;
    Ok(())
}

#[inline(always)]
fn get_pos(s: &ExeScratch) -> u64 {
    // SAFETY: our scratch slot; volatile keeps the value in map memory.
    unsafe { core::ptr::read_volatile(&s.pos) }
}

#[inline(always)]
fn set_pos(s: &mut ExeScratch, pos: u64) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut s.pos, pos) }
}
