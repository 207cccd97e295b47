//! Output templates and fields configured outside rule files (Falco's
//! `append_output`), and the field catalogue with types and descriptions
//! for `egret rules fields`. Both reuse the rule output machinery, so an
//! extra field renders exactly as it would in a rule's output.
use std::sync::Arc;

use serde_json::Value as Json;

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::FieldId;
use crate::event::{Event, Value};
use crate::fields::{self, Kind, Src};
use crate::output::{self, Template};

/// A compiled `%field` template, for `extra_output` and `extra_fields`.
#[derive(Debug)]
pub struct OutputTemplate(Template);

/// Why a template or field name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

impl OutputTemplate {
    /// Every `%field` must be in the catalogue; the first unknown one is
    /// the error, naming its byte offset.
    pub fn parse(text: &str) -> Result<OutputTemplate, TemplateError> {
        let (template, bad) = output::parse(text);
        match bad.first() {
            Some(b) => Err(TemplateError(format!("at byte {}: {}", b.offset, b.error))),
            None => Ok(OutputTemplate(template)),
        }
    }

    /// One field by name (`k8s.pod.name`, `k8s.pod.label[app]`).
    pub fn field(name: &str) -> Result<OutputTemplate, TemplateError> {
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('%') {
            return Err(TemplateError(format!("`{name}` is not a field name")));
        }
        let t = OutputTemplate::parse(&format!("%{name}"))?;
        if t.0.keys().len() != 1 {
            return Err(TemplateError(format!("`{name}` is not a field name")));
        }
        Ok(t)
    }

    /// The text (`<NA>` for missing values) and each field's JSON value
    /// (`null` when missing).
    pub fn render<E: Event + ?Sized>(&self, event: &E) -> (String, Vec<(Arc<str>, Json)>) {
        self.0.render(event)
    }

    /// A one-field template's typed JSON value (`null` when missing)
    /// without rendering its text; any other template's text as a string.
    pub fn value<E: Event + ?Sized>(&self, event: &E) -> Json {
        self.0.value(event)
    }

    /// Field keys, in order of first use.
    pub fn keys(&self) -> &[Arc<str>] {
        self.0.keys()
    }
}

/// One catalogue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    pub name: &'static str,
    /// `string`, `uint64`, `ipaddr`, `ipnet`, `bool`, `labels`.
    pub kind: &'static str,
    pub description: &'static str,
}

/// Every field rules may name (aliases included), in catalogue order.
pub const FIELD_CATALOGUE: &[(&str, &str)] = &[
    (
        "evt.type",
        "The syscall: connect, sendto (sendmsg/sendmmsg report sendto), socket (a packet or raw socket was created), or close (a flow record: a connection's end or an interim report; only rules naming evt.type close see these).",
    ),
    (
        "evt.time",
        "Event time, nanoseconds since the Unix epoch (text: UTC time of day).",
    ),
    (
        "evt.hook",
        "Kernel hook that saw the attempt: connect4, connect6, sendmsg4, sendmsg6, raw_send4, raw_send6, socket_create.",
    ),
    ("egret.hook", "Alias of evt.hook."),
    (
        "fd.sip",
        "Destination (server) IP address; CIDR literals compare as networks.",
    ),
    (
        "fd.rip",
        "Alias of fd.sip (the remote end of an outbound connection).",
    ),
    ("fd.snet", "Destination address, matched against networks."),
    ("fd.rnet", "Alias of fd.snet."),
    ("fd.net", "Alias of fd.snet."),
    ("fd.sport", "Destination (server) port."),
    ("fd.rport", "Alias of fd.sport."),
    ("fd.l4proto", "Transport protocol: tcp, udp, icmp or raw."),
    (
        "fd.typechar",
        "4 or 6, from the destination address family.",
    ),
    (
        "fd.type",
        "ipv4 or ipv6, from the destination address family.",
    ),
    ("fd.name", "Destination as ip:port ([ip]:port for IPv6)."),
    (
        "fd.cip",
        "Client (local) IP; unknown at connect time (missing there), set on close events (flow records).",
    ),
    (
        "fd.cnet",
        "Client address, matched against networks; normally missing.",
    ),
    (
        "fd.cport",
        "Client (local) port; set on close events, missing at connect time.",
    ),
    (
        "fd.lport",
        "Local port (the client end of an outbound call); normally missing at connect time.",
    ),
    ("fd.lip", "Local IP (the client end); normally missing."),
    (
        "fd.lnet",
        "Local address, matched against networks; normally missing.",
    ),
    (
        "fd.ip",
        "Filter only: matches either end's IP (client or server), as in Falco; != means neither.",
    ),
    (
        "fd.port",
        "Filter only: matches either end's port (client or server), as in Falco.",
    ),
    (
        "fd.sockfamily",
        "Socket family: ip for the hooks' IPv4/IPv6 sockets.",
    ),
    (
        "fd.connected",
        "The socket was connected before the call: false for connects and for sends with an address.",
    ),
    (
        "fd.name_changed",
        "The socket's destination differs from its previous event's (true on its first).",
    ),
    (
        "fd.sip.name",
        "Server's DNS name as the workload itself resolved it (observed DNS answers, per container; never resolved by Egret); <NA> when unknown.",
    ),
    ("fd.cip.name", "Client's DNS name: always <NA>."),
    ("fd.rip.name", "Remote end's DNS name: same as fd.sip.name."),
    ("fd.lip.name", "Local end's DNS name: always <NA>."),
    ("evt.num", "Event number, counted by this agent from 1."),
    (
        "evt.dir",
        "Always <: an Egret event stands for the call's exit event in Falco.",
    ),
    (
        "evt.res",
        "What connect returned: SUCCESS, EINPROGRESS (non-blocking) or the error (ECONNREFUSED...); rules reading it wait for it (EINPROGRESS at connect_result_wait_ms); EPERM when a quarantine denied it.",
    ),
    (
        "evt.rawres",
        "Numeric result: 0, or minus the errno (-115 EINPROGRESS, -111 ECONNREFUSED, -1 EPERM).",
    ),
    (
        "evt.args",
        "The call's arguments: res=-111(ECONNREFUSED) addr=ip:port for connects and sends (the result as evt.res); domain=17(AF_PACKET) type=3 proto=768 for socket events.",
    ),
    (
        "user.loginuid",
        "Audit login uid of the process (/proc/PID/loginuid); -1 when unset.",
    ),
    (
        "proc.tty",
        "Controlling terminal's device number (/proc/PID/stat tty_nr); 0 without one.",
    ),
    ("proc.pid", "Process id (thread group id)."),
    ("proc.ppid", "Parent process id."),
    ("thread.tid", "Thread id."),
    ("proc.name", "Process name (comm, at most 15 bytes)."),
    (
        "proc.exepath",
        "Full path of the executable file the kernel runs (symlinks and /proc/self/fd resolved).",
    ),
    ("proc.exe", "argv[0] as the process started."),
    ("proc.cmdline", "Process name and arguments."),
    ("proc.pname", "Parent process name."),
    ("proc.args", "Arguments, without the process name."),
    (
        "proc.is_exe_from_memfd",
        "true if the executable is a memfd (fileless: memfd_create + fexecve).",
    ),
    (
        "proc.is_exe_upper_layer",
        "true if the executable is in the overlayfs upper (writable) layer: dropped or changed after the container started.",
    ),
    (
        "proc.is_exe_lower_layer",
        "true if the executable is in an overlayfs lower (image) layer.",
    ),
    (
        "proc.is_exe_deleted",
        "true if the executable file was deleted (memfds excluded).",
    ),
    ("user.uid", "User id."),
    ("group.gid", "Group id."),
    (
        "user.name",
        "User name, from the container's or the host's passwd.",
    ),
    (
        "container.id",
        "Container id (12 characters); host outside containers.",
    ),
    (
        "container.name",
        "Container name (Kubernetes container name under CRI).",
    ),
    ("container.image", "Image reference, repository:tag."),
    ("container.image.repository", "Image repository."),
    ("container.image.tag", "Image tag."),
    (
        "container.host_network",
        "Whether the container shares the host's network namespace.",
    ),
    ("k8s.ns.name", "Kubernetes namespace of the pod."),
    ("k8s.pod.name", "Kubernetes pod name."),
    ("k8s.pod.uid", "Kubernetes pod UID."),
    ("k8s.pod.labels", "All pod labels, (key:value,...)."),
    (
        "k8s.pod.sa",
        "The pod's service account, where the container's spec names it (legacy token Secret volumes); <NA> with projected tokens.",
    ),
    (
        "k8s.pod.label",
        "One pod label: k8s.pod.label[app] or k8s.pod.label.app.",
    ),
    (
        "egret.v4_mapped",
        "The destination was an IPv4-mapped IPv6 address.",
    ),
    ("egret.cgroup_id", "cgroup v2 id of the process."),
    (
        "egret.netns_cookie",
        "Network namespace cookie of the socket.",
    ),
    (
        "egret.action",
        "observed, or blocked when a quarantine denied the attempt (docs/quarantine.md).",
    ),
    (
        "egret.dest.new_for_workload",
        "The destination is outside the workload's learned baseline; <NA> while it learns or with baselines off.",
    ),
    (
        "evt.arg.domain",
        "socket events: the domain as Falco renders it (AF_PACKET, AF_INET, AF_INET6); also evt.arg[domain].",
    ),
    (
        "evt.arg.type",
        "socket events: the socket type in decimal (3 is SOCK_RAW).",
    ),
    (
        "evt.arg.proto",
        "socket events: the protocol in decimal, as passed (768 is ETH_P_ALL for AF_PACKET).",
    ),
    (
        "egret.ip_proto",
        "IP protocol number of the socket (1 for a raw ICMP socket, whose fd.l4proto is raw).",
    ),
    (
        "flow.bytes_out",
        "close events: payload bytes sent since the flow started (TCP: acknowledged by the peer; UDP: datagram payload).",
    ),
    (
        "flow.bytes_in",
        "close events: payload bytes received since the flow started.",
    ),
    (
        "flow.packets_out",
        "close events: TCP segments (handshake and ACKs included) or UDP datagrams sent.",
    ),
    (
        "flow.packets_in",
        "close events: TCP segments or UDP datagrams received.",
    ),
    (
        "flow.duration",
        "close events: nanoseconds from the connect (UDP: first datagram) to this record.",
    ),
    (
        "flow.end",
        "close events: closed, reset, refused, timed_out, or interim (a live flow's periodic report).",
    ),
    (
        "flow.final",
        "close events: false on interim reports, true at the flow's end.",
    ),
    (
        "flow.retransmits",
        "close events: TCP segments retransmitted (SYNs included); <NA> for UDP.",
    ),
    (
        "flow.prev_bytes_out",
        "close events: flow.bytes_out at the flow's previous record (0 on its first), so a threshold rule fires on one record.",
    ),
    (
        "flow.prev_duration",
        "close events: flow.duration at the flow's previous record (0 on its first).",
    ),
    (
        "flow.proc_peers",
        "close events at a flow's end: distinct destinations of the process's flows ended in the current minute (this one included).",
    ),
    (
        "egret.dns.query",
        "evt.type=dns: the question's name, lower case, without the trailing dot.",
    ),
    (
        "egret.dns.qtype",
        "evt.type=dns: the question's type: A, AAAA, TXT, NULL, CNAME, MX, ... or OTHER.",
    ),
    (
        "egret.dns.rcode",
        "evt.type=dns answers: the response code (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...); <NA> on queries.",
    ),
    (
        "egret.dns.answers",
        "evt.type=dns answers: addresses and CNAME targets, comma-separated (at most 8).",
    ),
    (
        "egret.dns.direction",
        "evt.type=dns: query (the socket sent it) or answer (the socket received it).",
    ),
    (
        "egret.dns.resolver",
        "evt.type=dns: the DNS server's address (also fd.sip).",
    ),
    (
        "egret.dns.parent",
        "evt.type=dns: the query name's last two labels (t.example of aGVsbG8.x7f.t.example).",
    ),
    (
        "egret.dns.longest_label",
        "evt.type=dns: length of the query name's longest label.",
    ),
    (
        "egret.dns.name_len",
        "evt.type=dns: length of the query name.",
    ),
    (
        "egret.dns.entropy_x100",
        "evt.type=dns: Shannon entropy of the characters left of the parent domain, in hundredths of a bit (base64 data ~450-600; words ~300).",
    ),
    (
        "egret.dns.parent_subdomains",
        "evt.type=dns queries: distinct names under egret.dns.parent this container (or the host) queried in the last minute.",
    ),
    (
        "egret.dns.nxdomain_rate",
        "evt.type=dns: NXDOMAIN answers this container (or the host) received in the last minute.",
    ),
    (
        "egret.dns.txt_rate",
        "evt.type=dns: TXT and NULL queries this container (or the host) sent in the last minute.",
    ),
];

/// The catalogue with each field's type, as the engine compiles it.
pub fn field_catalogue() -> Vec<FieldInfo> {
    FIELD_CATALOGUE
        .iter()
        .map(|(name, description)| {
            let resolved = if *name == "k8s.pod.label" {
                fields::lookup(name, Some("app"))
            } else {
                fields::lookup(name, None)
            };
            let kind = match resolved.map(|f| f.kind) {
                Ok(Kind::Str) => "string",
                Ok(Kind::U64) => "uint64",
                Ok(Kind::I64) => "int64",
                Ok(Kind::Ip) => "ipaddr",
                Ok(Kind::Net) => "ipnet",
                Ok(Kind::Bool) => "bool",
                Ok(Kind::Labels) => "labels",
                Err(_) => "unknown",
            };
            FieldInfo {
                name,
                kind,
                description,
            }
        })
        .collect()
}

/// An owned field value: what [`JsonEvent`] (and the test-only
/// `TestEvent`) store per field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OwnedValue {
    #[default]
    Missing,
    Str(String),
    U64(u64),
    I64(i64),
    Ip(IpAddr),
    Bool(bool),
    Labels(BTreeMap<String, String>),
}

impl OwnedValue {
    /// The borrowed [`Value`] the engine evaluates.
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Missing => Value::Missing,
            OwnedValue::Str(s) => Value::Str(s),
            OwnedValue::U64(n) => Value::U64(*n),
            OwnedValue::I64(n) => Value::I64(*n),
            OwnedValue::Ip(ip) => Value::Ip(*ip),
            OwnedValue::Bool(b) => Value::Bool(*b),
            OwnedValue::Labels(map) => Value::Labels(map),
        }
    }
}

/// An event read from JSON (see [`event_from_json`]); fields not given are
/// missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonEvent {
    values: Vec<OwnedValue>,
}

impl Event for JsonEvent {
    fn value(&self, field: FieldId) -> Value<'_> {
        self.values
            .get(field.index())
            .map_or(Value::Missing, OwnedValue::as_value)
    }
}

/// An event from JSON keyed by field names: an audit log line, an alert's
/// `output_fields`, or a hand-written sample (`egret rules test`). Keys
/// that are no field (`time`, `rule`) are returned, not refused, so an
/// audit line loads as is; a value of the wrong type is an error.
pub fn event_from_json(
    map: &serde_json::Map<String, Json>,
) -> Result<(JsonEvent, Vec<String>), TemplateError> {
    let mut event = JsonEvent {
        values: vec![OwnedValue::Missing; FieldId::COUNT],
    };
    let mut ignored = Vec::new();
    for (key, value) in map {
        if value.is_null() {
            continue;
        }
        let Ok(field) = fields::lookup(key, None) else {
            ignored.push(key.clone());
            continue;
        };
        let Src::Event(id) = field.src else {
            // Derived fields (fd.type, pod label shortcuts) follow from others.
            ignored.push(key.clone());
            continue;
        };
        let bad = |want: &str| TemplateError(format!("{key}: expected {want}, got {value}"));
        let owned = match (field.kind, value) {
            (Kind::Str, Json::String(s)) => OwnedValue::Str(s.clone()),
            (Kind::U64, Json::Number(n)) => {
                OwnedValue::U64(n.as_u64().ok_or_else(|| bad("an unsigned integer"))?)
            }
            (Kind::U64, Json::String(s)) => {
                OwnedValue::U64(s.parse().map_err(|_| bad("an unsigned integer"))?)
            }
            (Kind::I64, Json::Number(n)) => {
                OwnedValue::I64(n.as_i64().ok_or_else(|| bad("an integer"))?)
            }
            (Kind::I64, Json::String(s)) => {
                OwnedValue::I64(s.parse().map_err(|_| bad("an integer"))?)
            }
            (Kind::Ip | Kind::Net, Json::String(s)) => {
                OwnedValue::Ip(s.parse().map_err(|_| bad("an IP address"))?)
            }
            (Kind::Bool, Json::Bool(b)) => OwnedValue::Bool(*b),
            (Kind::Labels, Json::Object(labels)) => OwnedValue::Labels(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
            ),
            (Kind::Str, _) => return Err(bad("a string")),
            (Kind::U64, _) => return Err(bad("an unsigned integer")),
            (Kind::I64, _) => return Err(bad("an integer")),
            (Kind::Ip | Kind::Net, _) => return Err(bad("an IP address string")),
            (Kind::Bool, _) => return Err(bad("true or false")),
            (Kind::Labels, _) => return Err(bad("an object of labels")),
        };
        if let Some(slot) = event.values.get_mut(id.index()) {
            *slot = owned;
        }
    }
    Ok((event, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEvent;

    #[test]
    fn catalogue_resolves_and_covers_every_field_id() {
        let cat = field_catalogue();
        for f in &cat {
            assert_ne!(f.kind, "unknown", "{} is not a field", f.name);
            assert!(!f.description.is_empty());
        }
        for id in FieldId::ALL {
            let covered = cat
                .iter()
                .any(|f| fields::lookup(f.name, None).map(|x| x.src) == Ok(fields::Src::Event(id)));
            assert!(covered, "{id:?} has no catalogue entry");
        }
    }

    #[test]
    fn events_load_from_audit_json() {
        let v: Json = serde_json::json!({
            "time": "2026-01-01T00:00:00Z",
            "evt.type": "connect",
            "fd.sip": "203.0.113.7",
            "fd.sport": 443,
            "container.id": "0123456789ab",
            "k8s.pod.labels": {"app": "web"},
            "user.name": null
        });
        let (ev, ignored) = event_from_json(v.as_object().unwrap()).unwrap();
        assert_eq!(ignored, ["time"]);
        let t = OutputTemplate::parse("%fd.name %fd.sip:%fd.sport %k8s.pod.label[app]").unwrap();
        assert_eq!(t.render(&ev).0, "<NA> 203.0.113.7:443 web");
        let bad: Json = serde_json::json!({"fd.sport": "https"});
        let err = event_from_json(bad.as_object().unwrap()).unwrap_err();
        assert!(err.to_string().contains("fd.sport"), "{err}");
    }

    #[test]
    fn templates_render_like_rule_outputs() {
        let ev = TestEvent::connect("203.0.113.7".parse().unwrap(), 443).in_pod(
            "shop",
            "web-1",
            "nginx:1.27",
        );
        let t = OutputTemplate::parse("pod=%k8s.pod.name ns=%k8s.ns.name").unwrap();
        let (text, json) = t.render(&ev);
        assert_eq!(text, "pod=web-1 ns=shop");
        assert_eq!(json[0].0.as_ref(), "k8s.pod.name");
        let f = OutputTemplate::field("container.image.repository").unwrap();
        assert_eq!(f.render(&ev).1[0].1, Json::String("nginx".into()));
        assert!(OutputTemplate::field("proc.sname").is_err());
        assert!(OutputTemplate::field("a b").is_err());
        assert!(OutputTemplate::parse("x=%nope.field").is_err());
    }
}
