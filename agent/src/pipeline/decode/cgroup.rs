//! `RecordKind::Cgroup`: a v2 cgroup created or removed, from the
//! `cgroup_mkdir`/`cgroup_rmdir` tracepoints.
use egret_common::{CGROUP_FLAG_PATH_TRUNCATED, CGROUP_OP_MKDIR, CGROUP_OP_RMDIR, CgroupEvent};

use super::{DecodeError, read_record};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupOp {
    Mkdir,
    Rmdir,
}

/// A cgroup's birth or death, as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupRecord {
    pub op: CgroupOp,
    pub id: u64,
    pub level: u32,
    /// From the hierarchy root (`/kubepods/…`); `None` when the kernel's
    /// path did not fit the record or is not a clean absolute path.
    pub path: Option<String>,
}

pub(super) fn decode(record: &[u8]) -> Result<CgroupRecord, DecodeError> {
    let raw: CgroupEvent = read_record(record)?;
    let op = match raw.op {
        CGROUP_OP_MKDIR => CgroupOp::Mkdir,
        CGROUP_OP_RMDIR => CgroupOp::Rmdir,
        other => return Err(DecodeError::UnknownCgroupOp(other)),
    };
    let len = raw
        .path
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(raw.path.len());
    let path = (raw.flags & CGROUP_FLAG_PATH_TRUNCATED == 0 && len < raw.path.len())
        .then(|| std::str::from_utf8(&raw.path[..len]).ok())
        .flatten()
        .filter(|path| is_clean(path))
        .map(str::to_owned);
    Ok(CgroupRecord {
        op,
        id: raw.id,
        level: raw.level,
        path,
    })
}

/// Absolute, no `.`/`..`/empty components: the path is joined to the
/// cgroup2 mount and parsed for container ids, so nothing may escape it.
fn is_clean(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| {
        rest.is_empty() || rest.split('/').all(|part| !matches!(part, "" | "." | ".."))
    })
}

#[cfg(test)]
mod tests {
    use egret_common::{CGROUP_PATH_BYTES, RecordKind};

    use super::*;

    fn raw(op: u8, path: &[u8]) -> Vec<u8> {
        let mut event = CgroupEvent {
            kind: RecordKind::Cgroup as u8,
            op,
            flags: 0,
            _pad0: 0,
            level: 2,
            id: 4242,
            mono_ns: 1,
            path: [0; CGROUP_PATH_BYTES],
        };
        event.path[..path.len()].copy_from_slice(path);
        // SAFETY: CgroupEvent is repr(C) with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (&event as *const CgroupEvent).cast::<u8>(),
                size_of::<CgroupEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_mkdir_and_rmdir() {
        let record = decode(&raw(CGROUP_OP_MKDIR, b"/kubepods/pod1/abc")).unwrap();
        assert_eq!(record.op, CgroupOp::Mkdir);
        assert_eq!((record.id, record.level), (4242, 2));
        assert_eq!(record.path.as_deref(), Some("/kubepods/pod1/abc"));
        let record = decode(&raw(CGROUP_OP_RMDIR, b"/x")).unwrap();
        assert_eq!(record.op, CgroupOp::Rmdir);
    }

    #[test]
    fn hostile_records_never_yield_a_path_outside_the_mount() {
        for bad in [
            &b"/a/../../etc"[..],
            b"relative",
            b"/a//b",
            b"/a/./b",
            b"/\xff\xfe",
            b"",
        ] {
            let record = decode(&raw(CGROUP_OP_MKDIR, bad)).unwrap();
            assert_eq!(record.path, None, "{bad:?}");
        }
        // No NUL in the whole buffer, or the kernel said it was cut.
        let full = decode(&raw(CGROUP_OP_MKDIR, &[b'a'; CGROUP_PATH_BYTES])).unwrap();
        assert_eq!(full.path, None);
        let mut cut = raw(CGROUP_OP_MKDIR, b"/long");
        cut[2] = CGROUP_FLAG_PATH_TRUNCATED;
        assert_eq!(decode(&cut).unwrap().path, None);
        assert_eq!(decode(&raw(9, b"/x")), Err(DecodeError::UnknownCgroupOp(9)));
        assert_eq!(decode(&[4u8; 20]), Err(DecodeError::Truncated(20)));
    }
}
