//! Request bodies for each receiver kind. Everything inside an alert may be
//! attacker-influenced (process names, command lines, hostnames of
//! destinations), so chat formats escape it before it reaches markup.
use std::{fmt::Write as _, sync::Arc, time::Duration};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::json;

use super::config::{PayloadFormat, SlackConfig, SlackFormat};
use crate::outputs::alert::{Alert, Priority};

/// Field added to `output_fields` of a summary: how many identical alerts
/// it stands for.
pub const COALESCED_FIELD: &str = "egret.coalesced";
/// Length of the coalescing window, in seconds, next to it.
pub const COALESCED_WINDOW_FIELD: &str = "egret.coalesced_window_s";

/// What one request carries.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub alert: Arc<Alert>,
    /// Alerts this request stands for (1, or the count of a summary).
    pub alerts: u64,
    /// Set on a summary of alerts suppressed during a coalescing window.
    pub window: Option<Duration>,
}

impl Delivery {
    pub fn single(alert: Arc<Alert>) -> Self {
        Delivery {
            alert,
            alerts: 1,
            window: None,
        }
    }
}

/// How one endpoint shapes its payloads.
#[derive(Clone, Debug, Default)]
pub struct Style {
    pub format: PayloadFormat,
    pub slack: SlackConfig,
    /// Alertmanager `endsAt` = now + this.
    pub expires_after: Duration,
    /// Output fields that become Alertmanager labels (custom fields).
    pub label_fields: Vec<String>,
}

pub fn render(style: &Style, d: &Delivery) -> Result<Vec<u8>, serde_json::Error> {
    match style.format {
        PayloadFormat::Falco => serde_json::to_vec(&FalcoPayload::new(d)),
        PayloadFormat::Slack => serde_json::to_vec(&slack(d, &style.slack)),
        PayloadFormat::Dingtalk => serde_json::to_vec(&dingtalk(d)),
        PayloadFormat::Alertmanager => serde_json::to_vec(&super::alertmanager::payload(d, style)),
    }
}

/// falcosidekick's input shape (Falco's `json_output`) plus a `uuid`.
#[derive(Serialize)]
struct FalcoPayload<'a> {
    uuid: String,
    output: &'a str,
    priority: &'static str,
    rule: &'a str,
    time: &'a str,
    output_fields: Fields<'a>,
    source: &'a str,
    tags: &'a [Arc<str>],
    hostname: &'a str,
}

impl<'a> FalcoPayload<'a> {
    fn new(d: &'a Delivery) -> Self {
        let a = &*d.alert;
        FalcoPayload {
            uuid: uuid_v4(),
            output: &a.output,
            priority: a.priority.as_str(),
            rule: &a.rule,
            time: &a.time,
            output_fields: Fields(d),
            source: a.source,
            tags: &a.tags,
            hostname: &a.hostname,
        }
    }
}

/// The alert's fields, plus the coalescing count on a summary, without
/// copying the map.
struct Fields<'a>(&'a Delivery);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut map = s.serialize_map(None)?;
        for (k, v) in &d.alert.output_fields {
            if d.window.is_some() && (&**k == COALESCED_FIELD || &**k == COALESCED_WINDOW_FIELD) {
                continue;
            }
            map.serialize_entry(&**k, v)?;
        }
        if let Some(window) = d.window {
            map.serialize_entry(COALESCED_FIELD, &d.alerts)?;
            map.serialize_entry(COALESCED_WINDOW_FIELD, &window.as_secs_f64())?;
        }
        map.end()
    }
}

/// A random (version 4) UUID, as falcosidekick assigns to each event.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    // The OS random source does not fail on Linux once booted; should it,
    // a zero UUID still identifies nothing wrongly (it is only a label).
    let _ = SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "<NA>".to_owned(),
        other => other.to_string(),
    }
}

fn summary_line(d: &Delivery) -> Option<String> {
    d.window.map(|w| {
        format!(
            "{} identical alert(s) in the last {}s (first one sent on its own)",
            d.alerts,
            w.as_secs_f64()
        )
    })
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_color(p: Priority) -> &'static str {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => "#d40000",
        Priority::Error => "#ff5400",
        Priority::Warning => "#f2c744",
        Priority::Notice | Priority::Informational => "#5bc0de",
        Priority::Debug => "#b0b0b0",
    }
}

fn slack(d: &Delivery, cfg: &SlackConfig) -> serde_json::Value {
    let a = &*d.alert;
    let short = |title: &str, value: String| json!({ "title": title, "value": slack_escape(&value), "short": true });
    let mut fields = vec![
        json!({ "title": "rule", "value": slack_escape(&a.rule), "short": false }),
        short("priority", a.priority.as_str().to_owned()),
        short("source", a.source.to_owned()),
        short("hostname", a.hostname.to_string()),
        short("time", a.time.clone()),
    ];
    if !a.tags.is_empty() {
        fields.push(short("tags", a.tags.join(", ")));
    }
    for (k, v) in &a.output_fields {
        fields.push(short(k, value_text(v)));
    }
    let mut text = format!("{}: {}", a.priority.as_str(), slack_escape(&a.output));
    if let Some(line) = summary_line(d) {
        fields.push(json!({ "title": "coalesced", "value": line, "short": false }));
        let _ = write!(text, " (×{})", d.alerts);
    }
    let mut msg = serde_json::Map::new();
    if cfg.output_format != SlackFormat::Fields {
        msg.insert("text".into(), json!(text));
    }
    if cfg.output_format != SlackFormat::Text {
        msg.insert(
            "attachments".into(),
            json!([{
                "fallback": slack_escape(&a.output),
                "color": slack_color(a.priority),
                "fields": fields,
                "footer": "egret",
            }]),
        );
    }
    for (key, value) in [
        ("channel", &cfg.channel),
        ("username", &cfg.username),
        ("icon_url", &cfg.icon_url),
        ("icon_emoji", &cfg.icon_emoji),
    ] {
        if let Some(v) = value {
            msg.insert(key.into(), json!(v));
        }
    }
    serde_json::Value::Object(msg)
}

/// DingTalk's markdown is a subset (headings, bold, italics, links,
/// images, lists, quotes) with no escape character and no code spans it
/// guarantees, so untrusted text cannot be quoted safely: the characters
/// that could open markup are replaced by their full-width forms (`(` and
/// `!` are harmless once `[` is gone), which
/// read the same and mean nothing to the renderer, and line breaks by
/// spaces (a new line could start a heading or a list).
pub fn dingtalk_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '*' => '＊',
            '_' => '＿',
            '[' => '［',
            ']' => '］',
            '#' => '＃',
            '>' => '＞',
            '<' => '＜',
            '`' => '｀',
            '|' => '｜',
            '~' => '～',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect()
}

fn dingtalk(d: &Delivery) -> serde_json::Value {
    let a = &*d.alert;
    // The title is the notification preview: plain text, no markup.
    let title = format!("[{}] {}", a.priority.as_str(), a.rule);
    let mut text = format!(
        "### {}\n\n> {}\n\n- **priority**: {}\n- **source**: {}\n- **hostname**: {}\n- **time**: {}\n",
        dingtalk_text(&title),
        dingtalk_text(&a.output),
        a.priority.as_str(),
        dingtalk_text(a.source),
        dingtalk_text(&a.hostname),
        dingtalk_text(&a.time),
    );
    if !a.tags.is_empty() {
        let _ = writeln!(text, "- **tags**: {}", dingtalk_text(&a.tags.join(", ")));
    }
    for (k, v) in &a.output_fields {
        let _ = writeln!(
            text,
            "- **{}**: {}",
            dingtalk_text(k),
            dingtalk_text(&value_text(v))
        );
    }
    if let Some(line) = summary_line(d) {
        let _ = writeln!(text, "\n**{line}**");
    }
    json!({
        "msgtype": "markdown",
        "markdown": { "title": title, "text": text },
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    fn alert() -> Arc<Alert> {
        let fields: crate::outputs::alert::OutputFields = [
            (Arc::from("fd.sip"), json!("203.0.113.9")),
            (Arc::from("fd.sport"), json!(443)),
            (Arc::from("proc.name"), json!("<script>&`rm`")),
            (Arc::from("container.id"), serde_json::Value::Null),
        ]
        .into();
        Arc::new(Alert {
            time: "2026-03-01T10:00:00.123456789Z".into(),
            rule: "Unexpected egress".into(),
            priority: Priority::Critical,
            output: "curl connected to 203.0.113.9:443 <b>".into(),
            output_fields: fields,
            tags: vec![Arc::from("network"), Arc::from("T1041")].into(),
            source: "syscall",
            hostname: "node-a".into(),
        })
    }

    fn style(format: PayloadFormat) -> Style {
        Style {
            format,
            ..Style::default()
        }
    }

    #[test]
    fn falco_payload_matches_falcosidekick_input() {
        let body = render(&style(PayloadFormat::Falco), &Delivery::single(alert())).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "uuid",
            "output",
            "priority",
            "rule",
            "time",
            "output_fields",
            "source",
            "tags",
            "hostname",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["priority"], "Critical");
        assert_eq!(v["time"], "2026-03-01T10:00:00.123456789Z");
        assert_eq!(v["output_fields"]["fd.sport"], 443);
        assert_eq!(v["output_fields"]["container.id"], serde_json::Value::Null);
        assert!(v["output_fields"].get(COALESCED_FIELD).is_none());
        assert_eq!(v["tags"], json!(["network", "T1041"]));
        let uuid = v["uuid"].as_str().unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
    }

    #[test]
    fn summary_carries_the_count() {
        let d = Delivery {
            alert: alert(),
            alerts: 41,
            window: Some(Duration::from_secs(10)),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&render(&style(PayloadFormat::Falco), &d).unwrap()).unwrap();
        assert_eq!(v["output_fields"][COALESCED_FIELD], 41);
        assert_eq!(v["output_fields"][COALESCED_WINDOW_FIELD], 10.0);
        let slack: serde_json::Value =
            serde_json::from_slice(&render(&style(PayloadFormat::Slack), &d).unwrap()).unwrap();
        assert!(slack["text"].as_str().unwrap().ends_with("(×41)"));
        let ding: serde_json::Value =
            serde_json::from_slice(&render(&style(PayloadFormat::Dingtalk), &d).unwrap()).unwrap();
        assert!(
            ding["markdown"]["text"]
                .as_str()
                .unwrap()
                .contains("41 identical alert(s)")
        );
    }

    #[test]
    fn slack_message_escapes_markup() {
        let v: serde_json::Value = serde_json::from_slice(
            &render(&style(PayloadFormat::Slack), &Delivery::single(alert())).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["text"],
            "Critical: curl connected to 203.0.113.9:443 &lt;b&gt;"
        );
        let att = &v["attachments"][0];
        assert_eq!(att["color"], "#d40000");
        let fields = att["fields"].as_array().unwrap();
        let proc = fields.iter().find(|f| f["title"] == "proc.name").unwrap();
        assert_eq!(proc["value"], "&lt;script&gt;&amp;`rm`");
        assert!(
            fields
                .iter()
                .any(|f| f["title"] == "rule" && f["value"] == "Unexpected egress")
        );
        assert!(
            fields
                .iter()
                .any(|f| f["title"] == "container.id" && f["value"] == "&lt;NA&gt;")
        );
    }

    #[test]
    fn dingtalk_markdown_message() {
        let v: serde_json::Value = serde_json::from_slice(
            &render(&style(PayloadFormat::Dingtalk), &Delivery::single(alert())).unwrap(),
        )
        .unwrap();
        assert_eq!(v["msgtype"], "markdown");
        assert_eq!(v["markdown"]["title"], "[Critical] Unexpected egress");
        let text = v["markdown"]["text"].as_str().unwrap();
        assert!(
            text.starts_with(
                "### ［Critical］ Unexpected egress\n\n> curl connected to 203.0.113.9:443 ＜b＞"
            ),
            "{text}"
        );
        // Nothing from the event can open markup DingTalk renders.
        assert!(
            text.contains("- **proc.name**: ＜script＞&｀rm｀\n"),
            "{text}"
        );
        assert!(text.contains("- **container.id**: ＜NA＞\n"), "{text}");
        assert_eq!(
            dingtalk_text("[x](http://e) **b** _i_ ![i](u)\n# h"),
            "［x］(http://e) ＊＊b＊＊ ＿i＿ !［i］(u) ＃ h"
        );
    }

    #[test]
    fn slack_options_and_layouts() {
        let mut st = style(PayloadFormat::Slack);
        st.slack = SlackConfig {
            channel: Some("#sec-alerts".into()),
            username: Some("egret".into()),
            icon_emoji: Some(":bird:".into()),
            icon_url: None,
            output_format: SlackFormat::Text,
        };
        let text: serde_json::Value =
            serde_json::from_slice(&render(&st, &Delivery::single(alert())).unwrap()).unwrap();
        assert_eq!(text["channel"], "#sec-alerts");
        assert_eq!(text["username"], "egret");
        assert_eq!(text["icon_emoji"], ":bird:");
        assert!(text.get("icon_url").is_none());
        assert!(text["text"].is_string() && text.get("attachments").is_none());
        st.slack.output_format = SlackFormat::Fields;
        let fields: serde_json::Value =
            serde_json::from_slice(&render(&st, &Delivery::single(alert())).unwrap()).unwrap();
        assert!(fields.get("text").is_none());
        assert!(fields["attachments"][0]["fields"].is_array());
        st.slack.output_format = SlackFormat::All;
        let all: serde_json::Value =
            serde_json::from_slice(&render(&st, &Delivery::single(alert())).unwrap()).unwrap();
        assert!(all["text"].is_string() && all["attachments"].is_array());
    }
}
