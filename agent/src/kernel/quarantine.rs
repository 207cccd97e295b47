//! The quarantine programs' side of the kernel: attaching the enforcing
//! programs to one cgroup directory and filling their maps.
//!
//! Each quarantine owns its bpf_links; dropping [`QuarantineLinks`] detaches
//! them, so lifting a quarantine, or the agent exiting for any reason,
//! leaves nothing attached (fail-open: see docs/quarantine.md).
use std::{fs::File, os::unix::fs::MetadataExt as _, path::Path};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        cgroup_skb::CgroupSkbLink, cgroup_sock_addr::CgroupSockAddrLink,
    },
};
use egret_common::{
    QUARANTINE_ALLOW_MAP, QUARANTINE_COUNTERS_MAP, QUARANTINE_SLOTS, QUARANTINE_STOP_EXISTING,
    QUARANTINE_TARGETS_MAP, QuarantineCounters, QuarantineTarget,
};
use ipnet::IpNet;

use super::{KernelError, KernelProbes, permission_hint, program};

/// The enforcing sock_addr programs.
pub const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "egret_q_connect4",
    "egret_q_connect6",
    "egret_q_sendmsg4",
    "egret_q_sendmsg6",
];
/// The enforcing packet program.
pub const EGRESS_PROGRAM: &str = "egret_q_egress";

/// A quarantine's attachments; dropping it detaches them.
pub struct QuarantineLinks {
    sock_addr: Vec<CgroupSockAddrLink>,
    egress: Option<CgroupSkbLink>,
    /// Cgroup id (inode) of the directory they are attached to.
    pub cgroup_id: u64,
}

impl std::fmt::Debug for QuarantineLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuarantineLinks")
            .field("cgroup_id", &self.cgroup_id)
            .field(
                "links",
                &(self.sock_addr.len() + usize::from(self.egress.is_some())),
            )
            .finish()
    }
}

/// The maps the enforcing programs read.
pub struct QuarantineMaps {
    targets: BpfHashMap<MapData, u64, QuarantineTarget>,
    allow: LpmTrie<MapData, [u8; 20], u8>,
    counters: PerCpuArray<MapData, QuarantineCounters>,
}

impl KernelProbes {
    /// Loads the enforcing programs (called from [`KernelProbes::load`]).
    pub(super) fn load_quarantine(ebpf: &mut aya::Ebpf) -> Result<(), KernelError> {
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program(ebpf, name)?;
            program.load().map_err(|source| KernelError::Program {
                name,
                hint: permission_hint(&source),
                source: Box::new(source),
            })?;
        }
        let egress: &mut CgroupSkb = program(ebpf, EGRESS_PROGRAM)?;
        egress.load().map_err(|source| KernelError::Program {
            name: EGRESS_PROGRAM,
            hint: permission_hint(&source),
            source: Box::new(source),
        })
    }

    /// The quarantine maps; can be taken once.
    pub fn take_quarantine_maps(&mut self) -> Result<QuarantineMaps, KernelError> {
        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(KernelError::MissingMap(name))
        };
        let map_err = |name| move |source| KernelError::Map { name, source };
        let targets = take(QUARANTINE_TARGETS_MAP)?;
        let allow = take(QUARANTINE_ALLOW_MAP)?;
        let counters = take(QUARANTINE_COUNTERS_MAP)?;
        Ok(QuarantineMaps {
            targets: BpfHashMap::try_from(targets).map_err(map_err(QUARANTINE_TARGETS_MAP))?,
            allow: LpmTrie::try_from(allow).map_err(map_err(QUARANTINE_ALLOW_MAP))?,
            counters: PerCpuArray::try_from(counters).map_err(map_err(QUARANTINE_COUNTERS_MAP))?,
        })
    }

    /// Attaches the enforcing programs to the cgroup directory `dir` (never
    /// call this for a cgroup you are not prepared to cut off).
    pub fn attach_quarantine(&mut self, dir: &Path) -> Result<QuarantineLinks, KernelError> {
        let path = dir.display().to_string();
        let open = File::open(dir).map_err(|source| KernelError::OpenCgroup {
            path: path.clone(),
            source,
        })?;
        let cgroup_id = open
            .metadata()
            .map_err(|source| KernelError::OpenCgroup {
                path: path.clone(),
                source,
            })?
            .ino();
        let attach_err = |name: &'static str| {
            let path = path.clone();
            move |source: aya::programs::ProgramError| KernelError::Attach {
                name,
                path,
                hint: permission_hint(&source),
                source: Box::new(source),
            }
        };
        // Links are collected as they are made so a failure half-way drops
        // (detaches) the ones already attached.
        let mut links = QuarantineLinks {
            sock_addr: Vec::with_capacity(SOCK_ADDR_PROGRAMS.len()),
            egress: None,
            cgroup_id,
        };
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let id = program
                .attach(&open, CgroupAttachMode::Single)
                .map_err(attach_err(name))?;
            links
                .sock_addr
                .push(program.take_link(id).map_err(attach_err(name))?);
        }
        let egress: &mut CgroupSkb = program(&mut self.ebpf, EGRESS_PROGRAM)?;
        let id = egress
            .attach(&open, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(attach_err(EGRESS_PROGRAM))?;
        links.egress = Some(egress.take_link(id).map_err(attach_err(EGRESS_PROGRAM))?);
        Ok(links)
    }
}

impl QuarantineMaps {
    /// Marks `cgroup_id` quarantined under `slot` with `allow` reachable.
    /// The allow list goes in first so the programs never see a target
    /// without its exceptions.
    pub fn enable(
        &mut self,
        cgroup_id: u64,
        slot: u32,
        allow: &[IpNet],
        stop_existing: bool,
    ) -> Result<(), KernelError> {
        debug_assert!(slot > 0 && slot < QUARANTINE_SLOTS);
        for net in allow {
            self.allow
                .insert(&allow_key(slot, net), 1, 0)
                .map_err(|source| KernelError::Map {
                    name: QUARANTINE_ALLOW_MAP,
                    source,
                })?;
        }
        let target = QuarantineTarget {
            slot,
            flags: if stop_existing {
                QUARANTINE_STOP_EXISTING
            } else {
                0
            },
        };
        self.targets
            .insert(cgroup_id, target, 0)
            .map_err(|source| KernelError::Map {
                name: QUARANTINE_TARGETS_MAP,
                source,
            })
    }

    /// Removes `cgroup_id` and the slot's allow list; missing entries are
    /// fine (the cgroup may be gone already).
    pub fn disable(&mut self, cgroup_id: u64, slot: u32, allow: &[IpNet]) {
        let _ = self.targets.remove(&cgroup_id);
        for net in allow {
            let _ = self.allow.remove(&allow_key(slot, net));
        }
    }

    /// The slot's counters summed over CPUs (zero for an unused slot).
    pub fn counters(&self, slot: u32) -> Result<QuarantineCounters, KernelError> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(|source| KernelError::Map {
                name: QUARANTINE_COUNTERS_MAP,
                source,
            })?;
        let mut total = QuarantineCounters::default();
        for c in per_cpu.iter() {
            total.blocked_connects += c.blocked_connects;
            total.blocked_sends += c.blocked_sends;
            total.dropped_packets += c.dropped_packets;
            total.allowed += c.allowed;
            total.ringbuf_full += c.ringbuf_full;
        }
        Ok(total)
    }
}

/// Allow-trie key: the slot (always matched in full) then the network,
/// IPv4 as IPv4-mapped like the ignore trie.
pub fn allow_key(slot: u32, net: &IpNet) -> aya::maps::lpm_trie::Key<[u8; 20]> {
    let (prefix_len, data) = allow_key_parts(slot, net);
    aya::maps::lpm_trie::Key::new(prefix_len, data)
}

fn allow_key_parts(slot: u32, net: &IpNet) -> (u32, [u8; 20]) {
    let (prefix, addr) = match net.trunc() {
        IpNet::V4(v4) => (
            96 + u32::from(v4.prefix_len()),
            v4.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.network().octets()),
    };
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&slot.to_be_bytes());
    data[4..].copy_from_slice(&addr);
    (32 + prefix, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_keys_cover_the_slot_then_the_network() {
        let (prefix, data) = allow_key_parts(7, &"203.0.113.9/24".parse().unwrap());
        assert_eq!(prefix, 32 + 96 + 24);
        assert_eq!(&data[..4], &[0, 0, 0, 7]);
        assert_eq!(&data[14..20], &[0xff, 0xff, 203, 0, 113, 0]);
        let (prefix, data) = allow_key_parts(1, &"2001:db8::/32".parse().unwrap());
        assert_eq!(prefix, 64);
        assert_eq!(&data[4..8], &[0x20, 0x01, 0x0d, 0xb8]);
    }
}
