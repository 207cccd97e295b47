//! Prometheus metrics in the OpenMetrics text format, served at `/metrics`.
//!
//! Cardinality is bounded by construction: every label value that comes from
//! a workload or the network passes through a [`table::ValueCap`] (distinct
//! values capped, the rest shown as `other`) or lives in a family capped at a
//! fixed number of series with least-recently-updated eviction. Every fold
//! and eviction is counted, so a capped view is never silently incomplete.
//!
//! The per-alert path takes one uncontended mutex and allocates nothing when
//! the series already exist; per-event counters are plain atomics.
mod alerts;
mod collectors;
mod config;
pub mod dns;
mod flows;
mod http;
mod outputs;
#[cfg(any(test, feature = "test-util"))]
pub mod promql;
mod table;
mod webhook;

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use egret_common::{Hook, HookCounters};
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::sync::mpsc;

use crate::{pipeline::enrich::EnrichFailure, sync::lock};
pub use alerts::AlertContext;
use alerts::{AlertState, TagCache};
pub use config::{MetricsConfig, RESERVED_LABELS};
pub use http::router;
pub use outputs::{LossReason, Output};
use table::{LruSeries, ValueCap};
pub use webhook::{DropReason, WebhookMetrics};

/// What the `Content-Type` of a scrape says.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const HOOKS: usize = Hook::COUNT as usize;

/// What became of an egress attempt that reached userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At least one rule fired.
    Alerted,
    /// Evaluated; no rule fired.
    NoMatch,
    /// Skipped in userspace before evaluation. Reserved: nothing is
    /// filtered in userspace today (the kernel's ignore list has its own
    /// counters, `egret_kernel_*`).
    Filtered,
    /// The ring buffer record could not be decoded.
    DecodeError,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Alerted,
        Verdict::NoMatch,
        Verdict::Filtered,
        Verdict::DecodeError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Alerted => "alerted",
            Verdict::NoMatch => "no_match",
            Verdict::Filtered => "filtered",
            Verdict::DecodeError => "decode_error",
        }
    }
}

type EndpointLabel = [(&'static str, String); 1];
type EndpointReasonLabels = [(&'static str, String); 2];
type KernelReader = Box<dyn Fn() -> Option<[HookCounters; HOOKS]> + Send + Sync>;
type QueueProbe = Box<dyn Fn() -> Option<(usize, usize)> + Send + Sync>;

struct Shared {
    started: Instant,
    alert_state: Mutex<AlertState>,
    verdicts: [AtomicU64; Verdict::ALL.len()],
    kernel: Mutex<KernelView>,
    queues: Mutex<Vec<(String, QueueProbe)>>,
}

#[derive(Default)]
struct KernelView {
    reader: Option<KernelReader>,
    last: Option<[HookCounters; HOOKS]>,
    read_errors: u64,
}

impl Shared {
    fn alerts(&self) -> MutexGuard<'_, AlertState> {
        // A panic elsewhere while holding the lock leaves counters that are
        // still valid numbers; keep serving them.
        lock(&self.alert_state)
    }
}

/// Every metric the agent exports. Create one, share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
    evaluation: Histogram,
    enrichment_failures: Family<[(&'static str, &'static str); 1], Counter>,
    cgroup_records: Family<[(&'static str, &'static str); 1], Counter>,
    /// Label: outcome (`pipeline::pending::ConnectOutcome`, 6).
    connect_results: Family<[(&'static str, &'static str); 1], Counter>,
    rule_reloads: Family<[(&'static str, &'static str); 1], Counter>,
    rules_loaded: Gauge,
    audit_dropped: Counter,
    rules_last_reload_ok: Gauge,
    output_lost: outputs::LostFamily,
    webhook_deliveries: Family<EndpointLabel, Counter>,
    webhook_delivered_alerts: Family<EndpointLabel, Counter>,
    webhook_retries: Family<EndpointLabel, Counter>,
    webhook_coalesced: Family<EndpointLabel, Counter>,
    webhook_drops: Family<EndpointReasonLabels, Counter>,
    webhook_errcodes: Family<EndpointReasonLabels, Counter>,
    webhook_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    /// Labels: quarantine id (at most QUARANTINE_SLOTS live) × kind (3).
    quarantine_blocked: Family<[(&'static str, String); 2], Counter>,
    quarantines: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Labels: mode (2) × outcome (RuleActionOutcome, 7).
    rule_actions: Family<[(&'static str, &'static str); 2], Counter>,
    flows: flows::FlowMetrics,
    /// Observed DNS (`metrics/dns.rs`).
    pub dns: dns::DnsMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn webhook_histogram() -> Histogram {
    // 5 ms .. ~20 s: loopback relays to slow SaaS receivers.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Arc<Self> {
        let idle = config.label_value_idle_secs;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            alert_state: Mutex::new(AlertState {
                ns: ValueCap::new(config.label_value_limit, idle),
                pod: ValueCap::new(config.label_value_limit, idle),
                container: ValueCap::new(config.label_value_limit, idle),
                alerts: LruSeries::new(config.alert_series_limit),
                destinations: LruSeries::new(config.destination_series_limit),
                falco: config
                    .falco_compat
                    .then(|| LruSeries::new(config.alert_series_limit)),
                tags: TagCache::default(),
            }),
            verdicts: Default::default(),
            kernel: Mutex::default(),
            queues: Mutex::default(),
        });
        let mut registry = Registry::with_labels(
            config
                .const_labels
                .iter()
                .map(|(k, v)| (k.clone().into(), v.clone().into())),
        );
        // Evaluation of one event: sub-microsecond for simple rule sets, so
        // the buckets start at 250 ns.
        let evaluation = Histogram::new(exponential_buckets(250e-9, 4.0, 10));
        registry.register_with_unit(
            "egret_rule_evaluation_duration",
            "Time to evaluate the rules against one event",
            Unit::Seconds,
            evaluation.clone(),
        );
        let m = Metrics {
            evaluation,
            enrichment_failures: Family::default(),
            cgroup_records: Family::default(),
            connect_results: Family::default(),
            rule_reloads: Family::default(),
            rules_loaded: Gauge::default(),
            audit_dropped: Counter::default(),
            rules_last_reload_ok: Gauge::default(),
            output_lost: Family::default(),
            webhook_deliveries: Family::default(),
            webhook_delivered_alerts: Family::default(),
            webhook_retries: Family::default(),
            webhook_coalesced: Family::default(),
            webhook_drops: Family::default(),
            webhook_errcodes: Family::default(),
            webhook_seconds: Family::new_with_constructor(webhook_histogram),
            quarantine_blocked: Family::default(),
            quarantines: Family::default(),
            rule_actions: Family::default(),
            flows: flows::FlowMetrics::new(),
            dns: dns::DnsMetrics::default(),
            shared: shared.clone(),
            registry,
        };
        // Both results are exported from the start: a first failure is
        // then a counter going 0 -> 1, which increase() sees, instead of a
        // new series whose first sample it cannot.
        for result in ["success", "failure"] {
            drop(m.rule_reloads.get_or_create(&[("result", result)]));
        }
        // Zero from the start, so EgretQuarantineNotEnforced can tell "had
        // quarantines, then vanished" from "never had any".
        m.quarantines(0, 0);
        outputs::declare(&m.output_lost);
        m.register_rest(shared)
    }

    fn register_rest(mut self, shared: Arc<Shared>) -> Arc<Self> {
        let r = &mut self.registry;
        self.dns.register(r);
        r.register(
            "egret_enrichment_failures",
            "Events whose container or Kubernetes identity could not be resolved, by reason",
            self.enrichment_failures.clone(),
        );
        r.register(
            "egret_cgroup_records",
            "Kernel cgroup creation and removal records, by what became of them",
            self.cgroup_records.clone(),
        );
        r.register(
            "egret_connect_results",
            "Connects whose result rules ran, by how (result, deadline, table_full, replaced, shutdown), and results nothing waited for (unmatched)",
            self.connect_results.clone(),
        );
        r.register(
            "egret_rule_reloads",
            "Rule file loads, by result",
            self.rule_reloads.clone(),
        );
        r.register(
            "egret_audit_dropped_events",
            "Events not written to the audit log because its queue was full (they were evaluated)",
            self.audit_dropped.clone(),
        );
        r.register(
            "egret_rules_loaded",
            "Rules in the active rule set",
            self.rules_loaded.clone(),
        );
        r.register(
            "egret_rules_last_reload_successful",
            "1 if the last rule load succeeded",
            self.rules_last_reload_ok.clone(),
        );
        r.register(
            "egret_output_lost_records",
            "Records a local output (audit log, stdout alerts) could not write, by reason",
            self.output_lost.clone(),
        );
        r.register(
            "egret_webhook_deliveries",
            "Webhook requests accepted by the receiver (2xx)",
            self.webhook_deliveries.clone(),
        );
        r.register(
            "egret_webhook_delivered_alerts",
            "Alerts carried by accepted webhook requests (a coalesced request carries several)",
            self.webhook_delivered_alerts.clone(),
        );
        r.register(
            "egret_webhook_retries",
            "Webhook requests retried after a network error, 5xx or 429",
            self.webhook_retries.clone(),
        );
        r.register(
            "egret_webhook_coalesced",
            "Alerts folded into a summary delivery instead of sent on their own",
            self.webhook_coalesced.clone(),
        );
        r.register(
            "egret_webhook_drops",
            "Alerts a webhook endpoint lost, by reason",
            self.webhook_drops.clone(),
        );
        r.register(
            "egret_webhook_receiver_errors",
            "Requests a receiver answered 2xx but refused in its body, by its error code (DingTalk errcode; at most 16 codes per endpoint, then `other`)",
            self.webhook_errcodes.clone(),
        );
        r.register_with_unit(
            "egret_webhook_request_duration",
            "Duration of one webhook request attempt",
            Unit::Seconds,
            self.webhook_seconds.clone(),
        );
        r.register(
            "egret_quarantine_blocked",
            "Egress a quarantine denied, by quarantine id and kind (connect, send, packet)",
            self.quarantine_blocked.clone(),
        );
        r.register(
            "egret_quarantines",
            "Quarantines on this node, by state (active: enforced; pending: target not present)",
            self.quarantines.clone(),
        );
        r.register(
            "egret_rule_actions",
            "Quarantines rules tagged egret.quarantine asked for, by mode (dry_run, enforce) and outcome",
            self.rule_actions.clone(),
        );
        self.flows.register(r);
        r.register_collector(Box::new(collectors::Everything::new(shared)));
        Arc::new(self)
    }

    /// Counts `n` egress attempts that ended as `verdict` (call per batch).
    pub fn observe_events(&self, verdict: Verdict, n: u64) {
        self.shared.verdicts[verdict as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Events the rules were evaluated against so far (alerted or not),
    /// the evaluate stage's progress for the liveness watchdog.
    pub fn events_evaluated(&self) -> u64 {
        self.events(Verdict::Alerted) + self.events(Verdict::NoMatch)
    }

    /// Egress attempts counted as `verdict` so far.
    pub fn events(&self, verdict: Verdict) -> u64 {
        self.shared.verdicts[verdict as usize].load(Ordering::Relaxed)
    }

    /// `n` events the audit log's full queue refused. Its own series: these
    /// events already have a verdict.
    pub fn observe_audit_dropped(&self, n: u64) {
        self.audit_dropped.inc_by(n);
    }

    pub fn audit_dropped(&self) -> u64 {
        self.audit_dropped.get()
    }

    /// Time taken to evaluate the rules against one event.
    pub fn observe_evaluation(&self, elapsed: Duration) {
        self.evaluation.observe(elapsed.as_secs_f64());
    }

    /// Creates the enrichment failure series at zero, so a dashboard sees
    /// a flat line rather than nothing until the first failure.
    pub fn declare_enrichment_reasons(&self) {
        for reason in EnrichFailure::ALL {
            let _ = self
                .enrichment_failures
                .get_or_create(&[("reason", reason.as_str())]);
        }
    }

    /// Creates the cgroup record series at zero.
    pub fn declare_cgroup_outcomes(&self) {
        for outcome in crate::identity::cgroups::CgroupRecordOutcome::ALL {
            let _ = self
                .cgroup_records
                .get_or_create(&[("outcome", outcome.as_str())]);
        }
    }

    pub fn cgroup_record(&self, outcome: crate::identity::cgroups::CgroupRecordOutcome) {
        self.cgroup_records
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// Creates the connect-result series at zero.
    pub fn declare_connect_outcomes(&self) {
        for outcome in crate::pipeline::pending::ConnectOutcome::ALL {
            let _ = self
                .connect_results
                .get_or_create(&[("outcome", outcome.as_str())]);
        }
    }

    pub fn connect_outcome(&self, outcome: crate::pipeline::pending::ConnectOutcome, n: u64) {
        if n > 0 {
            self.connect_results
                .get_or_create(&[("outcome", outcome.as_str())])
                .inc_by(n);
        }
    }

    /// Total so far for `outcome` (tests and the exit summary).
    pub fn connect_outcomes(&self, outcome: crate::pipeline::pending::ConnectOutcome) -> u64 {
        self.connect_results
            .get_or_create(&[("outcome", outcome.as_str())])
            .get()
    }

    /// Reads the kernel's flow counters at every scrape.
    pub fn set_flow_counter_reader(
        &self,
        reader: impl Fn() -> Option<egret_common::FlowCounters> + Send + Sync + 'static,
    ) {
        self.flows.set_kernel_reader(Box::new(reader));
    }

    /// A flow record whose owner (connect event) was unknown.
    pub fn flow_owner_unknown(&self) {
        self.flows.owner_unknown();
    }

    /// Counts a flow record's bytes and end (no-op for other events).
    pub fn observe_flow(&self, event: &crate::pipeline::enrich::Event) {
        self.flows.observe(event);
    }

    pub fn enrichment_failed(&self, reason: EnrichFailure) {
        self.enrichment_failures
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    pub fn rules_reloaded(&self, rules: usize) {
        self.rule_reloads
            .get_or_create(&[("result", "success")])
            .inc();
        self.rules_loaded
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
        self.rules_last_reload_ok.set(1);
    }

    /// A failed load leaves the previous rule set active.
    pub fn rules_reload_failed(&self) {
        self.rule_reloads
            .get_or_create(&[("result", "failure")])
            .inc();
        self.rules_last_reload_ok.set(0);
    }

    /// Adds blocked attempts of one quarantine.
    pub fn quarantine_blocked(&self, id: &str, kind: &'static str, n: u64) {
        let counter = self
            .quarantine_blocked
            .get_or_create(&[("quarantine", id.to_owned()), ("kind", kind.to_owned())]);
        counter.inc_by(n);
    }

    /// Drops a lifted quarantine's series, keeping the label set bounded.
    pub fn quarantine_lifted(&self, id: &str) {
        for kind in ["connect", "send", "packet"] {
            self.quarantine_blocked
                .remove(&[("quarantine", id.to_owned()), ("kind", kind.to_owned())]);
        }
    }

    /// One rule action (`quarantine::actions`), by mode and outcome.
    pub fn rule_action(&self, mode: &'static str, outcome: &'static str) {
        self.rule_actions
            .get_or_create(&[("mode", mode), ("outcome", outcome)])
            .inc();
    }

    pub fn quarantines(&self, active: usize, pending: usize) {
        self.quarantines
            .get_or_create(&[("state", "active")])
            .set(active as i64);
        self.quarantines
            .get_or_create(&[("state", "pending")])
            .set(pending as i64);
    }

    /// `n` records `output` could not write.
    pub fn output_lost(&self, output: Output, reason: LossReason, n: u64) {
        outputs::add(&self.output_lost, output, reason, n);
    }

    /// Records `output` lost so far, all reasons.
    pub fn output_lost_total(&self, output: Output) -> u64 {
        outputs::total(&self.output_lost, output)
    }

    /// Latest kernel counters (for a periodic updater).
    pub fn set_kernel_counters(&self, counters: [HookCounters; HOOKS]) {
        lock(&self.shared.kernel).last = Some(counters);
    }

    /// Reads the kernel counters at every scrape instead; `None` from the
    /// reader counts a read error and keeps the previous values.
    pub fn set_kernel_reader(
        &self,
        reader: impl Fn() -> Option<[HookCounters; HOOKS]> + Send + Sync + 'static,
    ) {
        lock(&self.shared.kernel).reader = Some(Box::new(reader));
    }

    /// Exposes the depth of a pipeline queue. Holds only a weak handle, so
    /// the channel still closes when its senders are gone.
    pub fn watch_queue<T: Send + 'static>(&self, name: &str, tx: &mpsc::Sender<T>) {
        let weak = tx.downgrade();
        self.watch_queue_with(name, move || {
            let tx = weak.upgrade()?;
            Some((tx.max_capacity() - tx.capacity(), tx.max_capacity()))
        });
    }

    /// Like [`Metrics::watch_queue`] for any queue: `probe` returns
    /// `(depth, capacity)`, or `None` once the queue is gone.
    pub fn watch_queue_with(
        &self,
        name: &str,
        probe: impl Fn() -> Option<(usize, usize)> + Send + Sync + 'static,
    ) {
        lock(&self.shared.queues).push((name.to_owned(), Box::new(probe)));
    }

    /// Counters for one webhook endpoint (`endpoint` is its configured
    /// name, never its URL: webhook URLs often embed a secret).
    pub fn webhook(&self, endpoint: &str) -> WebhookMetrics {
        let label = [("endpoint", endpoint.to_owned())];
        let drops = DropReason::ALL.map(|reason| {
            self.webhook_drops.get_or_create_owned(&[
                ("endpoint", endpoint.to_owned()),
                ("reason", reason.as_str().to_owned()),
            ])
        });
        WebhookMetrics {
            deliveries: self.webhook_deliveries.get_or_create_owned(&label),
            delivered_alerts: self.webhook_delivered_alerts.get_or_create_owned(&label),
            retries: self.webhook_retries.get_or_create_owned(&label),
            coalesced: self.webhook_coalesced.get_or_create_owned(&label),
            drops,
            request_seconds: Some(self.webhook_seconds.get_or_create_owned(&label)),
            errcodes: webhook::ErrorCodes::attached(self.webhook_errcodes.clone(), endpoint),
        }
    }

    /// The whole exposition, `# EOF` included.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
