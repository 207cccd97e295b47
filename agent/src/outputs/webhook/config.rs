//! Webhook endpoint configuration, as the config file spells it.
//!
//! Secrets (bearer tokens, HMAC keys) are read from a file or an environment
//! variable, never written inline, and never shown: their `Debug` is
//! redacted, and so is the URL, because incoming-webhook URLs (Slack,
//! DingTalk) carry their credential in the path or query.
use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de};

pub use crate::secret::{Secret, SecretError, SecretSource};
use crate::{
    outputs::alert::Priority,
    secret::{de_opaque_string, de_opaque_string_map},
};

/// One receiver.
#[derive(Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a webhook endpoint (a map with at least `url`)"
)]
pub struct EndpointConfig {
    /// Label in metrics and logs; defaults to the URL's host (and port).
    #[serde(default)]
    pub name: Option<String>,
    /// The receiver; or `urls` for several (each Alertmanager of an HA
    /// cluster), which become one endpoint each. Incoming-webhook URLs
    /// carry their credential: never echoed.
    #[serde(default, deserialize_with = "de_opaque_string")]
    pub url: String,
    #[serde(default)]
    pub urls: Vec<String>,
    /// Least severe priority sent (`warning` sends Warning and worse).
    #[serde(default = "default_min_priority", deserialize_with = "de_priority")]
    pub min_priority: Priority,
    #[serde(default)]
    pub format: PayloadFormat,
    /// Extra request headers. Their values are redacted in `Debug` too.
    #[serde(default, deserialize_with = "de_opaque_string_map")]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<SecretSource>,
    #[serde(default)]
    pub hmac: Option<HmacConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Whole request, connect included.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Alerts waiting for this endpoint; beyond it new ones are dropped.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Requests in flight at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Identical alerts (rule, container, destination) inside this window
    /// after the first are sent as one summary when it closes; `0s` turns
    /// coalescing off.
    #[serde(default = "default_coalesce", deserialize_with = "de_duration")]
    pub coalesce_window: Duration,
    /// Distinct alerts tracked for coalescing; beyond it alerts pass as is.
    #[serde(default = "default_coalesce_keys")]
    pub coalesce_max_keys: usize,
    /// Use `HTTP(S)_PROXY`/`NO_PROXY` from the environment.
    #[serde(default = "default_true")]
    pub proxy_from_env: bool,
    /// DingTalk 加签: each request carries `timestamp` and `sign`.
    #[serde(default)]
    pub secret: Option<SecretSource>,
    /// Messages per period, beyond which alerts are held back and sent as
    /// one summary when the period allows; DingTalk's default is its own
    /// limit, 20 per minute per robot.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Alertmanager: `endsAt` is the alert's time plus this.
    #[serde(default = "default_expires", deserialize_with = "de_duration")]
    pub expires_after: Duration,
    /// Slack's channel override, `username`, `icon_url`/`icon_emoji`, and
    /// what the message shows (falcosidekick's `outputformat`).
    #[serde(default)]
    pub slack: SlackConfig,
    /// Output fields made Alertmanager labels (besides the fixed ones);
    /// set by the agent from `custom_fields`.
    #[serde(skip)]
    pub label_fields: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub messages: u32,
    #[serde(default = "default_minute", deserialize_with = "de_duration")]
    pub per: Duration,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    pub channel: Option<String>,
    pub username: Option<String>,
    pub icon_url: Option<String>,
    pub icon_emoji: Option<String>,
    pub output_format: SlackFormat,
}

/// falcosidekick's `outputformat`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SlackFormat {
    /// The text line and the attachment with every field.
    #[default]
    All,
    /// The text line only.
    Text,
    /// The attachment only.
    Fields,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// falcosidekick's input: Falco's JSON output.
    #[default]
    Falco,
    /// Slack incoming webhook: text plus an attachment with fields.
    Slack,
    /// DingTalk custom robot, `msgtype: markdown`.
    Dingtalk,
    /// Alertmanager's API: `POST /api/v2/alerts`.
    Alertmanager,
}

/// DingTalk's documented limit per robot.
pub const DINGTALK_RATE_LIMIT: RateLimitConfig = RateLimitConfig {
    messages: 20,
    per: Duration::from_secs(60),
};

#[derive(Clone, Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an HMAC setting (a map with `secret`)"
)]
pub struct HmacConfig {
    pub secret: SecretSource,
    /// Carries `sha256=<hex of HMAC-SHA256(secret, body)>`.
    #[serde(default = "default_hmac_header")]
    pub header: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "TLS settings (a map)")]
pub struct TlsConfig {
    /// Trust the system's root certificates.
    pub system_roots: bool,
    /// Also trust these PEM certificates (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            system_roots: true,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// Network errors, 5xx and 429 are retried; other 4xx are not.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "retry settings (a map)")]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    #[serde(deserialize_with = "de_duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
    /// Longest `Retry-After` obeyed; longer ones are cut to this, so one
    /// receiver cannot park alerts for an hour.
    #[serde(deserialize_with = "de_duration")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

fn default_min_priority() -> Priority {
    Priority::Debug
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_queue() -> usize {
    1024
}
fn default_in_flight() -> usize {
    4
}
fn default_coalesce() -> Duration {
    Duration::from_secs(10)
}
fn default_coalesce_keys() -> usize {
    10_000
}
fn default_expires() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_minute() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_hmac_header() -> String {
    "X-Egret-Signature".to_owned()
}

impl EndpointConfig {
    /// Every default, for `--webhook URL`.
    pub fn from_url(url: impl Into<String>) -> Self {
        EndpointConfig {
            name: None,
            url: url.into(),
            min_priority: default_min_priority(),
            format: PayloadFormat::default(),
            headers: BTreeMap::new(),
            bearer_token: None,
            hmac: None,
            tls: TlsConfig::default(),
            timeout: default_timeout(),
            queue_capacity: default_queue(),
            max_in_flight: default_in_flight(),
            retry: RetryConfig::default(),
            coalesce_window: default_coalesce(),
            coalesce_max_keys: default_coalesce_keys(),
            proxy_from_env: true,
            urls: Vec::new(),
            secret: None,
            rate_limit: None,
            expires_after: default_expires(),
            slack: SlackConfig::default(),
            label_fields: Vec::new(),
        }
    }

    /// The limit in force: the configured one, else DingTalk's own for a
    /// DingTalk robot, else none.
    pub fn effective_rate_limit(&self) -> Option<RateLimitConfig> {
        match (&self.rate_limit, self.format) {
            (Some(limit), _) => Some(limit.clone()),
            (None, PayloadFormat::Dingtalk) => Some(DINGTALK_RATE_LIMIT),
            (None, _) => None,
        }
    }

    /// One config per receiver: `urls` fan out into copies, named
    /// `name@host:port` when the entry is named.
    pub fn expand(&self) -> Vec<EndpointConfig> {
        if self.urls.is_empty() {
            return vec![self.clone()];
        }
        self.urls
            .iter()
            .map(|url| {
                let mut one = self.clone();
                one.url = url.clone();
                one.urls = Vec::new();
                if let Some(name) = &self.name {
                    let host = reqwest::Url::parse(url)
                        .ok()
                        .and_then(|u| {
                            Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
                        })
                        .unwrap_or_else(|| "invalid".into());
                    one.name = Some(format!("{name}@{host}"));
                }
                one
            })
            .collect()
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("min_priority", &self.min_priority)
            .field("format", &self.format)
            .field("headers", &headers)
            .field("bearer_token", &self.bearer_token)
            .field("hmac", &self.hmac)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_in_flight", &self.max_in_flight)
            .field("retry", &self.retry)
            .field("coalesce_window", &self.coalesce_window)
            .field("coalesce_max_keys", &self.coalesce_max_keys)
            .field("proxy_from_env", &self.proxy_from_env)
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("secret", &self.secret)
            .field("rate_limit", &self.rate_limit)
            .field("expires_after", &self.expires_after)
            .field("slack", &self.slack)
            .finish()
    }
}

/// `scheme://host[:port]`, plus `/…` when there was more: safe to log.
pub fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("");
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let more = url.path() != "/" || url.query().is_some() || !url.username().is_empty();
            format!(
                "{}://{host}{port}{}",
                url.scheme(),
                if more { "/…" } else { "" }
            )
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

fn de_priority<'de, D: Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
    let raw = String::deserialize(d)?;
    Priority::parse(&raw).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{raw}` is not a priority (emergency, alert, critical, error, warning, notice, informational, debug)"
        ))
    })
}

/// `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(value * scale).ok()
}

/// A duration as the user wrote it; every wrong shape says what was found
/// and what is wanted, in those terms (serde's `untagged` enums only say
/// "data did not match any variant" and lose the key).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    const WANTED: &str = "a duration such as 500ms, 10s or 2m";
    impl de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(WANTED)
        }
        fn visit_u64<E: de::Error>(self, s: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(s))
        }
        fn visit_i64<E: de::Error>(self, s: i64) -> Result<Duration, E> {
            u64::try_from(s)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("`{s}` is negative; expected {WANTED}")))
        }
        fn visit_f64<E: de::Error>(self, s: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(s).map_err(|_| E::custom(format!("`{s}` is not {WANTED}")))
        }
        fn visit_str<E: de::Error>(self, t: &str) -> Result<Duration, E> {
            parse_duration(t).ok_or_else(|| E::custom(format!("`{t}` is not {WANTED}")))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserialises_with_defaults_and_units() {
        let c: EndpointConfig = serde_json::from_value(serde_json::json!({
            "url": "https://hooks.example.com/services/T000/B000/XXXXSECRET",
            "min_priority": "warning",
            "format": "slack",
            "bearer_token": { "env": "EGRET_TEST_TOKEN" },
            "hmac": { "secret": { "file": "/run/secrets/hmac" } },
            "timeout": "2500ms",
            "retry": { "max_retries": 2, "initial_backoff": "100ms" },
            "coalesce_window": 0
        }))
        .unwrap();
        assert_eq!(c.min_priority, Priority::Warning);
        assert_eq!(c.format, PayloadFormat::Slack);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.retry.max_retries, 2);
        assert_eq!(c.retry.max_backoff, Duration::from_secs(30));
        assert_eq!(c.coalesce_window, Duration::ZERO);
        assert_eq!(c.hmac.as_ref().unwrap().header, "X-Egret-Signature");
        assert!(c.tls.system_roots);
        assert_eq!(
            c.bearer_token,
            Some(SecretSource::Env("EGRET_TEST_TOKEN".into()))
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        for bad in [
            serde_json::json!({ "url": "http://x", "min_priority": "loud" }),
            serde_json::json!({ "url": "http://x", "timeout": "soon" }),
            serde_json::json!({ "url": "http://x", "format": "teams" }),
            serde_json::json!({ "url": "http://x", "retries": 3 }),
            serde_json::json!({ "url": "http://x", "bearer_token": "inline-secret" }),
        ] {
            assert!(
                serde_json::from_value::<EndpointConfig>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut c = EndpointConfig::from_url(
            "https://user:pw@hooks.example.com/services/T0/B0/SECRETPATH?sig=abc",
        );
        c.headers.insert("X-Api-Key".into(), "SECRETHEADER".into());
        let shown = format!("{c:?}");
        assert!(shown.contains("https://hooks.example.com/…"), "{shown}");
        for secret in ["SECRETPATH", "SECRETHEADER", "pw", "sig=abc"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert_eq!(
            redact_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn secrets_load_trimmed_and_fail_clearly() {
        let dir = std::env::temp_dir().join(format!("egret-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).load().unwrap().expose(),
            "abc123"
        );
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            SecretSource::File(path).load(),
            Err(SecretError::Empty(_))
        ));
        assert!(matches!(
            SecretSource::Env("EGRET_SURELY_UNSET_VAR".into()).load(),
            Err(SecretError::Env(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }
}
