//! Pre-resolved webhook counters, so the delivery path records with an
//! atomic add and no label lookup.
use std::time::Duration;

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

/// Why a webhook endpoint lost alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its queue was full when the pipeline handed the alert over.
    QueueFull,
    /// The receiver answered 4xx (other than 429): retrying cannot help.
    Rejected,
    /// Network errors, 5xx or 429 until the retry budget ran out.
    RetriesExhausted,
    /// Still queued or in flight when the shutdown grace period ended.
    Shutdown,
    /// The payload could not be built.
    Encode,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
        DropReason::Encode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
            DropReason::Encode => "encode_error",
        }
    }
}

/// Pre-resolved counters for one webhook endpoint: recording is an atomic add.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    /// Successful requests.
    pub deliveries: Counter,
    /// Alerts carried by successful requests (a coalesced one carries many).
    pub delivered_alerts: Counter,
    pub retries: Counter,
    /// Alerts folded into a later summary instead of sent on their own.
    pub coalesced: Counter,
    pub(super) drops: [Counter; 5],
    pub(super) request_seconds: Option<Histogram>,
}

impl WebhookMetrics {
    /// Counters that are not exported; for use without a [`Metrics`].
    pub fn detached() -> Self {
        WebhookMetrics::default()
    }

    pub fn dropped(&self, reason: DropReason, alerts: u64) {
        self.drops[reason as usize].inc_by(alerts);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    pub fn observe_request(&self, elapsed: Duration) {
        if let Some(h) = &self.request_seconds {
            h.observe(elapsed.as_secs_f64());
        }
    }
}
