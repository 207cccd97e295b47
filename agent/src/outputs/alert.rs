//! An alert: what the evaluate stage hands to the outputs. Its JSON form is the
//! stdout line and the falcosidekick-compatible webhook payload.
use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

pub use egret_rules::Priority;

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
