//! Reading observations: Egret's audit log (JSON lines) from one or many
//! nodes. Every line that cannot be used is counted, and malformed ones are
//! reported as `file:line: reason`; nothing here panics on hostile input.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{AdviseError, model::Proto};

/// Longer lines are not audit records (the widest record is a few KiB of
/// command line); they are skipped without being buffered whole.
pub const MAX_LINE_BYTES: usize = 256 * 1024;
/// Directories are walked this deep (`logs/<node>/audit.jsonl` is two).
const MAX_DEPTH: usize = 4;
/// Malformed lines are all counted; this many are kept for the report.
pub const MAX_REPORTED: usize = 20;

/// One egress attempt of one pod, as the advisor needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The name the workload resolved for `ip`, when the record has it.
    pub name: Option<String>,
}

/// Why lines were not used, counted per reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub files: u64,
    pub lines: u64,
    pub used: u64,
    /// Not JSON, a field of the wrong type, an unparsable address, too long.
    pub malformed: u64,
    /// Processes outside pods (no `k8s.ns.name`): nothing to write a policy for.
    pub not_a_pod: u64,
    /// Pods on the host network: NetworkPolicy does not apply to them.
    pub host_network: u64,
    /// ICMP and raw sockets: NetworkPolicy has no protocol for them.
    pub unsupported_proto: u64,
    /// Outside `--since`/`--until`.
    pub outside_window: u64,
    /// The first [`MAX_REPORTED`] malformed lines as `file:line: reason`.
    pub problems: Vec<String>,
}

impl ReadStats {
    fn malformed(&mut self, file: &Path, line: u64, reason: impl std::fmt::Display) {
        self.malformed += 1;
        if self.problems.len() < MAX_REPORTED {
            self.problems
                .push(format!("{}:{line}: {reason}", file.display()));
        }
    }
}

/// The time window records must fall in (nanoseconds, inclusive).
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        self.since_ns.is_none_or(|s| t >= s) && self.until_ns.is_none_or(|u| t <= u)
    }
}

/// The audit record fields the advisor reads; the rest are ignored.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "evt.time")]
    evt_time: u64,
    #[serde(rename = "fd.sip")]
    sip: String,
    #[serde(rename = "fd.sport")]
    sport: u16,
    #[serde(rename = "fd.l4proto")]
    l4proto: String,
    /// Observed DNS name of the destination (when the agent records it).
    #[serde(rename = "fd.sip.name", default)]
    sip_name: Option<String>,
    #[serde(rename = "container.host_network", default)]
    host_network: Option<bool>,
    #[serde(rename = "k8s.ns.name", default)]
    namespace: Option<String>,
    #[serde(rename = "k8s.pod.labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Every regular file under `paths` (directories walked, sorted by name so
/// runs are reproducible).
pub fn input_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AdviseError> {
    let mut out = Vec::new();
    for path in paths {
        walk(path, 0, &mut out)?;
    }
    Ok(out)
}

fn walk(path: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), AdviseError> {
    let meta = fs::metadata(path).map_err(|source| AdviseError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() || depth >= MAX_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|source| AdviseError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        // Hidden files are editors' and log shippers' state, not records.
        if entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        walk(&entry, depth + 1, out)?;
    }
    Ok(())
}

/// Reads every file, handing each usable observation to `sink`.
pub fn read_all(
    paths: &[PathBuf],
    window: Window,
    stats: &mut ReadStats,
    sink: &mut dyn FnMut(Observation),
) -> Result<(), AdviseError> {
    for file in input_files(paths)? {
        let handle = fs::File::open(&file).map_err(|source| AdviseError::Io {
            path: file.clone(),
            source,
        })?;
        stats.files += 1;
        read_one(&file, handle, window, stats, sink).map_err(|source| AdviseError::Io {
            path: file.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Reads JSON lines from `input`; `name` is used in problem reports.
pub fn read_one(
    name: &Path,
    input: impl Read,
    window: Window,
    stats: &mut ReadStats,
    sink: &mut dyn FnMut(Observation),
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut buf = Vec::with_capacity(4096);
    let mut number = 0u64;
    loop {
        buf.clear();
        let (complete, truncated) = read_bounded_line(&mut reader, &mut buf)?;
        if !complete && buf.is_empty() && !truncated {
            return Ok(());
        }
        number += 1;
        if truncated {
            stats.lines += 1;
            stats.malformed(
                name,
                number,
                format!("line longer than {MAX_LINE_BYTES} bytes"),
            );
            continue;
        }
        let text = buf.strip_suffix(b"\r").unwrap_or(&buf);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        stats.lines += 1;
        match parse_line(text) {
            Ok(Parsed::Use(obs)) if window.contains(obs.time_ns) => {
                stats.used += 1;
                sink(obs);
            }
            Ok(Parsed::Use(_)) => stats.outside_window += 1,
            Ok(Parsed::NotAPod) => stats.not_a_pod += 1,
            Ok(Parsed::HostNetwork) => stats.host_network += 1,
            Ok(Parsed::Unsupported) => stats.unsupported_proto += 1,
            Err(reason) => stats.malformed(name, number, reason),
        }
    }
}

/// One line into `buf` (without the newline), never holding more than
/// [`MAX_LINE_BYTES`]: returns (ended with a newline, was too long).
fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<(bool, bool)> {
    let mut truncated = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((false, truncated));
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !truncated {
            if buf.len() + chunk.len() > MAX_LINE_BYTES {
                truncated = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            return Ok((true, truncated));
        }
    }
}

enum Parsed {
    Use(Observation),
    NotAPod,
    HostNetwork,
    Unsupported,
}

fn parse_line(text: &[u8]) -> Result<Parsed, String> {
    let line: Line =
        serde_json::from_slice(text).map_err(|e| format!("not an audit record: {e}"))?;
    let ip: IpAddr = line
        .sip
        .parse()
        .map_err(|_| format!("fd.sip `{}` is not an IP address", truncate(&line.sip)))?;
    let Some(namespace) = line.namespace.filter(|n| !n.is_empty()) else {
        return Ok(Parsed::NotAPod);
    };
    if line.host_network == Some(true) {
        return Ok(Parsed::HostNetwork);
    }
    let Some(proto) = Proto::from_audit(&line.l4proto) else {
        return Ok(Parsed::Unsupported);
    };
    // IPv4-mapped destinations are IPv4 flows to a NetworkPolicy.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    Ok(Parsed::Use(Observation {
        namespace,
        labels: line.labels.unwrap_or_default(),
        ip,
        port: line.sport,
        proto,
        time_ns: line.evt_time,
        name: line.sip_name.filter(|n| super::model::is_dns_name(n)),
    }))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8], window: Window) -> (Vec<Observation>, ReadStats) {
        let mut stats = ReadStats::default();
        let mut out = Vec::new();
        read_one(Path::new("a.jsonl"), text, window, &mut stats, &mut |o| {
            out.push(o)
        })
        .unwrap();
        (out, stats)
    }

    const POD: &str = r#"{"evt.time":5,"fd.sip":"198.51.100.7","fd.sport":443,"fd.l4proto":"tcp","k8s.ns.name":"shop","k8s.pod.labels":{"app":"web"}}"#;

    #[test]
    fn reads_pod_records_and_counts_the_rest() {
        let text = format!(
            "{POD}\n\
             {{\"evt.time\":6,\"fd.sip\":\"198.51.100.8\",\"fd.sport\":53,\"fd.l4proto\":\"udp\",\"k8s.ns.name\":null}}\n\
             {{\"evt.time\":7,\"fd.sip\":\"::ffff:198.51.100.9\",\"fd.sport\":1,\"fd.l4proto\":\"icmp\",\"k8s.ns.name\":\"shop\"}}\n\
             not json\n\
             \n\
             {{\"evt.time\":8,\"fd.sip\":\"nope\",\"fd.sport\":1,\"fd.l4proto\":\"tcp\"}}\n\
             {{\"evt.time\":9,\"fd.sip\":\"::ffff:198.51.100.9\",\"fd.sport\":80,\"fd.l4proto\":\"tcp\",\"k8s.ns.name\":\"shop\",\"container.host_network\":false}}\n\
             {{\"evt.time\":9,\"fd.sip\":\"198.51.100.9\",\"fd.sport\":80,\"fd.l4proto\":\"tcp\",\"k8s.ns.name\":\"shop\",\"container.host_network\":true}}"
        );
        let (obs, stats) = read(text.as_bytes(), Window::default());
        assert_eq!(obs.len(), 2);
        assert_eq!(obs[0].labels["app"], "web");
        assert_eq!(obs[1].ip.to_string(), "198.51.100.9", "v4-mapped is v4");
        assert_eq!(stats.lines, 7);
        assert_eq!(stats.used, 2);
        assert_eq!(stats.not_a_pod, 1);
        assert_eq!(stats.unsupported_proto, 1);
        assert_eq!(stats.host_network, 1);
        assert_eq!(stats.malformed, 2);
        assert!(stats.problems[0].starts_with("a.jsonl:4: not an audit record"));
        assert!(stats.problems[1].starts_with("a.jsonl:6: fd.sip `nope`"));
    }

    #[test]
    fn window_and_overlong_lines() {
        let mut text = vec![b'x'; MAX_LINE_BYTES + 10];
        text.push(b'\n');
        text.extend_from_slice(POD.as_bytes());
        let (obs, stats) = read(&text, Window::default());
        assert_eq!((obs.len(), stats.malformed), (1, 1));
        assert!(stats.problems[0].starts_with("a.jsonl:1: line longer"));
        let (obs, stats) = read(
            POD.as_bytes(),
            Window {
                since_ns: Some(6),
                until_ns: None,
            },
        );
        assert_eq!((obs.len(), stats.outside_window), (0, 1));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..2000 {
            let mut line = POD.as_bytes().to_vec();
            for _ in 0..(round % 7 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % line.len();
                line[at] = (seed >> 32) as u8;
            }
            let _ = read(&line, Window::default());
        }
    }
}
