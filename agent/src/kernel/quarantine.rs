//! The quarantine programs' side of the kernel: attaching the enforcing
//! programs to one cgroup directory and filling their maps.
//!
//! [`QuarantinePrograms`] holds its own references to the loaded programs,
//! so quarantines are attached and lifted while the pipeline owns the rest
//! of the object. Each quarantine owns its bpf_links; dropping
//! [`QuarantineLinks`] detaches them, so lifting a quarantine, or the agent
//! exiting for any reason, leaves nothing attached (fail-open: see
//! docs/quarantine.md).
use std::{
    fs::File,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{CgroupSkb, CgroupSockAddr, ProgramFd},
};
use egret_common::{
    QUARANTINE_ALLOW_MAP, QUARANTINE_COUNTERS_MAP, QUARANTINE_SLOTS, QUARANTINE_STOP_EXISTING,
    QUARANTINE_TARGETS_MAP, QuarantineCounters, QuarantineTarget,
};
use ipnet::IpNet;

use super::{KernelError, KernelProbes, permission_hint, program};

// `enum bpf_attach_type` values (include/uapi/linux/bpf.h).
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
/// `enum bpf_cmd`: BPF_LINK_CREATE.
const BPF_LINK_CREATE: libc::c_long = 28;

/// The enforcing sock_addr programs and their attach types.
pub const SOCK_ADDR_PROGRAMS: [(&str, u32); 4] = [
    ("egret_q_connect4", BPF_CGROUP_INET4_CONNECT),
    ("egret_q_connect6", BPF_CGROUP_INET6_CONNECT),
    ("egret_q_sendmsg4", BPF_CGROUP_UDP4_SENDMSG),
    ("egret_q_sendmsg6", BPF_CGROUP_UDP6_SENDMSG),
];
/// The enforcing packet program.
pub const EGRESS_PROGRAM: &str = "egret_q_egress";

/// A quarantine's attachments; dropping it closes (detaches) them.
#[derive(Debug)]
pub struct QuarantineLinks {
    _links: Vec<OwnedFd>,
    /// Cgroup id (inode) of the directory they are attached to.
    pub cgroup_id: u64,
}

/// The loaded enforcing programs (their own fds).
pub struct QuarantinePrograms {
    programs: Vec<(&'static str, u32, ProgramFd)>,
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
        for (name, _) in SOCK_ADDR_PROGRAMS {
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

    /// The enforcing programs and their maps; can be taken once.
    pub fn take_quarantine(&mut self) -> Result<(QuarantinePrograms, QuarantineMaps), KernelError> {
        let fd_err = |name: &'static str| {
            move |source: aya::programs::ProgramError| KernelError::Program {
                name,
                hint: "",
                source: Box::new(source),
            }
        };
        let clone_err = |name: &'static str| {
            move |err: std::io::Error| KernelError::Program {
                name,
                hint: "",
                source: Box::new(aya::programs::ProgramError::IOError(err)),
            }
        };
        let mut programs = Vec::with_capacity(SOCK_ADDR_PROGRAMS.len() + 1);
        for (name, attach_type) in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let fd = program.fd().map_err(fd_err(name))?;
            programs.push((name, attach_type, fd.try_clone().map_err(clone_err(name))?));
        }
        let egress: &mut CgroupSkb = program(&mut self.ebpf, EGRESS_PROGRAM)?;
        let fd = egress.fd().map_err(fd_err(EGRESS_PROGRAM))?;
        programs.push((
            EGRESS_PROGRAM,
            BPF_CGROUP_INET_EGRESS,
            fd.try_clone().map_err(clone_err(EGRESS_PROGRAM))?,
        ));

        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(KernelError::MissingMap(name))
        };
        let map_err = |name| move |source| KernelError::Map { name, source };
        let targets = take(QUARANTINE_TARGETS_MAP)?;
        let allow = take(QUARANTINE_ALLOW_MAP)?;
        let counters = take(QUARANTINE_COUNTERS_MAP)?;
        let maps = QuarantineMaps {
            targets: BpfHashMap::try_from(targets).map_err(map_err(QUARANTINE_TARGETS_MAP))?,
            allow: LpmTrie::try_from(allow).map_err(map_err(QUARANTINE_ALLOW_MAP))?,
            counters: PerCpuArray::try_from(counters).map_err(map_err(QUARANTINE_COUNTERS_MAP))?,
        };
        Ok((QuarantinePrograms { programs }, maps))
    }
}

impl QuarantinePrograms {
    /// Attaches the enforcing programs to the cgroup directory `dir` through
    /// bpf_link (stacking with every other program there, like the
    /// monitors' links). Never call this for a cgroup you are not prepared
    /// to cut off.
    pub fn attach(&self, dir: &Path) -> Result<QuarantineLinks, KernelError> {
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
        // Collected as they are made, so a failure half-way closes
        // (detaches) the ones already attached.
        let mut links = Vec::with_capacity(self.programs.len());
        for (name, attach_type, fd) in &self.programs {
            let link = link_create(fd, &open, *attach_type).map_err(|source| {
                KernelError::QuarantineAttach {
                    name,
                    path: path.clone(),
                    source,
                }
            })?;
            links.push(link);
        }
        Ok(QuarantineLinks {
            _links: links,
            cgroup_id,
        })
    }
}

/// BPF_LINK_CREATE for a cgroup program: the link fd; closing it detaches.
fn link_create(program: &ProgramFd, cgroup: &File, attach_type: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsFd as _;
    // union bpf_attr's link_create: prog_fd, target_fd, attach_type, flags,
    // then per-type fields this attach leaves zero.
    let mut attr = [0u32; 32];
    attr[0] = program.as_fd().as_raw_fd() as u32;
    attr[1] = cgroup.as_raw_fd() as u32;
    attr[2] = attach_type;
    // SAFETY: bpf(2) with a zeroed, correctly sized attr; the fds are live
    // for the call, and the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
