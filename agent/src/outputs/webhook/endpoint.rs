//! One receiver: its HTTP client (TLS trust and identity), fixed headers,
//! signing key, and delivery of one request body with retries.
use std::time::{Duration, Instant};

use reqwest::{
    Certificate, Identity, StatusCode, Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use tokio_util::sync::CancellationToken;

use super::{
    WebhookError,
    config::{EndpointConfig, PayloadFormat, RetryConfig, Secret, redact_url},
    dingtalk,
    format::{Delivery, Style, render},
};
use crate::{
    logging::RateLimited,
    metrics::{DropReason, WebhookMetrics},
    outputs::alert::Priority,
    warn_limited,
};

pub(super) struct Endpoint {
    pub name: String,
    /// Safe to log (see [`redact_url`]).
    pub shown_url: String,
    pub style: Style,
    pub min_priority: Priority,
    pub metrics: WebhookMetrics,
    url: Url,
    client: reqwest::Client,
    headers: HeaderMap,
    signer: Option<(HeaderName, hmac::Key)>,
    /// DingTalk 加签 secret: signs the URL of every attempt.
    url_secret: Option<Secret>,
    retry: RetryConfig,
    /// One per fault kind: a receiver that rejects everything must not
    /// write a log line per alert.
    rejected_log: RateLimited,
    failed_log: RateLimited,
    encode_log: RateLimited,
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    Delivered,
    /// Worth another try; the receiver may have said when.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// The receiver refused this request for good.
    Rejected(StatusCode),
    /// HTTP 2xx, but the body carries an error code (DingTalk).
    Refused {
        code: i64,
        message: String,
    },
}

impl Endpoint {
    pub fn build(
        cfg: &EndpointConfig,
        name: String,
        metrics: WebhookMetrics,
    ) -> Result<Self, WebhookError> {
        let invalid = |reason: String| WebhookError::Invalid {
            endpoint: name.clone(),
            reason,
        };
        if cfg.url.is_empty() {
            return Err(invalid("needs `url` (or `urls`)".into()));
        }
        let url = Url::parse(&cfg.url).map_err(|e| invalid(format!("URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "URL must be http:// or https:// with a host".into(),
            ));
        }
        if cfg.queue_capacity == 0 || cfg.max_in_flight == 0 {
            return Err(invalid(
                "queue_capacity and max_in_flight must be positive".into(),
            ));
        }
        if cfg.timeout.is_zero() {
            return Err(invalid("timeout must be positive".into()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &cfg.headers {
            let key = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| invalid(format!("`{k}` is not a valid header name")))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| invalid(format!("the value of header {k} is not valid")))?;
            // Custom headers often carry API keys; keep them out of any
            // debug output of the request.
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        let secret_err = |source| WebhookError::Secret {
            endpoint: name.clone(),
            source,
        };
        if let Some(source) = &cfg.bearer_token {
            let token = source.load().map_err(secret_err)?;
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    invalid("the bearer token has characters a header cannot carry".into())
                })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let signer = match &cfg.hmac {
            Some(h) => {
                let header = HeaderName::from_bytes(h.header.as_bytes())
                    .map_err(|_| invalid(format!("`{}` is not a valid header name", h.header)))?;
                let secret = h.secret.load().map_err(secret_err)?;
                Some((
                    header,
                    hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
                ))
            }
            None => None,
        };
        let url_secret = match &cfg.secret {
            Some(_) if cfg.format != PayloadFormat::Dingtalk => {
                return Err(invalid(
                    "`secret` signs DingTalk requests; this endpoint's format is not dingtalk"
                        .into(),
                ));
            }
            Some(source) => Some(source.load().map_err(secret_err)?),
            None => None,
        };
        if let Some(limit) = cfg.effective_rate_limit()
            && (limit.messages == 0 || limit.per.is_zero())
        {
            return Err(invalid(
                "rate_limit needs positive `messages` and `per`".into(),
            ));
        }
        let client = build_client(cfg, &url, &name)?;
        Ok(Endpoint {
            shown_url: redact_url(&cfg.url),
            style: Style {
                format: cfg.format,
                slack: cfg.slack.clone(),
                expires_after: cfg.expires_after,
                label_fields: cfg.label_fields.clone(),
            },
            url_secret,
            min_priority: cfg.min_priority,
            metrics,
            url,
            client,
            headers,
            signer,
            retry: cfg.retry.clone(),
            rejected_log: RateLimited::default(),
            failed_log: RateLimited::default(),
            encode_log: RateLimited::default(),
            name,
        })
    }

    /// Warning lines held back by the rate limiters and not yet reported.
    pub fn suppressed_warnings(&self) -> u64 {
        self.rejected_log.pending() + self.failed_log.pending() + self.encode_log.pending()
    }

    /// Sends `d`, retrying as configured, and records the outcome. Returns
    /// early (counting a shutdown drop) once `stop` is cancelled.
    pub async fn deliver(&self, d: Delivery, stop: &CancellationToken) {
        let body = match render(&self.style, &d) {
            Ok(body) => body,
            Err(err) => {
                warn_limited!(self.encode_log, endpoint = %self.name, %err, "could not encode alert payload");
                self.metrics.dropped(DropReason::Encode, d.alerts);
                return;
            }
        };
        let signature = self.signer.as_ref().and_then(|(name, key)| {
            let tag = hmac::sign(key, &body);
            let value = HeaderValue::from_str(&format!("sha256={}", hex(tag.as_ref()))).ok()?;
            Some((name.clone(), value))
        });
        for attempt in 0..=self.retry.max_retries {
            let url = match &self.url_secret {
                Some(secret) => {
                    dingtalk::signed_url(&self.url, secret.expose(), std::time::SystemTime::now())
                }
                None => self.url.clone(),
            };
            let mut request = self
                .client
                .post(url)
                .headers(self.headers.clone())
                .body(body.clone());
            if let Some((name, value)) = &signature {
                request = request.header(name.clone(), value.clone());
            }
            let started = Instant::now();
            let outcome = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.metrics.dropped(DropReason::Shutdown, d.alerts);
                    return;
                }
                outcome = self.attempt(request) => outcome,
            };
            self.metrics.observe_request(started.elapsed());
            let (after, why) = match outcome {
                Attempt::Delivered => {
                    self.metrics.deliveries.inc();
                    self.metrics.delivered_alerts.inc_by(d.alerts);
                    tracing::debug!(endpoint = %self.name, rule = %d.alert.rule, alerts = d.alerts, "webhook delivered");
                    return;
                }
                Attempt::Rejected(status) => {
                    warn_limited!(self.rejected_log, endpoint = %self.name, url = %self.shown_url, %status,
                        alerts = d.alerts, "webhook receiver rejected the alert; not retrying");
                    self.metrics.dropped(DropReason::Rejected, d.alerts);
                    return;
                }
                Attempt::Refused { code, message } => {
                    warn_limited!(self.rejected_log, endpoint = %self.name, url = %self.shown_url,
                        errcode = code, errmsg = %message, alerts = d.alerts,
                        "webhook receiver refused the alert in its answer; not retrying");
                    self.metrics.receiver_error(code, d.alerts);
                    return;
                }
                Attempt::Retry { after, why } => (after, why),
            };
            if attempt == self.retry.max_retries {
                warn_limited!(self.failed_log, endpoint = %self.name, url = %self.shown_url, last_error = %why,
                    attempts = attempt + 1, alerts = d.alerts, "webhook delivery failed; dropping alert");
                self.metrics.dropped(DropReason::RetriesExhausted, d.alerts);
                return;
            }
            self.metrics.retries.inc();
            let delay = match after {
                Some(after) => after.min(self.retry.max_retry_after),
                None => backoff(&self.retry, attempt),
            };
            tracing::debug!(endpoint = %self.name, error = %why, ?delay, "webhook attempt failed; retrying");
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.metrics.dropped(DropReason::Shutdown, d.alerts);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl Endpoint {
    /// One request and what came of it; for DingTalk the answer's body
    /// decides, since it says HTTP 200 to errors too.
    async fn attempt(&self, request: reqwest::RequestBuilder) -> Attempt {
        let result = request.send().await;
        if self.style.format != PayloadFormat::Dingtalk {
            return classify(result);
        }
        let response = match result {
            Ok(r) if r.status().is_success() => r,
            other => return classify(other),
        };
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("reading the answer: {}", error_chain(&err.without_url())),
                };
            }
        };
        match dingtalk::answer(&body) {
            dingtalk::Answer::Ok | dingtalk::Answer::Unparsed => Attempt::Delivered,
            dingtalk::Answer::Error(dingtalk::ERRCODE_RATE_LIMITED, message) => Attempt::Retry {
                // The robot's window is a minute.
                after: Some(Duration::from_secs(60)),
                why: format!("errcode {} ({message})", dingtalk::ERRCODE_RATE_LIMITED),
            },
            dingtalk::Answer::Error(code, message) => Attempt::Refused { code, message },
        }
    }
}

fn build_client(
    cfg: &EndpointConfig,
    url: &Url,
    name: &str,
) -> Result<reqwest::Client, WebhookError> {
    let tls_err = |reason: String| WebhookError::Tls {
        endpoint: name.to_owned(),
        reason,
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| tls_err(format!("reading {}: {e}", path.display())))
    };
    let mut builder = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .user_agent(concat!("egret/", env!("CARGO_PKG_VERSION")))
        // A redirect would send the signed body and the token to a place
        // nobody configured; a 3xx is reported as a rejection instead.
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(cfg.tls.system_roots);
    if !cfg.proxy_from_env {
        builder = builder.no_proxy();
    }
    let mut extra_roots = 0;
    if let Some(path) = &cfg.tls.ca_file {
        let certs = Certificate::from_pem_bundle(&read(path)?)
            .map_err(|e| tls_err(format!("{}: {}", path.display(), e.without_url())))?;
        if certs.is_empty() {
            return Err(tls_err(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        extra_roots = certs.len();
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&cfg.tls.client_cert_file, &cfg.tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity = Identity::from_pem(&pem)
                .map_err(|e| tls_err(format!("client certificate or key: {}", e.without_url())))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(tls_err(
                "client_cert_file and client_key_file go together".into(),
            ));
        }
    }
    if url.scheme() == "https" && !cfg.tls.system_roots && extra_roots == 0 {
        return Err(tls_err(
            "https with system_roots off needs a ca_file".into(),
        ));
    }
    builder.build().map_err(|source| WebhookError::Client {
        endpoint: name.to_owned(),
        source: source.without_url(),
    })
}

pub(super) fn classify(result: reqwest::Result<reqwest::Response>) -> Attempt {
    let response = match result {
        Ok(r) => r,
        // The URL may hold the receiver's credential: never in messages.
        Err(err) => {
            return Attempt::Retry {
                after: None,
                why: error_chain(&err.without_url()),
            };
        }
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Attempt::Retry {
            after,
            why: format!("HTTP {status}"),
        };
    }
    Attempt::Rejected(status)
}

/// reqwest's top-level message ("error sending request") hides the cause
/// (refused, timed out, certificate unknown); operators need the chain.
fn error_chain(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Exponential with "equal jitter": half the step is fixed, half random, so
/// retries spread out without ever collapsing to zero.
pub(super) fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let step = retry
        .initial_backoff
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(retry.max_backoff);
    let half = step / 2;
    let mut r = [0u8; 4];
    let _ = SystemRandom::new().fill(&mut r);
    let fraction = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    half + half.mul_f64(fraction)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let retry = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryConfig::default()
        };
        for (attempt, step) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (40, 1000),
        ] {
            let d = backoff(&retry, attempt);
            let step = Duration::from_millis(step);
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_errors_name_the_problem_not_the_secret() {
        let mut cfg = EndpointConfig::from_url("ftp://hooks.example.com/SECRET");
        let err = Endpoint::build(&cfg, "x".into(), WebhookMetrics::detached())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("http:// or https://") && !err.contains("SECRET"),
            "{err}"
        );
        cfg.url = "https://hooks.example.com/SECRET".into();
        cfg.tls.client_cert_file = Some("/nonexistent/cert.pem".into());
        let err = Endpoint::build(&cfg, "x".into(), WebhookMetrics::detached())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("go together"), "{err}");
        cfg.tls.client_cert_file = None;
        cfg.tls.system_roots = false;
        let err = Endpoint::build(&cfg, "x".into(), WebhookMetrics::detached())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("needs a ca_file"), "{err}");
        cfg.tls.system_roots = true;
        cfg.headers.insert("bad header".into(), "v".into());
        assert!(Endpoint::build(&cfg, "x".into(), WebhookMetrics::detached()).is_err());
    }
}
