//! Loading and attaching the DNS capture programs (`agent-ebpf/src/dns.rs`)
//! and filling their port table.
use std::fs::File;

use aya::{
    Ebpf,
    maps::Array,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, cgroup_skb::CgroupSkbLinkId},
};
use egret_common::{DNS_PORTS_MAP, DNS_PORTS_MAX};

use super::{KernelError, error_chain, program};

/// Query egress and answer ingress, both cgroup_skb.
pub const DNS_EGRESS_PROGRAM: &str = "egret_dns_egress";
pub const DNS_INGRESS_PROGRAM: &str = "egret_dns_ingress";

/// Loads both programs, or says why they cannot be (DNS capture is then
/// off; connect monitoring is not affected).
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    for name in [DNS_EGRESS_PROGRAM, DNS_INGRESS_PROGRAM] {
        let skb: &mut CgroupSkb = program(ebpf, name).map_err(|err| err.to_string())?;
        skb.load()
            .map_err(|err| format!("loading {name}: {}", error_chain(&err)))?;
    }
    Ok(())
}

/// One attached program: its name, link and kernel id.
pub(super) type Attached = (&'static str, CgroupSkbLinkId, Option<u32>);

/// Attaches both to `dir`; returns what detachment needs.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    dir: &File,
    path: &str,
) -> Result<Vec<Attached>, KernelError> {
    let mut links = Vec::new();
    for (name, kind) in [
        (DNS_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
        (DNS_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    ] {
        let skb: &mut CgroupSkb = program(ebpf, name)?;
        let link = skb
            .attach(dir, kind, CgroupAttachMode::Single)
            .map_err(|source| KernelError::Attach {
                name,
                path: path.to_string(),
                hint: super::permission_hint(&source),
                source: Box::new(source),
            })?;
        links.push((name, link, skb.info().ok().map(|i| i.id())));
    }
    Ok(links)
}

/// Writes the extra DNS ports (53 is always DNS) into the kernel table;
/// slots past the list are cleared.
pub(super) fn set_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), KernelError> {
    let map = ebpf
        .map_mut(DNS_PORTS_MAP)
        .ok_or(KernelError::MissingMap(DNS_PORTS_MAP))?;
    let mut array: Array<_, u16> = Array::try_from(map).map_err(|source| KernelError::Map {
        name: DNS_PORTS_MAP,
        source,
    })?;
    for slot in 0..DNS_PORTS_MAX {
        let port = ports.get(slot as usize).copied().unwrap_or(0);
        array
            .set(slot, port, 0)
            .map_err(|source| KernelError::Map {
                name: DNS_PORTS_MAP,
                source,
            })?;
    }
    Ok(())
}
