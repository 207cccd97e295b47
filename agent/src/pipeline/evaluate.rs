//! Evaluate stage: matches every enriched event against the current rule set
//! (swapped atomically on reload), counts one verdict per event, and hands
//! each batch with its alerts to the outputs' one fan-out. Rules that read a
//! connect's result run when it arrives (`pending.rs`); the others at once.
use std::{sync::Arc, time::Instant};

use egret_common::Hook;
use egret_rules::{Phase, Rule, RuleId, Ruleset};
use tokio::{
    io::AsyncWrite,
    sync::{mpsc, watch},
};

use crate::{
    metrics::{Metrics, Verdict},
    outputs::{
        Evaluated, Outputs, Raised,
        alert::{Additions, Alert, FieldPlan, OutputFields},
        alert_context,
    },
    pipeline::{
        enrich::{Batch, Event},
        pending::{Offer, Pending},
    },
    timefmt,
};

/// Evaluation state that does not depend on the outputs; the pipeline
/// benchmark (`agent/benches/pipeline.rs`) drives it without I/O.
pub struct Evaluator {
    hostname: Arc<str>,
    /// `append_output` and `custom_fields`, applied to every alert; fixed
    /// for the evaluator's life, so the plans made from it stay valid.
    additions: Arc<Additions>,
    metrics: Arc<Metrics>,
    /// Per rule, how its alerts' `output_fields` are filled.
    plans: FieldPlans,
}

/// [`FieldPlan`]s by rule id, made on a rule's first alert. Each entry
/// holds its rule's name, so after a reload (new rules, maybe the same ids)
/// a stale entry is recognised and made again.
#[derive(Default)]
struct FieldPlans {
    by_rule: Vec<Option<Planned>>,
}

enum Planned {
    Plan(FieldPlan),
    /// The rule takes [`Additions::apply`] (it matches an `extra_output`).
    General(Arc<str>),
}

impl Planned {
    fn is_for(&self, rule: &Arc<str>) -> bool {
        match self {
            Planned::Plan(plan) => plan.is_for(rule),
            Planned::General(name) => Arc::ptr_eq(name, rule),
        }
    }
}

impl FieldPlans {
    fn get(&mut self, additions: &Additions, id: RuleId, rule: &Rule) -> Option<&FieldPlan> {
        let i = id.index();
        if self.by_rule.len() <= i {
            self.by_rule.resize_with(i + 1, || None);
        }
        let slot = &mut self.by_rule[i];
        if !slot.as_ref().is_some_and(|p| p.is_for(rule.name())) {
            let plan = additions.plan(rule.name(), rule.tags(), SOURCE, rule.output_fields());
            *slot = Some(match plan {
                Some(plan) => Planned::Plan(plan),
                None => Planned::General(rule.name().clone()),
            });
        }
        match slot {
            Some(Planned::Plan(plan)) => Some(plan),
            _ => None,
        }
    }
}

/// Every alert's `source`: the events are syscalls, as Falco names them.
const SOURCE: &str = "syscall";

pub struct EvaluateStage<W> {
    pub rules: watch::Receiver<Arc<Ruleset>>,
    pub evaluator: Evaluator,
    pub outputs: Outputs<W>,
    /// Rules tagged `egret.quarantine` act through this (when not off).
    pub rule_actions: Option<crate::quarantine::actions::RuleActions>,
    /// Connects whose result rules wait for the result.
    pub pending: Pending,
}

impl<W: AsyncWrite + Unpin> EvaluateStage<W> {
    /// Runs until the enrich stage closes its channel, then returns the
    /// outputs for an ordered stop (connects still waiting are evaluated
    /// with `EINPROGRESS` first).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Batch>) -> std::io::Result<Outputs<W>> {
        let mut matches: Vec<RuleId> = Vec::new();
        loop {
            let deadline = self.pending.next_deadline();
            let due = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let Batch { events, results } = tokio::select! {
                batch = rx.recv() => match batch {
                    Some(batch) => batch,
                    None => break,
                },
                () = due => Batch::default(),
            };
            let ruleset = self.rules.borrow_and_update().clone();
            let mut alerts = Vec::new();
            let mut resolved = Vec::new();
            let pending = self.pending.enabled().then_some(&mut self.pending);
            self.evaluator.evaluate_batch_deferring(
                &ruleset,
                &events,
                &mut matches,
                &mut alerts,
                pending.map(|p| (p, &mut resolved)),
            );
            self.act(&alerts, &events);
            // A batch of results only (or a deadline) has nothing to audit.
            if !events.is_empty() {
                self.outputs.send(Evaluated { events, alerts }).await?;
            }
            for result in &results {
                resolved.extend(self.pending.resolve(result));
            }
            self.pending.expire(Instant::now(), &mut resolved);
            self.send_resolved(&ruleset, resolved, &mut matches).await?;
        }
        let mut resolved = Vec::new();
        self.pending.drain(&mut resolved);
        let ruleset = self.rules.borrow().clone();
        self.send_resolved(&ruleset, resolved, &mut matches).await?;
        Ok(self.outputs)
    }

    /// Runs the result rules on connects whose result arrived or whose wait
    /// ended, and sends their alerts (not their events: the audit log has
    /// them from the attempt).
    async fn send_resolved(
        &mut self,
        ruleset: &Ruleset,
        events: Vec<Event>,
        matches: &mut Vec<RuleId>,
    ) -> std::io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut alerts = Vec::new();
        for (index, event) in events.iter().enumerate() {
            self.evaluator
                .raise(ruleset, event, index, Phase::Result, matches, &mut alerts);
        }
        self.act(&alerts, &events);
        self.outputs.send_alerts(Evaluated { events, alerts }).await
    }

    fn act(&self, alerts: &[Raised], events: &[Event]) {
        let Some(actions) = &self.rule_actions else {
            return;
        };
        for raised in alerts {
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
}

/// Whether a connect's result rules wait for its result: an observed
/// connect (a quarantine's denial is already its result) on a socket the
/// kernel named.
fn awaits_result(event: &Event) -> bool {
    matches!(event.attempt.hook, Hook::Connect4 | Hook::Connect6)
        && event.attempt.blocked.is_none()
        && event.attempt.socket_cookie != 0
        && event.result.is_none()
}

impl Evaluator {
    pub fn new(hostname: Arc<str>, additions: Arc<Additions>, metrics: Arc<Metrics>) -> Evaluator {
        Evaluator {
            hostname,
            additions,
            metrics,
            plans: FieldPlans::default(),
        }
    }

    /// One batch, without I/O: evaluates every event, appends each alert to
    /// `alerts`, and counts verdicts and alerts in the metrics. Returns the
    /// alerts raised.
    pub fn evaluate_batch(
        &mut self,
        ruleset: &Ruleset,
        events: &[Event],
        matches: &mut Vec<RuleId>,
        alerts: &mut Vec<Raised>,
    ) -> u64 {
        self.evaluate_batch_deferring(ruleset, events, matches, alerts, None)
    }

    /// [`evaluate_batch`](Self::evaluate_batch), with connects' result
    /// rules left to `pending` when given (and when any rule reads the
    /// result); the connects it hands back (same socket again) go to
    /// `resolved`, due now.
    pub fn evaluate_batch_deferring(
        &mut self,
        ruleset: &Ruleset,
        events: &[Event],
        matches: &mut Vec<RuleId>,
        alerts: &mut Vec<Raised>,
        mut pending: Option<(&mut Pending, &mut Vec<Event>)>,
    ) -> u64 {
        let started = Instant::now();
        let before = alerts.len();
        let mut alerted = 0u64;
        let defers = pending.is_some() && ruleset.connects_read_result();
        let first = ruleset_first(ruleset);
        for (index, event) in events.iter().enumerate() {
            let phase = if defers && awaits_result(event) {
                Phase::Attempt
            } else {
                Phase::All
            };
            let raised = self.raise(ruleset, event, index, phase, matches, alerts);
            if raised {
                alerted += 1;
            }
            // With rule_matching first, one alert per event is all Falco
            // would raise: a connect that alerted is done.
            if phase == Phase::All || (raised && first) {
                continue;
            }
            let Some((table, resolved)) = pending.as_mut() else {
                continue;
            };
            match table.offer(event, Instant::now()) {
                Offer::Waiting(replaced) => resolved.extend(replaced.map(|e| *e)),
                Offer::Full => {
                    if self.raise(ruleset, event, index, Phase::Result, matches, alerts) && !raised
                    {
                        alerted += 1;
                    }
                }
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

    /// Evaluates the rules of `phase` on one event and appends its alerts
    /// (event index `index`); true when any rule matched.
    fn raise(
        &mut self,
        ruleset: &Ruleset,
        event: &Event,
        index: usize,
        phase: Phase,
        matches: &mut Vec<RuleId>,
        alerts: &mut Vec<Raised>,
    ) -> bool {
        ruleset.evaluate_phase(event, matches, phase);
        if matches.is_empty() {
            return false;
        }
        // Depends on the event only: once, however many rules match.
        let ctx = alert_context(event);
        for id in matches.iter() {
            let Some(rule) = ruleset.rule(*id) else {
                continue;
            };
            let alert = Arc::new(self.alert(*id, rule, event));
            self.metrics.observe_alert(&alert, &ctx);
            alerts.push(Raised {
                alert,
                event: index,
            });
        }
        true
    }

    fn alert(&mut self, id: RuleId, rule: &Rule, event: &Event) -> Alert {
        let rendered = rule.render(event);
        let mut alert = Alert {
            time: timefmt::rfc3339_nanos(event.attempt.wall_ns),
            rule: rule.name().clone(),
            priority: rule.priority(),
            output: rendered.output,
            output_fields: OutputFields::new(),
            tags: rule.tags().clone(),
            source: SOURCE,
            hostname: self.hostname.clone(),
        };
        let fields = match self.plans.get(&self.additions, id, rule) {
            Some(plan) => self.additions.fill(plan, rendered.fields, event),
            None => Err(rendered.fields),
        };
        match fields {
            Ok(fields) => alert.output_fields = fields,
            Err(rendered) => {
                alert.output_fields =
                    OutputFields::from_distinct(rendered, self.additions.max_fields());
                self.additions.apply(&mut alert, event);
            }
        }
        alert
    }
}

fn ruleset_first(ruleset: &Ruleset) -> bool {
    ruleset.matching() == egret_rules::RuleMatching::First
}
