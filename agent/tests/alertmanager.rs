//! The Alertmanager output against real Alertmanagers (Debian's
//! prometheus-alertmanager, 0.25), each started on a free loopback port
//! with its own config and storage directory and stopped on drop.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use egret::{
    metrics::{AlertContext, DropReason, Metrics, MetricsConfig},
    outputs::alert::{Alert, Priority},
    outputs::webhook::{EndpointConfig, PayloadFormat, WebhookSink},
};
use tokio_util::sync::CancellationToken;

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Alertmanager {
    fn start(tag: &str) -> Alertmanager {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} missing: scripts/setup.sh --tests installs prometheus-alertmanager"
        );
        let dir = std::env::temp_dir().join(format!("egret-am-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
        )
        .expect("write config");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = std::fs::File::create(dir.join("alertmanager.log")).expect("log file");
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No gossip: it would listen on 0.0.0.0:9094 and find peers.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn alertmanager");
        let am = Alertmanager { child, addr, dir };
        am.wait("ready", || {
            am.get("/-/ready")
                .ok()
                .filter(|b| b.contains("OK"))
                .map(drop)
        });
        am
    }

    fn url(&self) -> String {
        format!("http://{}/api/v2/alerts", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("alertmanager.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<String, String> {
        http::get(&format!("http://{}{path}", self.addr))
    }

    fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager: {what}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Alerts as its API lists them.
    fn alerts(&self) -> Vec<serde_json::Value> {
        self.get("/api/v2/alerts")
            .ok()
            .and_then(|b| serde_json::from_str::<Vec<serde_json::Value>>(&b).ok())
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking GET on loopback without pulling in reqwest's blocking client.
mod http {
    use std::io::{Read, Write};

    pub fn get(url: &str) -> Result<String, String> {
        let rest = url.strip_prefix("http://").ok_or("http only")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
        let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").ok_or("no body")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head.lines().next().unwrap_or("").to_owned());
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(dechunk(body));
        }
        Ok(body.to_owned())
    }

    fn dechunk(mut rest: &str) -> String {
        let mut out = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
        }
        out
    }
}

fn alert() -> Arc<Alert> {
    let fields: egret::outputs::alert::OutputFields = [
        (Arc::from("fd.sip"), serde_json::json!("203.0.113.80")),
        (Arc::from("fd.sport"), serde_json::json!(4444)),
        (Arc::from("fd.name"), serde_json::json!("203.0.113.80:4444")),
        (Arc::from("proc.name"), serde_json::json!("nc")),
        (
            Arc::from("proc.cmdline"),
            serde_json::json!("nc 203.0.113.80 4444"),
        ),
        (Arc::from("container.id"), serde_json::json!("0123456789ab")),
        (Arc::from("container.name"), serde_json::json!("web")),
        (
            Arc::from("container.image.repository"),
            serde_json::json!("registry.test/shop/web"),
        ),
        (Arc::from("k8s.ns.name"), serde_json::json!("shop")),
        (Arc::from("k8s.pod.name"), serde_json::json!("web-5d8f")),
        (Arc::from("cluster"), serde_json::json!("prod-eu-1")),
    ]
    .into();
    Arc::new(Alert {
        time: egret::timefmt::rfc3339_nanos(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default(),
        ),
        rule: "Outbound Connection in Container".into(),
        priority: Priority::Warning,
        output: "Container outbound connection to external IP: (command=nc 203.0.113.80 4444 connection=203.0.113.80:4444 user=root)".into(),
        output_fields: fields,
        tags: vec![Arc::from("outbound"), Arc::from("network")].into(),
        source: "syscall",
        hostname: "node-a".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanagers_list_the_alert_with_the_documented_labels() {
    let (am1, am2) = (Alertmanager::start("one"), Alertmanager::start("two"));
    let mut cfg = EndpointConfig::from_url("");
    cfg.urls = vec![am1.url(), am2.url()];
    cfg.name = Some("am".into());
    cfg.format = PayloadFormat::Alertmanager;
    cfg.proxy_from_env = false;
    cfg.expires_after = Duration::from_secs(600);
    cfg.label_fields = vec!["cluster".into()];
    let metrics = Metrics::new(&MetricsConfig::default());
    let shutdown = CancellationToken::new();
    let sink = WebhookSink::start(
        &[cfg],
        Some(&metrics),
        shutdown.clone(),
        Duration::from_secs(2),
    )
    .expect("valid endpoints");
    let names: Vec<String> = sink.endpoint_names().map(str::to_owned).collect();
    assert_eq!(
        names,
        [format!("am@{}", am1.addr), format!("am@{}", am2.addr)]
    );
    let a = alert();
    sink.submit(&a, &AlertContext::from_alert(&a));
    for am in [&am1, &am2] {
        let listed = am.wait("the alert listed", || {
            am.alerts()
                .into_iter()
                .find(|x| x["labels"]["alertname"] == "Outbound Connection in Container")
        });
        println!("listed by {}: {listed}", am.addr);
        let l = &listed["labels"];
        for (k, v) in [
            ("alertname", "Outbound Connection in Container"),
            ("rule", "Outbound Connection in Container"),
            ("priority", "Warning"),
            ("severity", "warning"),
            ("source", "syscall"),
            ("hostname", "node-a"),
            ("tags", "network,outbound"),
            ("k8s_ns_name", "shop"),
            ("k8s_pod_name", "web-5d8f"),
            ("container_id", "0123456789ab"),
            ("container_name", "web"),
            ("container_image_repository", "registry.test/shop/web"),
            ("fd_sip", "203.0.113.80"),
            ("fd_sport", "4444"),
            ("proc_name", "nc"),
            ("cluster", "prod-eu-1"),
        ] {
            assert_eq!(l[k], v, "label {k}: {listed}");
        }
        assert!(l.get("proc_cmdline").is_none(), "{listed}");
        assert_eq!(l.as_object().map(|m| m.len()), Some(16), "{listed}");
        assert_eq!(
            listed["annotations"]["summary"],
            "Outbound Connection in Container"
        );
        assert_eq!(listed["annotations"]["description"], a.output.as_str());
        assert_eq!(listed["status"]["state"], "active", "{listed}");
        // endsAt is ten minutes out.
        let ends = listed["endsAt"].as_str().unwrap_or_default().to_owned();
        assert!(ends > a.time, "{ends} vs {}", a.time);
    }
    shutdown.cancel();
    sink.finish().await;
    let text = metrics.encode().expect("encode");
    for name in &names {
        assert!(
            text.contains(&format!(
                "egret_webhook_deliveries_total{{endpoint=\"{name}\"}} 1\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "egret_webhook_drops_total{{endpoint=\"{name}\",reason=\"{}\"}} 0\n",
            DropReason::Rejected.as_str()
        )));
    }
}
