use std::net::Ipv4Addr;

use std::net::IpAddr;

use super::{
    alerts::{fmt_ip, fmt_u16},
    collectors::ProcessStats,
    *,
};
use crate::outputs::alert::{Alert, Priority};

fn alert(rule: &str, tags: &Arc<[Arc<str>]>) -> Alert {
    Alert {
        time: "2026-01-01T00:00:00.000000001Z".into(),
        rule: rule.into(),
        priority: Priority::Warning,
        output: "out".into(),
        output_fields: crate::outputs::alert::OutputFields::new(),
        tags: tags.clone(),
        source: "syscall",
        hostname: "node-1".into(),
    }
}

fn tags() -> Arc<[Arc<str>]> {
    vec![Arc::from("network"), Arc::from("mitre_exfiltration")].into()
}

fn ctx<'a>(pod: &'a str, ip: [u8; 4], port: u16) -> AlertContext<'a> {
    AlertContext {
        k8s_ns_name: "shop",
        k8s_pod_name: pod,
        container_name: "app",
        container_id: "0123456789ab",
        proc_name: "curl",
        dest: Some((IpAddr::V4(Ipv4Addr::from(ip)), port)),
    }
}

/// Sample lines of one series name (labels and value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .collect()
}

#[test]
fn alert_families_carry_workload_and_destination() {
    let m = Metrics::new(&MetricsConfig::default());
    let t = tags();
    let a = alert("Unexpected egress", &t);
    m.observe_alert(&a, &ctx("web-1", [203, 0, 113, 7], 443));
    m.observe_alert(&a, &ctx("web-1", [203, 0, 113, 7], 443));
    let text = m.encode().unwrap();
    assert!(text.ends_with("# EOF\n"));
    let alerts = samples(&text, "egret_alerts_total");
    assert_eq!(alerts.len(), 1, "{text}");
    for want in [
        r#"rule="Unexpected egress""#,
        r#"priority="Warning""#,
        r#"source="syscall""#,
        r#"tags="network,mitre_exfiltration""#,
        r#"k8s_ns_name="shop""#,
        r#"k8s_pod_name="web-1""#,
        r#"container_name="app""#,
    ] {
        assert!(alerts[0].contains(want), "{want} in {}", alerts[0]);
    }
    assert!(alerts[0].ends_with(" 2"));
    let dest = samples(&text, "egret_destination_alerts_total");
    assert_eq!(dest.len(), 1);
    assert!(dest[0].contains(r#"dest_ip="203.0.113.7",dest_port="443",proc_name="curl""#));
    assert!(samples(&text, "falcosecurity_falco_rules_matches_total").is_empty());
    assert!(!text.contains("falcosecurity_falco_rules_matches"));
}

#[test]
fn destination_family_is_capped_with_lru_eviction() {
    let config = MetricsConfig {
        destination_series_limit: 3,
        ..MetricsConfig::default()
    };
    let m = Metrics::new(&config);
    let t = tags();
    let a = alert("R", &t);
    for i in 0..10u8 {
        m.observe_alert(&a, &ctx("web-1", [198, 51, 100, i], 443));
    }
    // .9 was updated last; touch .7 again so .8 is the oldest survivor.
    m.observe_alert(&a, &ctx("web-1", [198, 51, 100, 7], 443));
    m.observe_alert(&a, &ctx("web-1", [198, 51, 100, 42], 443));
    let text = m.encode().unwrap();
    let dest = samples(&text, "egret_destination_alerts_total");
    assert_eq!(dest.len(), 3, "{text}");
    let ips: Vec<_> = dest
        .iter()
        .filter_map(|l| l.split("dest_ip=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(ips, ["198.51.100.42", "198.51.100.7", "198.51.100.9"]);
    assert!(
        text.contains(
            "egret_metrics_series_evictions_total{family=\"egret_destination_alerts\"} 8\n"
        )
    );
    assert!(text.contains("egret_metrics_series{family=\"egret_destination_alerts\"} 3\n"));
    assert!(text.contains("egret_metrics_series_limit{family=\"egret_destination_alerts\"} 3\n"));
}

#[test]
fn workload_labels_fold_into_other_and_are_counted() {
    let config = MetricsConfig {
        label_value_limit: 2,
        ..MetricsConfig::default()
    };
    let m = Metrics::new(&config);
    let t = tags();
    let a = alert("R", &t);
    for pod in ["p1", "p2", "p3", "p4", "p1"] {
        m.observe_alert(&a, &ctx(pod, [192, 0, 2, 1], 53));
    }
    let text = m.encode().unwrap();
    let alerts = samples(&text, "egret_alerts_total");
    assert_eq!(alerts.len(), 3, "{text}");
    assert!(
        alerts
            .iter()
            .any(|l| l.contains(r#"k8s_pod_name="other""#) && l.ends_with(" 2"))
    );
    assert!(text.contains(
        "egret_metrics_label_overflow_total{family=\"egret_alerts\",label=\"k8s_pod_name\"} 2\n"
    ));
}

#[test]
fn falco_compat_family_when_enabled() {
    let config = MetricsConfig {
        falco_compat: true,
        ..MetricsConfig::default()
    };
    let m = Metrics::new(&config);
    let t = tags();
    m.observe_alert(&alert("R", &t), &AlertContext::default());
    let text = m.encode().unwrap();
    assert!(text.contains("# TYPE falcosecurity_falco_rules_matches counter\n"));
    assert_eq!(
        samples(&text, "falcosecurity_falco_rules_matches_total"),
        [
            r#"falcosecurity_falco_rules_matches_total{rule_name="R",priority="4",source="syscall"} 1"#
        ]
    );
    // No destination facts at all: only the rule-level families count it.
    assert!(samples(&text, "egret_destination_alerts_total").is_empty());
}

#[test]
fn context_from_output_fields() {
    let t = tags();
    let mut a = alert("R", &t);
    for (k, v) in [
        ("k8s.ns.name", serde_json::json!("ns")),
        ("k8s.pod.name", serde_json::json!("pod")),
        ("container.name", serde_json::json!("c")),
        ("proc.name", serde_json::json!("curl")),
        ("fd.sip", serde_json::json!("2001:db8::1")),
        ("fd.sport", serde_json::json!(8443)),
    ] {
        a.output_fields.insert(Arc::from(k), v);
    }
    let c = AlertContext::from_alert(&a);
    assert_eq!(
        (c.k8s_ns_name, c.k8s_pod_name, c.container_name),
        ("ns", "pod", "c")
    );
    assert_eq!(c.dest, Some(("2001:db8::1".parse().unwrap(), 8443)));
    a.output_fields
        .insert(Arc::from("fd.sport"), serde_json::Value::Null);
    assert_eq!(AlertContext::from_alert(&a).dest, None);
}

#[test]
fn kernel_counters_verdicts_queues_and_pipeline() {
    let m = Metrics::new(&MetricsConfig::default());
    let mut counters = [HookCounters::default(); HOOKS];
    counters[0] = HookCounters {
        seen: 10,
        ignored: 4,
        emitted: 5,
        ringbuf_full: 1,
        repeat_of_connect: 0,
    };
    counters[2].ringbuf_full = 2;
    // The exec slot's drops are reported per hook but are not egress events.
    counters[Hook::Exec as usize].ringbuf_full = 5;
    m.set_kernel_counters(counters);
    m.observe_events(Verdict::NoMatch, 7);
    m.observe_events(Verdict::Alerted, 1);
    m.observe_evaluation(Duration::from_micros(3));
    m.enrichment_failed(crate::pipeline::enrich::EnrichFailure::ContainerNotFound);
    m.rules_reloaded(12);
    m.rules_reload_failed();
    let (tx, _rx) = mpsc::channel::<u8>(8);
    tx.try_send(1).unwrap();
    tx.try_send(2).unwrap();
    m.watch_queue("rules", &tx);
    let text = m.encode().unwrap();
    for line in [
        "egret_kernel_seen_total{hook=\"connect4\"} 10\n",
        "egret_kernel_ringbuf_drops_total{hook=\"sendmsg4\"} 2\n",
        "egret_kernel_ringbuf_drops_total{hook=\"exec\"} 5\n",
        "egret_egress_events_total{verdict=\"no_match\"} 7\n",
        "egret_egress_events_total{verdict=\"alerted\"} 1\n",
        "egret_egress_events_total{verdict=\"ignored_in_kernel\"} 4\n",
        "egret_egress_events_total{verdict=\"lost_in_kernel\"} 3\n",
        "egret_rule_evaluation_duration_seconds_count 1\n",
        "egret_enrichment_failures_total{reason=\"container_not_found\"} 1\n",
        "egret_rule_reloads_total{result=\"failure\"} 1\n",
        "egret_rules_loaded 12\n",
        "egret_rules_last_reload_successful 0\n",
        "egret_queue_depth{queue=\"rules\"} 2\n",
        "egret_queue_capacity{queue=\"rules\"} 8\n",
        "egret_build_info{version=\"",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // A dropped channel stops being reported instead of keeping it open.
    drop(tx);
    drop(_rx);
    assert!(!m.encode().unwrap().contains("queue=\"rules\""));
}

#[test]
fn rule_reload_results_start_at_zero() {
    // A first failed reload must be a 0 -> 1 step Prometheus can see.
    let text = Metrics::new(&MetricsConfig::default()).encode().unwrap();
    let mut reloads = samples(&text, "egret_rule_reloads_total");
    // A family's series come out in hash order.
    reloads.sort_unstable();
    assert_eq!(
        reloads,
        [
            "egret_rule_reloads_total{result=\"failure\"} 0",
            "egret_rule_reloads_total{result=\"success\"} 0",
        ],
        "{text}"
    );
}

#[test]
fn kernel_reader_runs_at_scrape_and_counts_failures() {
    let m = Metrics::new(&MetricsConfig::default());
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    m.set_kernel_reader(move || {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        (n == 0).then(|| {
            let mut c = [HookCounters::default(); HOOKS];
            c[1].emitted = 9;
            c
        })
    });
    assert!(
        m.encode()
            .unwrap()
            .contains("egret_kernel_emitted_total{hook=\"connect6\"} 9\n")
    );
    let second = m.encode().unwrap();
    // The failed read keeps the last values and is counted.
    assert!(second.contains("egret_kernel_emitted_total{hook=\"connect6\"} 9\n"));
    assert!(second.contains("egret_kernel_map_read_errors_total{map=\"EGRET_COUNTERS\"} 1\n"));
}

#[test]
fn webhook_handles_share_the_exported_counters() {
    let m = Metrics::new(&MetricsConfig::default());
    let w = m.webhook("soar");
    w.deliveries.inc();
    w.dropped(DropReason::QueueFull, 3);
    w.observe_request(Duration::from_millis(12));
    assert_eq!(m.webhook("soar").drops(DropReason::QueueFull), 3);
    let text = m.encode().unwrap();
    assert!(text.contains("egret_webhook_deliveries_total{endpoint=\"soar\"} 1\n"));
    assert!(
        text.contains("egret_webhook_drops_total{endpoint=\"soar\",reason=\"queue_full\"} 3\n")
    );
    assert!(text.contains("egret_webhook_drops_total{endpoint=\"soar\",reason=\"shutdown\"} 0\n"));
    assert!(text.contains("egret_webhook_request_duration_seconds_count{endpoint=\"soar\"} 1\n"));
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new(&MetricsConfig::default());
    let t = tags();
    let mut c = ctx("p", [192, 0, 2, 1], 1);
    c.proc_name = "evil\"} 1\nfake_metric 9";
    m.observe_alert(&alert("R", &t), &c);
    let text = m.encode().unwrap();
    assert!(
        !text.lines().any(|l| l.starts_with("fake_metric")),
        "{text}"
    );
    assert!(text.contains(r#"proc_name="evil\"} 1\nfake_metric 9""#));
}

#[test]
fn addresses_and_ports_format_like_display() {
    let mut buf = [0u8; 48];
    for ip in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.200.9",
        "2001:db8::1",
        "::ffff:1.2.3.4",
    ] {
        let parsed: IpAddr = ip.parse().unwrap();
        assert_eq!(fmt_ip(&mut buf, parsed), parsed.to_string());
    }
    let mut port = [0u8; 8];
    for p in [0u16, 7, 80, 443, 65535] {
        assert_eq!(fmt_u16(&mut port, p), p.to_string());
    }
}

#[test]
fn process_stats_parse_procfs() {
    let stat =
        "4242 (egr et) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 123 456";
    let p = ProcessStats::parse(
        stat,
        "5000 1200 300 1 0 800 0",
        "cpu 1 2\nbtime 1700000000\n",
        100,
        4096,
    )
    .unwrap();
    assert_eq!(
        p,
        ProcessStats {
            cpu_seconds: 3.0,
            rss_bytes: 1200 * 4096,
            start_time_seconds: 1_700_000_010.0,
        }
    );
    assert!(ProcessStats::parse("garbage", "", "", 100, 4096).is_none());
}

/// `cargo test --release -p egret --lib metrics::tests::observe_cost -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn observe_cost() {
    let m = Metrics::new(&MetricsConfig {
        falco_compat: true,
        ..MetricsConfig::default()
    });
    let t = tags();
    let a = alert("Unexpected outbound connection", &t);
    let pods: Vec<String> = (0..64).map(|i| format!("checkout-7d9f8c-{i:05}")).collect();
    let contexts: Vec<AlertContext<'_>> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| ctx(p, [203, 0, 113, i as u8], 443))
        .collect();
    for c in &contexts {
        m.observe_alert(&a, c);
    }
    let rounds = 200_000;
    let start = Instant::now();
    for i in 0..rounds {
        m.observe_alert(&a, &contexts[i % contexts.len()]);
    }
    let per_alert = start.elapsed().as_nanos() as f64 / rounds as f64;
    let start = Instant::now();
    for _ in 0..rounds {
        m.observe_events(Verdict::NoMatch, 1);
    }
    let per_event = start.elapsed().as_nanos() as f64 / rounds as f64;
    let start = Instant::now();
    for _ in 0..rounds {
        m.observe_evaluation(Duration::from_nanos(800));
    }
    let per_eval = start.elapsed().as_nanos() as f64 / rounds as f64;
    let start = Instant::now();
    let text = m.encode().unwrap();
    let encode = start.elapsed();
    println!(
        "observe_alert (existing series, falco compat on): {per_alert:.0} ns; \
         observe_events: {per_event:.1} ns; observe_evaluation: {per_eval:.1} ns; \
         encode {} bytes in {encode:?}",
        text.len()
    );
}

/// Label names of one sample line (`name{a="x",b="y"} 1`), quotes honoured.
fn label_names(line: &str) -> Vec<String> {
    let Some(start) = line.find('{') else {
        return Vec::new();
    };
    let (mut names, mut name, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in line[start + 1..].chars() {
        match (quoted, c) {
            (true, '\\') if !escaped => escaped = true,
            (true, '"') if !escaped => quoted = false,
            (true, _) => escaped = false,
            (false, '"') => quoted = true,
            (false, '=') => names.push(std::mem::take(&mut name)),
            (false, ',') => {}
            (false, '}') => break,
            (false, c) => name.push(c),
        }
    }
    names
}

#[test]
fn custom_fields_label_every_series_and_never_collide() {
    let config = MetricsConfig {
        falco_compat: true,
        const_labels: vec![("cluster".into(), "eu-1".into())],
        ..MetricsConfig::default()
    };
    let m = Metrics::new(&config);
    let t = tags();
    m.observe_alert(
        &alert("Unexpected egress", &t),
        &ctx("web-1", [203, 0, 113, 7], 443),
    );
    m.set_kernel_counters([HookCounters::default(); HOOKS]);
    m.observe_events(Verdict::Alerted, 1);
    m.observe_evaluation(Duration::from_micros(3));
    m.enrichment_failed(crate::pipeline::enrich::EnrichFailure::ContainerNotFound);
    m.rules_reloaded(1);
    let w = m.webhook("soar");
    w.deliveries.inc();
    w.dropped(DropReason::QueueFull, 1);
    w.observe_request(Duration::from_millis(12));
    let (tx, _rx) = mpsc::channel::<u8>(8);
    m.watch_queue("events", &tx);
    let text = m.encode().unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(lines.len() > 40, "{text}");
    for line in lines {
        let names = label_names(line);
        assert!(
            names.iter().filter(|n| *n == "cluster").count() == 1
                && line.contains(r#"cluster="eu-1""#),
            "no custom label on {line}"
        );
        for name in names.iter().filter(|n| *n != "cluster") {
            assert!(
                RESERVED_LABELS.contains(&name.as_str()),
                "label `{name}` of {line} is missing from RESERVED_LABELS"
            );
        }
    }
}
