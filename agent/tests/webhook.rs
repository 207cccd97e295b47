//! Webhook delivery against real HTTP(S) receivers on loopback: retries,
//! Retry-After, isolation between endpoints, TLS with a private CA and
//! client certificates, HMAC signatures, coalescing and graceful flush.
#[path = "webhook/receiver.rs"]
mod receiver;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use egret::{
    metrics::{AlertContext, DropReason, Metrics, MetricsConfig},
    outputs::{
        alert::{Alert, Priority},
        webhook::{
            COALESCED_FIELD, EndpointConfig, HmacConfig, PayloadFormat, SecretSource, WebhookSink,
        },
    },
};
use receiver::{Got, Script, TestPki, receiver};
use tokio_util::sync::CancellationToken;

fn alert(rule: &str, n: u32) -> Arc<Alert> {
    let fields: egret::outputs::alert::OutputFields = [
        (Arc::from("fd.sip"), serde_json::json!("203.0.113.10")),
        (Arc::from("fd.sport"), serde_json::json!(443)),
        (Arc::from("proc.name"), serde_json::json!("curl")),
        (Arc::from("container.id"), serde_json::json!("abc123abc123")),
        (Arc::from("evt.num"), serde_json::json!(n)),
    ]
    .into();
    Arc::new(Alert {
        time: "2026-05-01T12:00:00.000000001Z".into(),
        rule: rule.into(),
        priority: Priority::Critical,
        output: format!("connection to 203.0.113.10:443 by curl (n={n})"),
        output_fields: fields,
        tags: vec![Arc::from("network")].into(),
        source: "syscall",
        hostname: "node-a".into(),
    })
}

/// Fast retries, no coalescing, no proxies: what most tests want.
fn endpoint(url: &str) -> EndpointConfig {
    let mut cfg = EndpointConfig::from_url(url);
    cfg.proxy_from_env = false;
    cfg.coalesce_window = Duration::ZERO;
    cfg.timeout = Duration::from_secs(2);
    cfg.retry.initial_backoff = Duration::from_millis(20);
    cfg.retry.max_backoff = Duration::from_millis(100);
    cfg
}

fn submit(sink: &WebhookSink, a: &Arc<Alert>) {
    sink.submit(a, &AlertContext::from_alert(a));
}

fn start(configs: &[EndpointConfig], grace: Duration) -> (WebhookSink, CancellationToken) {
    let shutdown = CancellationToken::new();
    let sink = WebhookSink::start(configs, None, shutdown.clone(), grace).expect("valid endpoints");
    (sink, shutdown)
}

fn json(got: &Got) -> serde_json::Value {
    serde_json::from_slice(&got.body).expect("JSON body")
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("egret-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_signed_falco_payload_with_auth_headers() {
    let secret = b"hmac-test-secret";
    let mut rx = receiver(Script::Ok, None, Some(("x-signature-256", secret))).await;
    let mut cfg = endpoint(&rx.url);
    cfg.name = Some("soar".into());
    cfg.headers.insert("X-Tenant".into(), "blue".into());
    cfg.bearer_token = Some(SecretSource::File(temp_file("token", b"tok-123\n")));
    cfg.hmac = Some(HmacConfig {
        secret: SecretSource::File(temp_file("hmac", secret)),
        header: "X-Signature-256".into(),
    });
    let metrics = Metrics::new(&MetricsConfig::default());
    let shutdown = CancellationToken::new();
    let sink = WebhookSink::start(
        &[cfg],
        Some(&metrics),
        shutdown.clone(),
        Duration::from_secs(2),
    )
    .expect("valid endpoint");

    let mut latencies = Vec::new();
    for n in 0..20 {
        let sent = Instant::now();
        submit(&sink, &alert("Unexpected egress", n));
        let got = rx.next().await;
        latencies.push(got.at.duration_since(sent));
        assert_eq!(got.signature_ok, Some(true), "HMAC must verify");
        assert_eq!(got.header("authorization"), Some("Bearer tok-123"));
        assert_eq!(got.header("x-tenant"), Some("blue"));
        assert_eq!(got.header("content-type"), Some("application/json"));
        let v = json(&got);
        assert_eq!(v["rule"], "Unexpected egress");
        assert_eq!(v["priority"], "Critical");
        assert_eq!(v["output_fields"]["evt.num"], n);
        assert_eq!(v["hostname"], "node-a");
        assert_eq!(v["uuid"].as_str().map(str::len), Some(36));
    }
    latencies.sort();
    println!(
        "loopback delivery latency over 20 alerts: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[10], latencies[19]
    );
    shutdown.cancel();
    sink.finish().await;
    let text = metrics.encode().expect("encode");
    assert!(
        text.contains("egret_webhook_deliveries_total{endpoint=\"soar\"} 20\n"),
        "{text}"
    );
    assert!(text.contains("egret_webhook_drops_total{endpoint=\"soar\",reason=\"shutdown\"} 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_bearer_token_and_chat_formats() {
    // Cargo sets this for every test process; its value stands in for a token.
    let Ok(value) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let mut slack = receiver(Script::Ok, None, None).await;
    let mut ding = receiver(Script::Ok, None, None).await;
    let mut s = endpoint(&slack.url);
    s.format = PayloadFormat::Slack;
    s.bearer_token = Some(SecretSource::Env("CARGO_MANIFEST_DIR".into()));
    let mut d = endpoint(&ding.url);
    d.format = PayloadFormat::Dingtalk;
    let (sink, shutdown) = start(&[s, d], Duration::from_secs(1));
    submit(&sink, &alert("R", 1));
    let got = slack.next().await;
    assert_eq!(
        got.header("authorization").map(str::to_owned),
        Some(format!("Bearer {value}"))
    );
    assert!(json(&got)["attachments"][0]["fields"].is_array());
    assert_eq!(json(&ding.next().await)["msgtype"], "markdown");
    shutdown.cancel();
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_429_and_5xx_honouring_retry_after() {
    let mut rx = receiver(
        Script::Fail {
            times: 2,
            first_status: 429,
            retry_after: Some(1),
            then_status: 500,
        },
        None,
        None,
    )
    .await;
    let (sink, shutdown) = start(&[endpoint(&rx.url)], Duration::from_secs(1));
    let t0 = Instant::now();
    submit(&sink, &alert("R", 1));
    let first = rx.next().await;
    let second = rx.next().await;
    let third = rx.next().await;
    // 429 said "Retry-After: 1": the second attempt waited a whole second;
    // the 500 had no Retry-After, so the third came after a short backoff.
    let waited = second.at.duration_since(first.at);
    assert!(
        waited >= Duration::from_millis(990),
        "Retry-After ignored: {waited:?}"
    );
    assert!(third.at.duration_since(second.at) < Duration::from_millis(500));
    assert_eq!(json(&third)["rule"], "R");
    shutdown.cancel();
    let m = sink
        .endpoint_metrics(sink.endpoint_names().next().unwrap_or_default())
        .cloned();
    sink.finish().await;
    let m = m.expect("endpoint");
    assert_eq!((m.retries.get(), m.deliveries.get()), (2, 1));
    assert_eq!(rx.hits(), 3);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_dropped_without_retry_and_exhaustion_is_counted() {
    let rejecting = receiver(Script::Always(400), None, None).await;
    let failing = receiver(Script::Always(503), None, None).await;
    let mut a = endpoint(&rejecting.url);
    a.name = Some("rejecting".into());
    let mut b = endpoint(&failing.url);
    b.name = Some("failing".into());
    b.retry.max_retries = 2;
    let (sink, shutdown) = start(&[a, b], Duration::from_secs(2));
    submit(&sink, &alert("R", 1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rej = sink
        .endpoint_metrics("rejecting")
        .cloned()
        .expect("rejecting");
    let fail = sink.endpoint_metrics("failing").cloned().expect("failing");
    shutdown.cancel();
    sink.finish().await;
    assert_eq!(rejecting.hits(), 1, "a 400 is not retried");
    assert_eq!(rej.drops(DropReason::Rejected), 1);
    assert_eq!(failing.hits(), 3, "first attempt plus two retries");
    assert_eq!(fail.drops(DropReason::RetriesExhausted), 1);
    assert_eq!(fail.retries.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_endpoint_never_delays_the_healthy_one() {
    let mut healthy = receiver(Script::Ok, None, None).await;
    let hanging = receiver(Script::Hang, None, None).await;
    let mut h = endpoint(&healthy.url);
    h.name = Some("healthy".into());
    let mut stuck = endpoint(&hanging.url);
    stuck.name = Some("stuck".into());
    stuck.timeout = Duration::from_secs(1);
    stuck.queue_capacity = 4;
    stuck.max_in_flight = 1;
    stuck.retry.max_retries = 1;
    let (sink, shutdown) = start(&[stuck, h], Duration::from_millis(300));

    let total = 30;
    let mut worst_submit = Duration::ZERO;
    let mut worst_delivery = Duration::ZERO;
    for n in 0..total {
        let t = Instant::now();
        submit(&sink, &alert("R", n));
        worst_submit = worst_submit.max(t.elapsed());
        let got = healthy.next().await;
        worst_delivery = worst_delivery.max(got.at.duration_since(t));
    }
    println!(
        "with a hanging peer: worst submit {worst_submit:?}, worst healthy delivery {worst_delivery:?}"
    );
    // Waiting on the stuck endpoint would cost its 1 s timeout; the bounds
    // leave room for a loaded CI machine.
    assert!(
        worst_submit < Duration::from_millis(100),
        "submit must not block: {worst_submit:?}"
    );
    assert!(
        worst_delivery < Duration::from_millis(500),
        "healthy delayed: {worst_delivery:?}"
    );

    let stuck_m = sink.endpoint_metrics("stuck").cloned().expect("stuck");
    let healthy_m = sink.endpoint_metrics("healthy").cloned().expect("healthy");
    assert!(stuck_m.drops(DropReason::QueueFull) >= u64::from(total) - 6);
    let t = Instant::now();
    shutdown.cancel();
    sink.finish().await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "finish took {:?}",
        t.elapsed()
    );
    assert_eq!(healthy_m.delivered_alerts.get(), u64::from(total));
    // Every alert handed to the stuck endpoint is accounted for.
    let accounted: u64 = DropReason::ALL
        .iter()
        .map(|r| stuck_m.drops(*r))
        .sum::<u64>()
        + stuck_m.delivered_alerts.get();
    assert_eq!(accounted, u64::from(total));
    assert!(hanging.hits() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_private_ca_and_mutual_tls() {
    let pki = TestPki::new();
    let mut server = receiver(Script::Ok, Some(pki.server_tls(false)), None).await;
    let mut mtls = receiver(Script::Ok, Some(pki.server_tls(true)), None).await;
    let ca = temp_file("ca.pem", pki.ca_pem.as_bytes());
    let cert = temp_file("client.pem", pki.client_cert_pem.as_bytes());
    let key = temp_file("client.key", pki.client_key_pem.as_bytes());

    let mut trusted = endpoint(&server.https_url());
    trusted.name = Some("trusted".into());
    trusted.tls.system_roots = false;
    trusted.tls.ca_file = Some(ca.clone());
    // Only the system roots: the private CA is unknown, so TLS must fail.
    let mut untrusted = endpoint(&server.https_url());
    untrusted.name = Some("untrusted".into());
    untrusted.retry.max_retries = 0;
    let mut with_cert = endpoint(&mtls.https_url());
    with_cert.name = Some("with-cert".into());
    with_cert.tls.ca_file = Some(ca.clone());
    with_cert.tls.client_cert_file = Some(cert);
    with_cert.tls.client_key_file = Some(key);
    let mut without_cert = endpoint(&mtls.https_url());
    without_cert.name = Some("without-cert".into());
    without_cert.tls.ca_file = Some(ca);
    without_cert.retry.max_retries = 0;

    let (sink, shutdown) = start(
        &[trusted, untrusted, with_cert, without_cert],
        Duration::from_secs(1),
    );
    submit(&sink, &alert("R", 1));
    assert_eq!(json(&server.next().await)["rule"], "R");
    let got = mtls.next().await;
    assert_eq!(got.client_cert, Some(true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = |n: &str| sink.endpoint_metrics(n).cloned().expect("endpoint");
    let (untrusted, without) = (m("untrusted"), m("without-cert"));
    shutdown.cancel();
    sink.finish().await;
    assert_eq!(
        untrusted.drops(DropReason::RetriesExhausted),
        1,
        "unknown CA must fail"
    );
    assert_eq!(
        without.drops(DropReason::RetriesExhausted),
        1,
        "mTLS without a cert must fail"
    );
    assert_eq!((server.hits(), mtls.hits()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_storms_are_coalesced() {
    // The window is long enough that a loaded CI machine still takes in the
    // whole burst before it closes.
    let window = Duration::from_millis(1500);
    let mut rx = receiver(Script::Ok, None, None).await;
    let mut cfg = endpoint(&rx.url);
    cfg.coalesce_window = window;
    let (sink, shutdown) = start(&[cfg], Duration::from_secs(1));
    let t0 = Instant::now();
    for n in 0..50 {
        submit(&sink, &alert("Storm", n));
    }
    submit(&sink, &alert("Other rule", 0));
    // Both go out at once, concurrently, in either order.
    let mut firsts = [rx.next().await, rx.next().await];
    firsts.sort_by_key(|g| json(g)["rule"].as_str().map(str::to_owned));
    let [other, first] = firsts;
    assert!(
        first.at.duration_since(t0) < Duration::from_millis(500),
        "first goes out at once"
    );
    assert_eq!(json(&first)["output_fields"]["evt.num"], 0);
    assert!(json(&first)["output_fields"].get(COALESCED_FIELD).is_none());
    assert_eq!(json(&other)["rule"], "Other rule");
    let summary = rx.next().await;
    let waited = summary.at.duration_since(t0);
    assert!(
        waited >= window - Duration::from_millis(10),
        "summary before the window closed: {waited:?}"
    );
    let v = json(&summary);
    assert_eq!(v["output_fields"][COALESCED_FIELD], 49);
    assert_eq!(
        v["output_fields"]["evt.num"], 49,
        "the summary shows the latest alert"
    );
    // Quiet afterwards: nothing more, and the next one goes out at once.
    // (The window renewed at the summary and closes empty one window later.)
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    assert_eq!(rx.hits(), 3);
    let t1 = Instant::now();
    submit(&sink, &alert("Storm", 99));
    assert!(rx.next().await.at.duration_since(t1) < Duration::from_millis(500));
    let m = sink
        .endpoint_metrics(sink.endpoint_names().next().unwrap_or_default())
        .cloned();
    shutdown.cancel();
    sink.finish().await;
    let m = m.expect("endpoint");
    assert_eq!(
        (
            m.coalesced.get(),
            m.delivered_alerts.get(),
            m.deliveries.get()
        ),
        (49, 52, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_within_grace_and_counts_the_rest() {
    // A receiver that takes 100 ms per request, one request at a time.
    let mut slow = receiver(Script::Delay(Duration::from_millis(100)), None, None).await;
    let mut cfg = endpoint(&slow.url);
    cfg.max_in_flight = 1;
    cfg.coalesce_window = Duration::from_secs(30);
    let (sink, shutdown) = start(&[cfg.clone()], Duration::from_secs(5));
    for n in 0..8 {
        submit(&sink, &alert(&format!("R{n}"), n));
    }
    // Two of a kind: the second waits in a 30 s window, flushed at shutdown.
    submit(&sink, &alert("R0", 100));
    let t = Instant::now();
    shutdown.cancel();
    let m = sink
        .endpoint_metrics(sink.endpoint_names().next().unwrap_or_default())
        .cloned();
    sink.finish().await;
    let m = m.expect("endpoint");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "flush took {:?}",
        t.elapsed()
    );
    assert_eq!(m.delivered_alerts.get(), 9);
    let mut summaries = 0;
    for _ in 0..9 {
        if json(&slow.next().await)["output_fields"]
            .get(COALESCED_FIELD)
            .is_some()
        {
            summaries += 1;
        }
    }
    assert_eq!(summaries, 1);

    // Too short a grace for a hanging receiver: everything is counted.
    let hanging = receiver(Script::Hang, None, None).await;
    let mut cfg = endpoint(&hanging.url);
    cfg.max_in_flight = 2;
    cfg.timeout = Duration::from_secs(30);
    let (sink, shutdown) = start(&[cfg], Duration::from_millis(300));
    for n in 0..10 {
        submit(&sink, &alert("R", n));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = sink
        .endpoint_metrics(sink.endpoint_names().next().unwrap_or_default())
        .cloned();
    let t = Instant::now();
    shutdown.cancel();
    sink.finish().await;
    let m = m.expect("endpoint");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(m.drops(DropReason::Shutdown), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_priority_filters_per_endpoint() {
    let mut all = receiver(Script::Ok, None, None).await;
    let severe = receiver(Script::Ok, None, None).await;
    let mut s = endpoint(&severe.url);
    s.min_priority = Priority::Critical;
    let (sink, shutdown) = start(&[endpoint(&all.url), s], Duration::from_secs(1));
    let mut notice = (*alert("R", 1)).clone();
    notice.priority = Priority::Notice;
    submit(&sink, &Arc::new(notice));
    assert_eq!(json(&all.next().await)["priority"], "Notice");
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    sink.finish().await;
    assert_eq!(severe.hits(), 0);
}
