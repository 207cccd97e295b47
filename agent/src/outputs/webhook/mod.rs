//! Webhook sink: alerts to SOAR platforms, Slack relays, falcosidekick.
//!
//! Each endpoint has its own bounded queue, HTTP client and task, so a slow
//! or dead receiver only ever fills its own queue. The pipeline hands
//! alerts over with [`WebhookSink::submit`], which never waits: a full queue
//! drops the alert and counts it. Every alert lost afterwards (rejected,
//! retries exhausted, shutdown) is counted too, per endpoint and reason.
pub mod alertmanager;
mod coalesce;
pub mod config;
mod dingtalk;
mod endpoint;
pub mod format;
mod worker;

use std::{
    collections::HashSet,
    hash::{BuildHasher, Hasher, RandomState},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use alertmanager::{label_name, severity};
pub use config::{
    EndpointConfig, HmacConfig, PayloadFormat, RateLimitConfig, RetryConfig, SecretError,
    SecretSource, SlackConfig, SlackFormat, TlsConfig,
};
pub use dingtalk::signed_url as dingtalk_signed_url;
pub use format::{COALESCED_FIELD, COALESCED_WINDOW_FIELD};

use crate::{
    metrics::{AlertContext, DropReason, Metrics, WebhookMetrics},
    outputs::alert::{Alert, Priority},
};
use coalesce::Coalescer;
use endpoint::Endpoint;
use worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {endpoint}: {reason}")]
    Invalid { endpoint: String, reason: String },
    #[error("webhook {endpoint}: {source}")]
    Secret {
        endpoint: String,
        source: SecretError,
    },
    #[error("webhook {endpoint}: TLS: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("webhook {endpoint}: building the HTTP client: {source}")]
    Client {
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("two webhook endpoints are named {0}")]
    DuplicateName(String),
}

/// How long queued alerts may still be sent once shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

struct Queued {
    alert: Arc<Alert>,
    key: u64,
}

struct Handle {
    name: String,
    min_priority: Priority,
    tx: mpsc::Sender<Queued>,
    metrics: WebhookMetrics,
}

pub struct WebhookSink {
    endpoints: Vec<Handle>,
    keys: RandomState,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("endpoints", &self.endpoint_names().collect::<Vec<_>>())
            .finish()
    }
}

impl WebhookSink {
    /// Validates every endpoint (URL, secrets, TLS files) and starts one
    /// task each; must run inside a Tokio runtime. When `shutdown` is
    /// cancelled, or [`WebhookSink::finish`] is called, each endpoint gets
    /// `grace` to send what it holds.
    pub fn start(
        configs: &[EndpointConfig],
        metrics: Option<&Metrics>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<Self, WebhookError> {
        for cfg in configs {
            if !cfg.url.is_empty() && !cfg.urls.is_empty() {
                return Err(WebhookError::Invalid {
                    endpoint: cfg.name.clone().unwrap_or_else(|| "webhook".into()),
                    reason: "`url` and `urls` exclude each other".into(),
                });
            }
        }
        let configs: Vec<EndpointConfig> =
            configs.iter().flat_map(EndpointConfig::expand).collect();
        let configs = &configs[..];
        let names = endpoint_names(configs)?;
        // Build everything before spawning anything: a bad endpoint fails
        // start-up without leaving tasks behind.
        let mut built = Vec::with_capacity(configs.len());
        for (cfg, name) in configs.iter().zip(names) {
            let m = metrics.map_or_else(WebhookMetrics::detached, |m| m.webhook(&name));
            built.push((cfg, Endpoint::build(cfg, name, m)?));
        }
        let mut endpoints = Vec::with_capacity(built.len());
        let mut tasks = Vec::with_capacity(built.len());
        for (cfg, ep) in built {
            let (tx, rx) = mpsc::channel(cfg.queue_capacity);
            if let Some(m) = metrics {
                m.watch_queue(&format!("webhook:{}", ep.name), &tx);
            }
            tracing::info!(endpoint = %ep.name, url = %ep.shown_url, format = ?cfg.format,
                min_priority = ep.min_priority.as_str(), rate_limit = ?cfg.effective_rate_limit(),
                "webhook endpoint configured");
            endpoints.push(Handle {
                name: ep.name.clone(),
                min_priority: ep.min_priority,
                tx,
                metrics: ep.metrics.clone(),
            });
            let worker = Worker {
                endpoint: Arc::new(ep),
                rx,
                coalescer: Coalescer::new(cfg.coalesce_window, cfg.coalesce_max_keys),
                limiter: cfg.effective_rate_limit().map(dingtalk::Limiter::new),
                max_in_flight: cfg.max_in_flight,
                shutdown: shutdown.clone(),
                grace,
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        Ok(WebhookSink {
            endpoints,
            keys: RandomState::new(),
            tasks,
        })
    }

    /// Queues `alert` for every endpoint whose minimum priority it meets.
    /// Never waits; a full queue counts a `queue_full` drop. `ctx` tells
    /// identical alerts apart for coalescing (rule, container id and
    /// destination); see `outputs::alert_context`.
    pub fn submit(&self, alert: &Arc<Alert>, ctx: &AlertContext<'_>) {
        let mut key = None;
        for ep in &self.endpoints {
            if alert.priority > ep.min_priority {
                continue;
            }
            let key = *key.get_or_insert_with(|| self.coalesce_key(alert, ctx));
            let queued = Queued {
                alert: alert.clone(),
                key,
            };
            match ep.tx.try_send(queued) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    ep.metrics.dropped(DropReason::QueueFull, 1);
                    tracing::debug!(endpoint = %ep.name, "webhook queue full; alert dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    ep.metrics.dropped(DropReason::Shutdown, 1);
                }
            }
        }
    }

    /// Keyed with a per-process random key: an attacker who could predict
    /// keys could make their alert collide with a benign one and hide in
    /// its summary.
    fn coalesce_key(&self, alert: &Alert, ctx: &AlertContext<'_>) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write(alert.rule.as_bytes());
        h.write_u8(0xff);
        h.write(ctx.container_id.as_bytes());
        h.write_u8(0xff);
        match ctx.dest {
            Some((ip, port)) => {
                match ip {
                    std::net::IpAddr::V4(v4) => h.write(&v4.octets()),
                    std::net::IpAddr::V6(v6) => h.write(&v6.octets()),
                }
                h.write_u16(port);
            }
            // Without a destination, the expanded output is what tells two
            // alerts of one rule apart for the people reading them.
            None => h.write(alert.output.as_bytes()),
        }
        h.finish()
    }

    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.name.as_str())
    }

    /// Counters of one endpoint, for tests and `egret alert test`.
    pub fn endpoint_metrics(&self, name: &str) -> Option<&WebhookMetrics> {
        self.endpoints
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.metrics)
    }

    /// Closes the queues (later submits are impossible: this takes `self`)
    /// and waits for every endpoint to send or drop what it holds, at most
    /// the grace period after shutdown began.
    pub async fn finish(self) {
        let WebhookSink {
            endpoints, tasks, ..
        } = self;
        drop(endpoints);
        for task in tasks {
            if let Err(err) = task.await {
                tracing::error!(%err, "webhook endpoint task failed");
            }
        }
    }
}

/// Configured names, else the URL's host\[:port\], made unique with `#2`,
/// `#3`… (two Slack webhooks share a host). Never the path: it may be the
/// credential.
fn endpoint_names(configs: &[EndpointConfig]) -> Result<Vec<String>, WebhookError> {
    let mut taken = HashSet::new();
    for name in configs.iter().filter_map(|c| c.name.as_ref()) {
        if !taken.insert(name.clone()) {
            return Err(WebhookError::DuplicateName(name.clone()));
        }
    }
    let mut out = Vec::with_capacity(configs.len());
    for cfg in configs {
        if let Some(name) = &cfg.name {
            out.push(name.clone());
            continue;
        }
        let base = reqwest::Url::parse(&cfg.url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "webhook".to_owned());
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(name.clone()) {
            name = format!("{base}#{n}");
            n += 1;
        }
        out.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_host_and_stay_unique() {
        let mut a = EndpointConfig::from_url("https://hooks.slack.com/services/A/B/SECRET");
        let b = EndpointConfig::from_url("https://hooks.slack.com/services/C/D/SECRET2");
        let c = EndpointConfig::from_url("http://127.0.0.1:2801/");
        let names = endpoint_names(&[a.clone(), b.clone(), c]).unwrap();
        assert_eq!(
            names,
            ["hooks.slack.com", "hooks.slack.com#2", "127.0.0.1:2801"]
        );
        a.name = Some("soar".into());
        let mut b = b;
        b.name = Some("soar".into());
        assert!(matches!(
            endpoint_names(&[a, b]),
            Err(WebhookError::DuplicateName(n)) if n == "soar"
        ));
    }
}
