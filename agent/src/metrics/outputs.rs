//! Records the local outputs (the audit log, alerts on stdout) could not
//! deliver, by output and reason. An output that fails degrades — the agent
//! keeps evaluating and alerting through the others — so this is the only
//! trace of what it lost.
use prometheus_client::metrics::{counter::Counter, family::Family};

/// A local output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Audit,
    Stdout,
}

impl Output {
    pub const ALL: [Output; 2] = [Output::Audit, Output::Stdout];

    pub fn as_str(self) -> &'static str {
        match self {
            Output::Audit => "audit",
            Output::Stdout => "stdout",
        }
    }
}

/// Why records were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The output's queue was full: it could not keep up (or is blocked).
    QueueFull,
    /// The file system is full (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// Any other write or open error (I/O error, file removed with its
    /// directory, stdout closed).
    WriteError,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
}

impl LossReason {
    pub const ALL: [LossReason; 4] = [
        LossReason::QueueFull,
        LossReason::NoSpace,
        LossReason::WriteError,
        LossReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::QueueFull => "queue_full",
            LossReason::NoSpace => "no_space",
            LossReason::WriteError => "write_error",
            LossReason::Shutdown => "shutdown",
        }
    }

    /// The reason for a failed write.
    pub fn of(err: &std::io::Error) -> LossReason {
        match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => LossReason::NoSpace,
            _ => match err.kind() {
                std::io::ErrorKind::StorageFull => LossReason::NoSpace,
                _ => LossReason::WriteError,
            },
        }
    }
}

pub(super) type LostFamily = Family<[(&'static str, &'static str); 2], Counter>;

/// Every series exists from the start at 0, so the first loss is an
/// increase Prometheus can see.
pub(super) fn declare(family: &LostFamily) {
    for output in Output::ALL {
        for reason in LossReason::ALL {
            drop(family.get_or_create(&[("output", output.as_str()), ("reason", reason.as_str())]));
        }
    }
}

pub(super) fn add(family: &LostFamily, output: Output, reason: LossReason, n: u64) {
    family
        .get_or_create(&[("output", output.as_str()), ("reason", reason.as_str())])
        .inc_by(n);
}

pub(super) fn total(family: &LostFamily, output: Output) -> u64 {
    LossReason::ALL
        .iter()
        .map(|reason| {
            family
                .get_or_create(&[("output", output.as_str()), ("reason", reason.as_str())])
                .get()
        })
        .sum()
}
