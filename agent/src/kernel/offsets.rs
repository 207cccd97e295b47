//! Tracepoint field offsets of the process, cgroup, socket and reset
//! tracepoints, read from tracefs for this kernel and handed to the
//! programs as globals (the eBPF crate's defaults are 6.18's).
use std::path::Path;

use aya::EbpfLoader;
use egret_common::{
    TP_CGROUP_ID_GLOBAL, TP_CGROUP_LEVEL_GLOBAL, TP_CGROUP_PATH_GLOBAL, TP_CGROUP_ROOT_GLOBAL,
    TP_EXEC_FILENAME_GLOBAL, TP_EXEC_OLD_PID_GLOBAL, TP_EXECVE_ARGV_GLOBAL,
    TP_EXECVEAT_ARGV_GLOBAL, TP_EXIT_GROUP_DEAD_GLOBAL, TP_FIELD_ABSENT, TP_FORK_CHILD_PID_GLOBAL,
    TP_RESET_COOKIE_GLOBAL, TP_SOCKET_FAMILY_GLOBAL, TP_SOCKET_PROTOCOL_GLOBAL,
    TP_SOCKET_TYPE_GLOBAL,
};

use super::{KernelError, tracefs};

/// Tracepoint field offsets for this kernel, from tracefs.
pub(super) struct Offsets {
    exec_filename: u32,
    exec_old_pid: u32,
    fork_child_pid: u32,
    exit_group_dead: u32,
    /// `TP_FIELD_ABSENT` without CONFIG_FTRACE_SYSCALLS (as the next two).
    execve_argv: u32,
    execveat_argv: u32,
    /// sys_enter_socket (family, type, protocol).
    socket: [u32; 3],
    /// `cgroup_mkdir`/`cgroup_rmdir`: root, level, id, path.
    cgroup: [u32; 4],
    /// `tcp:tcp_receive_reset` sock_cookie (flow end states).
    reset_cookie: u32,
}

impl Offsets {
    pub(super) fn read(tracefs: &Path) -> Result<Offsets, KernelError> {
        use tracefs::Format;
        let exec = Format::read(tracefs, "sched", "sched_process_exec")?;
        let fork = Format::read(tracefs, "sched", "sched_process_fork")?;
        let exit = Format::read(tracefs, "sched", "sched_process_exit")?;
        let argv = |name| {
            Format::read(tracefs, "syscalls", name)
                .ok()
                .and_then(|f| f.offset("argv"))
                .unwrap_or(TP_FIELD_ABSENT)
        };
        let cgroup = |name| -> Result<[u32; 4], KernelError> {
            let format = Format::read(tracefs, "cgroup", name)?;
            Ok([
                format.require("root")?,
                format.require("level")?,
                format.require("id")?,
                format.require("path")?,
            ])
        };
        let mkdir = cgroup("cgroup_mkdir")?;
        let rmdir = cgroup("cgroup_rmdir")?;
        if mkdir != rmdir {
            // One program layout serves both; a kernel that split the
            // event class needs its own globals.
            return Err(KernelError::Tracefs(
                tracefs::TracefsError::LayoutMismatch {
                    first: "cgroup/cgroup_mkdir",
                    second: "cgroup/cgroup_rmdir",
                },
            ));
        }
        Ok(Offsets {
            cgroup: mkdir,
            exec_filename: exec.require("filename")?,
            exec_old_pid: exec.offset("old_pid").unwrap_or(TP_FIELD_ABSENT),
            fork_child_pid: fork.require("child_pid")?,
            reset_cookie: Format::read(tracefs, "tcp", "tcp_receive_reset")
                .ok()
                .and_then(|f| f.offset("sock_cookie"))
                .unwrap_or(TP_FIELD_ABSENT),
            exit_group_dead: exit.offset("group_dead").unwrap_or(TP_FIELD_ABSENT),
            execve_argv: argv("sys_enter_execve"),
            execveat_argv: argv("sys_enter_execveat"),
            socket: Format::read(tracefs, "syscalls", "sys_enter_socket")
                .ok()
                .and_then(|f| {
                    Some([
                        f.offset("family")?,
                        f.offset("type")?,
                        f.offset("protocol")?,
                    ])
                })
                .unwrap_or([TP_FIELD_ABSENT; 3]),
        })
    }
    pub(super) fn captures_argv(&self) -> bool {
        self.execve_argv != TP_FIELD_ABSENT
    }

    pub(super) fn sees_packet_sockets(&self) -> bool {
        self.socket[0] != TP_FIELD_ABSENT
    }

    /// Hands the offsets to the programs as their globals.
    pub(super) fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        let [family, kind, protocol] = &self.socket;
        let [root, level, id, path] = &self.cgroup;
        loader
            .override_global(TP_EXEC_FILENAME_GLOBAL, &self.exec_filename, true)
            .override_global(TP_EXEC_OLD_PID_GLOBAL, &self.exec_old_pid, true)
            .override_global(TP_FORK_CHILD_PID_GLOBAL, &self.fork_child_pid, true)
            .override_global(TP_EXIT_GROUP_DEAD_GLOBAL, &self.exit_group_dead, true)
            .override_global(TP_EXECVE_ARGV_GLOBAL, &self.execve_argv, true)
            .override_global(TP_EXECVEAT_ARGV_GLOBAL, &self.execveat_argv, true)
            .override_global(TP_SOCKET_FAMILY_GLOBAL, family, true)
            .override_global(TP_SOCKET_TYPE_GLOBAL, kind, true)
            .override_global(TP_SOCKET_PROTOCOL_GLOBAL, protocol, true)
            .override_global(TP_CGROUP_ROOT_GLOBAL, root, true)
            .override_global(TP_CGROUP_LEVEL_GLOBAL, level, true)
            .override_global(TP_CGROUP_ID_GLOBAL, id, true)
            .override_global(TP_CGROUP_PATH_GLOBAL, path, true)
            .override_global(TP_RESET_COOKIE_GLOBAL, &self.reset_cookie, true);
    }
}
