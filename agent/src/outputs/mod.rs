//! Outputs: where events and alerts leave the agent. The evaluate stage
//! hands each evaluated batch to [`Outputs::send`], the one fan-out: alerts
//! go to stdout and the webhook endpoints, every event to the audit log.
//!
//! Each output owns its own queue, so a slow or failing one is handled where
//! it is and never stops evaluation: the audit queue, the webhook queues and
//! stdout's queue ([`stdout_queue`]) each drop and count
//! (`egret_output_lost_records_total`, `egret_webhook_drops_total`). A new
//! output is a module here plus a field in [`Outputs`] and a line in `send`
//! and `stop`.
pub mod alert;
pub mod audit;
pub mod json_line;
pub mod output_fields;
pub mod stdout;
pub mod stdout_queue;
pub mod webhook;

use std::{sync::Arc, time::Instant};

use egret_rules::{Event as _, FieldId, Value};
use tokio::{io::AsyncWrite, sync::mpsc, task::JoinHandle};

use crate::{
    metrics::{AlertContext, LossReason, Metrics, Output},
    pipeline::enrich::Event,
};
use alert::Alert;
use webhook::WebhookSink;

/// An alert and the index of the event in its batch that raised it.
#[derive(Debug)]
pub struct Raised {
    pub alert: Arc<Alert>,
    pub event: usize,
}

/// One batch after evaluation: every event, and the alerts it raised.
#[derive(Debug, Default)]
pub struct Evaluated {
    pub events: Vec<Event>,
    pub alerts: Vec<Raised>,
}

/// What an alert says about its workload and destination, for metric labels
/// and webhook coalescing. Depends on the event only.
pub fn alert_context(event: &Event) -> AlertContext<'_> {
    let text = |field| match event.value(field) {
        Value::Str(s) => s,
        _ => "",
    };
    AlertContext {
        k8s_ns_name: text(FieldId::K8sNsName),
        k8s_pod_name: text(FieldId::K8sPodName),
        container_name: text(FieldId::ContainerName),
        container_id: event.container_id().unwrap_or(""),
        proc_name: event.attempt.comm.as_str(),
        dest: event
            .attempt
            .has_destination()
            .then_some((event.attempt.daddr, event.attempt.dport)),
    }
}

/// The audit log's queue and writer task; a full queue is a counted drop.
pub struct AuditQueue {
    pub tx: mpsc::Sender<Vec<Event>>,
    pub task: JoinHandle<u64>,
}

pub struct Outputs<W> {
    stdout: stdout::AlertLines<W>,
    audit: Option<AuditQueue>,
    webhooks: Option<WebhookSink>,
    metrics: Arc<Metrics>,
}

/// What the outputs wrote, for the exit summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutputTotals {
    /// Alert lines written to stdout.
    pub alerts_written: u64,
    /// Events written to the audit log (0 when it is off).
    pub audited: u64,
}

impl<W: AsyncWrite + Unpin> Outputs<W> {
    pub fn new(
        alerts_out: W,
        audit: Option<AuditQueue>,
        webhooks: Option<WebhookSink>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Outputs {
            stdout: stdout::AlertLines::new(alerts_out),
            audit,
            webhooks,
            metrics,
        }
    }

    /// Fans one evaluated batch out to every output. Fails only when stdout
    /// can no longer be written.
    pub async fn send(&mut self, batch: Evaluated) -> std::io::Result<()> {
        self.submit_webhooks(&batch);
        self.stdout.write(&batch.alerts).await?;
        if let Some(audit) = &self.audit {
            let n = batch.events.len() as u64;
            if audit.tx.try_send(batch.events).is_err() {
                self.metrics.observe_audit_dropped(n);
                self.metrics
                    .output_lost(Output::Audit, LossReason::QueueFull, n);
            }
        }
        Ok(())
    }

    /// The alerts of a batch only, to stdout and the webhooks: for connects
    /// evaluated again once their result arrived (`pipeline/pending.rs`),
    /// whose audit records were written at the attempt.
    pub async fn send_alerts(&mut self, batch: Evaluated) -> std::io::Result<()> {
        self.submit_webhooks(&batch);
        self.stdout.write(&batch.alerts).await
    }

    fn submit_webhooks(&self, batch: &Evaluated) {
        if let Some(webhooks) = &self.webhooks {
            for raised in &batch.alerts {
                if let Some(event) = batch.events.get(raised.event) {
                    webhooks.submit(&raised.alert, &alert_context(event));
                }
            }
        }
    }

    /// Closes every output and waits for them to drain until `deadline`
    /// (webhooks keep their own grace, which is shorter); what an output
    /// still holds then is abandoned, and counted where it can be.
    pub async fn stop(self, deadline: Instant) -> std::io::Result<OutputTotals> {
        let Outputs {
            stdout,
            audit,
            webhooks,
            ..
        } = self;
        let alerts_written = stdout.written();
        if let Some(webhooks) = webhooks
            && tokio::time::timeout_at(deadline.into(), webhooks.finish())
                .await
                .is_err()
        {
            tracing::warn!("webhook endpoints did not finish by the shutdown deadline");
        }
        let mut audited = 0;
        if let Some(AuditQueue { tx, task }) = audit {
            drop(tx);
            match tokio::time::timeout_at(deadline.into(), task).await {
                Ok(Ok(written)) => audited = written,
                Ok(Err(join)) => return Err(std::io::Error::other(join)),
                Err(_) => tracing::warn!(
                    "audit log did not drain by the shutdown deadline; the rest of its queue is lost"
                ),
            }
        }
        Ok(OutputTotals {
            alerts_written,
            audited,
        })
    }
}
