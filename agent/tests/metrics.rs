//! The `/metrics` exposition: valid OpenMetrics (checked by a parser here,
//! and by `promtool check metrics` when installed), served over HTTP on
//! loopback, and naming every metric the deploy/ dashboard and alert rules
//! query.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use egret::{
    metrics::{self, AlertContext, DropReason, Metrics, MetricsConfig, Verdict, promql},
    outputs::alert::{Alert, Priority},
    pipeline::enrich::EnrichFailure,
};
use egret_common::{Hook, HookCounters};

use egret_testkit::repo_root;

/// Every family with at least one sample.
fn populated() -> Arc<Metrics> {
    let m = Metrics::new(&MetricsConfig {
        falco_compat: true,
        ..MetricsConfig::default()
    });
    let alert = Alert {
        time: "2026-01-01T00:00:00.000000000Z".into(),
        rule: "Unexpected \"egress\" \\ test".into(),
        priority: Priority::Critical,
        output: "out".into(),
        output_fields: egret::outputs::alert::OutputFields::new(),
        tags: vec![Arc::from("network")].into(),
        source: "syscall",
        hostname: "node".into(),
    };
    let ctx = AlertContext {
        k8s_ns_name: "shop",
        k8s_pod_name: "web-1",
        container_name: "app",
        container_id: "abc",
        proc_name: "curl",
        dest: Some((IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 443)),
    };
    m.observe_alert(&alert, &ctx);
    m.observe_alert(
        &alert,
        &AlertContext {
            dest: Some(("2001:db8::1".parse().expect("ip"), 53)),
            ..ctx
        },
    );
    for v in [Verdict::Alerted, Verdict::NoMatch, Verdict::DecodeError] {
        m.observe_events(v, 3);
    }
    m.observe_audit_dropped(3);
    m.observe_evaluation(Duration::from_nanos(900));
    m.observe_evaluation(Duration::from_micros(40));
    m.enrichment_failed(EnrichFailure::CgroupUnknown);
    m.dns.message(
        egret::pipeline::decode::DnsDirection::Query,
        Some("shop"),
        "shop.example",
    );
    m.rules_reloaded(7);
    let mut k = [HookCounters::default(); Hook::COUNT as usize];
    for (i, c) in k.iter_mut().enumerate() {
        let i = i as u64;
        *c = HookCounters {
            seen: 10 + i,
            ignored: 1,
            emitted: 8,
            ringbuf_full: i,
            repeat_of_connect: 1,
        };
    }
    m.set_kernel_counters(k);
    let w = m.webhook("soar");
    w.deliveries.inc();
    w.delivered_alerts.inc();
    w.retries.inc();
    w.coalesced.inc();
    w.dropped(DropReason::QueueFull, 2);
    w.observe_request(Duration::from_millis(30));
    m.watch_queue_with("rules", || Some((3, 64)));
    m
}

#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// A strict reader of the OpenMetrics text format: metadata before
/// samples, families contiguous and unique, sample names matching their
/// family's type, label syntax and escaping, values, histogram buckets
/// cumulative up to `+Inf`, and `# EOF` last.
fn parse_openmetrics(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let body = text.strip_suffix("# EOF\n").ok_or("missing final # EOF")?;
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut seen_series = HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kw, name, rest) = (
                parts.next(),
                parts.next().ok_or_else(|| err("no name"))?,
                parts.next(),
            );
            if current.as_deref() != Some(name) {
                if families.contains_key(name) {
                    return Err(err("family appears twice"));
                }
                current = Some(name.to_owned());
            }
            match kw {
                Some("TYPE") => {
                    let kind = rest.ok_or_else(|| err("no type"))?;
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                        "gaugehistogram",
                    ]
                    .contains(&kind)
                    {
                        return Err(err("unknown type"));
                    }
                    families.insert(
                        name.to_owned(),
                        Family {
                            kind: kind.to_owned(),
                            samples: Vec::new(),
                        },
                    );
                }
                Some("HELP") => {}
                Some("UNIT") => {
                    let unit = rest.ok_or_else(|| err("no unit"))?;
                    if !name.ends_with(&format!("_{unit}")) {
                        return Err(err("name must end with its unit"));
                    }
                }
                _ => return Err(err("unknown metadata")),
            }
            check_name(name).map_err(|e| err(&e))?;
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (
                &series[..i],
                parse_labels(
                    series[i..]
                        .strip_suffix('}')
                        .ok_or_else(|| err("unclosed {"))?,
                )
                .map_err(|e| err(&e))?,
            ),
            None => (series, BTreeMap::new()),
        };
        check_name(name).map_err(|e| err(&e))?;
        let fam_name = current
            .clone()
            .ok_or_else(|| err("sample before any TYPE"))?;
        let fam = families
            .get_mut(&fam_name)
            .ok_or_else(|| err("sample before TYPE"))?;
        let suffix = name
            .strip_prefix(fam_name.as_str())
            .ok_or_else(|| err("sample outside its family"))?;
        let allowed: &[&str] = match fam.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(err("suffix not allowed for the family's type"));
        }
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(err("bucket without le"));
        }
        if fam.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err("negative or NaN counter"));
        }
        if !seen_series.insert(series.to_owned()) {
            return Err(err("duplicate series"));
        }
        fam.samples.push((name.to_owned(), labels, value));
    }
    for (name, fam) in &families {
        if fam.kind == "histogram" {
            check_histogram(name, fam)?;
        }
    }
    Ok(families)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("bad name {name}"))
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        check_name(name)?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, '\\')) => value.push('\\'),
                    _ => return Err("bad escape".into()),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) | None => return Err("unterminated label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

fn check_histogram(name: &str, fam: &Family) -> Result<(), String> {
    let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for (sample, labels, value) in &fam.samples {
        let mut rest = labels.clone();
        let le = rest.remove("le");
        let key = format!("{rest:?}");
        if sample.ends_with("_bucket") {
            let le = le.ok_or("bucket without le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("{name}: bad le {le}"))?
            };
            by_series.entry(key).or_default().push((bound, *value));
        } else if sample.ends_with("_count") {
            counts.insert(key, *value);
        }
    }
    for (key, buckets) in by_series {
        if !buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        {
            return Err(format!(
                "{name}{key}: buckets not increasing and cumulative"
            ));
        }
        let last = buckets.last().ok_or("no buckets")?;
        if last.0 != f64::INFINITY || counts.get(&key) != Some(&last.1) {
            return Err(format!("{name}{key}: +Inf bucket missing or != _count"));
        }
    }
    Ok(())
}

/// promtool's `check metrics` reads the Prometheus text format, where a
/// counter's metadata names the `_total` series and there is no `# UNIT` or
/// `# EOF`; this is the same exposition in that format, so its naming lints
/// run on what Prometheus stores.
fn prometheus_text(openmetrics: &str) -> String {
    let mut counters = HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# TYPE ", "# HELP "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(meta.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn promtool() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/promtool");
    path.exists().then_some(path)
}

fn run_promtool(args: &[&str], stdin: Option<&str>, cwd: &Path) -> (bool, String) {
    let Some(bin) = promtool() else {
        eprintln!(
            "skipping promtool {}: not installed (Debian package prometheus)",
            args.join(" ")
        );
        return (true, "promtool not installed".into());
    };
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn exposition_is_valid_openmetrics() {
    let text = populated().encode().expect("encode");
    let families = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in [
        ("egret_alerts", "counter"),
        ("egret_destination_alerts", "counter"),
        ("falcosecurity_falco_rules_matches", "counter"),
        ("egret_egress_events", "counter"),
        ("egret_kernel_ringbuf_drops", "counter"),
        ("egret_rule_evaluation_duration_seconds", "histogram"),
        ("egret_webhook_request_duration_seconds", "histogram"),
        ("egret_build_info", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        let fam = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(fam.kind, kind, "{name}");
        assert!(!fam.samples.is_empty(), "{name} has no samples");
    }
    let alerts = &families["egret_alerts"].samples[0].1;
    assert_eq!(
        alerts["rule"], "Unexpected \"egress\" \\ test",
        "escaping round-trips"
    );
    let (ok, out) = run_promtool(
        &["check", "metrics"],
        Some(&prometheus_text(&text)),
        &repo_root(),
    );
    assert!(ok, "promtool check metrics:\n{out}");
    println!(
        "promtool check metrics: {}",
        if out.trim().is_empty() {
            "clean"
        } else {
            out.trim()
        }
    );
}

#[tokio::test]
async fn served_at_metrics_on_loopback() {
    let m = populated();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(egret::health::serve(
        listener,
        metrics::router(m),
        shutdown.clone(),
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert!(response.status().is_success());
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(content_type, metrics::OPENMETRICS_CONTENT_TYPE);
    let body = response.text().await.expect("body");
    parse_openmetrics(&body).expect("valid exposition");
    shutdown.cancel();
    server.await.expect("join").expect("serve");
}

#[test]
fn deploy_queries_only_name_exported_metrics() {
    let text = populated().encode().expect("encode");
    let families = parse_openmetrics(&text).expect("valid");
    let exported: BTreeSet<&str> = families
        .values()
        .flat_map(|f| f.samples.iter().map(|(name, _, _)| name.as_str()))
        .collect();
    let expressions = promql::deploy_expressions(&repo_root()).expect("deploy files");
    assert!(
        expressions.len() >= 40,
        "only {} expressions found",
        expressions.len()
    );
    for e in &expressions {
        let names = promql::metric_names(&e.expr);
        assert!(
            !names.is_empty(),
            "{} {}: no metric in {}",
            e.file,
            e.origin,
            e.expr
        );
        for name in names {
            // `up` is Prometheus's own series for every target.
            assert!(
                name == "up" || exported.contains(name.as_str()),
                "{} {}: {name} is not exported",
                e.file,
                e.origin
            );
        }
        println!("{}\t{}\t{}", e.file, e.origin, promql::instantiate(&e.expr));
    }
    // The two rule files carry the same rules.
    let of = |file| {
        expressions
            .iter()
            .filter(|e| e.file == file)
            .map(|e| (&e.origin, &e.expr))
            .collect::<Vec<_>>()
    };
    assert_eq!(of(promql::RULES), of(promql::PROMETHEUS_RULE));
    assert_eq!(of(promql::RULES).len(), 13);
}

#[test]
fn rule_files_pass_promtool() {
    let dir = repo_root().join("deploy/prometheus");
    let (ok, out) = run_promtool(&["check", "rules", "egret-alerts.yaml"], None, &dir);
    assert!(ok, "{out}");
    let (ok, out) = run_promtool(&["test", "rules", "egret-alerts.test.yaml"], None, &dir);
    assert!(ok, "{out}");
    // The PrometheusRule's spec is a rule file indented under `spec:`.
    let crd = std::fs::read_to_string(dir.join("egret-prometheusrule.yaml")).expect("read CRD");
    let spec: String = crd
        .lines()
        .skip_while(|l| *l != "spec:")
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    assert!(crd.contains("kind: PrometheusRule") && spec.starts_with("groups:"));
    let tmp = std::env::temp_dir().join(format!("egret-crd-rules-{}.yaml", std::process::id()));
    std::fs::write(&tmp, spec).expect("write spec");
    let (ok, out) = run_promtool(
        &["check", "rules", tmp.to_str().unwrap_or_default()],
        None,
        &dir,
    );
    let _ = std::fs::remove_file(&tmp);
    assert!(ok, "{out}");
}

/// The promtool tests feed series the way the agent creates them (a
/// per-workload or per-destination counter is absent until it is 1) and
/// test the dashboard's own table queries, not copies that could drift.
#[test]
fn promtool_tests_use_realistic_series_and_the_dashboard_queries() {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/egret-alerts.test.yaml"))
            .expect("read promtool tests");
    let mut lines = text.lines();
    let mut lazy_series = 0;
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.starts_with("- series:") && (t.contains("k8s_pod_name=") || t.contains("dest_ip=")) {
            let values = lines.next().unwrap_or_default().trim();
            let values = values
                .trim_start_matches("values:")
                .trim()
                .trim_matches('\'');
            assert!(
                values.starts_with('_') || values.starts_with("1x") || values.starts_with("2x"),
                "{t}: a labelled counter never shows a 0 sample first: {values}"
            );
            assert!(!values.starts_with('0'), "{t}: {values}");
            lazy_series += 1;
        }
    }
    assert!(lazy_series >= 4, "{lazy_series} per-workload series");
    let dashboard = promql::dashboard_expressions(
        promql::DASHBOARD,
        &std::fs::read_to_string(repo_root().join(promql::DASHBOARD)).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let tested: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- expr: '"))
        .filter_map(|l| l.strip_suffix('\''))
        .collect();
    for expr in &tested {
        assert!(
            dashboard
                .iter()
                .any(|e| promql::instantiate(&e.expr) == *expr),
            "promtool tests a query the dashboard does not have: {expr}"
        );
    }
    for panel in [
        "panel Alerts by destination IP:port",
        "panel Alerts by namespace / pod / container",
    ] {
        let e = dashboard
            .iter()
            .find(|e| e.origin == panel)
            .unwrap_or_else(|| panic!("{panel} missing"));
        assert!(
            tested.contains(&promql::instantiate(&e.expr).as_str()),
            "{panel} is not tested"
        );
    }
}

#[test]
fn dashboard_uses_the_datasource_variable() {
    let json = std::fs::read_to_string(repo_root().join(promql::DASHBOARD)).expect("dashboard");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let vars: Vec<&str> = doc["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance", "namespace"]);
    for panel in doc["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{}",
            panel["title"]
        );
    }
}
