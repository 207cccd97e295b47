//! Rules stage: evaluates every enriched event against the current rule set
//! (swapped atomically on reload), writes alerts as JSON lines on stdout,
//! counts them, hands them to the webhook sink, and forwards events to the
//! audit sink.
use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicU64, atomic::Ordering},
    time::Instant,
};

use egret_rules::{Event as _, FieldId, RuleId, Ruleset, Value};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::{mpsc, watch},
};

use crate::{
    metrics::{AlertContext, Metrics, Verdict},
    outputs::{
        alert::{Additions, Alert},
        webhook::WebhookSink,
    },
    pipeline::enrich::Event,
    timefmt,
};

pub struct RulesStage<W> {
    pub rules: watch::Receiver<Arc<Ruleset>>,
    pub hostname: Arc<str>,
    /// `append_output` and `custom_fields`, applied to every alert.
    pub additions: Arc<Additions>,
    pub metrics: Arc<Metrics>,
    pub webhooks: Option<WebhookSink>,
    /// Alerts, one JSON object per line (stdout in production).
    pub alerts_out: W,
    /// Every event, for the audit log; full queue = counted drop.
    pub audit: Option<mpsc::Sender<Vec<Event>>>,
    pub audit_dropped: Arc<AtomicU64>,
}

fn str_field(event: &Event, field: FieldId) -> &str {
    match event.value(field) {
        Value::Str(s) => s,
        _ => "",
    }
}

impl<W: AsyncWrite + Unpin> RulesStage<W> {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Event>>) -> std::io::Result<u64> {
        let mut matches: Vec<RuleId> = Vec::new();
        let mut out = Vec::with_capacity(16 * 1024);
        let mut alerts_total = 0u64;
        while let Some(events) = rx.recv().await {
            let ruleset = self.rules.borrow_and_update().clone();
            out.clear();
            alerts_total += self.evaluate_batch(&ruleset, &events, &mut matches, &mut out)?;
            if !out.is_empty() {
                self.alerts_out.write_all(&out).await?;
                self.alerts_out.flush().await?;
            }
            let n = events.len() as u64;
            if let Some(audit) = &self.audit
                && audit.try_send(events).is_err()
            {
                self.audit_dropped.fetch_add(n, Ordering::Relaxed);
                self.metrics.observe_events(Verdict::Dropped, n);
            }
        }
        if let Some(webhooks) = self.webhooks.take() {
            webhooks.finish().await;
        }
        Ok(alerts_total)
    }
}

impl<W> RulesStage<W> {
    /// One batch, without I/O: evaluates every event, appends each alert
    /// to `out` as a JSON line, counts events and alerts in the metrics and
    /// hands alerts to the webhook sink. Returns the alerts raised. The
    /// pipeline benchmark (`agent/benches/pipeline.rs`) drives this too.
    pub fn evaluate_batch(
        &self,
        ruleset: &Ruleset,
        events: &[Event],
        matches: &mut Vec<RuleId>,
        out: &mut Vec<u8>,
    ) -> std::io::Result<u64> {
        let started = Instant::now();
        let mut alerted = 0u64;
        let mut alerts = 0u64;
        for event in events {
            ruleset.evaluate(event, matches);
            if matches.is_empty() {
                continue;
            }
            alerted += 1;
            // Depends on the event only: once, however many rules match.
            let ctx = AlertContext {
                k8s_ns_name: str_field(event, FieldId::K8sNsName),
                k8s_pod_name: str_field(event, FieldId::K8sPodName),
                container_name: str_field(event, FieldId::ContainerName),
                container_id: event.container_id().unwrap_or(""),
                proc_name: event.attempt.comm.as_str(),
                dest: Some((event.attempt.daddr, event.attempt.dport)),
            };
            for id in matches.iter() {
                let Some(rule) = ruleset.rule(*id) else {
                    continue;
                };
                let alert = Arc::new(self.alert(rule, event));
                serde_json::to_writer(&mut *out, &*alert).map_err(std::io::Error::other)?;
                out.push(b'\n');
                self.metrics.observe_alert(&alert, &ctx);
                if let Some(webhooks) = &self.webhooks {
                    webhooks.submit(&alert, &ctx);
                }
                alerts += 1;
            }
        }
        let n = events.len() as u64;
        if n > 0 {
            // One timing per batch keeps clock reads off the per-event
            // path; the histogram records the batch's mean per event.
            self.metrics
                .observe_evaluation(started.elapsed() / events.len() as u32);
        }
        self.metrics.observe_events(Verdict::Alerted, alerted);
        self.metrics.observe_events(Verdict::NoMatch, n - alerted);
        Ok(alerts)
    }

    fn alert(&self, rule: &egret_rules::Rule, event: &Event) -> Alert {
        let rendered = rule.render(event);
        let mut alert = Alert {
            time: timefmt::rfc3339_nanos(event.attempt.wall_ns),
            rule: rule.name().clone(),
            priority: rule.priority(),
            output: rendered.output,
            output_fields: rendered.fields.into_iter().collect::<BTreeMap<_, _>>(),
            tags: rule.tags().clone(),
            source: "syscall",
            hostname: self.hostname.clone(),
        };
        self.additions.apply(&mut alert, event);
        alert
    }
}
