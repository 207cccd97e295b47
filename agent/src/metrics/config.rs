//! The `metrics` section of the agent's config, and the label names the
//! families reserve.
use serde::Deserialize;

/// Limits and switches; embedded in the agent's config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "metrics settings (a map)")]
pub struct MetricsConfig {
    /// Series in `egret_destination_alerts_total` (rule × destination ×
    /// process × container); the least recently updated is evicted beyond.
    pub destination_series_limit: usize,
    /// Series in `egret_alerts_total` (and the Falco-compatible family).
    pub alert_series_limit: usize,
    /// Distinct values per workload label (namespace, pod, container) in
    /// `egret_alerts_total`; the rest are shown as `other`.
    pub label_value_limit: usize,
    /// A label value unseen this long gives its place to a new one.
    pub label_value_idle_secs: u64,
    /// Also expose `falcosecurity_falco_rules_matches_total` so Falco
    /// dashboards and alerts work unchanged.
    pub falco_compat: bool,
    /// Labels on every series: the config's `custom_fields` (falcosidekick's
    /// `customfields`, e.g. the cluster name), set by `Config`, not a key.
    #[serde(skip)]
    pub const_labels: Vec<(String, String)>,
}

/// Label names Egret's own families use; a custom field may not take one
/// (a series with a label twice is invalid). `le` and `quantile` belong to
/// histograms and summaries, `instance`/`job` to Prometheus' target labels.
pub const RESERVED_LABELS: &[&str] = &[
    "rule",
    "rule_name",
    "priority",
    "source",
    "tags",
    "k8s_ns_name",
    "k8s_pod_name",
    "container_name",
    "dest_ip",
    "dest_port",
    "proc_name",
    "version",
    "family",
    "label",
    "verdict",
    "map",
    "hook",
    "queue",
    "reason",
    "result",
    "output",
    "endpoint",
    "errcode",
    "state",
    "quarantine",
    "kind",
    "direction",
    "domain",
    "le",
    "quantile",
    "instance",
    "job",
    "protocol",
    "end",
    "direction",
    "namespace",
    "workload",
    "destination_class",
];

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            destination_series_limit: 2000,
            alert_series_limit: 5000,
            label_value_limit: 500,
            label_value_idle_secs: 3600,
            falco_compat: false,
            const_labels: Vec::new(),
        }
    }
}
