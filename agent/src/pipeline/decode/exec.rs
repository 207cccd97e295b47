//! `RecordKind::Exec`: a successful exec from the sched_process_exec
//! tracepoint, with argv captured at execve entry.
use egret_common::{EXEC_FLAG_ARGS_TRUNCATED, EXEC_FLAG_NO_ARGS, ExecEvent};

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
    })
}
