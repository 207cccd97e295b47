//! What can go wrong loading, attaching and talking to the kernel programs,
//! and the helpers that word it.
use aya::Ebpf;

use super::tracefs;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object{hint}")]
    Load {
        source: Box<aya::EbpfError>,
        hint: &'static str,
    },
    #[error("the eBPF object has no program {0} (build mismatch)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0} (build mismatch)")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("loading program {name} into the kernel{hint}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("tracefs")]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("attaching tracepoint {name}")]
    AttachTracepoint {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching quarantine program {name} to cgroup {path}: {source}")]
    QuarantineAttach {
        name: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("attaching {name} to cgroup {path}{hint}")]
    Attach {
        name: &'static str,
        path: String,
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
}

/// The program `name` of the object, as its concrete type.
pub(super) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?
        .try_into()
        .map_err(|source| KernelError::Program {
            name,
            source: Box::new(source),
            hint: "",
        })
}

/// An error and its sources on one line (the verifier's log included).
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(err) = next {
        out.push_str(": ");
        out.push_str(&err.to_string());
        next = err.source();
    }
    out
}

/// A hint when the kernel said EPERM anywhere down the error chain.
pub(super) fn permission_hint(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut next = Some(err);
    let mut eperm = false;
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // EACCES too: the verifier refuses unprivileged pointer work.
            eperm |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        }
        next = err.source();
    }
    if eperm {
        " (Egret needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
    } else {
        ""
    }
}
