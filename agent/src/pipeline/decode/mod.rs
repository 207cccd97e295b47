//! Decoding kernel records into the agent's event model: one decoder per
//! record kind (`attempt`, `exec`, `cgroup`, `socket`, `connect_result`,
//! `dns`, `flow`), chosen by the record's first byte from [`DECODERS`]. A new
//! record kind is a module here, a [`Record`] variant and a row in the table.
mod attempt;
mod cgroup;
mod connect_result;
pub mod dns;
mod dns_message;
mod exec;
mod flow;
mod socket;

use egret_common::RecordKind;

pub use attempt::{Blocked, EgressAttempt, L4Proto, action_name, evt_type};
pub use cgroup::{CgroupOp, CgroupRecord};
pub use connect_result::{ConnectResult, ResultSource, result_name};
pub use dns::{DnsDirection, DnsMessage, DnsRecord};
pub use exec::{ExeFile, ExecRecord};
pub use flow::{FlowEnd, FlowInfo};
pub use socket::SocketArgs;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its kind requires")]
    Truncated(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unknown hook {0}")]
    UnknownHook(u8),
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
    #[error("unknown cgroup operation {0}")]
    UnknownCgroupOp(u8),
    #[error("unknown connect result source {0}")]
    UnknownResultSource(u8),
    #[error("unknown flow end {0}")]
    UnknownFlowEnd(u8),
}

/// Task comm: at most 15 bytes, not necessarily UTF-8.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    pub fn from_raw(raw: [u8; 16]) -> Self {
        let len = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        Comm {
            bytes: raw,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The comm as text without allocating: up to the first invalid UTF-8
    /// byte (attackers can set any bytes; rules then see the valid prefix).
    pub fn as_str(&self) -> &str {
        let bytes = self.as_bytes();
        match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => std::str::from_utf8(&bytes[..err.valid_up_to()]).unwrap_or_default(),
        }
    }

    /// Lossy: invalid UTF-8 in a comm (attackers can set any bytes) becomes U+FFFD.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

/// Anything the kernel sends up the ring buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Egress(EgressAttempt),
    Exec(ExecRecord),
    Cgroup(CgroupRecord),
    /// What an emitted connect returned (matched in the evaluate stage).
    ConnectResult(ConnectResult),
    Dns(Box<DnsRecord>),
}

/// Decodes one ring buffer record. `wall_offset_ns` is realtime − monotonic,
/// sampled by the caller once per batch.
pub fn decode(record: &[u8], wall_offset_ns: i64) -> Result<Record, DecodeError> {
    let kind = *record.first().ok_or(DecodeError::Truncated(0))?;
    match DECODERS.iter().find(|(k, _)| *k as u8 == kind) {
        Some((_, decoder)) => decoder(record, wall_offset_ns),
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// Decodes one record of a known kind; the offset is as for [`decode`].
type Decoder = fn(&[u8], i64) -> Result<Record, DecodeError>;

/// Record kind → decoder.
pub const DECODERS: [(RecordKind, Decoder); 8] = [
    (RecordKind::Egress, |record, wall_offset_ns| {
        attempt::decode(record, wall_offset_ns).map(Record::Egress)
    }),
    // Same layout; `EgressAttempt::blocked` tells them apart.
    (RecordKind::Blocked, |record, wall_offset_ns| {
        attempt::decode(record, wall_offset_ns).map(Record::Egress)
    }),
    (RecordKind::Exec, |record, _| {
        exec::decode(record).map(Record::Exec)
    }),
    (RecordKind::Socket, |record, wall_offset_ns| {
        socket::decode(record, wall_offset_ns).map(Record::Egress)
    }),
    (RecordKind::Cgroup, |record, _| {
        cgroup::decode(record).map(Record::Cgroup)
    }),
    (RecordKind::ConnectResult, |record, _| {
        connect_result::decode(record).map(Record::ConnectResult)
    }),
    (RecordKind::Flow, |record, wall_offset_ns| {
        flow::decode(record, wall_offset_ns).map(Record::Egress)
    }),
    (RecordKind::Dns, |record, wall_offset_ns| {
        dns::decode(record, wall_offset_ns).map(|r| Record::Dns(Box::new(r)))
    }),
];

fn read_record<T: Copy>(record: &[u8]) -> Result<T, DecodeError> {
    if record.len() < size_of::<T>() {
        return Err(DecodeError::Truncated(record.len()));
    }
    // SAFETY: length checked; T is a Pod kernel record, read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}

/// realtime − monotonic in nanoseconds: add to a `bpf_ktime_get_ns` stamp to
/// get wall time. Sampled per batch so clock steps are picked up quickly.
pub fn wall_offset_ns() -> i64 {
    fn now(clock: libc::clockid_t) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use egret_common::{
        AF_INET, AF_INET6, EXEC_FLAG_ARGS_TRUNCATED, EXEC_FLAG_NO_ARGS, EgressEvent, ExecEvent,
        FLAG_PACKET, FLAG_V4_MAPPED, Hook,
    };

    use super::*;

    fn raw_event() -> EgressEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        EgressEvent {
            kind: RecordKind::Egress as u8,
            hook: Hook::Connect6 as u8,
            family: AF_INET,
            protocol: 6,
            dport: 443,
            flags: FLAG_V4_MAPPED,
            _pad0: 0,
            tgid: 100,
            pid: 101,
            uid: 1000,
            gid: 1001,
            mono_ns: 5_000,
            exec_id: 4_000,
            ppid: 1,
            quarantine: 0,
            cgroup_id: 77,
            netns_cookie: 4096,
            socket_cookie: 9,
            daddr: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm,
        }
    }

    fn bytes<T>(event: &T) -> Vec<u8> {
        // SAFETY: kernel records are repr(C) with explicit padding.
        unsafe { std::slice::from_raw_parts((event as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn egress(record: Result<Record, DecodeError>) -> EgressAttempt {
        match record {
            Ok(Record::Egress(attempt)) => attempt,
            other => panic!("expected an egress record, got {other:?}"),
        }
    }

    #[test]
    fn layout_matches_kernel_contract() {
        assert_eq!(size_of::<EgressEvent>(), 104);
        assert_eq!(std::mem::offset_of!(EgressEvent, tgid), 8);
        assert_eq!(std::mem::offset_of!(EgressEvent, mono_ns), 24);
        assert_eq!(std::mem::offset_of!(EgressEvent, exec_id), 32);
        assert_eq!(std::mem::offset_of!(EgressEvent, daddr), 72);
        assert_eq!(std::mem::offset_of!(EgressEvent, comm), 88);
        assert_eq!(size_of::<ExecEvent>(), 1864);
        assert_eq!(std::mem::offset_of!(ExecEvent, exe), 1600);
        assert_eq!(std::mem::offset_of!(ExecEvent, filename), 64);
    }

    #[test]
    fn decodes_mapped_ipv4() {
        let event = egress(decode(&bytes(&raw_event()), 1_000));
        assert_eq!(event.daddr, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert!(event.v4_mapped);
        assert_eq!(event.dport, 443);
        assert_eq!(event.l4proto, L4Proto::Tcp);
        assert_eq!(event.comm.to_string_lossy(), "curl");
        assert_eq!(event.wall_ns, 6_000);
        assert_eq!(event.evt_type(), "connect");
        assert_eq!(
            (event.tgid, event.tid, event.uid, event.gid),
            (100, 101, 1000, 1001)
        );
    }

    #[test]
    fn blocked_records_carry_their_quarantine() {
        let event = egress(decode(&bytes(&raw_event()), 0));
        assert_eq!(
            (event.blocked, action_name(event.blocked)),
            (None, "observed")
        );
        let mut raw = raw_event();
        raw.kind = RecordKind::Blocked as u8;
        raw.quarantine = 3;
        let event = egress(decode(&bytes(&raw), 0));
        assert_eq!(
            event.blocked,
            Some(Blocked {
                slot: 3,
                packet: false
            })
        );
        assert_eq!(action_name(event.blocked), "blocked");
        raw.flags = FLAG_PACKET;
        raw.protocol = 1;
        let event = egress(decode(&bytes(&raw), 0));
        assert!(event.blocked.is_some_and(|b| b.packet));
        assert_eq!(event.l4proto, L4Proto::Icmp);
    }

    #[test]
    fn decodes_ipv6_sendmsg() {
        let mut raw = raw_event();
        raw.family = AF_INET6;
        raw.hook = Hook::Sendmsg6 as u8;
        raw.protocol = 17;
        raw.flags = 0;
        raw.daddr = "2001:db8::53".parse::<Ipv6Addr>().unwrap().octets();
        let event = egress(decode(&bytes(&raw), 0));
        assert_eq!(event.daddr, "2001:db8::53".parse::<IpAddr>().unwrap());
        assert_eq!(event.evt_type(), "sendto");
        assert_eq!(event.l4proto.as_str(), "udp");
    }

    #[test]
    fn rejects_hostile_records() {
        let good = bytes(&raw_event());
        assert_eq!(decode(&good[..10], 0), Err(DecodeError::Truncated(10)));
        assert_eq!(decode(&[], 0), Err(DecodeError::Truncated(0)));
        let mut exec_hook = raw_event();
        exec_hook.hook = Hook::Exec as u8;
        assert_eq!(
            decode(&bytes(&exec_hook), 0),
            Err(DecodeError::UnknownHook(4))
        );
        assert_eq!(
            decode(&[RecordKind::Exec as u8; 100], 0),
            Err(DecodeError::Truncated(100))
        );
        let mut bad = raw_event();
        bad.kind = 9;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownKind(9)));
        let mut bad = raw_event();
        bad.hook = 200;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownHook(200)));
        let mut bad = raw_event();
        bad.family = 1;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownFamily(1)));
    }

    fn raw_exec(args: &[u8], flags: u8) -> ExecEvent {
        let mut event = ExecEvent {
            kind: RecordKind::Exec as u8,
            flags,
            filename_len: 13,
            args_len: args.len() as u16,
            _pad0: 0,
            tgid: 10,
            ppid: 9,
            uid: 1000,
            gid: 1000,
            mono_ns: 1,
            exec_id: 77,
            cgroup_id: 5,
            comm: [0; 16],
            filename: [0; egret_common::EXEC_FILENAME_BYTES],
            args: [0; egret_common::EXEC_ARGS_BYTES + egret_common::EXEC_ARG_CHUNK],
            exe: egret_common::ExeFile {
                flags: 0,
                len: 0,
                path: [0; egret_common::EXE_PATH_BYTES],
            },
        };
        event.filename[..13].copy_from_slice(b"/usr/bin/curl");
        event.args[..args.len()].copy_from_slice(args);
        event.comm[..4].copy_from_slice(b"curl");
        event
    }

    #[test]
    fn decodes_exec_with_argv() {
        let raw = raw_exec(b"curl\0-s\0http://x\0", 0);
        let Ok(Record::Exec(exec)) = decode(&bytes(&raw), 0) else {
            panic!("exec record expected")
        };
        assert_eq!(exec.filename, "/usr/bin/curl");
        assert_eq!(
            exec.argv.as_deref(),
            Some(&["curl".to_string(), "-s".into(), "http://x".into()][..])
        );
        assert_eq!((exec.tgid, exec.ppid, exec.exec_id), (10, 9, 77));
        assert!(!exec.args_truncated);
        assert_eq!(exec.exe, None, "no LSM hook: unknown, not empty");
    }

    #[test]
    fn decodes_the_kernels_executable_file() {
        use egret_common::{
            EXE_KNOWN, EXE_NO_LINKS, EXE_ON_OVERLAY, EXE_ON_SHMEM, EXE_PATH_ERR, EXE_UPPER,
        };
        let exe = |flags: u32, path: &[u8]| {
            let mut raw = raw_exec(b"", 0);
            raw.exe.flags = flags;
            raw.exe.path[..path.len()].copy_from_slice(path);
            let Ok(Record::Exec(exec)) = decode(&bytes(&raw), 0) else {
                panic!("exec record expected")
            };
            exec.exe.expect("known")
        };
        let memfd = exe(EXE_KNOWN | EXE_NO_LINKS | EXE_ON_SHMEM, b"/memfd:x");
        assert_eq!(memfd.path, "/memfd:x (deleted)");
        assert!(memfd.from_memfd() && !memfd.deleted());
        let gone = exe(EXE_KNOWN | EXE_NO_LINKS | EXE_ON_SHMEM, b"/tmp/x");
        assert!(!gone.from_memfd() && gone.deleted());
        // A name that looks like a memfd on a disk filesystem is not one.
        let fake = exe(EXE_KNOWN | EXE_NO_LINKS, b"/memfd:x");
        assert!(!fake.from_memfd() && fake.deleted());
        let upper = exe(EXE_KNOWN | EXE_ON_OVERLAY | EXE_UPPER, b"/usr/bin/dropped");
        assert_eq!(upper.path, "/usr/bin/dropped");
        assert!(upper.on_overlay && upper.upper && !upper.deleted());
        // Unterminated path, and a d_path error.
        let full = exe(EXE_KNOWN, &[b'a'; egret_common::EXE_PATH_BYTES]);
        assert_eq!(full.path.len(), egret_common::EXE_PATH_BYTES);
        assert_eq!(exe(EXE_KNOWN | EXE_PATH_ERR, b"/x").path, "");
    }

    #[test]
    fn exec_without_captured_args_and_hostile_lengths() {
        let mut raw = raw_exec(b"", EXEC_FLAG_NO_ARGS | EXEC_FLAG_ARGS_TRUNCATED);
        raw.filename_len = u16::MAX;
        raw.args_len = u16::MAX;
        let Ok(Record::Exec(exec)) = decode(&bytes(&raw), 0) else {
            panic!("exec record expected")
        };
        assert_eq!(exec.argv, None);
        assert!(exec.args_truncated);
        assert!(exec.filename.starts_with("/usr/bin/curl"));
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8() {
        let comm = Comm::from_raw([0xff; 16]);
        assert_eq!(comm.as_bytes().len(), 16);
        assert!(comm.to_string_lossy().contains('\u{fffd}'));
    }

    #[test]
    fn decodes_raw_and_ping_sends() {
        let mut raw = raw_event();
        raw.hook = Hook::RawSend4 as u8;
        raw.protocol = 1;
        raw.dport = 0;
        raw.flags = egret_common::FLAG_RAW_SOCKET;
        let event = egress(decode(&bytes(&raw), 0));
        assert_eq!(
            (event.evt_type(), event.l4proto, event.ip_protocol),
            ("sendto", L4Proto::Raw, 1)
        );
        assert!(event.has_destination());
        raw.flags = 0;
        raw.hook = Hook::RawSend6 as u8;
        raw.family = AF_INET6;
        raw.protocol = 58;
        let event = egress(decode(&bytes(&raw), 0));
        assert_eq!(
            (event.hook.name(), event.l4proto),
            ("raw_send6", L4Proto::Icmp)
        );
        raw.hook = Hook::SocketCreate as u8;
        assert_eq!(decode(&bytes(&raw), 0), Err(DecodeError::UnknownHook(10)));
    }

    fn raw_socket() -> egret_common::SocketEvent {
        egret_common::SocketEvent {
            kind: RecordKind::Socket as u8,
            hook: Hook::SocketCreate as u8,
            family: egret_common::AF_PACKET,
            sock_type: 3,
            protocol: 768,
            tgid: 7,
            pid: 8,
            uid: 0,
            gid: 0,
            ppid: 1,
            mono_ns: 10,
            exec_id: 3,
            cgroup_id: 99,
            netns_cookie: 4,
            socket_cookie: 5,
            comm: *b"tcpdump\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn decodes_socket_creation() {
        let event = egress(decode(&bytes(&raw_socket()), 5));
        let args = event.socket.expect("socket args");
        assert_eq!(event.evt_type(), "socket");
        assert!(!event.has_destination());
        assert_eq!(args.domain_name(), Some("AF_PACKET"));
        assert_eq!(args.render_args(), "domain=17(AF_PACKET) type=3 proto=768");
        assert_eq!((event.tgid, event.cgroup_id, event.wall_ns), (7, 99, 15));
        assert_eq!(event.comm.as_str(), "tcpdump");
        let mut raw_ip = raw_socket();
        raw_ip.family = u16::from(AF_INET6);
        raw_ip.protocol = 58;
        let event = egress(decode(&bytes(&raw_ip), 0));
        assert_eq!((event.l4proto, event.ip_protocol), (L4Proto::Raw, 58));
        assert_eq!(
            event.socket.unwrap().render_args(),
            "domain=10(AF_INET6) type=3 proto=58"
        );
    }

    #[test]
    fn rejects_hostile_socket_records() {
        let good = bytes(&raw_socket());
        for len in 0..good.len() {
            assert_eq!(decode(&good[..len], 0), Err(DecodeError::Truncated(len)));
        }
        let mut bad = raw_socket();
        bad.hook = Hook::Connect4 as u8;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownHook(0)));
        let mut bad = raw_socket();
        bad.family = 1;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownFamily(1)));
        bad.family = 4000;
        assert_eq!(
            decode(&bytes(&bad), 0),
            Err(DecodeError::UnknownFamily(255))
        );
    }

    #[test]
    fn wall_offset_is_plausible() {
        // Realtime is after 2020 and monotonic is small, so the offset is large and positive.
        assert!(wall_offset_ns() > 1_577_836_800_000_000_000);
    }
}
