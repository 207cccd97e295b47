//! Audit sink: one JSON object per egress attempt and per flow record
//! (`evt.type` = close: a connection's end, or an interim report), Falco
//! field names where Falco has them and `egret.*`/`flow.*` for what it
//! lacks. Every line carries `egret.audit_schema` ([`AUDIT_SCHEMA`]); the
//! schema is documented in docs/configuration.md#audit-log-schema.
//!
//! The audit log is a record, not the detector: when it cannot be written
//! (disk full, file removed, I/O error) the agent keeps evaluating and
//! alerting, the lost records are counted by reason
//! (`egret_output_lost_records_total{output="audit"}`), the error is logged
//! rate-limited, and every later batch tries again, reopening the file when
//! it was rotated or removed, so the log resumes by itself once the disk has
//! room. A failed write is cut back to the last whole line. The path is
//! checked when the agent starts (a directory, a device, a path that cannot
//! be created are start-up errors), not at the first event.
//!
//! Writes are blocking and run on their own thread, so a slow disk stalls
//! only this sink (its queue fills and drops are counted upstream).
use std::{
    borrow::Cow,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    logging::{DEFAULT_INTERVAL, RateLimited},
    metrics::{LossReason, Metrics, Output},
    pipeline::enrich::Event,
    timefmt,
};

/// Version of the audit line schema: 2 added flow records (`fd.cip`,
/// `fd.cport`, `flow.*`) and this field; lines without it are version 1.
pub const AUDIT_SCHEMA: u32 = 2;

/// What a flow record adds to its line (`evt.type` = close only).
#[derive(Serialize)]
pub struct AuditFlow {
    #[serde(rename = "fd.cip")]
    pub cip: String,
    #[serde(rename = "fd.cport")]
    pub cport: u16,
    #[serde(rename = "flow.end")]
    pub end: &'static str,
    #[serde(rename = "flow.final")]
    pub is_final: bool,
    #[serde(rename = "flow.bytes_out")]
    pub bytes_out: u64,
    #[serde(rename = "flow.bytes_in")]
    pub bytes_in: u64,
    #[serde(rename = "flow.packets_out")]
    pub packets_out: u64,
    #[serde(rename = "flow.packets_in")]
    pub packets_in: u64,
    /// ns; null when the kernel lost the flow's start.
    #[serde(rename = "flow.duration")]
    pub duration: Option<u64>,
    #[serde(rename = "flow.retransmits", skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    /// Interim records of this flow before this line.
    #[serde(rename = "flow.reports")]
    pub reports: u32,
}

#[derive(Serialize)]
pub struct AuditRecord<'a> {
    #[serde(rename = "egret.audit_schema")]
    pub schema: u32,
    pub time: String,
    /// Milliseconds since the Unix epoch, for log pipelines that want an
    /// integer timestamp.
    pub timestamp_ms: u64,
    #[serde(rename = "evt.time")]
    pub evt_time: u64,
    #[serde(rename = "evt.type")]
    pub evt_type: &'static str,
    #[serde(rename = "evt.hook")]
    pub hook: &'static str,
    #[serde(rename = "proc.pid")]
    pub pid: u32,
    #[serde(rename = "thread.tid")]
    pub tid: u32,
    #[serde(rename = "proc.ppid")]
    pub ppid: Option<u32>,
    #[serde(rename = "proc.name")]
    pub proc_name: Cow<'a, str>,
    #[serde(rename = "proc.exepath")]
    pub exepath: Option<&'a str>,
    #[serde(rename = "proc.cmdline")]
    pub cmdline: Option<&'a str>,
    #[serde(rename = "proc.pname")]
    pub pname: Option<&'a str>,
    #[serde(rename = "user.uid")]
    pub uid: u32,
    #[serde(rename = "user.name")]
    pub user_name: Option<&'a str>,
    #[serde(rename = "group.gid")]
    pub gid: u32,
    #[serde(rename = "fd.type")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_type: Option<&'static str>,
    #[serde(rename = "fd.typechar")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_typechar: Option<&'static str>,
    #[serde(rename = "fd.l4proto")]
    pub l4proto: &'static str,
    #[serde(rename = "fd.sip")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sip: Option<String>,
    #[serde(rename = "fd.sport")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(rename = "fd.name")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_name: Option<&'a str>,
    /// Observed DNS: the name the workload resolved `fd.sip` from.
    #[serde(rename = "fd.sip.name", skip_serializing_if = "Option::is_none")]
    pub sip_name: Option<&'a str>,
    /// `evt.type` = dns only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsAudit<'a>>,
    /// socket events only (`evt.type` = socket), as Falco renders them.
    #[serde(rename = "evt.arg.domain", skip_serializing_if = "Option::is_none")]
    pub arg_domain: Option<&'static str>,
    #[serde(rename = "evt.arg.type", skip_serializing_if = "Option::is_none")]
    pub arg_type: Option<&'a str>,
    #[serde(rename = "evt.arg.proto", skip_serializing_if = "Option::is_none")]
    pub arg_proto: Option<&'a str>,
    #[serde(rename = "evt.args", skip_serializing_if = "Option::is_none")]
    pub args: Option<&'a str>,
    /// The socket's IP protocol number (1 for a raw ICMP socket).
    #[serde(rename = "egret.ip_proto", skip_serializing_if = "Option::is_none")]
    pub ip_proto: Option<u8>,
    #[serde(rename = "container.id")]
    pub container_id: Option<&'a str>,
    #[serde(rename = "container.name")]
    pub container_name: Option<&'a str>,
    #[serde(rename = "container.image")]
    pub container_image: Option<&'a str>,
    #[serde(rename = "container.image.repository")]
    pub image_repository: Option<&'a str>,
    #[serde(rename = "container.image.tag")]
    pub image_tag: Option<&'a str>,
    #[serde(rename = "container.host_network")]
    pub host_network: Option<bool>,
    #[serde(rename = "proc.is_exe_from_memfd")]
    pub exe_from_memfd: Option<bool>,
    #[serde(rename = "proc.is_exe_upper_layer")]
    pub exe_upper_layer: Option<bool>,
    #[serde(rename = "proc.is_exe_lower_layer")]
    pub exe_lower_layer: Option<bool>,
    #[serde(rename = "proc.is_exe_deleted")]
    pub exe_deleted: Option<bool>,
    #[serde(rename = "k8s.ns.name")]
    pub k8s_ns: Option<&'a str>,
    #[serde(rename = "k8s.pod.name")]
    pub k8s_pod: Option<&'a str>,
    #[serde(rename = "k8s.pod.uid")]
    pub k8s_pod_uid: Option<&'a str>,
    #[serde(rename = "k8s.pod.sa", skip_serializing_if = "Option::is_none")]
    pub k8s_pod_sa: Option<&'a str>,
    #[serde(rename = "k8s.pod.labels")]
    pub k8s_pod_labels: Option<&'a std::collections::BTreeMap<String, String>>,
    #[serde(rename = "egret.v4_mapped")]
    pub v4_mapped: bool,
    #[serde(rename = "egret.cgroup_id")]
    pub cgroup_id: u64,
    #[serde(rename = "egret.netns_cookie")]
    pub netns_cookie: u64,
    #[serde(rename = "egret.socket_cookie")]
    pub socket_cookie: u64,
    #[serde(rename = "egret.mono_ns")]
    pub mono_ns: u64,
    /// `observed`, or `blocked` when a quarantine denied the attempt.
    #[serde(rename = "egret.action")]
    pub action: &'static str,
    /// Kernel slot of the quarantine that blocked (see GET /v1/quarantines).
    #[serde(
        rename = "egret.quarantine.slot",
        skip_serializing_if = "Option::is_none"
    )]
    pub quarantine_slot: Option<u32>,
    /// Only with baselines on (`baseline.enabled`).
    #[serde(
        rename = "egret.dest.new_for_workload",
        skip_serializing_if = "Option::is_none"
    )]
    pub new_for_workload: Option<bool>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub flow: Option<AuditFlow>,
}

/// The `egret.dns.*` fields of a DNS event.
#[derive(Serialize)]
pub struct DnsAudit<'a> {
    #[serde(rename = "egret.dns.direction")]
    pub direction: &'static str,
    #[serde(rename = "egret.dns.query")]
    pub query: &'a str,
    #[serde(rename = "egret.dns.qtype")]
    pub qtype: &'static str,
    #[serde(rename = "egret.dns.rcode", skip_serializing_if = "Option::is_none")]
    pub rcode: Option<&'static str>,
    #[serde(rename = "egret.dns.answers", skip_serializing_if = "str::is_empty")]
    pub answers: &'a str,
    #[serde(rename = "egret.dns.parent")]
    pub parent: &'a str,
    #[serde(rename = "egret.dns.longest_label")]
    pub longest_label: u64,
    #[serde(rename = "egret.dns.name_len")]
    pub name_len: u64,
    #[serde(rename = "egret.dns.entropy_x100")]
    pub entropy_x100: u64,
    #[serde(rename = "egret.dns.parent_subdomains")]
    pub parent_subdomains: u64,
    #[serde(rename = "egret.dns.nxdomain_rate")]
    pub nxdomain_rate: u64,
    #[serde(rename = "egret.dns.txt_rate")]
    pub txt_rate: u64,
}

impl<'a> DnsAudit<'a> {
    fn new(d: &'a crate::pipeline::enrich::dns::DnsFields) -> Self {
        DnsAudit {
            direction: d.direction.as_str(),
            query: &d.qname,
            qtype: d.qtype,
            rcode: d.rcode,
            answers: &d.answers,
            parent: &d.parent,
            longest_label: d.longest_label,
            name_len: d.name_len,
            entropy_x100: d.entropy_x100,
            parent_subdomains: d.parent_subdomains,
            nxdomain_rate: d.nxdomain,
            txt_rate: d.txt_queries,
        }
    }
}

impl<'a> AuditRecord<'a> {
    pub fn new(enriched: &'a Event) -> Self {
        let event = &enriched.attempt;
        let process = enriched.process.as_deref();
        let v4 = event.daddr.is_ipv4();
        let dest = event.has_destination();
        let socket = enriched.socket.as_deref();
        let meta = enriched.identity.as_ref().and_then(|i| i.metadata());
        let pod = meta.and_then(|m| m.pod.as_ref());
        let image_ref = meta.and_then(|m| m.image_ref.as_ref());
        let flow = event.flow.as_deref().map(|f| AuditFlow {
            cip: f.saddr.to_string(),
            cport: f.sport,
            end: f.end.as_str(),
            is_final: f.is_final(),
            bytes_out: f.bytes_out,
            bytes_in: f.bytes_in,
            packets_out: f.packets_out,
            packets_in: f.packets_in,
            duration: f.duration_ns,
            retransmits: f.retransmits,
            reports: f.reports,
        });
        AuditRecord {
            schema: AUDIT_SCHEMA,
            flow,
            time: timefmt::rfc3339_nanos(event.wall_ns),
            timestamp_ms: event.wall_ns / 1_000_000,
            evt_time: event.wall_ns,
            evt_type: event.evt_type(),
            hook: event.hook.name(),
            pid: event.tgid,
            tid: event.tid,
            ppid: (event.ppid != 0).then_some(event.ppid),
            proc_name: event.comm.to_string_lossy(),
            exepath: process.map(|p| &*p.exepath),
            cmdline: process.map(|p| &*p.cmdline),
            pname: enriched.parent_name.as_deref(),
            uid: event.uid,
            user_name: enriched.user_name.as_deref(),
            gid: event.gid,
            fd_type: dest.then_some(if v4 { "ipv4" } else { "ipv6" }),
            fd_typechar: dest.then_some(if v4 { "4" } else { "6" }),
            l4proto: event.l4proto.as_str(),
            sip: dest.then(|| event.daddr.to_string()),
            sport: dest.then_some(event.dport),
            fd_name: dest.then(|| enriched.fd_name().as_str()),
            sip_name: enriched.sip_name.as_deref(),
            dns: enriched.dns.as_deref().map(DnsAudit::new),
            arg_domain: socket.and_then(|s| s.domain),
            arg_type: socket.map(|s| s.sock_type.as_str()),
            arg_proto: socket.map(|s| s.proto.as_str()),
            args: socket.map(|s| s.args.as_str()),
            ip_proto: (event.ip_protocol != 0 || socket.is_none()).then_some(event.ip_protocol),
            container_id: enriched.container_id(),
            container_name: meta.map(|m| m.name.as_str()),
            container_image: meta.and_then(|m| m.image.as_deref()),
            image_repository: image_ref.map(|r| r.repository.as_str()),
            image_tag: image_ref.and_then(|r| r.tag.as_deref()),
            host_network: enriched.host_network,
            exe_from_memfd: process.and_then(|p| p.origin.from_memfd),
            exe_upper_layer: process.and_then(|p| p.origin.upper_layer),
            exe_lower_layer: process.and_then(|p| p.origin.lower_layer),
            exe_deleted: process.and_then(|p| p.origin.deleted),
            k8s_ns: pod.and_then(|p| p.namespace.as_deref()),
            k8s_pod: pod.and_then(|p| p.name.as_deref()),
            k8s_pod_uid: pod.and_then(|p| p.uid.as_deref()),
            k8s_pod_labels: pod.map(|p| &p.labels),
            k8s_pod_sa: pod.and_then(|p| p.service_account.as_deref()),
            v4_mapped: event.v4_mapped,
            cgroup_id: event.cgroup_id,
            netns_cookie: event.netns_cookie,
            socket_cookie: event.socket_cookie,
            mono_ns: event.mono_ns,
            action: crate::pipeline::decode::action_name(event.blocked),
            quarantine_slot: event.blocked.map(|b| b.slot),
            new_for_workload: enriched.new_for_workload,
        }
    }
}

/// Where audit records go.
pub enum AuditDestination<W> {
    Writer(W),
    /// A file rotated by size: `path` → `path.1` → … → `path.N` (dropped).
    File {
        path: PathBuf,
        max_bytes: u64,
        max_files: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: creating its directory: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "audit log {path}: not a regular file (the audit log must be a file it can append to and rotate)"
    )]
    NotRegular { path: String },
}

/// An opened audit sink; [`AuditSink::open`] is the start-up check.
pub struct AuditSink<W> {
    out: Out<W>,
    metrics: Arc<Metrics>,
}

enum Out<W> {
    Writer(W),
    File(RotatingFile),
}

static WRITE_FAILED: RateLimited = RateLimited::new(DEFAULT_INTERVAL);

impl<W: Write> AuditSink<W> {
    /// Opens (creating) the file now, so a path that can never work fails
    /// start-up with one clear error instead of at the first event.
    pub fn open(target: AuditDestination<W>, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        let out = match target {
            AuditDestination::Writer(w) => Out::Writer(w),
            AuditDestination::File {
                path,
                max_bytes,
                max_files,
            } => {
                let file = open_append(&path)?;
                Out::File(RotatingFile {
                    path,
                    max_bytes,
                    max_files,
                    file: Some(file),
                })
            }
        };
        Ok(AuditSink { out, metrics })
    }

    /// Writes every batch until the channel closes; returns the records
    /// written. Never fails: a batch that cannot be written is counted.
    pub fn run_blocking(mut self, mut rx: mpsc::Receiver<Vec<Event>>) -> u64 {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut written = 0u64;
        // Records lost since the last successful write, for the log line
        // that says the sink recovered.
        let mut outage = 0u64;
        while let Some(batch) = rx.blocking_recv() {
            buf.clear();
            for event in &batch {
                // Serialising our own structs into a Vec cannot fail; if it
                // ever did, the partial record is cut off below.
                let mark = buf.len();
                if serde_json::to_writer(&mut buf, &AuditRecord::new(event)).is_err() {
                    buf.truncate(mark);
                    continue;
                }
                buf.push(b'\n');
            }
            let n = batch.len() as u64;
            match self.write(&buf) {
                Ok(()) => {
                    written += n;
                    if outage > 0 {
                        tracing::info!(lost = outage, "audit log writable again");
                        outage = 0;
                    }
                }
                Err(err) => {
                    let reason = LossReason::of(&err);
                    self.metrics.output_lost(Output::Audit, reason, n);
                    outage += n;
                    crate::error_limited!(
                        WRITE_FAILED,
                        %err,
                        reason = reason.as_str(),
                        lost_so_far = outage,
                        "audit log write failed; records dropped and counted, retrying with the next batch"
                    );
                }
            }
        }
        written
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match &mut self.out {
            Out::Writer(w) => {
                w.write_all(buf)?;
                w.flush()
            }
            Out::File(file) => file.write(buf),
        }
    }
}

/// Runs the sink on a blocking thread until the channel closes.
pub async fn run<W: Write + Send + 'static>(
    rx: mpsc::Receiver<Vec<Event>>,
    sink: AuditSink<W>,
) -> u64 {
    match tokio::task::spawn_blocking(move || sink.run_blocking(rx)).await {
        Ok(written) => written,
        Err(err) => {
            tracing::error!(%err, "audit sink thread failed");
            0
        }
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    let shown = || path.display().to_string();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Dir {
            path: shown(),
            source,
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: shown(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| AuditError::Open {
        path: shown(),
        source,
    })?;
    if !meta.is_file() {
        return Err(AuditError::NotRegular { path: shown() });
    }
    Ok(file)
}

struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    /// `None` after the file could not be reopened; tried again per batch.
    file: Option<File>,
}

impl RotatingFile {
    /// Rotates before a batch that would overflow, so no line is split
    /// across files; a failed write is cut back to the last whole line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let max_bytes = self.max_bytes;
        let size = self.current()?.metadata()?.len();
        if size > 0 && size + buf.len() as u64 > max_bytes {
            self.rotate()?;
        }
        let file = self.current()?;
        let start = file.metadata()?.len();
        if let Err(err) = file.write_all(buf) {
            // Truncating needs no space; if even that fails the next
            // successful open starts a fresh line anyway (see `current`).
            let _ = file.set_len(start);
            return Err(err);
        }
        Ok(())
    }

    /// The open file, reopened when it is missing or the path now names
    /// another file (moved away by logrotate, deleted, replaced).
    fn current(&mut self) -> std::io::Result<&mut File> {
        use std::os::unix::fs::MetadataExt;
        let stale = match (&self.file, std::fs::metadata(&self.path)) {
            (Some(file), Ok(on_disk)) => file.metadata()?.ino() != on_disk.ino(),
            _ => true,
        };
        if stale {
            self.file = None;
            let file = open_append(&self.path).map_err(|err| match err {
                AuditError::Dir { source, .. } | AuditError::Open { source, .. } => source,
                AuditError::NotRegular { .. } => {
                    std::io::Error::other("the audit path is no longer a regular file")
                }
            })?;
            tracing::info!(path = %self.path.display(), "audit log reopened");
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("audit log not open"))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.max_files).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        // `current` opens the new file.
        self.file = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::{Comm, EgressAttempt, L4Proto};
    use egret_common::Hook;

    fn attempt(daddr: &str) -> Event {
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"nc");
        let attempt = EgressAttempt {
            hook: Hook::Connect4,
            mono_ns: 1,
            wall_ns: 1_700_000_000_123_456_789,
            tgid: 42,
            tid: 43,
            uid: 0,
            gid: 0,
            comm: Comm::from_raw(comm),
            exec_id: 0,
            ppid: 0,
            cgroup_id: 1,
            netns_cookie: 2,
            socket_cookie: 3,
            l4proto: L4Proto::Tcp,
            ip_protocol: 6,
            daddr: daddr.parse().unwrap(),
            dport: 8080,
            v4_mapped: false,
            blocked: None,
            socket: None,
            flow: None,
        };
        Event {
            args: std::cell::OnceCell::new(),
            fd_name: std::cell::OnceCell::new(),
            attempt,
            process: None,
            parent_name: None,
            user_name: None,
            identity: None,
            host_network: None,
            new_for_workload: None,
            num: 1,
            name_changed: true,
            socket: None,
            result: None,
            sip_name: None,
            dns: None,
        }
    }

    fn metrics() -> Arc<Metrics> {
        Metrics::new(&crate::metrics::MetricsConfig::default())
    }

    #[test]
    fn writes_one_json_line_per_event() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(vec![attempt("198.51.100.7"), attempt("2001:db8::7")])
            .unwrap();
        drop(tx);
        let mut out = Vec::new();
        let sink = AuditSink::open(AuditDestination::Writer(&mut out), metrics()).unwrap();
        assert_eq!(sink.run_blocking(rx), 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["fd.sip"], "198.51.100.7");
        assert_eq!(lines[0]["fd.name"], "198.51.100.7:8080");
        assert_eq!(lines[0]["fd.typechar"], "4");
        assert_eq!(lines[0]["proc.name"], "nc");
        assert_eq!(lines[0]["proc.cmdline"], serde_json::Value::Null);
        assert_eq!(lines[0]["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(lines[1]["fd.name"], "[2001:db8::7]:8080");
        assert_eq!(lines[1]["fd.type"], "ipv6");
        assert_eq!(lines[0]["timestamp_ms"], 1_700_000_000_123u64);
    }

    #[test]
    fn file_rotates_by_size_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("egret-audit-{}", std::process::id()));
        let path = dir.join("audit.jsonl");
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..20 {
            tx.try_send(vec![attempt("198.51.100.7")]).unwrap();
        }
        drop(tx);
        let target: AuditDestination<std::io::Sink> = AuditDestination::File {
            path: path.clone(),
            max_bytes: 4096,
            max_files: 2,
        };
        let sink = AuditSink::open(target, metrics()).unwrap();
        assert_eq!(sink.run_blocking(rx), 20);
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 4096 && size(&path) > 0);
        assert!(size(&dir.join("audit.jsonl.1")) > 0);
        assert!(size(&dir.join("audit.jsonl.2")) > 0);
        assert!(
            !dir.join("audit.jsonl.3").exists(),
            "at most max_files rotated"
        );
        for file in ["audit.jsonl", "audit.jsonl.1"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(
                text.lines()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Fails every write while `full` is set, like a full disk.
    struct FlakyDisk<'a> {
        full: &'a std::cell::Cell<bool>,
        out: Vec<u8>,
    }

    impl Write for FlakyDisk<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.full.get() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_errors_are_counted_and_the_sink_keeps_going() {
        let full = std::cell::Cell::new(false);
        let metrics = metrics();
        let mut sink = AuditSink::open(
            AuditDestination::Writer(FlakyDisk {
                full: &full,
                out: Vec::new(),
            }),
            metrics.clone(),
        )
        .unwrap();
        let batch = |n: usize| (0..n).map(|_| attempt("198.51.100.7")).collect::<Vec<_>>();
        let mut buf = Vec::new();
        for event in &batch(2) {
            serde_json::to_writer(&mut buf, &AuditRecord::new(event)).unwrap();
            buf.push(b'\n');
        }
        sink.write(&buf).unwrap();
        full.set(true);
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(batch(3)).unwrap();
        drop(tx);
        // run_blocking consumes the sink; the writer's state is read back
        // through the shared cell and the metrics.
        assert_eq!(sink.run_blocking(rx), 0);
        assert_eq!(metrics.output_lost_total(Output::Audit), 3);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"egret_output_lost_records_total{output="audit",reason="no_space"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn resumes_after_the_disk_has_room_again() {
        let full = std::cell::Cell::new(true);
        let metrics = metrics();
        let mut out = FlakyDisk {
            full: &full,
            out: Vec::new(),
        };
        {
            let mut sink =
                AuditSink::open(AuditDestination::Writer(&mut out), metrics.clone()).unwrap();
            assert!(sink.write(b"{}\n").is_err());
            full.set(false);
            sink.write(b"{}\n").unwrap();
        }
        assert_eq!(out.out, b"{}\n");
    }

    #[test]
    fn unusable_paths_fail_at_open_with_one_clear_error() {
        let dir = std::env::temp_dir().join(format!("egret-audit-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (path, wanted) in [
            (dir.clone(), "Is a directory"),
            (
                PathBuf::from("/proc/nonexist/audit.jsonl"),
                "creating its directory",
            ),
            (PathBuf::from("/dev/full"), "not a regular file"),
        ] {
            let target: AuditDestination<std::io::Sink> = AuditDestination::File {
                path: path.clone(),
                max_bytes: 4096,
                max_files: 1,
            };
            let err = AuditSink::open(target, metrics())
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.starts_with(&format!("audit log {}", path.display())),
                "{err}"
            );
            assert!(err.contains(wanted), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_moved_away_is_reopened() {
        let dir = std::env::temp_dir().join(format!("egret-audit-mv-{}", std::process::id()));
        let path = dir.join("audit.jsonl");
        let target: AuditDestination<std::io::Sink> = AuditDestination::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            max_files: 1,
        };
        let mut sink = AuditSink::open(target, metrics()).unwrap();
        sink.write(b"{\"a\":1}\n").unwrap();
        std::fs::rename(&path, dir.join("rotated-by-logrotate")).unwrap();
        sink.write(b"{\"a\":2}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":2}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
