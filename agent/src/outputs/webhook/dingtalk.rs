//! DingTalk custom robots: request signing (加签), the answer's `errcode`
//! (DingTalk says HTTP 200 to everything), and the per-robot rate limit
//! with a summary of what it held back.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use reqwest::Url;
use ring::hmac;

use super::{config::RateLimitConfig, format::Delivery};
use crate::{
    outputs::alert::{Alert, Priority},
    timefmt,
};

/// DingTalk's "send too fast" (the robot's 20/min was exceeded).
pub const ERRCODE_RATE_LIMITED: i64 = 130101;

/// `url` with `timestamp` (ms) and `sign` =
/// URL-encode(base64(HMAC-SHA256(secret, "timestamp\nsecret"))) appended.
pub fn signed_url(url: &Url, secret: &str, now: SystemTime) -> Url {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, format!("{ms}\n{secret}").as_bytes());
    let sign = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let mut url = url.clone();
    // form-urlencoding turns `+`, `/` and `=` into %2B, %2F and %3D, as
    // DingTalk's own examples (urllib quote_plus) do.
    url.query_pairs_mut()
        .append_pair("timestamp", &ms.to_string())
        .append_pair("sign", &sign);
    url
}

/// What a 2xx answer's body says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// Non-zero `errcode`, with `errmsg`.
    Error(i64, String),
    /// Not DingTalk's JSON: the receiver accepted it (a relay, a proxy).
    Unparsed,
}

pub fn answer(body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    struct Raw {
        errcode: Option<i64>,
        errmsg: Option<String>,
    }
    match serde_json::from_slice::<Raw>(body) {
        Ok(Raw {
            errcode: Some(0), ..
        }) => Answer::Ok,
        Ok(Raw {
            errcode: Some(code),
            errmsg,
        }) => {
            // The message is the receiver's text: shown in logs, so cut.
            let mut msg = errmsg.unwrap_or_default();
            msg.truncate(msg.floor_char_boundary(200));
            Answer::Error(code, msg)
        }
        _ => Answer::Unparsed,
    }
}

/// Rules named individually in a summary; the rest are counted together.
const MAX_SUMMARY_RULES: usize = 10;

/// Messages per period for one endpoint, and the alerts held back while
/// the period is full.
pub(super) struct Limiter {
    limit: RateLimitConfig,
    sent: VecDeque<Instant>,
    held_alerts: u64,
    held_rules: BTreeMap<Arc<str>, u64>,
    held_other: u64,
    worst: Priority,
    since: Option<SystemTime>,
    latest: Option<Arc<Alert>>,
}

impl Limiter {
    pub fn new(limit: RateLimitConfig) -> Self {
        Limiter {
            limit,
            sent: VecDeque::new(),
            held_alerts: 0,
            held_rules: BTreeMap::new(),
            held_other: 0,
            worst: Priority::Debug,
            since: None,
            latest: None,
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.limit.per)
        {
            self.sent.pop_front();
        }
    }

    /// Takes a slot for one message now, if the period has one.
    pub fn try_send(&mut self, now: Instant) -> bool {
        self.expire(now);
        if self.sent.len() < self.limit.messages as usize {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }

    /// Restamps a slot taken at `taken` with the moment its answer came.
    /// The robot counts a message when it arrives, which can be later than
    /// when the slot was taken (a slow first connection): counting the
    /// period from the answer keeps a summary sent at the period's end
    /// from landing inside the robot's minute (seen in CI: refused with
    /// 130101, then retried a minute late).
    pub fn answered(&mut self, taken: Instant, answered: Instant) {
        if let Some(i) = self.sent.iter().position(|t| *t == taken) {
            self.sent.remove(i);
            let at = self.sent.partition_point(|t| *t <= answered);
            self.sent.insert(at, answered);
        }
    }

    /// When the next slot frees up (`None`: one is free now or nothing
    /// was sent).
    pub fn next_slot(&self) -> Option<Instant> {
        if self.sent.len() < self.limit.messages as usize {
            return None;
        }
        self.sent.front().map(|t| *t + self.limit.per)
    }

    pub fn held(&self) -> u64 {
        self.held_alerts
    }

    /// Folds `d` into the summary to come: counted, bounded in memory.
    pub fn hold(&mut self, d: Delivery) {
        self.held_alerts += d.alerts;
        self.since.get_or_insert_with(SystemTime::now);
        if d.alert.priority < self.worst {
            self.worst = d.alert.priority;
        }
        if let Some(n) = self.held_rules.get_mut(&d.alert.rule) {
            *n += d.alerts;
        } else if self.held_rules.len() < MAX_SUMMARY_RULES {
            self.held_rules.insert(d.alert.rule.clone(), d.alerts);
        } else {
            self.held_other += d.alerts;
        }
        self.latest = Some(d.alert);
    }

    /// The summary of everything held, which is then forgotten.
    pub fn take_summary(&mut self) -> Option<Delivery> {
        let latest = self.latest.take()?;
        let alerts = std::mem::take(&mut self.held_alerts);
        let rules = std::mem::take(&mut self.held_rules);
        let other = std::mem::take(&mut self.held_other);
        let since = self.since.take().unwrap_or_else(SystemTime::now);
        let worst = std::mem::replace(&mut self.worst, Priority::Debug);
        let mut by_rule: Vec<String> = rules.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        if other > 0 {
            by_rule.push(format!("other rules ×{other}"));
        }
        let ns = |t: SystemTime| {
            u64::try_from(
                t.duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_nanos(),
            )
            .unwrap_or(u64::MAX)
        };
        let output = format!(
            "{alerts} alert(s) held back by the rate limit of {} message(s) per {}s since {}: {}. The latest: {}",
            self.limit.messages,
            self.limit.per.as_secs_f64(),
            timefmt::rfc3339_nanos(ns(since)),
            by_rule.join(", "),
            latest.output,
        );
        let mut output_fields = latest.output_fields.clone();
        output_fields.insert(Arc::from("egret.held_back"), serde_json::json!(alerts));
        let summary = Alert {
            time: timefmt::rfc3339_nanos(ns(SystemTime::now())),
            rule: Arc::from("Egret alerts held back by rate limit"),
            priority: worst,
            output,
            output_fields,
            tags: latest.tags.clone(),
            source: latest.source,
            hostname: latest.hostname.clone(),
        };
        Some(Delivery {
            alert: Arc::new(summary),
            alerts,
            window: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_dingtalks_recipe() {
        // Recomputed independently: HMAC-SHA256("SECxyz", "1700000000000\nSECxyz").
        let url = Url::parse("https://oapi.dingtalk.com/robot/send?access_token=T").unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let signed = signed_url(&url, "SECxyz", at);
        let pairs: BTreeMap<String, String> = signed.query_pairs().into_owned().collect();
        assert_eq!(pairs["access_token"], "T");
        assert_eq!(pairs["timestamp"], "1700000000000");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"SECxyz");
        let want = base64::engine::general_purpose::STANDARD
            .encode(hmac::sign(&key, b"1700000000000\nSECxyz").as_ref());
        assert_eq!(pairs["sign"], want);
        // On the wire, base64's `+`, `/` and `=` are percent-encoded.
        let raw = signed.query().unwrap();
        assert!(!raw.contains('+') || raw.contains("%2B"), "{raw}");
        assert!(raw.contains("%3D"), "{raw}");
    }

    #[test]
    fn answers() {
        assert_eq!(answer(br#"{"errcode":0,"errmsg":"ok"}"#), Answer::Ok);
        assert_eq!(
            answer(br#"{"errcode":130101,"errmsg":"send too fast"}"#),
            Answer::Error(130101, "send too fast".into())
        );
        assert_eq!(answer(b"ok"), Answer::Unparsed);
    }

    #[test]
    fn limiter_holds_and_summarises() {
        let mut l = Limiter::new(RateLimitConfig {
            messages: 2,
            per: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(l.try_send(t0));
        assert!(l.try_send(t0 + s(1)));
        assert!(!l.try_send(t0 + s(2)));
        assert_eq!(l.next_slot(), Some(t0 + s(60)));
        // The first answer came 3 s after its slot was taken: that slot
        // frees 60 s after the answer, later than the second one's.
        l.answered(t0, t0 + s(3));
        assert_eq!(l.next_slot(), Some(t0 + s(61)));
        assert!(!l.try_send(t0 + s(60)), "the robot's minute is not over");
        // An unknown stamp changes nothing.
        l.answered(t0 + s(7), t0 + s(9));
        assert_eq!(l.next_slot(), Some(t0 + s(61)));
        assert!(l.try_send(t0 + s(61)));
        assert_eq!(l.next_slot(), Some(t0 + s(63)));
        let alert = |rule: &str, p| {
            Arc::new(Alert {
                time: String::new(),
                rule: rule.into(),
                priority: p,
                output: "out".into(),
                output_fields: crate::outputs::alert::OutputFields::new(),
                tags: Arc::new([]),
                source: "syscall",
                hostname: "n".into(),
            })
        };
        l.hold(Delivery::single(alert("A", Priority::Warning)));
        l.hold(Delivery::single(alert("A", Priority::Critical)));
        l.hold(Delivery {
            alert: alert("B", Priority::Notice),
            alerts: 3,
            window: Some(Duration::from_secs(10)),
        });
        assert_eq!(l.held(), 5);
        assert!(l.try_send(t0 + s(63)));
        let s = l.take_summary().unwrap();
        assert_eq!(s.alerts, 5);
        assert_eq!(s.alert.priority, Priority::Critical);
        assert!(
            s.alert.output.starts_with("5 alert(s) held back"),
            "{}",
            s.alert.output
        );
        assert!(s.alert.output.contains("A ×2, B ×3"), "{}", s.alert.output);
        assert_eq!(s.alert.output_fields["egret.held_back"], 5);
        assert_eq!(l.held(), 0);
        assert!(l.take_summary().is_none());
    }
}
