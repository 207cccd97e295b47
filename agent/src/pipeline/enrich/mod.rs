//! Enrich stage: keeps identity state current from the kernel's lifecycle
//! records and attaches it to each egress attempt. Records arrive in ring
//! buffer order, so an exec is always applied before the connects it made.
pub mod dns;
pub mod fields;
pub mod flow_owner;
pub mod names;
pub mod owner;
pub mod process;

use std::{collections::HashMap, sync::Arc};

use egret_common::Hook;
use tokio::sync::mpsc;

use crate::{
    identity::{
        IdentitySources,
        resolver::{ContainerLookup, Identity},
    },
    pipeline::decode::{CgroupOp, CgroupRecord, ConnectResult, EgressAttempt, Record},
};

/// What the enrich stage hands to the evaluate stage: the events of one
/// ring buffer batch and the connect results in it. A result always follows
/// its attempt in the ring buffer, so evaluating the events first keeps
/// that order.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub results: Vec<ConnectResult>,
}
use process::{ProcessCache, ProcessImage};

/// An egress attempt with everything known about who made it.
#[derive(Clone, Debug)]
pub struct Event {
    pub attempt: EgressAttempt,
    /// `fd.name`, formatted inline the first time a rule or output reads
    /// it ([`Event::fd_name`]): with the audit log off (the default) most
    /// events never need it.
    pub fd_name: std::cell::OnceCell<fields::FdName>,
    pub process: Option<Arc<ProcessImage>>,
    /// `proc.pname`.
    pub parent_name: Option<Arc<str>>,
    /// `user.name`, from the process's own /etc/passwd.
    pub user_name: Option<Arc<str>>,
    /// Cgroup path, container id and its metadata; `None` when identity
    /// resolution is off.
    pub identity: Option<Identity>,
    /// The container shares the host's network namespace (NetworkPolicy
    /// does not apply); `None` for host processes or when unknown.
    pub host_network: Option<bool>,
    /// `egret.dest.new_for_workload`; `None` without a baseline, outside
    /// pods, or while over the baseline's bounds.
    pub new_for_workload: Option<bool>,
    /// `evt.num`: this agent's event number, from 1.
    pub num: u64,
    /// `fd.name_changed`: the socket's destination differs from the one of
    /// its previous event (true on its first).
    pub name_changed: bool,
    /// `evt.args`, formatted inline the first time a rule or output reads
    /// it: few do, and `core::fmt` on every event cost as much as the rest
    /// of enrichment.
    pub args: std::cell::OnceCell<fields::EvtArgs>,
    /// `evt.arg.*` of a socket creation; `None` for sends and connects.
    pub socket: Option<Box<fields::SocketText>>,
    /// What the connect returned (0 or minus the errno), once its result
    /// arrived (`pipeline/pending.rs`); `None` at the attempt.
    pub result: Option<i32>,
    /// `fd.sip.name`: the name this workload resolved the destination
    /// from (observed DNS, never resolved by Egret).
    pub sip_name: Option<Arc<str>>,
    /// A DNS message (`evt.type = dns`); `None` for every other event.
    pub dns: Option<Box<dns::DnsFields>>,
}

impl Event {
    /// Records the call's result; `evt.args` is formatted again with it.
    pub fn set_result(&mut self, ret: i32) {
        self.result = Some(ret);
        self.args = std::cell::OnceCell::new();
    }

    /// `fd.name`: `ip:port` (`[ip]:port` for IPv6) of the destination.
    pub fn fd_name(&self) -> &fields::FdName {
        self.fd_name.get_or_init(|| {
            fields::FdName::new(std::net::SocketAddr::new(
                self.attempt.daddr,
                self.attempt.dport,
            ))
        })
    }

    /// `container.id`: 12 characters, `host` outside containers, `None`
    /// while the cgroup is unresolved.
    pub fn container_id(&self) -> Option<&str> {
        container_id_of(self.identity.as_ref())
    }
}

/// `container.id` of an identity (see [`Event::container_id`]).
fn container_id_of(identity: Option<&Identity>) -> Option<&str> {
    let identity = identity?;
    match (&identity.container, identity.container_id()) {
        (ContainerLookup::CgroupUnknown, _) => None,
        (ContainerLookup::Host, _) => Some("host"),
        (_, Some(id)) => Some(id.get(..12).unwrap_or(id)),
        (_, None) => None,
    }
}

/// The per-event caches' map: keys are kernel ids (pids, exec ids, cgroup
/// ids, socket cookies), hashed on every event. SipHash, std's default,
/// was a twentieth of an alerting event's cost; foldhash is several times
/// cheaper and still seeded per process, so a workload that picks its
/// pids or ports cannot aim collisions at a known hash function.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// User names are cached per (cgroup, uid): processes of one cgroup share a
/// root filesystem, and resolving per event would cost a stat each time.
const USER_CACHE_CAP: usize = 16_384;

/// (scope, IP) entries of the observed-DNS names cache.
pub const NAMES_CACHE_CAP: usize = 100_000;

/// Sockets whose last destination is remembered for `fd.name_changed`; the
/// map is cleared when full (a socket then counts as new once more).
const PEER_CACHE_CAP: usize = 65_536;

pub struct Enricher {
    pub processes: ProcessCache,
    identity: Option<IdentitySources>,
    user_names: FastMap<(u64, u32), Option<Arc<str>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    baseline: Option<crate::baseline::Baseline>,
    /// The last `evt.num` given out.
    events: u64,
    /// Socket cookie → last destination, for `fd.name_changed`.
    peers: FastMap<u64, (std::net::IpAddr, u16)>,
    /// Connect results of the current batch, passed on untouched.
    results: Vec<ConnectResult>,
    /// Socket cookie → connect-time process, for flow records; `None`
    /// when the kernel accounts no flows (then no connect is remembered).
    owners: Option<flow_owner::FlowOwners>,
    /// Observed DNS: names per (scope, IP), for `fd.sip.name`.
    pub names: names::NamesCache,
    pub dns: dns::DnsState,
}

/// Why an event went out with fields missing (`egret_enrichment_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrichFailure {
    /// No image for the process: its exec was not seen and /proc is gone.
    ProcessUnknown,
    /// The cgroup id could not be mapped to a path.
    CgroupUnknown,
    /// containerd metadata is being fetched.
    ContainerPending,
    /// containerd has no such container.
    ContainerNotFound,
    /// The fetch failed, timed out or could not be queued.
    ContainerUnavailable,
}

impl EnrichFailure {
    pub const ALL: [EnrichFailure; 5] = [
        EnrichFailure::ProcessUnknown,
        EnrichFailure::CgroupUnknown,
        EnrichFailure::ContainerPending,
        EnrichFailure::ContainerNotFound,
        EnrichFailure::ContainerUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnrichFailure::ProcessUnknown => "process_unknown",
            EnrichFailure::CgroupUnknown => "cgroup_unknown",
            EnrichFailure::ContainerPending => "container_pending",
            EnrichFailure::ContainerNotFound => "container_not_found",
            EnrichFailure::ContainerUnavailable => "container_unavailable",
        }
    }
}

impl Enricher {
    pub fn new(processes: ProcessCache, identity: Option<IdentitySources>) -> Enricher {
        Enricher {
            processes,
            identity,
            user_names: FastMap::default(),
            metrics: None,
            baseline: None,
            events: 0,
            peers: FastMap::default(),
            results: Vec::new(),
            owners: None,
            names: names::NamesCache::new(NAMES_CACHE_CAP),
            dns: dns::DnsState::default(),
        }
    }

    /// DNS ports besides 53, for joining DNS messages to their process.
    /// Joins flow records to their connects (only when the kernel's flow
    /// programs run: otherwise every connect would be remembered for
    /// nothing).
    pub fn with_flow_owners(mut self) -> Enricher {
        self.owners = Some(flow_owner::FlowOwners::default());
        self
    }

    pub fn with_dns_ports(mut self, ports: Vec<u16>) -> Enricher {
        self.dns = dns::DnsState::new(ports);
        self
    }

    /// Learns workloads' destinations and sets `egret.dest.new_for_workload`.
    pub fn with_baseline(mut self, baseline: crate::baseline::Baseline) -> Enricher {
        self.baseline = Some(baseline);
        self
    }

    /// Writes the baseline profile if it changed; `force` ignores the
    /// flush interval (shutdown).
    pub fn flush_baseline(&mut self, force: bool, last: &mut std::time::Instant) {
        let Some(baseline) = &mut self.baseline else {
            return;
        };
        if !force && last.elapsed() < baseline.config().flush_interval {
            return;
        }
        *last = std::time::Instant::now();
        use crate::logging::RateLimited;
        const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);
        static WRITE: RateLimited = RateLimited::new(MINUTE);
        static BOUNDS: RateLimited = RateLimited::new(MINUTE);
        if let Err(err) = baseline.flush() {
            crate::warn_limited!(WRITE, %err, "writing the baseline profile failed; retrying at the next flush");
        }
        let c = baseline.counters;
        if c.workloads_dropped + c.destinations_dropped > 0 {
            crate::warn_limited!(
                BOUNDS,
                workloads_dropped = c.workloads_dropped,
                destinations_dropped = c.destinations_dropped,
                "baseline bounds reached (baseline.max_workloads / max_destinations)"
            );
        }
    }

    /// Counts enrichment failures by reason in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Enricher {
        metrics.declare_enrichment_reasons();
        metrics.declare_cgroup_outcomes();
        self.metrics = Some(metrics);
        self
    }

    fn count_failures(&self, event: &Event) {
        let Some(metrics) = &self.metrics else { return };
        if event.process.is_none() {
            metrics.enrichment_failed(EnrichFailure::ProcessUnknown);
        }
        let Some(identity) = &event.identity else {
            return;
        };
        use crate::identity::container_cache::Unknown;
        let reason = match &identity.container {
            ContainerLookup::CgroupUnknown => EnrichFailure::CgroupUnknown,
            ContainerLookup::Unknown(Unknown::Pending) => EnrichFailure::ContainerPending,
            ContainerLookup::Unknown(Unknown::NotFound) => EnrichFailure::ContainerNotFound,
            ContainerLookup::Unknown(_) => EnrichFailure::ContainerUnavailable,
            _ => return,
        };
        metrics.enrichment_failed(reason);
    }

    /// Applies lifecycle records and enriches egress ones, in order.
    pub fn process_batch(&mut self, records: Vec<Record>, out: &mut Vec<Event>) {
        self.processes.begin_batch(std::time::Instant::now());
        for record in records {
            match record {
                Record::Exec(exec) => {
                    // The process is most likely still alive now, unlike
                    // when its connect is processed: resolve its cgroup and
                    // user while /proc/<pid> can still answer (a one-shot
                    // container's cgroup may be gone by its first connect).
                    if let Some(sources) = &self.identity {
                        sources.resolver.resolve(exec.cgroup_id, exec.tgid);
                    }
                    self.refresh_user_name(exec.cgroup_id, exec.uid, exec.tgid);
                    self.processes.on_exec(&exec);
                }
                Record::Cgroup(cgroup) => self.on_cgroup(&cgroup),
                Record::ConnectResult(result) => self.results.push(result),
                Record::Dns(record) => {
                    if let Some(event) = self.on_dns(*record) {
                        out.push(event);
                    }
                }
                Record::Egress(mut attempt) => {
                    if attempt.flow.is_some() {
                        let known = self
                            .owners
                            .as_mut()
                            .is_some_and(|owners| owners.attribute(&mut attempt));
                        if let (false, Some(metrics)) = (known, &self.metrics) {
                            metrics.flow_owner_unknown();
                        }
                    } else {
                        if let Some(owners) = &mut self.owners {
                            owners.observe(&attempt);
                        }
                        self.dns.note_attempt(&attempt);
                    }
                    let event = self.enrich(attempt);
                    self.count_failures(&event);
                    if let (Some(metrics), true) = (&self.metrics, event.attempt.flow.is_some()) {
                        metrics.observe_flow(&event);
                    }
                    out.push(event);
                }
            }
        }
    }

    /// The connect results [`process_batch`](Self::process_batch) collected.
    pub fn take_results(&mut self) -> Vec<ConnectResult> {
        std::mem::take(&mut self.results)
    }

    /// A cgroup's path is recorded at creation, ahead of any event from
    /// inside it, so a cgroup gone by the time its events are enriched is
    /// still named.
    fn on_cgroup(&self, cgroup: &CgroupRecord) {
        let Some(sources) = &self.identity else {
            return;
        };
        let paths = sources.resolver.cgroups();
        let outcome = match cgroup.op {
            CgroupOp::Mkdir => Some(paths.on_mkdir(cgroup.id, cgroup.path.as_deref())),
            CgroupOp::Rmdir => paths.on_rmdir(cgroup.id),
        };
        if let (Some(outcome), Some(metrics)) = (outcome, &self.metrics) {
            metrics.cgroup_record(outcome);
        }
    }

    fn enrich(&mut self, attempt: EgressAttempt) -> Event {
        let process = self.processes.lookup(attempt.tgid, attempt.exec_id);
        let parent_name = self.processes.name_of(attempt.ppid);
        let (identity, host_network) = match &self.identity {
            Some(sources) => {
                let mut identity = sources.resolver.resolve(attempt.cgroup_id, attempt.tgid);
                if identity.container == ContainerLookup::CgroupUnknown && attempt.ppid != 0 {
                    // The parent usually shares the cgroup; the resolver
                    // checks the inode, so a wrong guess is never accepted.
                    identity = sources.resolver.resolve(attempt.cgroup_id, attempt.ppid);
                }
                let in_container = !matches!(
                    identity.container,
                    ContainerLookup::Host | ContainerLookup::CgroupUnknown
                );
                let host_network =
                    in_container.then(|| sources.host_netns.is_host(attempt.netns_cookie));
                (Some(identity), host_network)
            }
            None => (None, None),
        };
        // Borrowed: the path is only read on a user-name cache miss, and
        // copying it cost an allocation per event.
        let cgroup_path = identity
            .as_ref()
            .and_then(|i| i.cgroup.as_deref())
            .map(|entry| &*entry.path);
        let user_name = self.user_name(attempt.cgroup_id, attempt.uid, attempt.tgid, cgroup_path);
        // Flow records repeat their connect's destination: learnt once.
        let has_destination = attempt.has_destination();
        let is_dns = matches!(attempt.hook, Hook::DnsQuery | Hook::DnsAnswer);
        // Flow records and DNS messages repeat the destination of the
        // connect or send that already taught the baseline.
        let repeats_destination = is_dns || attempt.flow.is_some();
        let sip_name = if has_destination && !is_dns {
            let scope = names::Scope::of(container_id_of(identity.as_ref()), attempt.cgroup_id);
            self.names.lookup(scope, attempt.daddr, attempt.mono_ns)
        } else {
            None
        };
        let new_for_workload = self.baseline.as_mut().and_then(|baseline| {
            // Socket creations have no destination to learn.
            if !has_destination || repeats_destination {
                return None;
            }
            let pod = identity
                .as_ref()
                .and_then(|i| i.metadata())
                .and_then(|m| m.pod.as_ref());
            // NetworkPolicy does not apply on the host network; neither do
            // workload baselines.
            if host_network == Some(true) {
                return None;
            }
            let proto = crate::advise::model::Proto::from_audit(attempt.l4proto.as_str());
            baseline
                .observe(
                    pod.and_then(|p| p.namespace.as_deref()),
                    pod.map(|p| &p.labels as &dyn egret_rules::Labels),
                    attempt.daddr,
                    attempt.dport,
                    proto,
                    attempt.wall_ns,
                )
                .field()
        });
        self.events += 1;
        let name_changed = self.name_changed(&attempt);
        Event {
            args: std::cell::OnceCell::new(),
            fd_name: std::cell::OnceCell::new(),
            num: self.events,
            name_changed,
            socket: attempt
                .socket
                .as_ref()
                .map(|args| Box::new(fields::SocketText::new(args))),
            attempt,
            process,
            parent_name,
            user_name,
            identity,
            host_network,
            new_for_workload,
            result: None,
            sip_name,
            dns: None,
        }
    }
}

impl Enricher {
    /// Whether the attempt's socket had another destination before (or
    /// none: its first event). Cookie 0 (none reported) is always new.
    fn name_changed(&mut self, attempt: &EgressAttempt) -> bool {
        let peer = (attempt.daddr, attempt.dport);
        if attempt.socket_cookie == 0 {
            return true;
        }
        if self.peers.len() >= PEER_CACHE_CAP && !self.peers.contains_key(&attempt.socket_cookie) {
            self.peers.clear();
        }
        self.peers.insert(attempt.socket_cookie, peer) != Some(peer)
    }

    /// `user.name` for `uid` as the processes of `cgroup_id` see it, from
    /// the cache. A miss is cached too: a uid without a name (arbitrary
    /// container UIDs) must not cost /proc and passwd reads per event. Only
    /// an exec in the cgroup, when a live process can answer, looks again.
    fn user_name(
        &mut self,
        cgroup_id: u64,
        uid: u32,
        tgid: u32,
        cgroup_path: Option<&str>,
    ) -> Option<Arc<str>> {
        match self.user_names.get(&(cgroup_id, uid)) {
            Some(cached) => cached.clone(),
            None => self.resolve_user_name(cgroup_id, uid, tgid, cgroup_path),
        }
    }

    /// At exec time the process is most likely alive: look again unless a
    /// name is already known.
    fn refresh_user_name(&mut self, cgroup_id: u64, uid: u32, tgid: u32) {
        if !matches!(self.user_names.get(&(cgroup_id, uid)), Some(Some(_))) {
            self.resolve_user_name(cgroup_id, uid, tgid, None);
        }
    }

    /// Looks the name up (see [`IdentitySources::user_name`]) and caches it.
    fn resolve_user_name(
        &mut self,
        cgroup_id: u64,
        uid: u32,
        tgid: u32,
        cgroup_path: Option<&str>,
    ) -> Option<Arc<str>> {
        let name = self.identity.as_ref()?.user_name(tgid, uid, cgroup_path);
        if self.user_names.len() >= USER_CACHE_CAP {
            self.user_names.clear();
        }
        self.user_names.insert((cgroup_id, uid), name.clone());
        name
    }
}

/// A bare connect event from 198.51.100.7:443, for other modules' tests.
#[cfg(test)]
pub(crate) fn test_event(hook: egret_common::Hook, socket_cookie: u64, tid: u32) -> Event {
    use crate::pipeline::decode::{Comm, L4Proto};
    let attempt = EgressAttempt {
        hook,
        mono_ns: 1,
        wall_ns: 1,
        tgid: tid,
        tid,
        uid: 0,
        gid: 0,
        comm: Comm::from_raw(*b"probe\0\0\0\0\0\0\0\0\0\0\0"),
        exec_id: 0,
        ppid: 0,
        cgroup_id: 1,
        netns_cookie: 1,
        socket_cookie,
        l4proto: L4Proto::Tcp,
        ip_protocol: 6,
        daddr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)),
        dport: 443,
        v4_mapped: false,
        blocked: None,
        socket: None,
        flow: None,
    };
    Enricher::new(ProcessCache::new("/nonexistent", 4), None).enrich(attempt)
}

pub async fn run(
    mut enricher: Enricher,
    mut rx: mpsc::Receiver<Vec<Record>>,
    tx: mpsc::Sender<Batch>,
) {
    let mut flushed = std::time::Instant::now();
    while let Some(records) = rx.recv().await {
        let mut events = Vec::with_capacity(records.len());
        enricher.process_batch(records, &mut events);
        enricher.flush_baseline(false, &mut flushed);
        let results = enricher.take_results();
        if (!events.is_empty() || !results.is_empty())
            && tx.send(Batch { events, results }).await.is_err()
        {
            break;
        }
    }
    enricher.flush_baseline(true, &mut flushed);
}

#[cfg(test)]
mod tests;
