//! Audit sink: one JSON object per egress attempt, Falco field names where
//! Falco has them and `egret.*` for what it lacks.
use std::borrow::Cow;

use std::path::PathBuf;

use serde::Serialize;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use crate::{pipeline::enrich::Event, timefmt};

#[derive(Serialize)]
pub struct AuditRecord<'a> {
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
    pub fd_type: &'static str,
    #[serde(rename = "fd.typechar")]
    pub fd_typechar: &'static str,
    #[serde(rename = "fd.l4proto")]
    pub l4proto: &'static str,
    #[serde(rename = "fd.sip")]
    pub sip: String,
    #[serde(rename = "fd.sport")]
    pub sport: u16,
    #[serde(rename = "fd.name")]
    pub fd_name: &'a str,
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
    #[serde(rename = "k8s.ns.name")]
    pub k8s_ns: Option<&'a str>,
    #[serde(rename = "k8s.pod.name")]
    pub k8s_pod: Option<&'a str>,
    #[serde(rename = "k8s.pod.uid")]
    pub k8s_pod_uid: Option<&'a str>,
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
}

impl<'a> AuditRecord<'a> {
    pub fn new(enriched: &'a Event) -> Self {
        let event = &enriched.attempt;
        let process = enriched.process.as_deref();
        let v4 = event.daddr.is_ipv4();
        let meta = enriched.identity.as_ref().and_then(|i| i.metadata());
        let pod = meta.and_then(|m| m.pod.as_ref());
        let image_ref = meta.and_then(|m| m.image_ref.as_ref());
        AuditRecord {
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
            fd_type: if v4 { "ipv4" } else { "ipv6" },
            fd_typechar: if v4 { "4" } else { "6" },
            l4proto: event.l4proto.as_str(),
            sip: event.daddr.to_string(),
            sport: event.dport,
            fd_name: enriched.fd_name.as_str(),
            container_id: enriched.container_id(),
            container_name: meta.map(|m| m.name.as_str()),
            container_image: meta.and_then(|m| m.image.as_deref()),
            image_repository: image_ref.map(|r| r.repository.as_str()),
            image_tag: image_ref.and_then(|r| r.tag.as_deref()),
            host_network: enriched.host_network,
            k8s_ns: pod.and_then(|p| p.namespace.as_deref()),
            k8s_pod: pod.and_then(|p| p.name.as_deref()),
            k8s_pod_uid: pod.and_then(|p| p.uid.as_deref()),
            k8s_pod_labels: pod.map(|p| &p.labels),
            v4_mapped: event.v4_mapped,
            cgroup_id: event.cgroup_id,
            netns_cookie: event.netns_cookie,
            socket_cookie: event.socket_cookie,
            mono_ns: event.mono_ns,
        }
    }
}

/// Where audit records go.
pub enum AuditOutput<W> {
    Writer(W),
    /// A file rotated by size: `path` → `path.1` → … → `path.N` (dropped).
    File {
        path: PathBuf,
        max_bytes: u64,
        max_files: u32,
    },
}

/// Writes every batch as JSON lines, flushing once per batch.
pub async fn run<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Vec<Event>>,
    output: AuditOutput<W>,
) -> std::io::Result<u64> {
    let mut sink = match output {
        AuditOutput::Writer(w) => Sink::Writer(w),
        AuditOutput::File {
            path,
            max_bytes,
            max_files,
        } => Sink::File(RotatingFile::open(path, max_bytes, max_files).await?),
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut written = 0u64;
    while let Some(batch) = rx.recv().await {
        buf.clear();
        for event in &batch {
            serde_json::to_writer(&mut buf, &AuditRecord::new(event))
                .map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        sink.write(&buf).await?;
        written += batch.len() as u64;
    }
    Ok(written)
}

enum Sink<W> {
    Writer(W),
    File(RotatingFile),
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Writer(w) => {
                w.write_all(buf).await?;
                w.flush().await
            }
            Sink::File(file) => file.write(buf).await,
        }
    }
}

struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: tokio::fs::File,
    size: u64,
}

impl RotatingFile {
    async fn open(path: PathBuf, max_bytes: u64, max_files: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let size = file.metadata().await?.len();
        Ok(RotatingFile {
            path,
            max_bytes,
            max_files,
            file,
            size,
        })
    }

    /// Rotates before a batch that would overflow, so no line is split
    /// across files.
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate().await?;
        }
        self.file.write_all(buf).await?;
        self.file.flush().await?;
        self.size += buf.len() as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.max_files == 0 {
            tokio::fs::remove_file(&self.path).await?;
        } else {
            for n in (1..self.max_files).rev() {
                let from = numbered(n);
                if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                    tokio::fs::rename(&from, numbered(n + 1)).await?;
                }
            }
            tokio::fs::rename(&self.path, numbered(1)).await?;
        }
        self.file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        self.size = 0;
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
            daddr: daddr.parse().unwrap(),
            dport: 8080,
            v4_mapped: false,
        };
        Event {
            fd_name: crate::pipeline::enrich::fields::FdName::new(std::net::SocketAddr::new(
                attempt.daddr,
                attempt.dport,
            )),
            attempt,
            process: None,
            parent_name: None,
            user_name: None,
            identity: None,
            host_network: None,
        }
    }

    #[tokio::test]
    async fn writes_one_json_line_per_event() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(vec![attempt("198.51.100.7"), attempt("2001:db8::7")])
            .await
            .unwrap();
        drop(tx);
        let mut out = Vec::new();
        assert_eq!(run(rx, AuditOutput::Writer(&mut out)).await.unwrap(), 2);
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

    #[tokio::test]
    async fn file_rotates_by_size_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("egret-audit-{}", std::process::id()));
        let path = dir.join("audit.jsonl");
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..20 {
            tx.send(vec![attempt("198.51.100.7")]).await.unwrap();
        }
        drop(tx);
        let output: AuditOutput<tokio::io::Sink> = AuditOutput::File {
            path: path.clone(),
            max_bytes: 4096,
            max_files: 2,
        };
        assert_eq!(run(rx, output).await.unwrap(), 20);
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
}
