//! DingTalk robots end to end on loopback: signing, the 20/min limit with
//! its summary, and errcodes counted, against a receiver as strict as
//! DingTalk (tests/webhook/dingtalk.rs).
#[path = "webhook/dingtalk.rs"]
mod dingtalk;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dingtalk::{DingTalk, SEND_TOO_FAST, SIGN_MISMATCH};
use egret::{
    metrics::{AlertContext, DropReason, Metrics, MetricsConfig, WebhookMetrics},
    outputs::alert::{Alert, Priority},
    outputs::webhook::{EndpointConfig, PayloadFormat, RateLimitConfig, SecretSource, WebhookSink},
};
use tokio_util::sync::CancellationToken;

fn alert(n: u32) -> Arc<Alert> {
    let fields: egret::outputs::alert::OutputFields = [
        (
            Arc::from("fd.name"),
            serde_json::json!(format!("203.0.113.{}:443", n % 250)),
        ),
        (Arc::from("k8s.pod.name"), serde_json::json!("web-1")),
        (Arc::from("k8s.ns.name"), serde_json::json!("shop")),
    ]
    .into();
    Arc::new(Alert {
        time: "2026-05-01T12:00:00.000000001Z".into(),
        rule: format!("Egress rule {}", n % 3).into(),
        priority: Priority::Warning,
        output: format!("curl connected to 203.0.113.{}:443 (n={n})", n % 250),
        output_fields: fields,
        tags: vec![Arc::from("network")].into(),
        source: "syscall",
        hostname: "node-a".into(),
    })
}

fn secret_file(tag: &str, secret: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("egret-dingtalk-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    path
}

fn robot(url: &str, secret: &std::path::Path) -> EndpointConfig {
    let mut cfg = EndpointConfig::from_url(url);
    cfg.name = Some("robot".into());
    cfg.format = PayloadFormat::Dingtalk;
    cfg.secret = Some(SecretSource::File(secret.to_owned()));
    cfg.proxy_from_env = false;
    cfg.coalesce_window = Duration::ZERO;
    cfg.retry.initial_backoff = Duration::from_millis(20);
    cfg
}

fn start(
    cfg: EndpointConfig,
    metrics: &Metrics,
) -> (WebhookSink, WebhookMetrics, CancellationToken) {
    let shutdown = CancellationToken::new();
    let sink = WebhookSink::start(
        &[cfg],
        Some(metrics),
        shutdown.clone(),
        Duration::from_secs(2),
    )
    .expect("valid endpoint");
    let m = sink
        .endpoint_metrics("robot")
        .cloned()
        .expect("robot metrics");
    (sink, m, shutdown)
}

/// Submits 30 alerts within one second.
fn burst(sink: &WebhookSink) -> Instant {
    let started = Instant::now();
    for n in 0..30 {
        let a = alert(n);
        sink.submit(&a, &AlertContext::from_alert(&a));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    started
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_alerts_in_a_second_are_delivered_or_summarised() {
    let secret = "SEC0123456789abcdef+/=";
    // The first message reaches the robot 1.5 s after it was sent (a slow
    // first connection, as on a loaded CI runner): the robot's minute
    // starts then, so a limiter counting from the send would send the
    // summary into that minute and have it refused (seen in CI).
    let robot_rx = DingTalk::start_slow_first(secret, 20, Duration::from_millis(1500)).await;
    let metrics = Metrics::new(&MetricsConfig::default());
    let (sink, m, shutdown) = start(
        robot(&robot_rx.url, &secret_file("burst", secret)),
        &metrics,
    );
    let started = burst(&sink);
    wait_for("20 messages", Duration::from_secs(20), || {
        robot_rx.accepted().len() >= 20
    })
    .await;
    // The limiter holds the other 10 for the rest of the minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(robot_rx.accepted().len(), 20);
    assert_eq!(m.delivered_alerts.get(), 20);
    wait_for("the summary", Duration::from_secs(75), || {
        robot_rx.accepted().len() >= 21
    })
    .await;
    let waited = started.elapsed();
    let accepted = robot_rx.accepted();
    let summary = &accepted[20];
    println!("summary after {waited:?}: {summary}");
    let text = summary["markdown"]["text"].as_str().unwrap_or_default();
    assert!(text.contains("10 alert(s) held back"), "{text}");
    assert!(text.contains("Egress rule"), "{text}");
    assert_eq!(summary["msgtype"], "markdown");
    assert!(waited >= Duration::from_secs(59), "{waited:?}");
    // Every alert is accounted for: 20 on their own, 10 in the summary.
    assert_eq!(m.deliveries.get(), 21);
    assert_eq!(m.delivered_alerts.get(), 30);
    for reason in DropReason::ALL {
        assert_eq!(m.drops(reason), 0, "{reason:?}");
    }
    assert_eq!(
        robot_rx.refused(SEND_TOO_FAST),
        0,
        "the limiter never overran the robot"
    );
    assert_eq!(robot_rx.refused(SIGN_MISMATCH), 0);
    shutdown.cancel();
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_counted_failure_with_its_errcode() {
    let robot_rx = DingTalk::start("SECright", 20).await;
    let metrics = Metrics::new(&MetricsConfig::default());
    let (sink, m, shutdown) = start(
        robot(&robot_rx.url, &secret_file("wrong", "SECwrong")),
        &metrics,
    );
    let a = alert(1);
    sink.submit(&a, &AlertContext::from_alert(&a));
    wait_for("the refusal counted", Duration::from_secs(5), || {
        m.drops(DropReason::ReceiverError) == 1
    })
    .await;
    assert_eq!(
        robot_rx.refused(SIGN_MISMATCH),
        1,
        "refused once, not retried"
    );
    assert_eq!(m.receiver_errors(SIGN_MISMATCH), Some(1));
    assert_eq!(m.delivered_alerts.get(), 0);
    assert_eq!(m.deliveries.get(), 0);
    shutdown.cancel();
    sink.finish().await;
    let text = metrics.encode().expect("encode");
    assert!(
        text.contains(
            "egret_webhook_receiver_errors_total{endpoint=\"robot\",errcode=\"310000\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "egret_webhook_drops_total{endpoint=\"robot\",reason=\"receiver_error\"} 1\n"
        )
    );
}

/// With a limit above the robot's, the robot answers 130101: retried, and
/// never counted as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_too_fast_is_retried_and_never_counted_delivered() {
    let secret = "SECfast";
    let robot_rx = DingTalk::start(secret, 20).await;
    let metrics = Metrics::new(&MetricsConfig::default());
    let mut cfg = robot(&robot_rx.url, &secret_file("fast", secret));
    cfg.rate_limit = Some(RateLimitConfig {
        messages: 100,
        per: Duration::from_secs(60),
    });
    cfg.retry.max_retries = 2;
    cfg.retry.max_retry_after = Duration::from_millis(50);
    let (sink, m, shutdown) = start(cfg, &metrics);
    burst(&sink);
    wait_for("every alert settled", Duration::from_secs(10), || {
        m.delivered_alerts.get() + m.drops(DropReason::RetriesExhausted) == 30
    })
    .await;
    assert_eq!(robot_rx.accepted().len(), 20);
    assert_eq!(m.delivered_alerts.get(), 20);
    assert_eq!(m.drops(DropReason::RetriesExhausted), 10);
    assert_eq!(
        robot_rx.refused(SEND_TOO_FAST),
        30,
        "10 alerts, 3 attempts each"
    );
    assert_eq!(m.retries.get(), 20);
    shutdown.cancel();
    sink.finish().await;
}

/// `egret alert test`: one synthetic alert per endpoint, each reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_test_reports_every_endpoint() {
    let good = DingTalk::start("SECgood", 20).await;
    let bad = DingTalk::start("SECgood", 20).await;
    let yaml = format!(
        "custom_fields: {{cluster: test-cluster}}
webhooks:
  - name: good
    url: '{}'
    format: dingtalk
    min_priority: critical
    secret: {{file: {}}}
  - name: bad
    url: '{}'
    format: dingtalk
    secret: {{file: {}}}
",
        good.url,
        secret_file("test-good", "SECgood").display(),
        bad.url,
        secret_file("test-bad", "SECnot").display(),
    );
    let config = egret::config::Config::parse("alert-test.yaml", &yaml).expect("config");
    let mut out = Vec::new();
    let all_ok = egret::tools::alert_test(&config, &mut out)
        .await
        .expect("alert test");
    let report = String::from_utf8(out).expect("utf-8");
    println!("{report}");
    assert!(!all_ok, "{report}");
    assert!(report.contains("good: ok (1 attempt(s))"), "{report}");
    assert!(report.contains("bad: FAILED: receiver_error"), "{report}");
    let got = good.accepted();
    assert_eq!(got.len(), 1);
    println!("accepted: {}", got[0]);
    let text = got[0]["markdown"]["text"].as_str().unwrap_or_default();
    // Severe enough for the critical-only endpoint, and carrying the
    // custom field.
    assert!(
        text.contains("Critical") && text.contains("Egret test alert"),
        "{text}"
    );
    assert!(text.contains("- **cluster**: test-cluster"), "{text}");
    assert_eq!(bad.refused(SIGN_MISMATCH), 1);
}
