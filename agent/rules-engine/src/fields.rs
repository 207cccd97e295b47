//! The field catalog: every field a rule may name, and what the agent must
//! supply for it.

/// A value the agent supplies per event. Several rule fields may read the same
/// id: `fd.sip`, `fd.rip`, `fd.snet`, `fd.rnet` and `fd.net` all read
/// [`FieldId::ServerIp`], because for an outbound connection the server is the
/// remote end. `fd.typechar` and `fd.type` are derived from `ServerIp` by the
/// engine, and `k8s.pod.label[key]` from `K8sPodLabels`.
///
/// The comment on each variant names the [`Value`](crate::Value) variant the
/// engine expects; any other variant is treated like `Missing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldId {
    /// `evt.type`: Str, `"connect"` or `"sendto"`.
    EvtType,
    /// `evt.time`: U64, nanoseconds since the Unix epoch.
    EvtTime,
    /// `evt.hook`, `egret.hook`: Str, `connect4|connect6|sendmsg4|sendmsg6`.
    Hook,
    /// `fd.sip`, `fd.rip` and the network fields: Ip, the destination.
    ServerIp,
    /// `fd.sport`, `fd.rport`: U64, the destination port.
    ServerPort,
    /// `fd.l4proto`: Str, `tcp|udp|icmp|raw`.
    L4Proto,
    /// `fd.name`: Str, `"ip:port"` of the destination.
    FdName,
    /// `fd.cip`, `fd.cnet`: Ip. Unknown at connect time, so normally Missing.
    ClientIp,
    /// `fd.cport`: U64. Unknown at connect time, so normally Missing.
    ClientPort,
    /// `proc.pid`: U64.
    Pid,
    /// `proc.ppid`: U64.
    Ppid,
    /// `thread.tid`: U64.
    Tid,
    /// `proc.name`: Str.
    ProcName,
    /// `proc.exepath`: Str.
    ProcExepath,
    /// `proc.exe`: Str.
    ProcExe,
    /// `proc.cmdline`: Str.
    ProcCmdline,
    /// `proc.pname`: Str.
    ProcPname,
    /// `proc.args`: Str.
    ProcArgs,
    /// `user.uid`: U64.
    Uid,
    /// `group.gid`: U64.
    Gid,
    /// `user.name`: Str.
    UserName,
    /// `container.id`: Str; `"host"` for processes outside containers, as in
    /// Falco (the built-in `container` macro relies on it).
    ContainerId,
    /// `container.name`: Str.
    ContainerName,
    /// `container.image`: Str.
    ContainerImage,
    /// `container.image.repository`: Str.
    ContainerImageRepository,
    /// `container.image.tag`: Str.
    ContainerImageTag,
    /// `container.host_network`: Bool.
    ContainerHostNetwork,
    /// `k8s.ns.name`: Str.
    K8sNsName,
    /// `k8s.pod.name`: Str.
    K8sPodName,
    /// `k8s.pod.uid`: Str.
    K8sPodUid,
    /// `k8s.pod.labels`: Labels.
    K8sPodLabels,
    /// `egret.v4_mapped`: Bool.
    V4Mapped,
    /// `egret.cgroup_id`: U64.
    CgroupId,
    /// `egret.netns_cookie`: U64.
    NetnsCookie,
    /// `egret.action`: Str, `observed`, or `blocked` when a quarantine
    /// denied the attempt.
    Action,
    /// `egret.dest.new_for_workload`: Bool, true for a destination outside
    /// the workload's learned baseline; Missing while it learns or when
    /// baselines are off.
    NewForWorkload,
    /// `evt.num`: U64, the agent's own event number (from 1, per run).
    EvtNum,
    /// `evt.dir`: Str, `<`: every Egret event stands for the call's exit
    /// event in Falco (the one carrying its result).
    EvtDir,
    /// `evt.res`: Str, `SUCCESS`, `EINPROGRESS` or the error name.
    EvtRes,
    /// `evt.rawres`: I64, 0, or minus the errno.
    EvtRawres,
    /// `evt.args`: Str, the call's arguments rendered as Falco does.
    EvtArgs,
    /// `fd.connected`: Bool, the socket was connected before the call.
    FdConnected,
    /// `fd.name_changed`: Bool, the socket's peer differs from its last one.
    FdNameChanged,
    /// `user.loginuid`: I64, the audit login uid; -1 when unset.
    LoginUid,
    /// `proc.tty`: U64, the controlling terminal's device number; 0 if none.
    ProcTty,
    /// `evt.arg.domain` (`evt.arg[domain]`): Str, socket(2)'s domain as Falco
    /// renders it (`AF_PACKET`); Missing for anything but `evt.type=socket`.
    EvtArgDomain,
    /// `evt.arg.type`: Str, socket(2)'s type in decimal (`3` for SOCK_RAW).
    EvtArgType,
    /// `evt.arg.proto`: Str, socket(2)'s protocol in decimal, as passed.
    EvtArgProto,
    /// `egret.ip_proto`: U64, the socket's IP protocol number (1 for a raw
    /// ICMP socket, whose `fd.l4proto` is `raw`); Missing for packet sockets.
    IpProto,
    /// `proc.is_exe_from_memfd`: Bool; Missing without the kernel's
    /// executable-file hook.
    ProcIsExeFromMemfd,
    /// `proc.is_exe_upper_layer`: Bool, the executable is in overlayfs's
    /// writable layer.
    ProcIsExeUpperLayer,
    /// `proc.is_exe_lower_layer`: Bool, in overlayfs's image layers.
    ProcIsExeLowerLayer,
    /// `proc.is_exe_deleted`: Bool, the executable was deleted.
    ProcIsExeDeleted,
    /// `flow.bytes_out`: U64, payload bytes sent so far (flow records, i.e.
    /// `evt.type = close`; Missing on attempts).
    FlowBytesOut,
    /// `flow.bytes_in`: U64, payload bytes received so far.
    FlowBytesIn,
    /// `flow.packets_out`: U64, segments (TCP) or datagrams (UDP) sent.
    FlowPacketsOut,
    /// `flow.packets_in`: U64, segments or datagrams received.
    FlowPacketsIn,
    /// `flow.duration`: U64, ns from the connect (TCP) or first datagram
    /// (UDP) to this record.
    FlowDuration,
    /// `flow.end`: Str, `closed|reset|refused|timed_out`, or `interim` for
    /// a report of a live flow.
    FlowEnd,
    /// `flow.final`: Bool, false on interim reports.
    FlowFinal,
    /// `flow.retransmits`: U64, TCP segments retransmitted (SYNs included);
    /// Missing for UDP.
    FlowRetransmits,
    /// `flow.prev_bytes_out`: U64, `flow.bytes_out` at the flow's previous
    /// record (0 on its first): `bytes_out >= N and prev_bytes_out < N`
    /// holds on exactly one record of a flow.
    FlowPrevBytesOut,
    /// `flow.prev_duration`: U64, `flow.duration` at the previous record.
    FlowPrevDuration,
    /// `flow.proc_peers`: U64, distinct destinations of the process's flows
    /// ended in the current minute; Missing on interim records.
    FlowProcPeers,
    /// `k8s.pod.sa`: Str, the pod's service account where the container's
    /// spec names it (legacy token Secret volumes); Missing otherwise.
    K8sPodSa,
    /// `fd.sip.name`, `fd.rip.name`: Str, the name the workload itself
    /// resolved the destination from (observed DNS); Missing when unknown.
    SipName,
    /// `egret.dns.query`: Str, the question's name (lower case, no dot).
    DnsQuery,
    /// `egret.dns.qtype`: Str, `A`, `AAAA`, `TXT`, `NULL`, ... or `OTHER`.
    DnsQtype,
    /// `egret.dns.rcode`: Str, `NOERROR`, `NXDOMAIN`, ...; Missing on queries.
    DnsRcode,
    /// `egret.dns.answers`: Str, addresses and aliases, comma-separated.
    DnsAnswers,
    /// `egret.dns.direction`: Str, `query` (sent) or `answer` (received).
    DnsDirection,
    /// `egret.dns.resolver`: Ip, the DNS server's address.
    DnsResolver,
    /// `egret.dns.parent`: Str, the query name's last two labels.
    DnsParent,
    /// `egret.dns.longest_label`: U64.
    DnsLongestLabel,
    /// `egret.dns.name_len`: U64, the query name's length.
    DnsNameLen,
    /// `egret.dns.entropy_x100`: U64, character entropy of the labels left
    /// of the parent, in hundredths of a bit.
    DnsEntropy,
    /// `egret.dns.parent_subdomains`: U64, distinct names under the parent
    /// this workload queried in the last minute.
    DnsParentSubdomains,
    /// `egret.dns.nxdomain_rate`: U64, NXDOMAIN answers in the last minute.
    DnsNxdomainRate,
    /// `egret.dns.txt_rate`: U64, TXT and NULL queries in the last minute.
    DnsTxtRate,
}

impl FieldId {
    pub const COUNT: usize = FieldId::DnsTxtRate as usize + 1;

    pub const ALL: [FieldId; FieldId::COUNT] = [
        FieldId::EvtType,
        FieldId::EvtTime,
        FieldId::Hook,
        FieldId::ServerIp,
        FieldId::ServerPort,
        FieldId::L4Proto,
        FieldId::FdName,
        FieldId::ClientIp,
        FieldId::ClientPort,
        FieldId::Pid,
        FieldId::Ppid,
        FieldId::Tid,
        FieldId::ProcName,
        FieldId::ProcExepath,
        FieldId::ProcExe,
        FieldId::ProcCmdline,
        FieldId::ProcPname,
        FieldId::ProcArgs,
        FieldId::Uid,
        FieldId::Gid,
        FieldId::UserName,
        FieldId::ContainerId,
        FieldId::ContainerName,
        FieldId::ContainerImage,
        FieldId::ContainerImageRepository,
        FieldId::ContainerImageTag,
        FieldId::ContainerHostNetwork,
        FieldId::K8sNsName,
        FieldId::K8sPodName,
        FieldId::K8sPodUid,
        FieldId::K8sPodLabels,
        FieldId::V4Mapped,
        FieldId::CgroupId,
        FieldId::NetnsCookie,
        FieldId::Action,
        FieldId::NewForWorkload,
        FieldId::EvtNum,
        FieldId::EvtDir,
        FieldId::EvtRes,
        FieldId::EvtRawres,
        FieldId::EvtArgs,
        FieldId::FdConnected,
        FieldId::FdNameChanged,
        FieldId::LoginUid,
        FieldId::ProcTty,
        FieldId::EvtArgDomain,
        FieldId::EvtArgType,
        FieldId::EvtArgProto,
        FieldId::IpProto,
        FieldId::ProcIsExeFromMemfd,
        FieldId::ProcIsExeUpperLayer,
        FieldId::ProcIsExeLowerLayer,
        FieldId::ProcIsExeDeleted,
        FieldId::FlowBytesOut,
        FieldId::FlowBytesIn,
        FieldId::FlowPacketsOut,
        FieldId::FlowPacketsIn,
        FieldId::FlowDuration,
        FieldId::FlowEnd,
        FieldId::FlowFinal,
        FieldId::FlowRetransmits,
        FieldId::FlowPrevBytesOut,
        FieldId::FlowPrevDuration,
        FieldId::FlowProcPeers,
        FieldId::K8sPodSa,
        FieldId::SipName,
        FieldId::DnsQuery,
        FieldId::DnsQtype,
        FieldId::DnsRcode,
        FieldId::DnsAnswers,
        FieldId::DnsDirection,
        FieldId::DnsResolver,
        FieldId::DnsParent,
        FieldId::DnsLongestLabel,
        FieldId::DnsNameLen,
        FieldId::DnsEntropy,
        FieldId::DnsParentSubdomains,
        FieldId::DnsNxdomainRate,
        FieldId::DnsTxtRate,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Fields that Falco fills from the call's exit (its return value): a
    /// rule whose condition reads one is only meaningful once the call has
    /// returned (the agent evaluates such rules when the result arrives).
    pub fn is_call_result(self) -> bool {
        matches!(
            self,
            FieldId::EvtRes | FieldId::EvtRawres | FieldId::EvtArgs
        )
    }
}

/// How the engine compares a field, which decides the operators allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    U64,
    I64,
    /// An address; unlike Falco, a CIDR literal compared with it is a network.
    Ip,
    /// Falco's network fields: the value is an address, matched against CIDRs.
    Net,
    Bool,
    Labels,
}

/// Where the engine reads a field from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Event(FieldId),
    /// `fd.typechar`: "4" or "6" from the destination address.
    TypeChar,
    /// `fd.type`: "ipv4" or "ipv6" from the destination address.
    FdType,
    /// `fd.sockfamily`: "ip" for the IPv4/IPv6 sockets the hooks see.
    SockFamily,
    /// A field with no source (`fd.cip.name`: the client end is local):
    /// always missing, so it renders `<NA>` and matches nothing.
    NotProvided,
    /// Either end of the connection (`fd.ip`, `fd.port`): a comparison
    /// holds if it holds for one of them, as in Falco.
    Either(FieldId, FieldId),
    /// One pod label, by key.
    Label(Box<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub src: Src,
    pub kind: Kind,
}

const LABEL_PREFIX: &str = "k8s.pod.label.";

fn catalog(name: &str) -> Option<(Src, Kind)> {
    use FieldId as F;
    let ev = |id| Src::Event(id);
    Some(match name {
        "evt.type" => (ev(F::EvtType), Kind::Str),
        "evt.time" => (ev(F::EvtTime), Kind::U64),
        "evt.hook" | "egret.hook" => (ev(F::Hook), Kind::Str),
        "fd.sip" | "fd.rip" => (ev(F::ServerIp), Kind::Ip),
        "fd.snet" | "fd.rnet" | "fd.net" => (ev(F::ServerIp), Kind::Net),
        "fd.sport" | "fd.rport" => (ev(F::ServerPort), Kind::U64),
        "fd.l4proto" => (ev(F::L4Proto), Kind::Str),
        "fd.lport" => (ev(F::ClientPort), Kind::U64),
        "fd.lip" => (ev(F::ClientIp), Kind::Ip),
        "fd.lnet" => (ev(F::ClientIp), Kind::Net),
        "fd.ip" => (Src::Either(F::ServerIp, F::ClientIp), Kind::Ip),
        "fd.port" => (Src::Either(F::ServerPort, F::ClientPort), Kind::U64),
        "fd.sockfamily" => (Src::SockFamily, Kind::Str),
        "fd.connected" => (ev(F::FdConnected), Kind::Bool),
        "fd.name_changed" => (ev(F::FdNameChanged), Kind::Bool),
        "fd.sip.name" | "fd.rip.name" => (ev(F::SipName), Kind::Str),
        "fd.cip.name" | "fd.lip.name" => (Src::NotProvided, Kind::Str),
        "egret.dns.query" => (ev(F::DnsQuery), Kind::Str),
        "egret.dns.qtype" => (ev(F::DnsQtype), Kind::Str),
        "egret.dns.rcode" => (ev(F::DnsRcode), Kind::Str),
        "egret.dns.answers" => (ev(F::DnsAnswers), Kind::Str),
        "egret.dns.direction" => (ev(F::DnsDirection), Kind::Str),
        "egret.dns.resolver" => (ev(F::DnsResolver), Kind::Ip),
        "egret.dns.parent" => (ev(F::DnsParent), Kind::Str),
        "egret.dns.longest_label" => (ev(F::DnsLongestLabel), Kind::U64),
        "egret.dns.name_len" => (ev(F::DnsNameLen), Kind::U64),
        "egret.dns.entropy_x100" => (ev(F::DnsEntropy), Kind::U64),
        "egret.dns.parent_subdomains" => (ev(F::DnsParentSubdomains), Kind::U64),
        "egret.dns.nxdomain_rate" => (ev(F::DnsNxdomainRate), Kind::U64),
        "egret.dns.txt_rate" => (ev(F::DnsTxtRate), Kind::U64),
        "evt.num" => (ev(F::EvtNum), Kind::U64),
        "evt.dir" => (ev(F::EvtDir), Kind::Str),
        "evt.res" => (ev(F::EvtRes), Kind::Str),
        "evt.rawres" => (ev(F::EvtRawres), Kind::I64),
        "evt.args" => (ev(F::EvtArgs), Kind::Str),
        "user.loginuid" => (ev(F::LoginUid), Kind::I64),
        "proc.tty" => (ev(F::ProcTty), Kind::U64),
        "fd.typechar" => (Src::TypeChar, Kind::Str),
        "fd.type" => (Src::FdType, Kind::Str),
        "fd.name" => (ev(F::FdName), Kind::Str),
        "fd.cip" => (ev(F::ClientIp), Kind::Ip),
        "fd.cnet" => (ev(F::ClientIp), Kind::Net),
        "fd.cport" => (ev(F::ClientPort), Kind::U64),
        "proc.pid" => (ev(F::Pid), Kind::U64),
        "proc.ppid" => (ev(F::Ppid), Kind::U64),
        "thread.tid" => (ev(F::Tid), Kind::U64),
        "proc.name" => (ev(F::ProcName), Kind::Str),
        "proc.exepath" => (ev(F::ProcExepath), Kind::Str),
        "proc.exe" => (ev(F::ProcExe), Kind::Str),
        "proc.cmdline" => (ev(F::ProcCmdline), Kind::Str),
        "proc.pname" => (ev(F::ProcPname), Kind::Str),
        "proc.args" => (ev(F::ProcArgs), Kind::Str),
        "proc.is_exe_from_memfd" => (ev(F::ProcIsExeFromMemfd), Kind::Bool),
        "proc.is_exe_upper_layer" => (ev(F::ProcIsExeUpperLayer), Kind::Bool),
        "proc.is_exe_lower_layer" => (ev(F::ProcIsExeLowerLayer), Kind::Bool),
        "proc.is_exe_deleted" => (ev(F::ProcIsExeDeleted), Kind::Bool),
        "user.uid" => (ev(F::Uid), Kind::U64),
        "group.gid" => (ev(F::Gid), Kind::U64),
        "user.name" => (ev(F::UserName), Kind::Str),
        "container.id" => (ev(F::ContainerId), Kind::Str),
        "container.name" => (ev(F::ContainerName), Kind::Str),
        "container.image" => (ev(F::ContainerImage), Kind::Str),
        "container.image.repository" => (ev(F::ContainerImageRepository), Kind::Str),
        "container.image.tag" => (ev(F::ContainerImageTag), Kind::Str),
        "container.host_network" => (ev(F::ContainerHostNetwork), Kind::Bool),
        "k8s.ns.name" => (ev(F::K8sNsName), Kind::Str),
        "k8s.pod.name" => (ev(F::K8sPodName), Kind::Str),
        "k8s.pod.uid" => (ev(F::K8sPodUid), Kind::Str),
        "k8s.pod.labels" => (ev(F::K8sPodLabels), Kind::Labels),
        "k8s.pod.sa" => (ev(F::K8sPodSa), Kind::Str),
        "egret.v4_mapped" => (ev(F::V4Mapped), Kind::Bool),
        "egret.cgroup_id" => (ev(F::CgroupId), Kind::U64),
        "egret.netns_cookie" => (ev(F::NetnsCookie), Kind::U64),
        "egret.action" => (ev(F::Action), Kind::Str),
        "egret.dest.new_for_workload" => (ev(F::NewForWorkload), Kind::Bool),
        "evt.arg.domain" => (ev(F::EvtArgDomain), Kind::Str),
        "evt.arg.type" => (ev(F::EvtArgType), Kind::Str),
        "evt.arg.proto" => (ev(F::EvtArgProto), Kind::Str),
        "egret.ip_proto" => (ev(F::IpProto), Kind::U64),
        "flow.bytes_out" => (ev(F::FlowBytesOut), Kind::U64),
        "flow.bytes_in" => (ev(F::FlowBytesIn), Kind::U64),
        "flow.packets_out" => (ev(F::FlowPacketsOut), Kind::U64),
        "flow.packets_in" => (ev(F::FlowPacketsIn), Kind::U64),
        "flow.duration" => (ev(F::FlowDuration), Kind::U64),
        "flow.end" => (ev(F::FlowEnd), Kind::Str),
        "flow.final" => (ev(F::FlowFinal), Kind::Bool),
        "flow.retransmits" => (ev(F::FlowRetransmits), Kind::U64),
        "flow.prev_bytes_out" => (ev(F::FlowPrevBytesOut), Kind::U64),
        "flow.prev_duration" => (ev(F::FlowPrevDuration), Kind::U64),
        "flow.proc_peers" => (ev(F::FlowProcPeers), Kind::U64),
        _ => return None,
    })
}

/// Why a field reference was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FieldError {
    /// Not in Egret's catalog: the rule is unsupported rather than wrong.
    #[error("field '{0}' is not provided by Egret")]
    Unknown(String),
    #[error("field '{0}' does not take an argument")]
    UnexpectedArg(String),
    #[error(
        "field 'k8s.pod.label' needs a label key, as in k8s.pod.label[app] or k8s.pod.label.app"
    )]
    MissingLabelKey,
    /// A `%` in an output not followed by a field name.
    #[error(
        "invalid formatting token '{0}': every '%' in an output starts a field, as in %proc.name"
    )]
    InvalidToken(String),
}

/// Resolves `name` or `name[arg]`.
pub(crate) fn lookup(name: &str, arg: Option<&str>) -> Result<Field, FieldError> {
    if name == "k8s.pod.label" {
        return match arg {
            Some(key) if !key.is_empty() => Ok(Field {
                src: Src::Label(key.into()),
                kind: Kind::Str,
            }),
            _ => Err(FieldError::MissingLabelKey),
        };
    }
    // Falco's `evt.arg[domain]` is `evt.arg.domain`.
    if name == "evt.arg"
        && let Some(arg) = arg
    {
        let (src, kind) = catalog(&format!("evt.arg.{arg}"))
            .ok_or_else(|| FieldError::Unknown(format!("evt.arg[{arg}]")))?;
        return Ok(Field { src, kind });
    }
    if let Some(key) = name.strip_prefix(LABEL_PREFIX) {
        if arg.is_some() {
            return Err(FieldError::UnexpectedArg(name.to_string()));
        }
        return Ok(Field {
            src: Src::Label(key.into()),
            kind: Kind::Str,
        });
    }
    let (src, kind) = catalog(name).ok_or_else(|| FieldError::Unknown(name.to_string()))?;
    if arg.is_some() {
        return Err(FieldError::UnexpectedArg(name.to_string()));
    }
    Ok(Field { src, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_complete_and_ordered() {
        for (i, id) in FieldId::ALL.iter().enumerate() {
            assert_eq!(id.index(), i);
        }
    }

    #[test]
    fn aliases_share_sources() {
        assert_eq!(
            lookup("fd.rip", None).unwrap().src,
            Src::Event(FieldId::ServerIp)
        );
        assert_eq!(lookup("fd.snet", None).unwrap().kind, Kind::Net);
        assert_eq!(
            lookup("egret.hook", None).unwrap().src,
            Src::Event(FieldId::Hook)
        );
    }

    #[test]
    fn socket_args_by_name_and_bracket() {
        for field in [
            lookup("evt.arg.domain", None),
            lookup("evt.arg", Some("domain")),
        ] {
            assert_eq!(field.unwrap().src, Src::Event(FieldId::EvtArgDomain));
        }
        assert!(matches!(
            lookup("evt.arg", Some("fd")),
            Err(FieldError::Unknown(_))
        ));
    }

    #[test]
    fn labels_by_key() {
        let both = [
            lookup("k8s.pod.label", Some("app")),
            lookup("k8s.pod.label.app", None),
        ];
        for field in both {
            assert_eq!(field.unwrap().src, Src::Label("app".into()));
        }
        assert_eq!(
            lookup("k8s.pod.label", None),
            Err(FieldError::MissingLabelKey)
        );
    }

    #[test]
    fn refuses_unknown_and_stray_args() {
        assert!(matches!(
            lookup("proc.ttty", None),
            Err(FieldError::Unknown(_))
        ));
        assert!(matches!(
            lookup("proc.aname", Some("2")),
            Err(FieldError::Unknown(_))
        ));
        assert!(matches!(
            lookup("proc.name", Some("1")),
            Err(FieldError::UnexpectedArg(_))
        ));
    }
}
