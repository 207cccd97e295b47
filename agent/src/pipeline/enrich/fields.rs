//! The enriched event as the rule engine sees it: one borrowed value per
//! field, nothing allocated per event.
use std::{fmt::Write as _, net::SocketAddr};

use egret_rules::{FieldId, Value};

use super::Event;
use crate::numfmt;

/// Text built in place, without an allocation per event.
#[derive(Clone, Copy)]
pub struct InlineText<const N: usize> {
    buf: [u8; N],
    len: u8,
}

/// `fd.name` (`ip:port`, `[ip]:port`): the longest is
/// `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535`, 58 bytes
/// (47 without a scope id, which the hooks never give).
pub type FdName = InlineText<64>;

/// `evt.args`: `res=-115(EINPROGRESS) addr=` (27 bytes; an 11-digit
/// result and a 15-letter errno name: 40) and an `fd.name`.
pub type EvtArgs = InlineText<104>;

impl<const N: usize> InlineText<N> {
    fn empty() -> Self {
        InlineText {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl FdName {
    pub fn new(addr: SocketAddr) -> FdName {
        let mut name = FdName::empty();
        match addr {
            // Every event gets an fd.name, and `core::fmt` for an IPv4
            // socket address cost as much as the rest of enrichment.
            SocketAddr::V4(v4) => {
                let mut len = numfmt::put_ipv4(&mut name.buf, *v4.ip());
                name.buf[len] = b':';
                len += 1;
                len += numfmt::put_decimal(&mut name.buf[len..], v4.port());
                name.len = len as u8;
            }
            // `[ip]:port`, as `Display` writes it: the hooks give no scope
            // id, and flow info is not shown.
            SocketAddr::V6(v6) if v6.scope_id() == 0 => {
                name.buf[0] = b'[';
                let mut len = 1 + numfmt::put_ipv6(&mut name.buf[1..], *v6.ip());
                name.buf[len..len + 2].copy_from_slice(b"]:");
                len += 2;
                len += numfmt::put_decimal(&mut name.buf[len..], v6.port());
                name.len = len as u8;
            }
            // Cannot fail: the buffer fits the longest socket address.
            SocketAddr::V6(_) => {
                let _ = write!(name, "{addr}");
            }
        }
        name
    }
}

impl EvtArgs {
    /// As Falco renders a call's arguments: the result, then the address.
    pub fn new(result: CallResult, fd_name: &FdName) -> EvtArgs {
        let mut args = EvtArgs::empty();
        // Cannot fail: the buffer fits the longest result and fd.name.
        let _ = write!(
            args,
            "res={}({}) addr={}",
            result.raw(),
            result.name(),
            fd_name.as_str()
        );
        args
    }
}

impl<const N: usize> std::fmt::Write for InlineText<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let start = usize::from(self.len);
        let end = start + s.len();
        if end > self.buf.len() || end > usize::from(u8::MAX) {
            return Err(std::fmt::Error);
        }
        self.buf[start..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl<const N: usize> std::fmt::Debug for InlineText<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `evt.res`/`evt.rawres`: what connect returned once its result arrived
/// ([`Event::result`], from `sys_exit_connect` or the io_uring completion);
/// before that (rules that do not read it run at the attempt, the others
/// at `connect_result_wait` if no result came), in progress, unless a
/// quarantine denied the call (it then fails with EPERM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    InProgress,
    Denied,
    /// 0 or minus the errno, as the kernel returned it.
    Returned(i32),
}

impl CallResult {
    pub fn of(event: &Event) -> CallResult {
        match (event.result, event.attempt.blocked) {
            (Some(ret), _) => CallResult::Returned(ret),
            (None, Some(_)) => CallResult::Denied,
            (None, None) => CallResult::InProgress,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CallResult::InProgress => "EINPROGRESS",
            CallResult::Denied => "EPERM",
            CallResult::Returned(ret) => crate::pipeline::decode::result_name(i64::from(ret)),
        }
    }

    /// Minus the errno, as Falco's `evt.rawres`.
    pub fn raw(self) -> i64 {
        match self {
            CallResult::InProgress => -115,
            CallResult::Denied => -1,
            CallResult::Returned(ret) => i64::from(ret),
        }
    }
}

/// socket(2)'s arguments as Falco renders them (`evt.arg.*`), made once
/// per socket event (rare: packet and raw socket creations only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketText {
    pub domain: Option<&'static str>,
    pub sock_type: String,
    pub proto: String,
    pub args: String,
}

impl SocketText {
    pub fn new(args: &crate::pipeline::decode::SocketArgs) -> SocketText {
        SocketText {
            domain: args.domain_name(),
            sock_type: args.sock_type.to_string(),
            proto: args.protocol.to_string(),
            args: args.render_args(),
        }
    }
}

fn opt_str(value: Option<&str>) -> Value<'_> {
    value.map_or(Value::Missing, Value::Str)
}

fn opt_u64<'a>(value: Option<u64>) -> Value<'a> {
    value.map_or(Value::Missing, Value::U64)
}

fn opt_bool<'a>(value: Option<bool>) -> Value<'a> {
    value.map_or(Value::Missing, Value::Bool)
}

impl egret_rules::Event for Event {
    fn value(&self, field: FieldId) -> Value<'_> {
        let a = &self.attempt;
        let process = self.process.as_deref();
        let meta = self.identity.as_ref().and_then(|i| i.metadata());
        let pod = meta.and_then(|m| m.pod.as_ref());
        let socket = self.socket.as_deref();
        let flow = a.flow.as_deref();
        let dns = self.dns.as_deref();
        if socket.is_some() {
            // A socket creation has no destination.
            match field {
                FieldId::ServerIp | FieldId::ServerPort | FieldId::FdName | FieldId::V4Mapped => {
                    return Value::Missing;
                }
                FieldId::L4Proto | FieldId::IpProto
                    if a.l4proto == crate::pipeline::decode::L4Proto::Other(0) =>
                {
                    return Value::Missing;
                }
                _ => {}
            }
        }
        match field {
            FieldId::EvtType => Value::Str(a.evt_type()),
            FieldId::EvtTime => Value::U64(a.wall_ns),
            FieldId::Hook => Value::Str(a.hook.name()),
            FieldId::ServerIp => Value::Ip(a.daddr),
            FieldId::ServerPort => Value::U64(u64::from(a.dport)),
            FieldId::L4Proto => Value::Str(a.l4proto.as_str()),
            FieldId::FdName => Value::Str(self.fd_name().as_str()),
            // Known for flow records only: a connect has no local end yet.
            FieldId::ClientIp => flow.map_or(Value::Missing, |f| Value::Ip(f.saddr)),
            FieldId::ClientPort => flow.map_or(Value::Missing, |f| Value::U64(u64::from(f.sport))),
            FieldId::FlowBytesOut => flow.map_or(Value::Missing, |f| Value::U64(f.bytes_out)),
            FieldId::FlowBytesIn => flow.map_or(Value::Missing, |f| Value::U64(f.bytes_in)),
            FieldId::FlowPacketsOut => flow.map_or(Value::Missing, |f| Value::U64(f.packets_out)),
            FieldId::FlowPacketsIn => flow.map_or(Value::Missing, |f| Value::U64(f.packets_in)),
            FieldId::FlowDuration => flow
                .and_then(|f| f.duration_ns)
                .map_or(Value::Missing, Value::U64),
            FieldId::FlowEnd => flow.map_or(Value::Missing, |f| Value::Str(f.end.as_str())),
            FieldId::FlowFinal => flow.map_or(Value::Missing, |f| Value::Bool(f.is_final())),
            FieldId::FlowPrevBytesOut => {
                flow.map_or(Value::Missing, |f| Value::U64(f.prev_bytes_out))
            }
            FieldId::FlowPrevDuration => {
                flow.map_or(Value::Missing, |f| Value::U64(f.prev_duration_ns))
            }
            FieldId::FlowProcPeers => flow
                .filter(|f| f.proc_peers != 0)
                .map_or(Value::Missing, |f| Value::U64(u64::from(f.proc_peers))),
            FieldId::FlowRetransmits => flow
                .and_then(|f| f.retransmits)
                .map_or(Value::Missing, |n| Value::U64(u64::from(n))),
            FieldId::Pid => Value::U64(u64::from(a.tgid)),
            FieldId::Ppid if a.ppid != 0 => Value::U64(u64::from(a.ppid)),
            FieldId::Ppid => Value::Missing,
            FieldId::Tid => Value::U64(u64::from(a.tid)),
            FieldId::ProcName => Value::Str(a.comm.as_str()),
            FieldId::ProcExepath => opt_str(process.map(|p| &*p.exepath)),
            FieldId::ProcIsExeFromMemfd => opt_bool(process.and_then(|p| p.origin.from_memfd)),
            FieldId::ProcIsExeUpperLayer => opt_bool(process.and_then(|p| p.origin.upper_layer)),
            FieldId::ProcIsExeLowerLayer => opt_bool(process.and_then(|p| p.origin.lower_layer)),
            FieldId::ProcIsExeDeleted => opt_bool(process.and_then(|p| p.origin.deleted)),
            FieldId::ProcExe => opt_str(process.map(|p| &*p.exe)),
            FieldId::ProcCmdline => opt_str(process.map(|p| &*p.cmdline)),
            FieldId::ProcPname => opt_str(self.parent_name.as_deref()),
            FieldId::ProcArgs => opt_str(process.map(|p| &*p.args)),
            FieldId::Uid => Value::U64(u64::from(a.uid)),
            FieldId::Gid => Value::U64(u64::from(a.gid)),
            FieldId::UserName => opt_str(self.user_name.as_deref()),
            FieldId::ContainerId => opt_str(self.container_id()),
            FieldId::ContainerName => opt_str(meta.map(|m| m.name.as_str())),
            FieldId::ContainerImage => opt_str(meta.and_then(|m| m.image.as_deref())),
            FieldId::ContainerImageRepository => opt_str(
                meta.and_then(|m| m.image_ref.as_ref())
                    .map(|r| r.repository.as_str()),
            ),
            FieldId::ContainerImageTag => opt_str(
                meta.and_then(|m| m.image_ref.as_ref())
                    .and_then(|r| r.tag.as_deref()),
            ),
            FieldId::ContainerHostNetwork => self.host_network.map_or(Value::Missing, Value::Bool),
            FieldId::K8sNsName => opt_str(pod.and_then(|p| p.namespace.as_deref())),
            FieldId::K8sPodName => opt_str(pod.and_then(|p| p.name.as_deref())),
            FieldId::K8sPodUid => opt_str(pod.and_then(|p| p.uid.as_deref())),
            FieldId::K8sPodSa => opt_str(pod.and_then(|p| p.service_account.as_deref())),
            FieldId::K8sPodLabels => pod.map_or(Value::Missing, |p| Value::Labels(&p.labels)),
            FieldId::V4Mapped => Value::Bool(a.v4_mapped),
            FieldId::CgroupId => Value::U64(a.cgroup_id),
            FieldId::NetnsCookie => Value::U64(a.netns_cookie),
            FieldId::Action => Value::Str(crate::pipeline::decode::action_name(a.blocked)),
            FieldId::NewForWorkload => self.new_for_workload.map_or(Value::Missing, Value::Bool),
            FieldId::EvtNum => Value::U64(self.num),
            FieldId::EvtDir => Value::Str("<"),
            FieldId::EvtRes => Value::Str(CallResult::of(self).name()),
            FieldId::EvtRawres => Value::I64(CallResult::of(self).raw()),
            // socket(2)'s arguments for a socket creation, else the call's.
            FieldId::EvtArgs => match socket {
                Some(s) => Value::Str(&s.args),
                None => Value::Str(
                    self.args
                        .get_or_init(|| EvtArgs::new(CallResult::of(self), self.fd_name()))
                        .as_str(),
                ),
            },
            // The connect hooks run before the socket is connected; the
            // sendmsg hooks only for sends that name an address (an
            // unconnected send, in the kernel's terms).
            FieldId::FdConnected => Value::Bool(false),
            FieldId::FdNameChanged => Value::Bool(self.name_changed),
            FieldId::LoginUid => process.and_then(|p| p.session).map_or(Value::Missing, |s| {
                // Unset is (u32)-1, which Falco shows as -1.
                Value::I64(if s.loginuid == u32::MAX {
                    -1
                } else {
                    i64::from(s.loginuid)
                })
            }),
            FieldId::ProcTty => process
                .and_then(|p| p.session)
                .map_or(Value::Missing, |s| Value::U64(u64::from(s.tty))),
            FieldId::EvtArgDomain => opt_str(socket.and_then(|s| s.domain)),
            FieldId::EvtArgType => opt_str(socket.map(|s| s.sock_type.as_str())),
            FieldId::EvtArgProto => opt_str(socket.map(|s| s.proto.as_str())),
            FieldId::IpProto => Value::U64(u64::from(a.ip_protocol)),
            FieldId::SipName => opt_str(self.sip_name.as_deref()),
            FieldId::DnsQuery => opt_str(dns.map(|d| d.qname.as_str())),
            FieldId::DnsQtype => opt_str(dns.map(|d| d.qtype)),
            FieldId::DnsRcode => opt_str(dns.and_then(|d| d.rcode)),
            FieldId::DnsAnswers => opt_str(dns.map(|d| d.answers.as_str())),
            FieldId::DnsDirection => opt_str(dns.map(|d| d.direction.as_str())),
            FieldId::DnsResolver => dns.map_or(Value::Missing, |d| Value::Ip(d.resolver.ip())),
            FieldId::DnsParent => opt_str(dns.map(|d| d.parent.as_str())),
            FieldId::DnsLongestLabel => opt_u64(dns.map(|d| d.longest_label)),
            FieldId::DnsNameLen => opt_u64(dns.map(|d| d.name_len)),
            FieldId::DnsEntropy => opt_u64(dns.map(|d| d.entropy_x100)),
            FieldId::DnsParentSubdomains => opt_u64(dns.map(|d| d.parent_subdomains)),
            FieldId::DnsNxdomainRate => opt_u64(dns.map(|d| d.nxdomain)),
            FieldId::DnsTxtRate => opt_u64(dns.map(|d| d.txt_queries)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_name_fits_the_longest_address() {
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .unwrap();
        assert_eq!(FdName::new(longest).as_str(), longest.to_string());
        let v4: SocketAddr = "198.51.100.7:443".parse().unwrap();
        assert_eq!(FdName::new(v4).as_str(), "198.51.100.7:443");
        for v4 in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.20.100:8080",
            "1.2.3.4:9",
        ] {
            let addr: SocketAddr = v4.parse().unwrap();
            assert_eq!(FdName::new(addr).as_str(), v4);
        }
        for v6 in [
            "[::]:0",
            "[::1]:53",
            "[2001:db8::42]:443",
            "[::ffff:198.51.100.7]:80",
            "[2001:db8:0:1:0:0:0:1]:65535",
            "[fe80::1%2]:22",
        ] {
            let addr: SocketAddr = v6.parse().unwrap();
            assert_eq!(FdName::new(addr).as_str(), addr.to_string());
        }
    }

    #[test]
    fn evt_args_fit_the_longest_address() {
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .unwrap();
        let args = EvtArgs::new(CallResult::InProgress, &FdName::new(longest));
        assert_eq!(
            args.as_str(),
            format!("res=-115(EINPROGRESS) addr={longest}")
        );
        let v4: SocketAddr = "198.51.100.7:443".parse().unwrap();
        assert_eq!(
            EvtArgs::new(CallResult::Denied, &FdName::new(v4)).as_str(),
            "res=-1(EPERM) addr=198.51.100.7:443"
        );
        let longest_result = CallResult::Returned(i32::MIN);
        assert_eq!(
            EvtArgs::new(longest_result, &FdName::new(longest)).as_str(),
            format!("res=-2147483648(EUNKNOWN) addr={longest}")
        );
        assert_eq!(CallResult::Returned(-131).name(), "ENOTRECOVERABLE");
    }
}
