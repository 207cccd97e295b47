//! Issue 5 end to end: a real Prometheus server scrapes the real agent while
//! a rule fires for real connections, loads the shipped alert rules, and
//! answers every PromQL expression of deploy/ (dashboard panels, dashboard
//! variables, alert rules).
//!
//! `promtool check rules` on the same rule file runs in
//! agent/tests/metrics.rs (`rule_files_pass_promtool`); here the server
//! itself loads and evaluates the rules, which is the stronger check.
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

use egret::metrics::promql::{self, Expression};
use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    netns::{NetNs, V4_SERVER},
};

const RULE: &str = "Egret E2E Prometheus Egress";
/// A port no other end-to-end test uses, so the rule only fires for this
/// test's probes even though every agent sees every test's traffic.
const PORT: u16 = 8095;
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The shipped rules select targets with `job=~".*egret.*"`.
const JOB: &str = "egret";
/// Probes per round; two rounds, so every counter changes between scrapes.
const PROBES: usize = 3;
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(20);

/// Alert conditions the traffic of this test must trip. Every other alert
/// expression must evaluate to nothing: a healthy agent that lost nothing
/// must not page anyone.
const FIRING: &[&str] = &["EgretEgressAlert"];

/// Dashboard queries the test's traffic must move, as (panel, metric read):
/// at least one series above zero once the second round of alerts has been
/// scraped. Every other dashboard query must still return at least one
/// series (the agent exports its counters at zero from the start).
const MOVING: &[(&str, &str)] = &[
    ("panel Rule trigger frequency", "egret_alerts_total"),
    ("panel Alerts by priority", "egret_alerts_total"),
    ("panel Top rules in range", "egret_alerts_total"),
    (
        "panel Alerts by namespace / pod / container",
        "egret_alerts_total",
    ),
    ("panel Alerts by tags", "egret_alerts_total"),
    (
        "panel Alerts by destination IP:port",
        "egret_destination_alerts_total",
    ),
    ("panel Alerts by process", "egret_destination_alerts_total"),
    (
        "panel Alerts by container",
        "egret_destination_alerts_total",
    ),
    (
        "panel Which IP, which process, which container",
        "egret_destination_alerts_total",
    ),
    (
        "panel Destination series held / cap",
        "egret_metrics_series",
    ),
    (
        "panel Cluster-wide egress attempts by verdict",
        "egret_egress_events_total",
    ),
    (
        "panel Egress attempts seen by node",
        "egret_kernel_seen_total",
    ),
    (
        "panel Events emitted by kernel hook",
        "egret_kernel_emitted_total",
    ),
    ("panel Agents up", "up"),
    (
        "panel Webhook deliveries and retries",
        "egret_webhook_deliveries_total",
    ),
    ("panel Agent memory (RSS)", "process_resident_memory_bytes"),
    ("panel Rules loaded / last reload OK", "egret_rules_loaded"),
    (
        "panel Rules loaded / last reload OK",
        "egret_rules_last_reload_successful",
    ),
    ("panel Agent builds", "egret_build_info"),
    ("variable namespace", "egret_alerts_total"),
];

/// Dashboard queries allowed to return nothing, as (panel, why).
const MAY_BE_EMPTY: &[(&str, &str)] = &[(
    "panel Enrichment failures",
    "nothing in the agent calls Metrics::enrichment_failed yet, so \
     egret_enrichment_failures_total is never exported",
)];

#[test]
fn prometheus_scrapes_the_agent_and_answers_every_deploy_expression() {
    if !support::privileged("prometheus_scrapes_the_agent_and_answers_every_deploy_expression") {
        return;
    }
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} missing: scripts/setup.sh installs the Debian package prometheus"
    );
    let expressions = promql::deploy_expressions(&repo_root()).expect("deploy expressions");
    for (origin, metric) in MOVING {
        assert!(
            expressions
                .iter()
                .any(|e| e.origin == *origin && reads(e, metric)),
            "no query of {metric} in {origin} of {}: update this test",
            promql::DASHBOARD
        );
    }
    for (origin, _) in MAY_BE_EMPTY {
        assert!(
            expressions.iter().any(|e| e.origin == *origin),
            "{origin} is not in {} any more: update this test",
            promql::DASHBOARD
        );
    }

    let dir = TempDir::new("prometheus");
    let rules = dir.write(
        "rules.yaml",
        &format!(
            "- rule: {RULE}
  desc: A host process connects to the TEST-NET address of the Prometheus test
  condition: evt.type = connect and fd.sip = {V4_SERVER} and fd.sport = {PORT}
  output: Test egress (pid=%proc.pid proc=%proc.name connection=%fd.name)
  priority: WARNING
  tags: [network]
"
        ),
    );
    let receiver = WebhookReceiver::start();
    let agent_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    // Prometheus starts first so its start-up overlaps the agent's; until
    // the agent listens its scrapes fail, which the target wait covers.
    let prometheus = Prometheus::start(&dir, agent_addr);
    let agent = Agent::start(&[
        "run",
        "--listen",
        &agent_addr.to_string(),
        "--rules",
        &rules.display().to_string(),
        "--webhook",
        &format!("http://{}/", receiver.addr),
    ]);
    prometheus.wait_ready();
    // A successful scrape before any alert: the webhook counters are then
    // seen at zero, so the deliveries below show up as a rate.
    prometheus.wait_target_up(agent_addr);

    let ns = NetNs::new("prom");
    let probe = support::probe_path();
    let target = format!("{V4_SERVER}:{PORT}");
    let round = || {
        for _ in 0..PROBES {
            let (pid, _) = ns.run(&probe, &["tcp", &target]);
            let alert = agent
                .wait_json(
                    |v| v["rule"] == RULE && v["output_fields"]["proc.pid"] == pid,
                    EVENT_TIMEOUT,
                )
                .unwrap_or_else(|| {
                    panic!(
                        "no alert for pid {pid}; stderr:\n{}",
                        agent.stderr().join("\n")
                    )
                });
            assert_eq!(alert["priority"], "Warning", "{alert}");
            assert_eq!(
                alert["output_fields"]["proc.name"], "egret-probe",
                "{alert}"
            );
            assert_eq!(alert["output_fields"]["fd.name"], target, "{alert}");
        }
    };
    round();
    // The alert series must be in the TSDB before the second round, so
    // rate() and increase() see the counter move between two samples.
    let series = format!("egret_alerts_total{{job=\"{JOB}\", rule=\"{RULE}\"}}");
    prometheus.wait_query(&series, |v| v >= PROBES as f64);
    round();
    prometheus.wait_query(&series, |v| v >= 2.0 * PROBES as f64);

    // Ingesting the OpenMetrics text is the parse check; up == 1 says the
    // last scrape was accepted.
    let up = prometheus.query(&format!("up{{job=\"{JOB}\"}}"));
    assert_eq!(up.values(), vec![1.0], "up: {up:?}");

    // Counters reach Prometheus a scrape apart (webhook deliveries lag the
    // alerts), so poll until every expectation holds or time runs out.
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let rows = loop {
        let rows: Vec<Row> = expressions
            .iter()
            .map(|e| Row::evaluate(&prometheus, e))
            .collect();
        if rows.iter().all(|r| r.problem().is_none()) || Instant::now() >= deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    print_table(&rows);
    let problems: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.problem()
                .map(|p| format!("{} {}: {p}\n    {}", r.file, r.origin, r.query))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{} of {} expressions failed:\n{}",
        problems.len(),
        rows.len(),
        problems.join("\n")
    );

    assert!(
        receiver.requests() > 0,
        "the webhook receiver got no request"
    );
    prometheus.wait_rules_evaluated();
    prometheus.wait_alert_firing("EgretEgressAlert", RULE);
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// A port free on loopback a moment ago (the listener is closed before the
/// port is handed on; a collision shows up as a bind error in a log).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// One expression's result against the live server.
fn reads(e: &Expression, metric: &str) -> bool {
    promql::metric_names(&e.expr).iter().any(|m| m == metric)
}

/// What an expression must return after the test's traffic.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// An alert condition that must hold (see [`FIRING`]).
    Fires,
    /// An alert condition that must not hold on a healthy agent.
    Quiet,
    /// A dashboard query: at least one series.
    Data,
    /// A dashboard query: a series above zero (see [`MOVING`]).
    AboveZero,
    /// A dashboard query excused in [`MAY_BE_EMPTY`]: it must still run.
    MayBeEmpty,
}

impl Expect {
    fn of(e: &Expression) -> Expect {
        let origin = e.origin.as_str();
        if e.file != promql::DASHBOARD {
            if FIRING.contains(&origin) {
                Expect::Fires
            } else {
                Expect::Quiet
            }
        } else if MOVING.iter().any(|(o, m)| *o == origin && reads(e, m)) {
            Expect::AboveZero
        } else if MAY_BE_EMPTY.iter().any(|(o, _)| *o == origin) {
            Expect::MayBeEmpty
        } else {
            Expect::Data
        }
    }

    fn name(self) -> &'static str {
        match self {
            Expect::Fires => "fires",
            Expect::Quiet => "quiet",
            Expect::Data => "data",
            Expect::AboveZero => ">0",
            Expect::MayBeEmpty => "may-empty",
        }
    }
}

/// One expression's result against the live server.
struct Row {
    file: &'static str,
    origin: String,
    expect: Expect,
    query: String,
    /// Series returned, or Prometheus's error.
    result: Result<Vector, String>,
}

impl Row {
    fn evaluate(prometheus: &Prometheus, e: &Expression) -> Row {
        let query = promql::instantiate(&e.expr);
        Row {
            file: e.file,
            origin: e.origin.clone(),
            expect: Expect::of(e),
            result: prometheus.try_query(&query),
            query,
        }
    }

    /// What is wrong with the result, if anything.
    fn problem(&self) -> Option<String> {
        let v = match &self.result {
            Ok(v) => v,
            Err(e) => return Some(format!("query failed: {e}")),
        };
        let empty = v.0.is_empty();
        match self.expect {
            Expect::Fires if empty => {
                Some("alert condition should hold but returned nothing".into())
            }
            Expect::Quiet if !empty => Some(format!(
                "alert condition holds on a healthy agent: {:?}",
                v.0
            )),
            Expect::Data | Expect::AboveZero if empty => Some("returned no series".into()),
            Expect::AboveZero if !v.values().iter().any(|x| *x > 0.0) => {
                Some(format!("no series above zero: {:?}", v.0))
            }
            _ => None,
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<6} {:<9} {:>6} {:>10}  origin / query",
        "result", "expect", "series", "max"
    );
    for r in rows {
        let (series, max) = match &r.result {
            Ok(v) => {
                let max = v.values().into_iter().fold(f64::NAN, f64::max);
                (v.0.len().to_string(), format!("{max:.4}"))
            }
            Err(_) => ("-".into(), "-".into()),
        };
        let status = if r.problem().is_some() { "FAIL" } else { "ok" };
        println!(
            "{status:<6} {:<9} {series:>6} {max:>10}  {} {}\n{:>36}{}",
            r.expect.name(),
            r.file.rsplit('/').next().unwrap_or(r.file),
            r.origin,
            "",
            r.query
        );
    }
    let count = |x: Expect| rows.iter().filter(|r| r.expect == x).count();
    println!(
        "{} expressions: {} fire, {} quiet, {} above zero, {} with data, {} may be empty",
        rows.len(),
        count(Expect::Fires),
        count(Expect::Quiet),
        count(Expect::AboveZero),
        count(Expect::Data),
        count(Expect::MayBeEmpty)
    );
    for (origin, why) in MAY_BE_EMPTY {
        println!("may be empty: {origin}: {why}");
    }
}

/// An instant vector from `/api/v1/query`: (labels, value) per series.
#[derive(Debug)]
struct Vector(Vec<(Value, f64)>);

impl Vector {
    fn values(&self) -> Vec<f64> {
        self.0.iter().map(|(_, v)| *v).collect()
    }
}

/// The Prometheus server under test; dropping it kills the server and
/// removes its configuration and TSDB.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &TempDir, agent: SocketAddr) -> Prometheus {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until `check` returns `Some`, or panics with `what` and the
    /// server's log.
    fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
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

    fn wait_ready(&self) {
        self.wait("ready", || {
            http_get(self.addr, "/-/ready")
                .ok()
                .filter(|(code, _)| *code == 200)
        });
    }

    /// Until the agent's target has been scraped successfully.
    fn wait_target_up(&self, agent: SocketAddr) {
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
    fn wait_query(&self, query: &str, ok: impl Fn(f64) -> bool) {
        self.wait(&format!("{query} as expected"), || {
            let v = self.try_query(query).ok()?;
            v.values().first().copied().filter(|x| ok(*x))
        });
    }

    /// Until every loaded rule has been evaluated without error; also
    /// checks the server loaded every rule of the shipped file.
    fn wait_rules_evaluated(&self) {
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
    fn wait_alert_firing(&self, alert: &str, rule: &str) {
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

    fn query(&self, query: &str) -> Vector {
        self.try_query(query)
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    /// An instant query now; `Err` carries Prometheus's error.
    fn try_query(&self, query: &str) -> Result<Vector, String> {
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
    fn api(&self, path: &str) -> Result<Value, String> {
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
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
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

fn dechunk(mut rest: &str) -> Result<String, String> {
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

fn urlencode(s: &str) -> String {
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
/// request-duration histogram have data.
struct WebhookReceiver {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    fn start() -> WebhookReceiver {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    if read_request(&mut stream).is_ok() {
                        requests.fetch_add(1, Ordering::Relaxed);
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
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
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

/// Reads one request: headers, then `Content-Length` bytes of body.
fn read_request(stream: &mut TcpStream) -> std::io::Result<()> {
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
    let mut have = buf.len() - header_end;
    while have < length {
        let n = stream.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(())
}
