//! A real Prometheus server for the end-to-end metrics test, stopped on
//! drop (the webhook receiver is the test kit's `http::Receiver`).
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egret::metrics::promql;
use serde_json::Value;

use crate::support::TempDir;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The shipped rules select targets with `job=~".*egret.*"`.
pub const JOB: &str = "egret";

pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(20);

pub use egret_testkit::{free_port, http::get as http_get, repo_root};

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
