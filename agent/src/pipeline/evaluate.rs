//! Evaluate stage: matches every enriched event against the current rule set
//! (swapped atomically on reload), counts one verdict per event, and hands
//! each batch with its alerts to the outputs' one fan-out.
use std::{collections::BTreeMap, sync::Arc, time::Instant};

use egret_rules::{RuleId, Ruleset};
use tokio::{
    io::AsyncWrite,
    sync::{mpsc, watch},
};

use crate::{
    metrics::{Metrics, Verdict},
    outputs::{
        Evaluated, Outputs, Raised,
        alert::{Additions, Alert},
        alert_context,
    },
    pipeline::enrich::Event,
    timefmt,
};

/// Evaluation state that does not depend on the outputs; the pipeline
/// benchmark (`agent/benches/pipeline.rs`) drives it without I/O.
pub struct Evaluator {
    pub hostname: Arc<str>,
    /// `append_output` and `custom_fields`, applied to every alert.
    pub additions: Arc<Additions>,
    pub metrics: Arc<Metrics>,
}

pub struct EvaluateStage<W> {
    pub rules: watch::Receiver<Arc<Ruleset>>,
    pub evaluator: Evaluator,
    pub outputs: Outputs<W>,
    /// Rules tagged `egret.quarantine` act through this (when not off).
    pub rule_actions: Option<crate::quarantine::actions::RuleActions>,
}

impl<W: AsyncWrite + Unpin> EvaluateStage<W> {
    /// Runs until the enrich stage closes its channel, then returns the
    /// outputs for an ordered stop.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Event>>) -> std::io::Result<Outputs<W>> {
        let mut matches: Vec<RuleId> = Vec::new();
        while let Some(events) = rx.recv().await {
            let ruleset = self.rules.borrow_and_update().clone();
            let mut alerts = Vec::new();
            self.evaluator
                .evaluate_batch(&ruleset, &events, &mut matches, &mut alerts);
            if let Some(actions) = &self.rule_actions {
                for raised in &alerts {
                    let tagged = raised
                        .alert
                        .tags
                        .iter()
                        .any(|t| &**t == crate::quarantine::actions::TAG);
                    if tagged && let Some(event) = events.get(raised.event) {
                        actions.offer(&raised.alert.rule, event);
                    }
                }
            }
            self.outputs.send(Evaluated { events, alerts }).await?;
        }
        Ok(self.outputs)
    }
}

impl Evaluator {
    /// One batch, without I/O: evaluates every event, appends each alert to
    /// `alerts`, and counts verdicts and alerts in the metrics. Returns the
    /// alerts raised.
    pub fn evaluate_batch(
        &self,
        ruleset: &Ruleset,
        events: &[Event],
        matches: &mut Vec<RuleId>,
        alerts: &mut Vec<Raised>,
    ) -> u64 {
        let started = Instant::now();
        let before = alerts.len();
        let mut alerted = 0u64;
        for (index, event) in events.iter().enumerate() {
            ruleset.evaluate(event, matches);
            if matches.is_empty() {
                continue;
            }
            alerted += 1;
            // Depends on the event only: once, however many rules match.
            let ctx = alert_context(event);
            for id in matches.iter() {
                let Some(rule) = ruleset.rule(*id) else {
                    continue;
                };
                let alert = Arc::new(self.alert(rule, event));
                self.metrics.observe_alert(&alert, &ctx);
                alerts.push(Raised {
                    alert,
                    event: index,
                });
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
        (alerts.len() - before) as u64
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
