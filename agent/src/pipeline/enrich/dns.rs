//! DNS events (`evt.type = dns`) and what enrichment derives for them:
//! the process behind a DNS socket (joined by socket cookie from the
//! connect or send that preceded the message), the tunnelling measures of
//! the query name, and per-scope windowed rates (distinct subdomains under
//! one parent domain, NXDOMAIN answers, TXT/NULL queries).
//!
//! Memory is bounded: [`MAX_SCOPES`] scopes, [`MAX_PARENTS`] parent
//! domains per scope (the quietest is evicted for a new one, so an
//! attacker cannot hide a tunnel behind 256 decoy domains for long), and
//! at most [`MAX_DISTINCT`] distinct names counted per parent and window
//! (the count saturates there, which is far above any threshold).
use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
};

use super::{Event, names::Scope, owner::SocketOwner};
use crate::pipeline::decode::{
    Comm, DnsDirection, DnsMessage, DnsRecord, EgressAttempt, L4Proto,
    dns::{AnswerData, NameShape, qtype_name, rcode_name},
};

pub const WINDOW_NS: u64 = 60_000_000_000;
pub const MAX_SCOPES: usize = 4096;
pub const MAX_PARENTS: usize = 256;
pub const MAX_DISTINCT: usize = 4096;
/// Sockets whose owner is remembered for joining DNS messages.
const MAX_SOCKETS: usize = 16_384;
/// Answers rendered into `dns.answers`.
const MAX_RENDERED_ANSWERS: usize = 8;

/// What a rule sees of one DNS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsFields {
    pub direction: DnsDirection,
    pub qname: String,
    pub qtype: &'static str,
    /// `None` for queries.
    pub rcode: Option<&'static str>,
    /// Addresses and aliases, comma-separated, in answer order.
    pub answers: String,
    pub resolver: SocketAddr,
    /// The last two labels (`t.example` of `aGVsbG8.x7f.t.example`).
    pub parent: String,
    pub longest_label: u64,
    pub name_len: u64,
    /// Shannon entropy of the characters left of the parent, in hundredths
    /// of a bit per character (base64 ~ 500-600, English words ~ 300-400).
    pub entropy_x100: u64,
    /// Distinct names under `parent` this scope queried in the last window.
    pub parent_subdomains: u64,
    /// NXDOMAIN answers this scope received in the last window.
    pub nxdomain: u64,
    /// TXT and NULL queries this scope sent in the last window.
    pub txt_queries: u64,
}

/// Two tumbling windows; a rate is the current one plus the part of the
/// previous one the sliding window still covers.
#[derive(Debug, Default)]
struct Windowed {
    cur: u64,
    prev: u64,
}

impl Windowed {
    fn rotate(&mut self, windows: u64) {
        self.prev = if windows == 1 { self.cur } else { 0 };
        self.cur = 0;
    }

    fn rate(&self, into_window_ns: u64) -> u64 {
        let left = WINDOW_NS.saturating_sub(into_window_ns);
        self.cur + self.prev * left / WINDOW_NS
    }
}

#[derive(Debug, Default)]
struct Parent {
    names: HashSet<u64>,
    prev: u64,
}

#[derive(Debug, Default)]
struct ScopeStats {
    window_start_ns: u64,
    parents: HashMap<String, Parent>,
    nxdomain: Windowed,
    txt: Windowed,
}

impl ScopeStats {
    fn advance(&mut self, now_ns: u64) {
        if now_ns < self.window_start_ns + WINDOW_NS {
            return;
        }
        let windows = (now_ns - self.window_start_ns) / WINDOW_NS;
        self.window_start_ns += windows * WINDOW_NS;
        self.nxdomain.rotate(windows);
        self.txt.rotate(windows);
        self.parents.retain(|_, p| {
            p.prev = if windows == 1 {
                p.names.len() as u64
            } else {
                0
            };
            p.names.clear();
            p.prev > 0
        });
    }
}

#[derive(Default)]
pub struct DnsState {
    /// Extra DNS ports (53 is always one).
    ports: Vec<u16>,
    sockets: HashMap<u64, SocketOwner>,
    scopes: HashMap<Scope, ScopeStats>,
    /// Times the scope table was full and reset (counted in metrics).
    pub scope_resets: u64,
}

impl DnsState {
    pub fn new(ports: Vec<u16>) -> DnsState {
        DnsState {
            ports,
            ..DnsState::default()
        }
    }

    fn is_dns_port(&self, port: u16) -> bool {
        port == 53 || self.ports.contains(&port)
    }

    /// Remembers who owns a socket that talks to a DNS port.
    pub fn note_attempt(&mut self, a: &EgressAttempt) {
        if a.socket_cookie == 0 || !a.has_destination() || !self.is_dns_port(a.dport) {
            return;
        }
        if self.sockets.len() >= MAX_SOCKETS && !self.sockets.contains_key(&a.socket_cookie) {
            // A socket then reports no process until its next connect.
            self.sockets.clear();
        }
        self.sockets.insert(a.socket_cookie, SocketOwner::of(a));
    }

    /// Fills the process fields of a DNS attempt from its socket's owner.
    pub fn join_owner(&self, a: &mut EgressAttempt) {
        if let Some(owner) = self.sockets.get(&a.socket_cookie) {
            owner.apply(a);
        }
    }

    /// The fields of one message, updating the scope's windows.
    pub fn fields(
        &mut self,
        scope: Scope,
        direction: DnsDirection,
        resolver: SocketAddr,
        m: &DnsMessage,
        now_ns: u64,
    ) -> DnsFields {
        let shape = NameShape::of(&m.qname);
        if self.scopes.len() >= MAX_SCOPES && !self.scopes.contains_key(&scope) {
            self.scopes.clear();
            self.scope_resets += 1;
        }
        let stats = self.scopes.entry(scope).or_insert_with(|| ScopeStats {
            window_start_ns: now_ns,
            ..ScopeStats::default()
        });
        stats.advance(now_ns);
        let into = now_ns.saturating_sub(stats.window_start_ns);
        let mut parent_subdomains = 0;
        match direction {
            DnsDirection::Query => {
                if matches!(m.qtype, 10 | 16) {
                    stats.txt.cur += 1;
                }
                if !shape.parent.is_empty() {
                    parent_subdomains = count_subdomain(stats, &shape.parent, &m.qname, into);
                }
            }
            DnsDirection::Answer => {
                if m.rcode == 3 {
                    stats.nxdomain.cur += 1;
                }
            }
        }
        DnsFields {
            direction,
            qname: m.qname.clone(),
            qtype: qtype_name(m.qtype),
            rcode: (direction == DnsDirection::Answer).then(|| rcode_name(m.rcode)),
            answers: render_answers(m),
            resolver,
            parent: shape.parent,
            longest_label: shape.longest_label,
            name_len: m.qname.len() as u64,
            entropy_x100: shape.entropy_x100,
            parent_subdomains,
            nxdomain: stats.nxdomain.rate(into),
            txt_queries: stats.txt.rate(into),
        }
    }
}

fn count_subdomain(stats: &mut ScopeStats, parent: &str, qname: &str, into: u64) -> u64 {
    if !stats.parents.contains_key(parent) && stats.parents.len() >= MAX_PARENTS {
        // The quietest parent makes room.
        if let Some(quiet) = stats
            .parents
            .iter()
            .min_by_key(|(_, p)| p.names.len() as u64 + p.prev)
            .map(|(k, _)| k.clone())
        {
            stats.parents.remove(&quiet);
        }
    }
    let entry = stats.parents.entry(parent.to_string()).or_default();
    if entry.names.len() < MAX_DISTINCT {
        let mut h = DefaultHasher::new();
        qname.hash(&mut h);
        entry.names.insert(h.finish());
    }
    let left = WINDOW_NS.saturating_sub(into);
    entry.names.len() as u64 + entry.prev * left / WINDOW_NS
}

fn render_answers(m: &DnsMessage) -> String {
    let mut out = String::new();
    for a in m.answers.iter().take(MAX_RENDERED_ANSWERS) {
        let text = match &a.data {
            AnswerData::Addr(ip) => ip.to_string(),
            AnswerData::Cname(name) => name.clone(),
            AnswerData::Other(_) => continue,
        };
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&text);
    }
    out
}

impl super::Enricher {
    /// A DNS message: answers teach the names cache; every parsed message
    /// becomes a `dns` event. Malformed ones are counted, not evaluated.
    pub(super) fn on_dns(&mut self, record: DnsRecord) -> Option<Event> {
        let message = match record.message {
            Ok(message) => message,
            Err(reason) => {
                if let Some(metrics) = &self.metrics {
                    metrics.dns.malformed(reason);
                }
                return None;
            }
        };
        let mut attempt = EgressAttempt {
            hook: record.hook,
            mono_ns: record.mono_ns,
            wall_ns: record.wall_ns,
            tgid: 0,
            tid: 0,
            uid: 0,
            gid: 0,
            comm: Comm::from_raw([0; 16]),
            exec_id: 0,
            ppid: 0,
            cgroup_id: record.cgroup_id,
            netns_cookie: 0,
            socket_cookie: record.socket_cookie,
            l4proto: if record.tcp {
                L4Proto::Tcp
            } else {
                L4Proto::Udp
            },
            ip_protocol: if record.tcp { 6 } else { 17 },
            daddr: record.remote.ip(),
            dport: record.remote.port(),
            v4_mapped: false,
            blocked: None,
            socket: None,
            flow: None,
        };
        self.dns.join_owner(&mut attempt);
        let mut event = self.enrich(attempt);
        let scope = Scope::of(event.container_id(), record.cgroup_id);
        if record.direction == DnsDirection::Answer {
            self.names.learn(scope, &message, record.mono_ns);
        }
        let fields = self.dns.fields(
            scope,
            record.direction,
            record.remote,
            &message,
            record.mono_ns,
        );
        if let Some(metrics) = &self.metrics {
            let ns = event
                .identity
                .as_ref()
                .and_then(|i| i.metadata())
                .and_then(|m| m.pod.as_ref())
                .and_then(|p| p.namespace.as_deref());
            metrics.dns.message(record.direction, ns, &fields.parent);
            metrics
                .dns
                .names_cache(self.names.stats(), self.dns.scope_resets);
        }
        event.dns = Some(Box::new(fields));
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(qname: &str, qtype: u16) -> DnsMessage {
        DnsMessage {
            id: 1,
            response: false,
            rcode: 0,
            qname: qname.into(),
            qtype,
            answers: vec![],
        }
    }

    fn resolver() -> SocketAddr {
        "10.96.0.10:53".parse().unwrap()
    }

    #[test]
    fn name_shape() {
        let s = NameShape::of("agvsbg8gd29ybgq.x7f.t.example");
        assert_eq!(s.parent, "t.example");
        assert_eq!(s.longest_label, 15);
        assert!(s.entropy_x100 > 300, "{s:?}");
        let plain = NameShape::of("www.example");
        assert_eq!(
            (plain.parent.as_str(), plain.entropy_x100),
            ("www.example", 0)
        );
        assert_eq!(NameShape::of("").parent, "");
    }

    #[test]
    fn distinct_subdomains_per_parent_and_window() {
        let mut st = DnsState::new(vec![]);
        let scope = Scope::HOST;
        let mut last = 0;
        for i in 0..200 {
            let q = query(&format!("s{i}.t.example"), 1);
            last = st
                .fields(scope, DnsDirection::Query, resolver(), &q, i * 1_000_000)
                .parent_subdomains;
        }
        assert_eq!(last, 200);
        // The same name again is not a new subdomain.
        let again = st.fields(
            scope,
            DnsDirection::Query,
            resolver(),
            &query("s1.t.example", 1),
            300_000_000,
        );
        assert_eq!(again.parent_subdomains, 200);
        // Another scope has its own count.
        let other = st.fields(
            Scope::of(Some("cccccccccccc"), 0),
            DnsDirection::Query,
            resolver(),
            &query("s1.t.example", 1),
            1,
        );
        assert_eq!(other.parent_subdomains, 1);
        // Two windows later everything has aged out.
        let later = st.fields(
            scope,
            DnsDirection::Query,
            resolver(),
            &query("z.t.example", 1),
            3 * WINDOW_NS,
        );
        assert_eq!(later.parent_subdomains, 1);
    }

    #[test]
    fn nxdomain_and_txt_rates() {
        let mut st = DnsState::new(vec![]);
        for i in 0..10 {
            let mut nx = query("gone.example", 1);
            nx.response = true;
            nx.rcode = 3;
            let f = st.fields(Scope::HOST, DnsDirection::Answer, resolver(), &nx, i);
            assert_eq!(f.nxdomain, i + 1);
            assert_eq!(f.rcode, Some("NXDOMAIN"));
            let t = st.fields(
                Scope::HOST,
                DnsDirection::Query,
                resolver(),
                &query("t.example", 16),
                i,
            );
            assert_eq!((t.txt_queries, t.qtype), (i + 1, "TXT"));
        }
    }

    #[test]
    fn parents_are_bounded() {
        let mut st = DnsState::new(vec![]);
        for i in 0..(MAX_PARENTS as u64 * 3) {
            let q = query(&format!("a.p{i}.example{i}"), 1);
            st.fields(Scope::HOST, DnsDirection::Query, resolver(), &q, i);
        }
        assert!(st.scopes[&Scope::HOST].parents.len() <= MAX_PARENTS);
    }
}
