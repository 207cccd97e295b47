//! Loading, attaching and talking to the kernel programs.
//!
//! [`KernelProbes::detach`] detaches every program at a point the caller
//! chooses. Dropping [`KernelProbes`] detaches too: attachments are bpf_link
//! file descriptors owned by this process, so even a crash cannot leave an
//! Egret program attached.
pub mod btf;
pub mod cgroup;
mod connect_result;
pub mod dns;
mod error;
pub mod exe;
pub mod flows;
mod ignore;
mod offsets;
pub mod quarantine;
pub mod tracefs;

use std::{fs::File, path::Path, sync::Arc};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, TracePoint,
        cgroup_skb::CgroupSkbLinkId, cgroup_sock::CgroupSockLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId, trace_point::TracePointLinkId,
    },
};
use egret_common::{
    COUNTERS_MAP, EVENTS_MAP, Hook, HookCounters, IGNORE_BLOCKS_MAP, IGNORE_HEADS_MAP, IGNORE_MAP,
    PROCS_MAP, ProcState,
};

pub use error::KernelError;
use error::{error_chain, permission_hint, program};
pub use ignore::{IgnoreMap, IgnoreSet, ReplaceError};

/// The compiled kernel programs, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egret"));

/// The cgroup sock_addr programs, in hook order.
pub const PROGRAMS: [&str; 4] = [
    "egret_connect4",
    "egret_connect6",
    "egret_sendmsg4",
    "egret_sendmsg6",
];

/// Raw and ping socket programs (`agent-ebpf/src/sockets.rs`), attached
/// with the sock_addr ones: the creation hook records each socket's owner,
/// the egress hook reports its packets' destinations.
pub const SOCK_CREATE_PROGRAM: &str = "egret_sock_create";
pub const RAW_EGRESS_PROGRAM: &str = "egret_raw_egress";
/// Packet socket creation; optional like argv capture (it needs
/// CONFIG_FTRACE_SYSCALLS).
const SOCKET_TRACEPOINT: (&str, &str, &str) =
    ("egret_socket_enter", "syscalls", "sys_enter_socket");

/// Process and cgroup lifecycle tracepoints: (program, category,
/// tracepoint). Cgroups first: a cgroup's path must be sent before any
/// process in it can be.
const TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("egret_cgroup_mkdir", "cgroup", "cgroup_mkdir"),
    ("egret_cgroup_rmdir", "cgroup", "cgroup_rmdir"),
    ("egret_fork", "sched", "sched_process_fork"),
    ("egret_exec", "sched", "sched_process_exec"),
    ("egret_exit", "sched", "sched_process_exit"),
];
/// argv capture; optional because kernels without CONFIG_FTRACE_SYSCALLS
/// lack these (command lines then come from /proc).
const ARGV_TRACEPOINTS: [(&str, &str, &str); 2] = [
    ("egret_execve", "syscalls", "sys_enter_execve"),
    ("egret_execveat", "syscalls", "sys_enter_execveat"),
];

pub struct KernelProbes {
    ebpf: Ebpf,
    counters: Arc<KernelCounters>,
    procs: BpfHashMap<MapData, u32, ProcState>,
    attached_ids: Vec<u32>,
    links: Vec<Link>,
    captures_argv: bool,
    sees_packet_sockets: bool,
    raw_sockets_off: Option<String>,
    /// Why DNS messages are not captured, if they are not (`dns.rs`).
    dns_off: Option<String>,
    /// Why executables are not resolved in the kernel, if they are not.
    exe_missing: Option<exe::ExeUnresolved>,
    connect_results: connect_result::Programs,
    /// Why flows are not accounted, if they are not.
    flows_off: Option<String>,
    flow_links: flows::FlowLinks,
    flow_counters: Option<Arc<flows::FlowCounterReader>>,
}

/// One attachment, kept so [`KernelProbes::detach`] can undo it.
enum Link {
    Tracepoint(&'static str, TracePointLinkId),
    Cgroup(&'static str, CgroupSockAddrLinkId),
    Sock(&'static str, CgroupSockLinkId),
    Skb(&'static str, CgroupSkbLinkId),
}

/// The per-CPU hook counters. Holding them keeps only the map open, never
/// the programs, so metrics can read them without delaying detachment.
pub struct KernelCounters(PerCpuArray<MapData, HookCounters>);

impl KernelCounters {
    /// Every slot of [`Hook::ALL`], summed over CPUs.
    pub fn read(&self) -> Result<[HookCounters; Hook::COUNT as usize], KernelError> {
        let mut out = [HookCounters::default(); Hook::COUNT as usize];
        for hook in Hook::ALL {
            let per_cpu = self
                .0
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

impl KernelProbes {
    /// Loads the object and verifies every program, without attaching yet.
    /// A kernel whose verifier refuses the executable-file walk (inside
    /// `egret_exec`) gets the object again with the walk switched off: the
    /// verifier then skips it as dead code, and the agent runs on with
    /// execve paths instead of failing to start.
    pub fn load(ringbuf_bytes: u32) -> Result<Self, KernelError> {
        Self::load_with_flows(ringbuf_bytes, flows::FlowSettings::default())
    }

    /// [`KernelProbes::load`] with flow accounting set up as `flows` says.
    pub fn load_with_flows(
        ringbuf_bytes: u32,
        flows: flows::FlowSettings,
    ) -> Result<Self, KernelError> {
        let exe = exe::offsets().map_err(exe::ExeUnresolved::Btf);
        let walking = exe.is_ok();
        match Self::load_with(ringbuf_bytes, exe, flows) {
            Err(KernelError::Program {
                name: "egret_exec",
                source,
                ..
            }) if walking => {
                let refused = exe::ExeUnresolved::Refused(source.to_string());
                tracing::warn!(%refused, "reloading without the executable-file walk");
                Self::load_with(ringbuf_bytes, Err(refused), flows)
            }
            other => other,
        }
    }

    fn load_with(
        ringbuf_bytes: u32,
        exe: Result<egret_common::ExeOffsets, exe::ExeUnresolved>,
        flows: flows::FlowSettings,
    ) -> Result<Self, KernelError> {
        let tracefs_root = tracefs::root()?;
        let offsets = offsets::Offsets::read(&tracefs_root)?;
        let result_offsets = connect_result::Offsets::read(&tracefs_root);
        let captures_argv = offsets.captures_argv();
        let sees_packet_sockets = offsets.sees_packet_sockets();
        if !sees_packet_sockets {
            tracing::warn!(
                "no syscalls/sys_enter_socket tracepoint (CONFIG_FTRACE_SYSCALLS): packet socket creation is not reported"
            );
        }
        let (exe_offsets, exe_missing) = match exe {
            Ok(offsets) => (offsets, None),
            Err(why) => (egret_common::ExeOffsets::default(), Some(why)),
        };
        let tcp_slot_mask = flows.tcp_slots.max(1) - 1;
        let mut loader = EbpfLoader::new();
        result_offsets.configure(&mut loader);
        offsets.configure(&mut loader);
        let mut ebpf = loader
            .override_global(egret_common::EXE_OFFSETS_GLOBAL, &exe_offsets, true)
            .map_max_entries(EVENTS_MAP, ringbuf_bytes)
            .map_max_entries(egret_common::TCP_SLOTS_MAP, flows.tcp_slots)
            .override_global(
                egret_common::FLOW_TCP_SLOT_MASK_GLOBAL,
                &tcp_slot_mask,
                true,
            )
            .override_global(
                egret_common::FLOW_INTERIM_NS_GLOBAL,
                &flows.interim_ns,
                true,
            )
            .load(EBPF_OBJECT)
            .map_err(|source| KernelError::Load {
                hint: permission_hint(&source),
                source: Box::new(source),
            })?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(|source| KernelError::Program {
                name,
                hint: permission_hint(&source),
                source: Box::new(source),
            })?;
        }
        Self::load_quarantine(&mut ebpf)?;
        let connect_results = connect_result::Programs::load(&mut ebpf, &result_offsets);
        // Optional: a kernel that refuses them still gets connect and UDP
        // monitoring, and says so once.
        let raw_sockets_off = Self::load_raw_sockets(&mut ebpf).err();
        let flows_off = if flows.enabled {
            flows::load(&mut ebpf).err()
        } else {
            Some("off in the configuration (kernel.flows: false)".to_owned())
        };
        if let (Some(reason), true) = (&flows_off, flows.enabled) {
            tracing::warn!(%reason, "flow accounting is off; connects are still monitored");
        }
        let flow_counters = flows::FlowCounterReader::take(&mut ebpf).ok();
        if let Some(reason) = &raw_sockets_off {
            tracing::warn!(%reason, "raw and ping socket monitoring is off; connects and UDP sends are still monitored");
        }
        let dns_off = dns::load(&mut ebpf).err();
        if let Some(reason) = &dns_off {
            tracing::warn!(%reason, "DNS capture is off: fd.sip.name stays <NA> and there are no dns events");
        }
        let tracepoints = TRACEPOINTS
            .iter()
            .chain(ARGV_TRACEPOINTS.iter().filter(|_| captures_argv))
            .chain(std::iter::once(&SOCKET_TRACEPOINT).filter(|_| sees_packet_sockets));
        for (name, _, _) in tracepoints {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program.load().map_err(|source| KernelError::Program {
                name,
                hint: permission_hint(&source),
                source: Box::new(source),
            })?;
        }
        let procs = ebpf
            .take_map(PROCS_MAP)
            .ok_or(KernelError::MissingMap(PROCS_MAP))?;
        let procs = BpfHashMap::try_from(procs).map_err(|source| KernelError::Map {
            name: PROCS_MAP,
            source,
        })?;
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(KernelError::MissingMap(COUNTERS_MAP))?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| KernelError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
        Ok(Self {
            ebpf,
            counters: Arc::new(KernelCounters(counters)),
            procs,
            attached_ids: Vec::new(),
            links: Vec::new(),
            captures_argv,
            sees_packet_sockets,
            raw_sockets_off,
            dns_off,
            exe_missing,
            connect_results,
            flows_off,
            flow_links: flows::FlowLinks::default(),
            flow_counters: flow_counters.map(Arc::new),
        })
    }

    /// Loads the raw/ping socket programs, or says why they cannot be.
    fn load_raw_sockets(ebpf: &mut Ebpf) -> Result<(), String> {
        let sock: &mut CgroupSock =
            program(ebpf, SOCK_CREATE_PROGRAM).map_err(|err| err.to_string())?;
        sock.load()
            .map_err(|err| format!("loading {SOCK_CREATE_PROGRAM}: {}", error_chain(&err)))?;
        let skb: &mut CgroupSkb =
            program(ebpf, RAW_EGRESS_PROGRAM).map_err(|err| err.to_string())?;
        skb.load()
            .map_err(|err| format!("loading {RAW_EGRESS_PROGRAM}: {}", error_chain(&err)))
    }

    /// Why raw and ping sockets are not monitored; `None` when they are.
    pub fn raw_sockets_off(&self) -> Option<&str> {
        self.raw_sockets_off.as_deref()
    }

    /// Why flows are not accounted; `None` when they are.
    pub fn flows_off(&self) -> Option<&str> {
        self.flows_off.as_deref()
    }

    /// What flow accounting could not keep (for metrics).
    pub fn flow_counter_reader(&self) -> Option<Arc<flows::FlowCounterReader>> {
        self.flow_counters.clone()
    }

    /// Why DNS messages are not captured; `None` when they are.
    pub fn dns_off(&self) -> Option<&str> {
        self.dns_off.as_deref()
    }

    /// Leaves the DNS programs unattached (`kernel.dns_capture: false`).
    pub fn disable_dns(&mut self) {
        self.dns_off
            .get_or_insert_with(|| "disabled by configuration".into());
    }

    /// Sets the DNS ports besides 53 (before or after attaching).
    pub fn set_dns_ports(&mut self, ports: &[u16]) -> Result<(), KernelError> {
        dns::set_ports(&mut self.ebpf, ports)
    }

    /// Why `proc.exepath` is not the kernel's executable file, if it is not.
    pub fn exe_hook_missing(&self) -> Option<&exe::ExeUnresolved> {
        self.exe_missing.as_ref()
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

    /// The in-kernel ignore trie, its heads and blocks; can be taken once.
    pub fn take_ignore_map(&mut self) -> Result<IgnoreMap, KernelError> {
        let trie = self
            .ebpf
            .take_map(IGNORE_MAP)
            .ok_or(KernelError::MissingMap(IGNORE_MAP))?;
        let heads = self
            .ebpf
            .take_map(IGNORE_HEADS_MAP)
            .ok_or(KernelError::MissingMap(IGNORE_HEADS_MAP))?;
        let blocks = self
            .ebpf
            .take_map(IGNORE_BLOCKS_MAP)
            .ok_or(KernelError::MissingMap(IGNORE_BLOCKS_MAP))?;
        IgnoreMap::new(trie, heads, blocks).map_err(|source| KernelError::Map {
            name: IGNORE_MAP,
            source,
        })
    }

    /// Attaches every hook to `cgroup` through bpf_link. The kernel rejects
    /// attach flags on cgroup links, which always stack with other programs
    /// (CNIs, other agents), so the flag-less mode is the coexisting one.
    ///
    /// Process tracking is attached first, so that every process that can
    /// produce an egress event is already being followed.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let captures_argv = self.captures_argv;
        let sees_packet_sockets = self.sees_packet_sockets;
        let tracepoints = TRACEPOINTS
            .iter()
            .chain(ARGV_TRACEPOINTS.iter().filter(|_| captures_argv))
            .chain(std::iter::once(&SOCKET_TRACEPOINT).filter(|_| sees_packet_sockets));
        for (name, category, tracepoint) in tracepoints {
            let program: &mut TracePoint = program(&mut self.ebpf, name)?;
            let link = program.attach(category, tracepoint).map_err(|source| {
                KernelError::AttachTracepoint {
                    name,
                    source: Box::new(source),
                }
            })?;
            self.links.push(Link::Tracepoint(name, link));
            if let Ok(info) = program.info() {
                self.attached_ids.push(info.id());
            }
        }
        self.connect_results
            .attach(&mut self.ebpf, &mut self.links, &mut self.attached_ids)?;
        let path = cgroup.display().to_string();
        let dir = File::open(cgroup).map_err(|source| KernelError::OpenCgroup {
            path: path.clone(),
            source,
        })?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let link = program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| KernelError::Attach {
                    name,
                    path: path.clone(),
                    hint: permission_hint(&source),
                    source: Box::new(source),
                })?;
            self.links.push(Link::Cgroup(name, link));
            if let Ok(info) = program.info() {
                self.attached_ids.push(info.id());
            }
        }
        let attach_err = |name: &'static str| {
            let path = path.clone();
            move |source: aya::programs::ProgramError| KernelError::Attach {
                name,
                path,
                hint: permission_hint(&source),
                source: Box::new(source),
            }
        };
        if self.flows_off.is_none() {
            self.flow_links = flows::attach(&mut self.ebpf, &dir, cgroup, &mut self.attached_ids)?;
        }
        if self.dns_off.is_none() {
            for (name, link, id) in dns::attach(&mut self.ebpf, &dir, &path)? {
                self.links.push(Link::Skb(name, link));
                self.attached_ids.extend(id);
            }
        }
        if self.raw_sockets_off.is_some() {
            return Ok(());
        }
        // Owners first, so the first packet of a new raw socket has one.
        let sock: &mut CgroupSock = program(&mut self.ebpf, SOCK_CREATE_PROGRAM)?;
        let link = sock
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(attach_err(SOCK_CREATE_PROGRAM))?;
        self.links.push(Link::Sock(SOCK_CREATE_PROGRAM, link));
        self.attached_ids.extend(sock.info().ok().map(|i| i.id()));
        let skb: &mut CgroupSkb = program(&mut self.ebpf, RAW_EGRESS_PROGRAM)?;
        let link = skb
            .attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(attach_err(RAW_EGRESS_PROGRAM))?;
        self.links.push(Link::Skb(RAW_EGRESS_PROGRAM, link));
        self.attached_ids.extend(skb.info().ok().map(|i| i.id()));
        Ok(())
    }

    /// Whether packet socket creation is seen (sys_enter_socket exists).
    pub fn sees_packet_sockets(&self) -> bool {
        self.sees_packet_sockets
    }

    /// Whether connect results (`evt.res`) can arrive from the kernel.
    pub fn sees_connect_results(&self) -> bool {
        self.connect_results.any()
    }

    /// Whether argv is captured in the kernel (else it comes from /proc).
    pub fn captures_argv(&self) -> bool {
        self.captures_argv
    }

    /// Registers processes that existed before the tracker was attached.
    /// Never overwrites an entry the tracker made meanwhile.
    pub fn seed_process(&mut self, tgid: u32, state: ProcState) -> Result<(), KernelError> {
        const BPF_NOEXIST: u64 = 1;
        match self.procs.insert(tgid, state, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(source) => Err(KernelError::Map {
                name: PROCS_MAP,
                source,
            }),
        }
    }

    /// Kernel ids of the attached programs, for operators and tests that
    /// check detachment.
    pub fn attached_program_ids(&self) -> &[u32] {
        &self.attached_ids
    }

    /// Counters per hook, summed over CPUs.
    pub fn counters(&self) -> Result<[HookCounters; Hook::COUNT as usize], KernelError> {
        self.counters.read()
    }

    /// A handle on the counters that outlives detachment (for metrics).
    pub fn counter_reader(&self) -> Arc<KernelCounters> {
        self.counters.clone()
    }

    /// Detaches every program, egress hooks first (nothing new is emitted
    /// once they are gone) and process tracking last, and unloads them.
    /// Returns the ids of the programs that were attached.
    pub fn detach(mut self) -> Vec<u32> {
        self.flow_links.detach(&mut self.ebpf);
        for link in self.links.drain(..).rev() {
            let (name, result) = match link {
                Link::Cgroup(name, id) => (
                    name,
                    program::<CgroupSockAddr>(&mut self.ebpf, name).map(|p| p.detach(id)),
                ),
                Link::Tracepoint(name, id) => (
                    name,
                    program::<TracePoint>(&mut self.ebpf, name).map(|p| p.detach(id)),
                ),
                Link::Sock(name, id) => (
                    name,
                    program::<CgroupSock>(&mut self.ebpf, name).map(|p| p.detach(id)),
                ),
                Link::Skb(name, id) => (
                    name,
                    program::<CgroupSkb>(&mut self.ebpf, name).map(|p| p.detach(id)),
                ),
            };
            // Dropping the object below closes any link left behind.
            match result {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(program = name, %err, "detach failed"),
                Err(err) => tracing::warn!(program = name, %err, "detach failed"),
            }
        }
        std::mem::take(&mut self.attached_ids)
    }
}
