//! Pre-resolved webhook counters, so the delivery path records with an
//! atomic add and no label lookup.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};

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
    /// HTTP 2xx, but the body reported an error (DingTalk's `errcode`
    /// other than 0 and other than its rate limit, which is retried).
    ReceiverError,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
        DropReason::Encode,
        DropReason::ReceiverError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
            DropReason::Encode => "encode_error",
            DropReason::ReceiverError => "receiver_error",
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
    pub(super) drops: [Counter; 6],
    pub(super) request_seconds: Option<Histogram>,
    /// Error codes receivers answered with, per code (bounded).
    pub(super) errcodes: ErrorCodes,
}

/// Distinct codes kept per endpoint; later ones count as `other`.
const MAX_ERROR_CODES: usize = 16;

type CodeFamily = Family<[(&'static str, String); 2], Counter>;

/// Per-code counters of receiver errors, exported when attached to the
/// registry as `egret_webhook_receiver_errors_total{endpoint, errcode}`.
#[derive(Clone, Debug, Default)]
pub(super) struct ErrorCodes {
    pub family: Option<(CodeFamily, String)>,
    seen: Arc<Mutex<BTreeMap<String, Counter>>>,
}

impl ErrorCodes {
    pub fn attached(family: CodeFamily, endpoint: &str) -> Self {
        ErrorCodes {
            family: Some((family, endpoint.to_owned())),
            seen: Arc::default(),
        }
    }
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

    /// A request the receiver refused with `code` in its body, carrying
    /// `alerts` alerts (dropped as `receiver_error`).
    pub fn receiver_error(&self, code: i64, alerts: u64) {
        self.dropped(DropReason::ReceiverError, alerts);
        let mut seen = self.errcodes.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = code.to_string();
        if !seen.contains_key(&key) && seen.len() >= MAX_ERROR_CODES {
            key = "other".to_owned();
        }
        let counter =
            seen.entry(key.clone())
                .or_insert_with(|| match &self.errcodes.family {
                    Some((family, endpoint)) => family
                        .get_or_create_owned(&[("endpoint", endpoint.clone()), ("errcode", key)]),
                    None => Counter::default(),
                });
        counter.inc();
    }

    /// Requests refused with `code` (`None`: never seen).
    pub fn receiver_errors(&self, code: i64) -> Option<u64> {
        let seen = self.errcodes.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&code.to_string()).map(Counter::get)
    }

    pub fn observe_request(&self, elapsed: Duration) {
        if let Some(h) = &self.request_seconds {
            h.observe(elapsed.as_secs_f64());
        }
    }
}
