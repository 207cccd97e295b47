//! Loading, attaching and talking to the kernel programs.
//!
//! Dropping [`KernelProbes`] detaches every program: attachments are bpf_link
//! file descriptors owned by this process, so even a crash cannot leave an
//! Egret program attached.
pub mod cgroup;
mod ignore;

use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use egret_common::{COUNTERS_MAP, EVENTS_MAP, Hook, HookCounters, IGNORE_MAP};

pub use ignore::{IgnoreMap, IgnoreSet};

/// The compiled kernel programs, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egret"));

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
    #[error("attaching {name} to cgroup {path}{hint}")]
    Attach {
        name: &'static str,
        path: String,
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
}

/// Program symbol names, one per [`Hook`], in hook order.
pub const PROGRAMS: [&str; Hook::COUNT as usize] = [
    "egret_connect4",
    "egret_connect6",
    "egret_sendmsg4",
    "egret_sendmsg6",
];

pub struct KernelProbes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, HookCounters>,
    attached_ids: Vec<u32>,
}

impl KernelProbes {
    /// Loads the object and verifies every program, without attaching yet.
    pub fn load(ringbuf_bytes: u32) -> Result<Self, KernelError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, ringbuf_bytes)
            .load(EBPF_OBJECT)
            .map_err(|source| KernelError::Load {
                hint: permission_hint(&source),
                source: Box::new(source),
            })?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram(name))?
                .try_into()
                .map_err(|source| KernelError::Program {
                    name,
                    source: Box::new(source),
                    hint: "",
                })?;
            program.load().map_err(|source| KernelError::Program {
                name,
                hint: permission_hint(&source),
                source: Box::new(source),
            })?;
        }
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(KernelError::MissingMap(COUNTERS_MAP))?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| KernelError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
        Ok(Self {
            ebpf,
            counters,
            attached_ids: Vec::new(),
        })
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(KernelError::MissingMap(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(|source| KernelError::Map {
            name: EVENTS_MAP,
            source,
        })
    }

    /// The in-kernel ignore trie; can be taken once.
    pub fn take_ignore_map(&mut self) -> Result<IgnoreMap, KernelError> {
        let map = self
            .ebpf
            .take_map(IGNORE_MAP)
            .ok_or(KernelError::MissingMap(IGNORE_MAP))?;
        IgnoreMap::new(map).map_err(|source| KernelError::Map {
            name: IGNORE_MAP,
            source,
        })
    }

    /// Attaches every hook to `cgroup` through bpf_link. The kernel rejects
    /// attach flags on cgroup links, which always stack with other programs
    /// (CNIs, other agents), so the flag-less mode is the coexisting one.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let path = cgroup.display().to_string();
        let dir = File::open(cgroup).map_err(|source| KernelError::OpenCgroup {
            path: path.clone(),
            source,
        })?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram(name))?
                .try_into()
                .map_err(|source| KernelError::Program {
                    name,
                    source: Box::new(source),
                    hint: "",
                })?;
            program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| KernelError::Attach {
                    name,
                    path: path.clone(),
                    hint: permission_hint(&source),
                    source: Box::new(source),
                })?;
            if let Ok(info) = program.info() {
                self.attached_ids.push(info.id());
            }
        }
        Ok(())
    }

    /// Kernel ids of the attached programs, for operators and tests that
    /// check detachment.
    pub fn attached_program_ids(&self) -> &[u32] {
        &self.attached_ids
    }

    /// Counters per hook, summed over CPUs.
    pub fn counters(&self) -> Result<[HookCounters; Hook::COUNT as usize], KernelError> {
        let mut out = [HookCounters::default(); Hook::COUNT as usize];
        for hook in Hook::ALL {
            let per_cpu =
                self.counters
                    .get(&(hook as u32), 0)
                    .map_err(|source| KernelError::Map {
                        name: COUNTERS_MAP,
                        source,
                    })?;
            let total = &mut out[hook as usize];
            for c in per_cpu.iter() {
                total.seen += c.seen;
                total.ignored += c.ignored;
                total.emitted += c.emitted;
                total.ringbuf_full += c.ringbuf_full;
                total.repeat_of_connect += c.repeat_of_connect;
            }
        }
        Ok(out)
    }
}

/// A hint when the kernel said EPERM anywhere down the error chain.
fn permission_hint(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut next = Some(err);
    let mut eperm = false;
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            eperm |= io.raw_os_error() == Some(libc::EPERM);
        }
        next = err.source();
    }
    if eperm {
        " (Egret needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
    } else {
        ""
    }
}
