//! An alert: what the rules stage hands to the sinks. Its JSON form is the
//! stdout line and the falcosidekick-compatible webhook payload.
use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

/// Falco's priorities, most severe first (ordering: Emergency < Debug, so
/// `priority <= minimum` means "at least as severe as minimum").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

impl Priority {
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// Falco spelling, as used in payloads and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }

    /// Case-insensitive, with Falco's `info` alias.
    pub fn parse(raw: &str) -> Option<Priority> {
        let lower = raw.trim().to_ascii_lowercase();
        match lower.as_str() {
            "emergency" => Some(Priority::Emergency),
            "alert" => Some(Priority::Alert),
            "critical" => Some(Priority::Critical),
            "error" => Some(Priority::Error),
            "warning" => Some(Priority::Warning),
            "notice" => Some(Priority::Notice),
            "informational" | "info" => Some(Priority::Informational),
            "debug" => Some(Priority::Debug),
            _ => None,
        }
    }
}

/// One fired rule for one event.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// RFC 3339 with nanoseconds, from the event's wall time.
    pub time: String,
    pub rule: Arc<str>,
    #[serde(serialize_with = "serialize_priority")]
    pub priority: Priority,
    /// The rule's output template, expanded.
    pub output: String,
    /// Every field the template names; `null` where unknown.
    pub output_fields: BTreeMap<Arc<str>, serde_json::Value>,
    pub tags: Arc<[Arc<str>]>,
    pub source: &'static str,
    pub hostname: Arc<str>,
}

fn serialize_priority<S: serde::Serializer>(p: &Priority, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_like_falco() {
        assert_eq!(Priority::parse("WARNING"), Some(Priority::Warning));
        assert_eq!(Priority::parse("info"), Some(Priority::Informational));
        assert_eq!(Priority::parse("Critical"), Some(Priority::Critical));
        assert_eq!(Priority::parse("loud"), None);
        assert!(Priority::Critical < Priority::Warning);
    }

    #[test]
    fn serialises_falco_shape() {
        let alert = Alert {
            time: "2026-01-01T00:00:00.000000001Z".into(),
            rule: "R".into(),
            priority: Priority::Warning,
            output: "out".into(),
            output_fields: [(Arc::from("fd.sip"), serde_json::Value::Null)].into(),
            tags: vec![Arc::from("network")].into(),
            source: "syscall",
            hostname: "node-1".into(),
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["priority"], "Warning");
        assert_eq!(json["output_fields"]["fd.sip"], serde_json::Value::Null);
        assert_eq!(json["tags"][0], "network");
    }
}
