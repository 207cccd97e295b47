//! Loader of the flow-accounting programs (`agent-ebpf/src/flows/`): a
//! sock_ops program for TCP, cgroup_skb egress/ingress and sock_release for
//! UDP (and TCP interim records), and the `tcp:tcp_receive_reset`
//! tracepoint that tells a reset from an orderly close.
//!
//! Flow accounting is optional: a kernel that refuses any of these
//! programs still gets connect monitoring, and the agent says why once.
use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, SockOps, TracePoint,
        cgroup_skb::CgroupSkbLinkId, cgroup_sock::CgroupSockLinkId, sock_ops::SockOpsLinkId,
        trace_point::TracePointLinkId,
    },
};
use egret_common::{FLOW_COUNTERS_MAP, FlowCounters};

use super::{KernelError, error_chain, program};

pub const SOCKOPS_PROGRAM: &str = "egret_flow_sockops";
pub const EGRESS_PROGRAM: &str = "egret_flow_egress";
pub const INGRESS_PROGRAM: &str = "egret_flow_ingress";
pub const RELEASE_PROGRAM: &str = "egret_flow_release";
pub const RESET_PROGRAM: &str = "egret_flow_reset";
const RESET_TRACEPOINT: (&str, &str) = ("tcp", "tcp_receive_reset");

/// How flow accounting runs (`kernel.flows`, `kernel.flow_interim_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    pub enabled: bool,
    /// Interim record interval in ns; 0: only end records.
    pub interim_ns: u64,
    /// TCP state slots (a power of two, `kernel.flow_tcp_slots`).
    pub tcp_slots: u32,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            enabled: true,
            interim_ns: egret_common::FLOW_INTERIM_DEFAULT_NS,
            tcp_slots: egret_common::TCP_SLOTS_MAX_ENTRIES,
        }
    }
}

/// The attached flow programs; [`FlowLinks::detach`] undoes them.
#[derive(Default)]
pub struct FlowLinks {
    sock_ops: Option<SockOpsLinkId>,
    skb: Vec<(&'static str, CgroupSkbLinkId)>,
    release: Option<CgroupSockLinkId>,
    reset: Option<TracePointLinkId>,
}

/// Loads the flow programs, or says why they cannot be.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    let sock_ops: &mut SockOps = program(ebpf, SOCKOPS_PROGRAM).map_err(|e| e.to_string())?;
    sock_ops
        .load()
        .map_err(|e| format!("loading {SOCKOPS_PROGRAM}: {}", error_chain(&e)))?;
    for name in [EGRESS_PROGRAM, INGRESS_PROGRAM] {
        let skb: &mut CgroupSkb = program(ebpf, name).map_err(|e| e.to_string())?;
        skb.load()
            .map_err(|e| format!("loading {name}: {}", error_chain(&e)))?;
    }
    let release: &mut CgroupSock = program(ebpf, RELEASE_PROGRAM).map_err(|e| e.to_string())?;
    release
        .load()
        .map_err(|e| format!("loading {RELEASE_PROGRAM}: {}", error_chain(&e)))?;
    let reset: &mut TracePoint = program(ebpf, RESET_PROGRAM).map_err(|e| e.to_string())?;
    reset
        .load()
        .map_err(|e| format!("loading {RESET_PROGRAM}: {}", error_chain(&e)))
}

/// Attaches the flow programs to `dir` (the agent's cgroup); program ids go
/// to `ids`. The reset tracepoint first, so no RST of a tracked connection
/// is missed; then the UDP end before the counting, so no counted socket
/// outlives its release unseen.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    dir: &File,
    path: &Path,
    ids: &mut Vec<u32>,
) -> Result<FlowLinks, KernelError> {
    let mut links = FlowLinks::default();
    let attach_err = |name: &'static str| {
        let path = path.display().to_string();
        move |source: aya::programs::ProgramError| KernelError::Attach {
            name,
            path,
            hint: "",
            source: Box::new(source),
        }
    };
    let reset: &mut TracePoint = program(ebpf, RESET_PROGRAM)?;
    links.reset = Some(
        reset
            .attach(RESET_TRACEPOINT.0, RESET_TRACEPOINT.1)
            .map_err(|source| KernelError::AttachTracepoint {
                name: RESET_PROGRAM,
                source: Box::new(source),
            })?,
    );
    ids.extend(reset.info().ok().map(|i| i.id()));
    let release: &mut CgroupSock = program(ebpf, RELEASE_PROGRAM)?;
    links.release = Some(
        release
            .attach(dir, CgroupAttachMode::Single)
            .map_err(attach_err(RELEASE_PROGRAM))?,
    );
    ids.extend(release.info().ok().map(|i| i.id()));
    for (name, kind) in [
        (EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
        (INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    ] {
        let skb: &mut CgroupSkb = program(ebpf, name)?;
        let link = skb
            .attach(dir, kind, CgroupAttachMode::Single)
            .map_err(attach_err(name))?;
        links.skb.push((name, link));
        ids.extend(skb.info().ok().map(|i| i.id()));
    }
    let sock_ops: &mut SockOps = program(ebpf, SOCKOPS_PROGRAM)?;
    links.sock_ops = Some(
        sock_ops
            .attach(dir, CgroupAttachMode::Single)
            .map_err(attach_err(SOCKOPS_PROGRAM))?,
    );
    ids.extend(sock_ops.info().ok().map(|i| i.id()));
    Ok(links)
}

impl FlowLinks {
    /// Detaches in reverse order of [`attach`]; failures are logged (the
    /// object's drop closes whatever is left).
    pub(super) fn detach(&mut self, ebpf: &mut Ebpf) {
        let failed = |name: &str, err: &dyn std::fmt::Display| {
            tracing::warn!(program = name, %err, "detach failed");
        };
        if let Some(id) = self.sock_ops.take() {
            match program::<SockOps>(ebpf, SOCKOPS_PROGRAM).map(|p| p.detach(id)) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failed(SOCKOPS_PROGRAM, &err),
                Err(err) => failed(SOCKOPS_PROGRAM, &err),
            }
        }
        for (name, id) in self.skb.drain(..).rev() {
            match program::<CgroupSkb>(ebpf, name).map(|p| p.detach(id)) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failed(name, &err),
                Err(err) => failed(name, &err),
            }
        }
        if let Some(id) = self.release.take() {
            match program::<CgroupSock>(ebpf, RELEASE_PROGRAM).map(|p| p.detach(id)) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failed(RELEASE_PROGRAM, &err),
                Err(err) => failed(RELEASE_PROGRAM, &err),
            }
        }
        if let Some(id) = self.reset.take() {
            match program::<TracePoint>(ebpf, RESET_PROGRAM).map(|p| p.detach(id)) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failed(RESET_PROGRAM, &err),
                Err(err) => failed(RESET_PROGRAM, &err),
            }
        }
    }
}

/// What flow accounting could not keep, summed over CPUs.
pub struct FlowCounterReader(PerCpuArray<MapData, FlowCounters>);

impl FlowCounterReader {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        let map = ebpf
            .take_map(FLOW_COUNTERS_MAP)
            .ok_or(KernelError::MissingMap(FLOW_COUNTERS_MAP))?;
        PerCpuArray::try_from(map)
            .map(FlowCounterReader)
            .map_err(|source| KernelError::Map {
                name: FLOW_COUNTERS_MAP,
                source,
            })
    }

    pub fn read(&self) -> Result<FlowCounters, KernelError> {
        let per_cpu = self.0.get(&0, 0).map_err(|source| KernelError::Map {
            name: FLOW_COUNTERS_MAP,
            source,
        })?;
        let mut total = FlowCounters::default();
        for c in per_cpu.iter() {
            total.tcp_table_full += c.tcp_table_full;
            total.udp_table_full += c.udp_table_full;
            total.tcp_state_lost += c.tcp_state_lost;
            total.cb_flags_failed += c.cb_flags_failed;
            total.interim += c.interim;
            total.tcp_slot_taken += c.tcp_slot_taken;
        }
        Ok(total)
    }
}
