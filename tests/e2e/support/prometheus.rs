//! A real Prometheus server and a loopback webhook receiver for the
//! end-to-end metrics test, each stopped on drop.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use egret::metrics::promql;
use serde_json::Value;

use crate::support::TempDir;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The shipped rules select targets with `job=~".*egret.*"`.
pub const JOB: &str = "egret";

pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(20);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// A port free on loopback a moment ago (the listener is closed before the
/// port is handed on; a collision shows up as a bind error in a log).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// An instant vector from `/api/v1/query`: (labels, value) per series.
#[derive(Debug)]
pub struct Vector(pub Vec<(Value, f64)>);

impl Vector {
    pub fn values(&self) -> Vec<f64> {
        self.0.iter().map(|(_, v)| *v).collect()
    }
}

/// The Prometheus server under test; dropping it kills the server and
/// removes its configuration and TSDB.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    pub fn start(dir: &TempDir, agent: SocketAddr) -> Prometheus {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let alerts = repo_root().join(promql::RULES);
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {alerts}
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: ['{agent}']
",
                alerts = alerts.display()
            ),
        );
        let log = dir.0.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, addr, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until `check` returns `Some`, or panics with `what` and the
    /// server's log.
    pub fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            if let Some(found) = check() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {what} within {PROMETHEUS_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_ready(&self) {
        self.wait("ready", || {
            http_get(self.addr, "/-/ready")
                .ok()
                .filter(|(code, _)| *code == 200)
        });
    }

    /// Until the agent's target has been scraped successfully.
    pub fn wait_target_up(&self, agent: SocketAddr) {
        let mut last = Value::Null;
        self.wait("the agent's target up", || {
            let targets = self.api("/api/v1/targets?state=active").ok()?;
            let found = targets["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|t| t["scrapeUrl"] == format!("http://{agent}/metrics"))?
                .clone();
            last = found.clone();
            (found["health"] == "up").then_some(())
        });
        assert_eq!(last["labels"]["job"], JOB, "{last}");
        assert_eq!(last["lastError"], "", "{last}");
    }

    /// Until `query`'s first series satisfies `ok`.
    pub fn wait_query(&self, query: &str, ok: impl Fn(f64) -> bool) {
        self.wait(&format!("{query} as expected"), || {
            let v = self.try_query(query).ok()?;
            v.values().first().copied().filter(|x| ok(*x))
        });
    }

    /// Until every loaded rule has been evaluated without error; also
    /// checks the server loaded every rule of the shipped file.
    pub fn wait_rules_evaluated(&self) {
        let shipped = promql::rule_expressions(
            promql::RULES,
            &std::fs::read_to_string(repo_root().join(promql::RULES)).expect("read rules"),
        )
        .len();
        self.wait("every rule evaluated", || {
            let doc = self.api("/api/v1/rules").ok()?;
            let rules: Vec<&Value> = doc["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            assert_eq!(rules.len(), shipped, "rules loaded: {doc}");
            for r in &rules {
                assert_ne!(r["health"], "err", "rule failed to evaluate: {r}");
            }
            rules.iter().all(|r| r["health"] == "ok").then_some(())
        });
    }

    /// Until Prometheus's own rule evaluation fires `alert` for `rule`.
    pub fn wait_alert_firing(&self, alert: &str, rule: &str) {
        self.wait(&format!("{alert} firing for {rule}"), || {
            let doc = self.api("/api/v1/alerts").ok()?;
            doc["data"]["alerts"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == alert
                        && a["labels"]["rule"] == rule
                        && a["state"] == "firing"
                })
                .then_some(())
        });
    }

    pub fn query(&self, query: &str) -> Vector {
        self.try_query(query)
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    /// An instant query now; `Err` carries Prometheus's error.
    pub fn try_query(&self, query: &str) -> Result<Vector, String> {
        let doc = self.api(&format!("/api/v1/query?query={}", urlencode(query)))?;
        if doc["status"] != "success" {
            return Err(format!("{}: {}", doc["errorType"], doc["error"]));
        }
        let data = &doc["data"];
        if data["resultType"] != "vector" {
            return Err(format!("result type {}, not vector", data["resultType"]));
        }
        let series = data["result"]
            .as_array()
            .ok_or("no result array")?
            .iter()
            .map(|s| {
                // [timestamp, "value"]; "NaN" (e.g. a quantile of empty
                // buckets) parses as f64::NAN.
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("bad sample {s}"))?;
                Ok((s["metric"].clone(), value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Vector(series))
    }

    /// GET on the HTTP API; the body is JSON whatever the status (errors
    /// come as 400/422 with `status: error`).
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(self.addr, path)?;
        serde_json::from_str(&body).map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hand-written HTTP/1.1 GET on loopback: status code and body (chunked
/// bodies decoded).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let err = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(err)?;
    let text = String::from_utf8(raw).map_err(|e| format!("non-UTF-8 response: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {text}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

pub fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .ok_or("chunk without CRLF")?;
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Accepts every webhook POST with 200, so the agent's webhook counters and
/// request-duration histogram have data; keeps the JSON bodies.
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub bodies: Arc<std::sync::Mutex<Vec<Value>>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    pub fn start() -> WebhookReceiver {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let requests = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop, bodies) = (requests.clone(), stop.clone(), bodies.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    if let Ok(body) = read_request(&mut stream) {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            bodies.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                        }
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            })
        };
        WebhookReceiver {
            addr,
            requests,
            bodies,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Until a received payload satisfies `pred`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .bodies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|v| pred(v))
                .cloned();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request: headers, then `Content-Length` bytes of body, which
/// it returns.
pub fn read_request(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&byte[..n]);
    }
    Ok(body)
}
