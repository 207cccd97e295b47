//! An RCU grace period from userspace: the wait after which no kernel
//! program still reads an ignore block that was unlinked before it began.
//!
//! Every program that reads the blocks is a non-sleepable cgroup or
//! tracepoint program, run inside an RCU read-side section. The kernel
//! waits for those exactly when userspace updates a map-in-map: after
//! `BPF_MAP_UPDATE_ELEM` on an `ARRAY_OF_MAPS` the syscall calls
//! `synchronize_rcu()` before it returns, so that "all non-sleepable
//! programs that could be running use the new map value"
//! (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c, since 5.0; the
//! kernel's selftest `btf_map_in_map` triggers `synchronize_rcu()` the same
//! way). The agent keeps a one-slot outer map for nothing else and
//! rewrites its slot.
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` would be cheaper to set up but skips
//! the wait on a machine with one online CPU, where a preemptible RCU
//! reader can still be mid-walk.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel
/// zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `repr(C)` prefix of `bpf_attr`
    // for `cmd`, and the size passed is its own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn create(attr: &mut MapCreate) -> io::Result<OwnedFd> {
    let fd = bpf(BPF_MAP_CREATE, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned no fd"))?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor this process
    // owns and nothing else holds.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name(text: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (to, from) in out.iter_mut().zip(text.bytes().take(15)) {
        *to = from;
    }
    out
}

pub struct Grace {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Grace {
    pub fn new() -> io::Result<Self> {
        let inner = create(&mut MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_name: name("egret_grace_in"),
            ..MapCreate::default()
        })?;
        let outer = create(&mut MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: fd_u32(&inner)?,
            map_name: name("egret_grace"),
            ..MapCreate::default()
        })?;
        Ok(Self { outer, inner })
    }

    /// Returns once every kernel program run that began before the call
    /// has finished.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = fd_u32(&self.inner)?;
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &mut MapUpdate {
                map_fd: fd_u32(&self.outer)?,
                _pad: 0,
                key: std::ptr::from_ref(&key) as u64,
                value: std::ptr::from_ref(&value) as u64,
                flags: 0,
            },
        )?;
        Ok(())
    }
}

fn fd_u32(fd: &OwnedFd) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))
}
