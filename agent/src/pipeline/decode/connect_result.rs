//! `RecordKind::ConnectResult`: what an emitted connect returned, from
//! `sys_exit_connect` or an io_uring completion, matched to its attempt by
//! socket cookie in the evaluate stage (`pipeline/pending.rs`).
use egret_common::{
    CONNECT_RESULT_IO_URING, CONNECT_RESULT_SYSCALL, ConnectResultEvent, Hook, RecordKind,
};

use super::{DecodeError, read_record};

/// Where the result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultSource {
    Syscall,
    IoUring,
}

/// One connect's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectResult {
    pub socket_cookie: u64,
    pub tgid: u32,
    pub tid: u32,
    /// 0, or minus the errno (Falco's `evt.rawres`).
    pub ret: i32,
    pub mono_ns: u64,
    pub source: ResultSource,
}

pub(super) fn decode(record: &[u8]) -> Result<ConnectResult, DecodeError> {
    let raw: ConnectResultEvent = read_record(record)?;
    if raw.kind != RecordKind::ConnectResult as u8 || raw.hook != Hook::ConnectResult as u8 {
        return Err(DecodeError::UnknownHook(raw.hook));
    }
    let source = match raw.source {
        CONNECT_RESULT_SYSCALL => ResultSource::Syscall,
        CONNECT_RESULT_IO_URING => ResultSource::IoUring,
        other => return Err(DecodeError::UnknownResultSource(other)),
    };
    Ok(ConnectResult {
        socket_cookie: raw.socket_cookie,
        tgid: raw.tgid,
        tid: raw.pid,
        ret: raw.ret,
        mono_ns: raw.mono_ns,
        source,
    })
}

/// Linux errno names by number (asm-generic, which x86-64 and arm64 use);
/// `""` where the number is unassigned.
const ERRNO_NAMES: [&str; 134] = [
    "",
    "EPERM",
    "ENOENT",
    "ESRCH",
    "EINTR",
    "EIO",
    "ENXIO",
    "E2BIG",
    "ENOEXEC",
    "EBADF",
    "ECHILD",
    "EAGAIN",
    "ENOMEM",
    "EACCES",
    "EFAULT",
    "ENOTBLK",
    "EBUSY",
    "EEXIST",
    "EXDEV",
    "ENODEV",
    "ENOTDIR",
    "EISDIR",
    "EINVAL",
    "ENFILE",
    "EMFILE",
    "ENOTTY",
    "ETXTBSY",
    "EFBIG",
    "ENOSPC",
    "ESPIPE",
    "EROFS",
    "EMLINK",
    "EPIPE",
    "EDOM",
    "ERANGE",
    "EDEADLK",
    "ENAMETOOLONG",
    "ENOLCK",
    "ENOSYS",
    "ENOTEMPTY",
    "ELOOP",
    "",
    "ENOMSG",
    "EIDRM",
    "ECHRNG",
    "EL2NSYNC",
    "EL3HLT",
    "EL3RST",
    "ELNRNG",
    "EUNATCH",
    "ENOCSI",
    "EL2HLT",
    "EBADE",
    "EBADR",
    "EXFULL",
    "ENOANO",
    "EBADRQC",
    "EBADSLT",
    "",
    "EBFONT",
    "ENOSTR",
    "ENODATA",
    "ETIME",
    "ENOSR",
    "ENONET",
    "ENOPKG",
    "EREMOTE",
    "ENOLINK",
    "EADV",
    "ESRMNT",
    "ECOMM",
    "EPROTO",
    "EMULTIHOP",
    "EDOTDOT",
    "EBADMSG",
    "EOVERFLOW",
    "ENOTUNIQ",
    "EBADFD",
    "EREMCHG",
    "ELIBACC",
    "ELIBBAD",
    "ELIBSCN",
    "ELIBMAX",
    "ELIBEXEC",
    "EILSEQ",
    "ERESTART",
    "ESTRPIPE",
    "EUSERS",
    "ENOTSOCK",
    "EDESTADDRREQ",
    "EMSGSIZE",
    "EPROTOTYPE",
    "ENOPROTOOPT",
    "EPROTONOSUPPORT",
    "ESOCKTNOSUPPORT",
    "EOPNOTSUPP",
    "EPFNOSUPPORT",
    "EAFNOSUPPORT",
    "EADDRINUSE",
    "EADDRNOTAVAIL",
    "ENETDOWN",
    "ENETUNREACH",
    "ENETRESET",
    "ECONNABORTED",
    "ECONNRESET",
    "ENOBUFS",
    "EISCONN",
    "ENOTCONN",
    "ESHUTDOWN",
    "ETOOMANYREFS",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "EHOSTDOWN",
    "EHOSTUNREACH",
    "EALREADY",
    "EINPROGRESS",
    "ESTALE",
    "EUCLEAN",
    "ENOTNAM",
    "ENAVAIL",
    "EISNAM",
    "EREMOTEIO",
    "EDQUOT",
    "ENOMEDIUM",
    "EMEDIUMTYPE",
    "ECANCELED",
    "ENOKEY",
    "EKEYEXPIRED",
    "EKEYREVOKED",
    "EKEYREJECTED",
    "EOWNERDEAD",
    "ENOTRECOVERABLE",
    "ERFKILL",
    "EHWPOISON",
];

/// Falco's `evt.res` text for a return value: `SUCCESS` for 0 or more,
/// the errno's name otherwise (`EUNKNOWN` for numbers Linux does not
/// assign to user space, e.g. ERESTARTSYS seen before a restart).
pub fn result_name(ret: i64) -> &'static str {
    if ret >= 0 {
        return "SUCCESS";
    }
    ret.checked_neg()
        .and_then(|errno| usize::try_from(errno).ok())
        .and_then(|errno| ERRNO_NAMES.get(errno))
        .filter(|name| !name.is_empty())
        .copied()
        .unwrap_or("EUNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ret: i32) -> ConnectResultEvent {
        ConnectResultEvent {
            kind: RecordKind::ConnectResult as u8,
            hook: Hook::ConnectResult as u8,
            source: CONNECT_RESULT_SYSCALL,
            _pad0: 0,
            ret,
            tgid: 10,
            pid: 11,
            mono_ns: 99,
            socket_cookie: 4242,
        }
    }

    fn bytes(event: &ConnectResultEvent) -> Vec<u8> {
        // SAFETY: repr(C) kernel record with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const ConnectResultEvent).cast::<u8>(),
                size_of::<ConnectResultEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_refused_connect() {
        let result = decode(&bytes(&raw(-111))).unwrap();
        assert_eq!(result.socket_cookie, 4242);
        assert_eq!((result.tgid, result.tid, result.ret), (10, 11, -111));
        assert_eq!(result.source, ResultSource::Syscall);
        let mut uring = raw(0);
        uring.source = CONNECT_RESULT_IO_URING;
        assert_eq!(
            decode(&bytes(&uring)).unwrap().source,
            ResultSource::IoUring
        );
    }

    #[test]
    fn hostile_records_are_errors() {
        let good = bytes(&raw(0));
        for len in 0..good.len() {
            assert_eq!(decode(&good[..len]), Err(DecodeError::Truncated(len)));
        }
        let mut bad_hook = raw(0);
        bad_hook.hook = 200;
        assert_eq!(
            decode(&bytes(&bad_hook)),
            Err(DecodeError::UnknownHook(200))
        );
        let mut bad_source = raw(0);
        bad_source.source = 9;
        assert_eq!(
            decode(&bytes(&bad_source)),
            Err(DecodeError::UnknownResultSource(9))
        );
        // Any ret decodes; its name never panics.
        for ret in [i32::MIN, -134, -512, -1, 0, 1, i32::MAX] {
            assert!(decode(&bytes(&raw(ret))).is_ok());
            assert!(!result_name(i64::from(ret)).is_empty());
        }
        assert_eq!(result_name(i64::MIN), "EUNKNOWN");
    }

    #[test]
    fn names_follow_falco() {
        assert_eq!(result_name(0), "SUCCESS");
        assert_eq!(result_name(-115), "EINPROGRESS");
        assert_eq!(result_name(-111), "ECONNREFUSED");
        assert_eq!(result_name(-110), "ETIMEDOUT");
        assert_eq!(result_name(-113), "EHOSTUNREACH");
        assert_eq!(result_name(-1), "EPERM");
        assert_eq!(result_name(-41), "EUNKNOWN");
        assert_eq!(result_name(-512), "EUNKNOWN");
    }
}
