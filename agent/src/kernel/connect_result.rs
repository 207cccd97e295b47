//! Loader for the connect-result programs (`agent-ebpf/src/connect_result.rs`):
//! `sys_exit_connect` for syscalls, `io_uring_submit_req` and
//! `io_uring_complete` for io_uring. Each family is optional: a kernel
//! without the tracepoints (no CONFIG_FTRACE_SYSCALLS, no io_uring) says so
//! once, and those connects' results never arrive (the agent then evaluates
//! result rules at the attempt, or at `connect_result_wait`).
use std::path::Path;

use aya::{Ebpf, EbpfLoader, programs::TracePoint};
use egret_common::{
    TP_CONNECT_EXIT_RET_GLOBAL, TP_FIELD_ABSENT, TP_URING_COMPLETE_REQ_GLOBAL,
    TP_URING_COMPLETE_RES_GLOBAL, TP_URING_SUBMIT_FLAGS_GLOBAL, TP_URING_SUBMIT_OPCODE_GLOBAL,
    TP_URING_SUBMIT_REQ_GLOBAL,
};

use super::{KernelError, Link, program, tracefs::Format};

const SYSCALL: (&str, &str, &str) = ("egret_connect_exit", "syscalls", "sys_exit_connect");
const URING_SUBMIT: &str = "egret_uring_submit";
/// The submission tracepoint's name: `io_uring_submit_req` since 6.3,
/// `io_uring_submit_sqe` before (6.1); the fields read are in both.
const URING_SUBMIT_NAMES: [&str; 2] = ["io_uring_submit_req", "io_uring_submit_sqe"];
const URING_COMPLETE: (&str, &str, &str) =
    ("egret_uring_complete", "io_uring", "io_uring_complete");

/// Field offsets ([`TP_FIELD_ABSENT`] where missing) and which families
/// have every field they read.
#[derive(Clone, Copy, Debug)]
pub struct Offsets {
    /// `sys_exit_connect.ret`.
    syscall_ret: u32,
    /// `io_uring_submit_req` req, opcode, flags; `io_uring_complete` req, res.
    uring: [u32; 5],
    has_syscall: bool,
    /// The submission tracepoint's name when every io_uring field exists.
    uring_submit: Option<&'static str>,
}

impl Offsets {
    pub fn read(tracefs: &Path) -> Offsets {
        let syscall = Format::read(tracefs, "syscalls", "sys_exit_connect")
            .ok()
            .and_then(|f| f.offset("ret"));
        let uring = (|| {
            let (name, submit) = URING_SUBMIT_NAMES
                .iter()
                .find_map(|name| Some((*name, Format::read(tracefs, "io_uring", name).ok()?)))?;
            let complete = Format::read(tracefs, "io_uring", URING_COMPLETE.2).ok()?;
            let offsets = [
                submit.offset("req")?,
                submit.offset("opcode")?,
                submit.offset("flags")?,
                complete.offset("req")?,
                complete.offset("res")?,
            ];
            Some((name, offsets))
        })();
        Offsets {
            syscall_ret: syscall.unwrap_or(TP_FIELD_ABSENT),
            uring: uring.map_or([TP_FIELD_ABSENT; 5], |(_, offsets)| offsets),
            has_syscall: syscall.is_some(),
            uring_submit: uring.map(|(name, _)| name),
        }
    }

    /// Sets the programs' globals (a family with absent fields is not
    /// loaded, so its globals are never read).
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        let [submit_req, opcode, flags, complete_req, res] = &self.uring;
        loader
            .override_global(TP_CONNECT_EXIT_RET_GLOBAL, &self.syscall_ret, true)
            .override_global(TP_URING_SUBMIT_REQ_GLOBAL, submit_req, true)
            .override_global(TP_URING_SUBMIT_OPCODE_GLOBAL, opcode, true)
            .override_global(TP_URING_SUBMIT_FLAGS_GLOBAL, flags, true)
            .override_global(TP_URING_COMPLETE_REQ_GLOBAL, complete_req, true)
            .override_global(TP_URING_COMPLETE_RES_GLOBAL, res, true);
    }
}

/// Which result programs were loaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Programs {
    syscall: bool,
    /// The io_uring submission tracepoint, when the io_uring pair loaded.
    uring_submit: Option<&'static str>,
}

impl Programs {
    /// Loads what this kernel has; a refusal turns that family off with one
    /// warning rather than failing the agent.
    pub fn load(ebpf: &mut Ebpf, offsets: &Offsets) -> Programs {
        let mut load = |names: &[&'static str], present: bool, what: &str| {
            if !present {
                tracing::warn!(
                    "no {what} connect tracepoints: the result of {what} connects is not seen (rules reading evt.res see EINPROGRESS)"
                );
                return false;
            }
            for name in names {
                let loaded = program::<TracePoint>(ebpf, name).and_then(|p| {
                    p.load().map_err(|source| KernelError::Program {
                        name,
                        source: Box::new(source),
                        hint: "",
                    })
                });
                if let Err(err) = loaded {
                    tracing::warn!(%err, "the result of {what} connects is not seen");
                    return false;
                }
            }
            true
        };
        let syscall = load(&[SYSCALL.0], offsets.has_syscall, "syscall");
        let uring = load(
            &[URING_SUBMIT, URING_COMPLETE.0],
            offsets.uring_submit.is_some(),
            "io_uring",
        );
        Programs {
            syscall,
            uring_submit: offsets.uring_submit.filter(|_| uring),
        }
    }

    /// Whether any connect's result can arrive.
    pub fn any(&self) -> bool {
        self.syscall || self.uring_submit.is_some()
    }

    /// Attaches the loaded programs. Before the sock_addr hooks, so every
    /// emitted connect's exit is already watched.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        links: &mut Vec<Link>,
        ids: &mut Vec<u32>,
    ) -> Result<(), KernelError> {
        let uring = self
            .uring_submit
            .map(|submit| [(URING_SUBMIT, "io_uring", submit), URING_COMPLETE]);
        let families = std::iter::once(SYSCALL)
            .filter(|_| self.syscall)
            .chain(uring.into_iter().flatten());
        for (name, category, tracepoint) in families {
            let program: &mut TracePoint = program(ebpf, name)?;
            let link = program.attach(category, tracepoint).map_err(|source| {
                KernelError::AttachTracepoint {
                    name,
                    source: Box::new(source),
                }
            })?;
            links.push(Link::Tracepoint(name, link));
            ids.extend(program.info().ok().map(|i| i.id()));
        }
        Ok(())
    }
}
