//! `RecordKind::Exec`: a successful exec from the sched_process_exec
//! tracepoint, with argv captured at execve entry.
use egret_common::{
    EXE_KNOWN, EXE_NO_LINKS, EXE_ON_OVERLAY, EXE_ON_SHMEM, EXE_PATH_ERR, EXE_UPPER,
    EXEC_FLAG_ARGS_TRUNCATED, EXEC_FLAG_NO_ARGS, ExecEvent,
};

use super::{Comm, DecodeError, read_record};

/// A successful exec, as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub exec_id: u64,
    pub cgroup_id: u64,
    pub comm: Comm,
    /// The path given to execve (may be relative).
    pub filename: String,
    /// argv as captured at execve entry; `None` when it was not captured.
    pub argv: Option<Vec<String>>,
    pub args_truncated: bool,
    /// The executable file as the kernel resolved it; `None` when the
    /// kernel could not (no BTF).
    pub exe: Option<ExeFile>,
}

/// The kernel's view of the file an exec runs (`agent-ebpf/src/exe.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExeFile {
    /// The file's path in the exec'ing task's root, as `d_path` gives it: a
    /// deleted file ends in ` (deleted)` as in `/proc/<pid>/exe`. Empty
    /// when it could not be built.
    pub path: String,
    /// No links left: deleted, or a memfd.
    pub no_links: bool,
    /// On tmpfs/hugetlbfs (where memfds live).
    pub on_shmem: bool,
    pub on_overlay: bool,
    /// On overlayfs with an upper (writable layer) copy.
    pub upper: bool,
}

impl ExeFile {
    /// `proc.is_exe_from_memfd`: an unlinked shmem file named by
    /// memfd_create (its path reads `/memfd:<name> (deleted)`).
    pub fn from_memfd(&self) -> bool {
        self.no_links && self.on_shmem && self.path.starts_with("/memfd:")
    }

    /// `proc.is_exe_deleted`: the file was deleted (a memfd is reported as
    /// that instead).
    pub fn deleted(&self) -> bool {
        self.no_links && !self.from_memfd()
    }
}

fn exe_file(raw: &ExecEvent) -> Option<ExeFile> {
    let exe = &raw.exe;
    if exe.flags & EXE_KNOWN == 0 {
        return None;
    }
    let no_links = exe.flags & EXE_NO_LINKS != 0;
    let path = if exe.flags & EXE_PATH_ERR == 0 {
        let len = exe
            .path
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(exe.path.len());
        let mut path = String::from_utf8_lossy(&exe.path[..len]).into_owned();
        // As d_path and /proc/<pid>/exe mark an unlinked file.
        if no_links && !path.is_empty() {
            path.push_str(" (deleted)");
        }
        path
    } else {
        String::new()
    };
    Some(ExeFile {
        path,
        no_links,
        on_shmem: exe.flags & EXE_ON_SHMEM != 0,
        on_overlay: exe.flags & EXE_ON_OVERLAY != 0,
        upper: exe.flags & EXE_UPPER != 0,
    })
}

pub(super) fn decode(record: &[u8]) -> Result<ExecRecord, DecodeError> {
    let raw: ExecEvent = read_record(record)?;
    let filename_len = usize::from(raw.filename_len).min(raw.filename.len());
    let args_len = usize::from(raw.args_len).min(raw.args.len());
    let argv = (raw.flags & EXEC_FLAG_NO_ARGS == 0).then(|| {
        raw.args[..args_len]
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    });
    Ok(ExecRecord {
        tgid: raw.tgid,
        ppid: raw.ppid,
        uid: raw.uid,
        gid: raw.gid,
        exec_id: raw.exec_id,
        cgroup_id: raw.cgroup_id,
        comm: Comm::from_raw(raw.comm),
        filename: String::from_utf8_lossy(&raw.filename[..filename_len]).into_owned(),
        argv,
        args_truncated: raw.flags & EXEC_FLAG_ARGS_TRUNCATED != 0,
        exe: exe_file(&raw),
    })
}
