//! Alertmanager's API v2 (`POST /api/v2/alerts`): one alert per request,
//! labelled like falcosidekick's Alertmanager output but with a bounded
//! label set. Alertmanager groups, routes and silences by labels, so every
//! output field as a label (sidekick's choice) would make each command
//! line its own alert identity; only fields that name a workload or a
//! destination, and the configured custom fields, become labels. The
//! whole output text is in the annotations.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::format::{Delivery, Style};
use crate::{
    outputs::alert::{Priority, WORKLOAD_FIELDS},
    timefmt,
};

/// Output fields made labels besides the workload ones: where it went and
/// which program, enough to route and silence precisely.
const DESTINATION_FIELDS: &[&str] = &["fd.sip", "fd.sport", "proc.name"];

/// Longest label value sent; Alertmanager has no limit, its UI and
/// receivers do.
const MAX_LABEL_VALUE: usize = 256;

/// falcosidekick's severity mapping.
pub fn severity(p: Priority) -> &'static str {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => "critical",
        Priority::Error | Priority::Warning => "warning",
        Priority::Notice | Priority::Informational | Priority::Debug => "information",
    }
}

/// `[^a-zA-Z0-9_]` → `_`, runs of `_` collapsed, leading and trailing `_`
/// trimmed, and a leading digit prefixed: a valid Prometheus label name.
pub fn label_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_matches('_');
    match trimmed.chars().next() {
        None => "field".to_owned(),
        Some(c) if c.is_ascii_digit() => format!("_{trimmed}"),
        Some(_) => trimmed.to_owned(),
    }
}

fn label_value(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    Some(match text.char_indices().nth(MAX_LABEL_VALUE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    })
}

pub fn payload(d: &Delivery, style: &Style) -> Value {
    payload_at(d, style, SystemTime::now())
}

pub fn payload_at(d: &Delivery, style: &Style, now: SystemTime) -> Value {
    let a = &*d.alert;
    let mut labels = Map::new();
    let fields = WORKLOAD_FIELDS
        .iter()
        .chain(DESTINATION_FIELDS)
        .copied()
        .chain(style.label_fields.iter().map(String::as_str));
    for key in fields {
        if let Some(v) = a.output_fields.get(key).and_then(label_value) {
            labels.insert(label_name(key), Value::String(v));
        }
    }
    let mut tags: Vec<&str> = a.tags.iter().map(|t| &**t).collect();
    tags.sort_unstable();
    // The fixed labels last, so no output field can replace them.
    for (k, v) in [
        ("alertname", a.rule.to_string()),
        ("rule", a.rule.to_string()),
        ("priority", a.priority.as_str().to_owned()),
        ("severity", severity(a.priority).to_owned()),
        ("source", a.source.to_owned()),
        ("hostname", a.hostname.to_string()),
        ("tags", tags.join(",")),
    ] {
        if !v.is_empty() {
            labels.insert(k.to_owned(), Value::String(v));
        }
    }
    let mut description = a.output.clone();
    if let Some(window) = d.window {
        description.push_str(&format!(
            " ({} identical alerts in {}s)",
            d.alerts,
            window.as_secs_f64()
        ));
    }
    let now_ns = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .saturating_add(style.expires_after)
        .as_nanos();
    let ends = timefmt::rfc3339_nanos(u64::try_from(now_ns).unwrap_or(u64::MAX));
    let mut annotations = Map::new();
    annotations.insert("summary".into(), Value::String(a.rule.to_string()));
    annotations.insert("description".into(), Value::String(description));
    // Where a responder calls to quarantine (an annotation: a URL is not
    // an identity of the alert).
    if let Some(Value::String(url)) = a.output_fields.get(crate::pipeline::CONTROL_URL_FIELD) {
        annotations.insert("egret_control_url".into(), Value::String(url.clone()));
    }
    json!([{
        "labels": labels,
        "annotations": annotations,
        "startsAt": a.time,
        "endsAt": ends,
    }])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outputs::alert::Alert;

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(label_name("k8s.ns.name"), "k8s_ns_name");
        assert_eq!(label_name("k8s.pod.label[app]"), "k8s_pod_label_app");
        assert_eq!(label_name("__x..y__"), "x_y");
        assert_eq!(label_name("1st"), "_1st");
        assert_eq!(label_name("..."), "field");
    }

    #[test]
    fn bounded_labels_annotations_and_expiry() {
        let fields: crate::outputs::alert::OutputFields = [
            (Arc::from("k8s.pod.name"), json!("web-1")),
            (Arc::from("k8s.ns.name"), json!("shop")),
            (Arc::from("container.id"), Value::Null),
            (Arc::from("proc.cmdline"), json!("curl http://x")),
            (Arc::from("fd.sport"), json!(443)),
            (Arc::from("cluster"), json!("prod")),
            (Arc::from("rule"), json!("spoofed")),
            (
                Arc::from(crate::pipeline::CONTROL_URL_FIELD),
                json!("https://node-a:9465"),
            ),
        ]
        .into();
        let alert = Arc::new(Alert {
            time: "2026-03-01T10:00:00.000000000Z".into(),
            rule: "Unexpected egress".into(),
            priority: Priority::Error,
            output: "curl to 203.0.113.9:443".into(),
            output_fields: fields,
            tags: vec![Arc::from("network"), Arc::from("T1041")].into(),
            source: "syscall",
            hostname: "node-a".into(),
        });
        let style = Style {
            expires_after: Duration::from_secs(600),
            label_fields: vec!["cluster".into(), "rule".into()],
            ..Style::default()
        };
        let v = payload_at(
            &Delivery::single(alert),
            &style,
            UNIX_EPOCH + Duration::from_secs(1_772_359_200),
        );
        let l = &v[0]["labels"];
        assert_eq!(l["alertname"], "Unexpected egress");
        assert_eq!(l["rule"], "Unexpected egress", "fixed labels win");
        assert_eq!(l["severity"], "warning");
        assert_eq!(l["priority"], "Error");
        assert_eq!(l["k8s_pod_name"], "web-1");
        assert_eq!(l["fd_sport"], "443");
        assert_eq!(l["cluster"], "prod");
        assert_eq!(l["tags"], "T1041,network");
        assert!(l.get("container_id").is_none(), "null fields are no labels");
        assert!(
            l.get("proc_cmdline").is_none(),
            "unbounded fields are no labels"
        );
        assert_eq!(
            v[0]["annotations"]["description"],
            "curl to 203.0.113.9:443"
        );
        assert_eq!(
            v[0]["annotations"]["egret_control_url"],
            "https://node-a:9465"
        );
        assert!(
            l.get("egret_control_url").is_none(),
            "an annotation, not a label"
        );
        assert_eq!(v[0]["startsAt"], "2026-03-01T10:00:00.000000000Z");
        assert_eq!(v[0]["endsAt"], "2026-03-01T10:10:00.000000000Z");
    }
}
