//! The `egret rules …` and `egret alert test` subcommands: what a Falco
//! user reaches for before trusting a rule or an output. Each writes its
//! report to the given writer and returns whether it succeeded, so tests
//! run them without a process.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use egret_rules::{Options, RuleStatus, Source};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, RuleMatching},
    metrics::{AlertContext, DropReason, Metrics},
    outputs::{
        alert::{Additions, Alert, Priority},
        webhook::{EndpointConfig, WebhookSink},
    },
    ruleset::{self, BUNDLED, RulePaths},
    timefmt,
};

/// `egret rules fields`: name, type, description, one per line.
pub fn rules_fields(out: &mut dyn Write) -> std::io::Result<()> {
    let fields = egret_rules::field_catalogue();
    let width = fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in fields {
        writeln!(out, "{:<width$}  {:<7}  {}", f.name, f.kind, f.description)?;
    }
    Ok(())
}

/// `egret rules dump`: every bundled file, with a header line naming it.
pub fn rules_dump(out: &mut dyn Write) -> std::io::Result<()> {
    for (name, text) in BUNDLED {
        writeln!(out, "# --- {name} (bundled) ---")?;
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// `egret rules list`: every rule with its state and where it is defined.
/// Fails (after listing) when the rules have errors.
pub fn rules_list(
    paths: &[PathBuf],
    skip_unsupported: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let texts = RulePaths(paths.to_vec()).read()?;
    let sources: Vec<Source<'_>> = texts.iter().map(|(n, t)| Source::new(n, t)).collect();
    let options = ruleset::options(RuleMatching::default(), skip_unsupported);
    let loaded = egret_rules::load(&sources, &options);
    let width = loaded.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &loaded.rules {
        let state = match &r.status {
            RuleStatus::Compiled { enabled: true } => "enabled".to_owned(),
            RuleStatus::Compiled { enabled: false } => "disabled".to_owned(),
            RuleStatus::Unsupported {
                event_types,
                requested_skip: true,
                ..
            } if !event_types.is_empty() => {
                format!("skipped (needs event types {})", event_types.join(", "))
            }
            RuleStatus::Unsupported {
                fields,
                requested_skip: true,
                ..
            } => format!("skipped (needs fields {})", fields.join(", ")),
            RuleStatus::Unsupported { fields, .. } => {
                format!("unsupported ({})", fields.join(", "))
            }
            RuleStatus::Skipped { source } => format!("skipped (source {source})"),
            RuleStatus::Failed => "failed".to_owned(),
        };
        writeln!(out, "{:<width$}  {:<9}  {}", r.name, state, r.location)?;
    }
    for d in loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == egret_rules::Severity::Error)
    {
        writeln!(out, "{d}")?;
    }
    writeln!(
        out,
        "{} rule(s) from {}",
        loaded.rules.len(),
        ruleset::describe(&RulePaths(paths.to_vec()))
    )?;
    Ok(!loaded.has_errors())
}

/// `egret rules test RULES --event EVENT.json`: the alerts each event
/// (one JSON object, or JSON lines) would raise, as `egret run` prints
/// them (with the default `append_output`). Returns the alert count.
pub fn rules_test(
    paths: &[PathBuf],
    event_file: &Path,
    options: &Options,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let ruleset = ruleset::load(&RulePaths(paths.to_vec()), options)?;
    let text = std::fs::read_to_string(event_file)
        .with_context(|| format!("reading {}", event_file.display()))?;
    let events: Vec<(usize, serde_json::Value)> = match serde_json::from_str(&text) {
        Ok(v) => vec![(1, v)],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map(|v| (i + 1, v))
                    .with_context(|| format!("{}:{}: not JSON", event_file.display(), i + 1))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let additions = Additions::build(&Config::default().append_output.0, &BTreeMap::new())
        .map_err(anyhow::Error::msg)?;
    let mut alerts = 0;
    let mut matches = Vec::new();
    for (line, value) in events {
        let at = format!("{}:{line}", event_file.display());
        let map = value
            .as_object()
            .with_context(|| format!("{at}: an event is a JSON object"))?;
        let (event, ignored) =
            egret_rules::event_from_json(map).with_context(|| format!("{at}: bad field value"))?;
        if !ignored.is_empty() {
            writeln!(out, "{at}: not fields, ignored: {}", ignored.join(", "))?;
        }
        ruleset.evaluate(&event, &mut matches);
        if matches.is_empty() {
            writeln!(out, "{at}: no rule matched")?;
        }
        for id in &matches {
            let Some(rule) = ruleset.rule(*id) else {
                continue;
            };
            let rendered = rule.render(&event);
            let time = map
                .get("evt.time")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_else(now_ns);
            let mut alert = Alert {
                time: timefmt::rfc3339_nanos(time),
                rule: rule.name().clone(),
                priority: rule.priority(),
                output: rendered.output,
                output_fields: rendered.fields.into_iter().collect(),
                tags: rule.tags().clone(),
                source: "syscall",
                hostname: "egret-rules-test".into(),
            };
            additions.apply(&mut alert, &event);
            writeln!(out, "{}", serde_json::to_string(&alert)?)?;
            alerts += 1;
        }
    }
    Ok(alerts)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long `egret alert test` waits for every endpoint, retries included.
const ALERT_TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// `egret alert test`: one synthetic alert to every configured output;
/// one line per endpoint. True when every endpoint accepted it.
pub async fn alert_test(config: &Config, out: &mut dyn Write) -> anyhow::Result<bool> {
    let mut endpoints: Vec<EndpointConfig> = config.webhooks.clone();
    for e in &mut endpoints {
        e.label_fields = config.custom_fields.keys().cloned().collect();
        // One request is the test; a storm guard would only delay it.
        e.coalesce_window = Duration::ZERO;
    }
    anyhow::ensure!(
        !endpoints.is_empty(),
        "no outputs configured: add `webhooks` to the config file or pass --webhook URL"
    );
    // Severe enough for every endpoint's min_priority.
    let priority = endpoints
        .iter()
        .map(|e| e.min_priority)
        .min()
        .unwrap_or(Priority::Warning)
        .min(Priority::Warning);
    let alert = Arc::new(synthetic_alert(config, priority)?);
    let metrics = Metrics::new(&config.metrics);
    let shutdown = CancellationToken::new();
    let sink = WebhookSink::start(
        &endpoints,
        Some(&metrics),
        shutdown.clone(),
        Duration::from_secs(2),
    )
    .context("webhooks")?;
    let watched: Vec<_> = sink
        .endpoint_names()
        .filter_map(|n| Some((n.to_owned(), sink.endpoint_metrics(n)?.clone())))
        .collect();
    // Coalescing is off, so the context only has to exist.
    let ctx = AlertContext {
        k8s_ns_name: "",
        k8s_pod_name: "",
        container_name: "",
        container_id: "host",
        proc_name: "egret",
        dest: None,
    };
    sink.submit(&alert, &ctx);
    let timer = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ALERT_TEST_TIMEOUT).await;
            shutdown.cancel();
        })
    };
    sink.finish().await;
    timer.abort();
    let mut all_ok = true;
    for (name, m) in watched {
        let verdict = if m.deliveries.get() > 0 {
            format!("ok ({} attempt(s))", m.retries.get() + 1)
        } else {
            all_ok = false;
            let reasons: Vec<String> = DropReason::ALL
                .iter()
                .filter(|r| m.drops(**r) > 0)
                .map(|r| r.as_str().to_owned())
                .collect();
            format!("FAILED: {} (see the log above)", reasons.join(", "))
        };
        writeln!(out, "{name}: {verdict}")?;
    }
    Ok(all_ok)
}

fn synthetic_alert(config: &Config, priority: Priority) -> anyhow::Result<Alert> {
    let mut fields: crate::outputs::alert::OutputFields = [
        ("fd.name", serde_json::json!("203.0.113.1:443")),
        ("fd.sip", serde_json::json!("203.0.113.1")),
        ("fd.sport", serde_json::json!(443)),
        ("proc.name", serde_json::json!("egret")),
        ("proc.cmdline", serde_json::json!("egret alert test")),
        ("container.id", serde_json::json!("host")),
        ("container.name", serde_json::Value::Null),
        ("container.image.repository", serde_json::Value::Null),
        ("k8s.ns.name", serde_json::Value::Null),
        ("k8s.pod.name", serde_json::Value::Null),
    ]
    .into_iter()
    .map(|(k, v)| (Arc::from(k), v))
    .collect();
    for (k, v) in &config.custom_fields {
        fields.insert(Arc::from(k.as_str()), serde_json::json!(v));
    }
    Ok(Alert {
        time: timefmt::rfc3339_nanos(now_ns()),
        rule: "Egret test alert".into(),
        priority,
        output: "This is a test alert from `egret alert test`; nothing happened.".into(),
        output_fields: fields,
        tags: vec![Arc::from("test")].into(),
        source: "syscall",
        hostname: crate::pipeline::hostname(config).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_list_types_and_descriptions() {
        let mut out = Vec::new();
        rules_fields(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let line = text.lines().find(|l| l.starts_with("fd.sip ")).unwrap();
        assert!(
            line.contains("ipaddr") && line.contains("Destination"),
            "{line}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("k8s.pod.name ") && l.contains("string"))
        );
    }

    #[test]
    fn list_shows_state_and_location() {
        let mut out = Vec::new();
        assert!(rules_list(&[], false, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        let seed = text
            .lines()
            .find(|l| l.starts_with("Outbound Connection in Container "))
            .unwrap();
        assert!(
            seed.contains("enabled") && seed.contains("rules/egress.yaml:"),
            "{seed}"
        );
        let mut dump = Vec::new();
        rules_dump(&mut dump).unwrap();
        assert!(
            String::from_utf8(dump)
                .unwrap()
                .contains("Outbound Connection in Container")
        );
    }

    #[test]
    fn test_prints_the_alert_an_event_raises() {
        let dir = std::env::temp_dir().join(format!("egret-rules-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let event = dir.join("event.json");
        std::fs::write(
            &event,
            r#"{"evt.type": "connect", "fd.sip": "203.0.113.7", "fd.sport": 443, "fd.name": "203.0.113.7:443",
                "container.id": "0123456789ab", "k8s.ns.name": "shop", "k8s.pod.name": "web-1",
                "proc.cmdline": "curl https://x", "user.name": "root", "time": "ignored"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        let n = rules_test(&[], &event, &Options::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(n, 1, "{text}");
        let alert: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(alert["rule"], "Outbound Connection in Container");
        assert_eq!(alert["output_fields"]["k8s.pod.name"], "web-1");
        assert!(text.contains("ignored: time"), "{text}");
        std::fs::write(
            &event,
            r#"{"evt.type": "connect", "fd.sip": "10.1.2.3", "container.id": "abc"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            rules_test(&[], &event, &Options::default(), &mut out).unwrap(),
            0
        );
        assert!(String::from_utf8(out).unwrap().contains("no rule matched"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
