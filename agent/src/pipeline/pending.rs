//! Connects waiting for their result. Falco evaluates a connect at the
//! syscall's exit, so `evt.res` is what connect returned; Egret's sock_addr
//! hooks run before the kernel connects. The evaluate stage therefore runs
//! the rules that do not read the result at the attempt (no added latency)
//! and parks a copy of the event here until its result arrives from the
//! kernel (`pipeline/decode/connect_result.rs`), matched by socket cookie,
//! or until `connect_result_wait` passes: then the result rules see
//! `EINPROGRESS`, so a blackholed destination still alerts promptly.
//!
//! Bounded: at most [`PENDING_CAP`] connects wait; one that does not fit is
//! evaluated at once with `EINPROGRESS`. Every way a connect leaves the
//! table, and every result nothing waited for, is counted
//! (`egret_connect_results_total{outcome}`).
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    metrics::Metrics,
    pipeline::{decode::ConnectResult, enrich::Event},
};

/// Connects waiting at once. At 1 s of wait this is 16k connects a second
/// with result rules loaded; beyond it, result rules run at the attempt.
pub const PENDING_CAP: usize = 16_384;

/// What became of a connect's result rules, or of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// The result arrived; the rules saw it.
    Result,
    /// `connect_result_wait` passed first; the rules saw `EINPROGRESS`.
    Deadline,
    /// The table was full; evaluated at the attempt with `EINPROGRESS`.
    TableFull,
    /// The socket connected again before the result of the first connect
    /// (UDP); the first was evaluated with `EINPROGRESS`.
    Replaced,
    /// The agent stopped; evaluated with `EINPROGRESS`.
    Shutdown,
    /// A result no connect waited for: no rule reads it, it came after the
    /// deadline, or the connect already alerted (`rule_matching: first`).
    Unmatched,
}

impl ConnectOutcome {
    pub const ALL: [ConnectOutcome; 6] = [
        ConnectOutcome::Result,
        ConnectOutcome::Deadline,
        ConnectOutcome::TableFull,
        ConnectOutcome::Replaced,
        ConnectOutcome::Shutdown,
        ConnectOutcome::Unmatched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectOutcome::Result => "result",
            ConnectOutcome::Deadline => "deadline",
            ConnectOutcome::TableFull => "table_full",
            ConnectOutcome::Replaced => "replaced",
            ConnectOutcome::Shutdown => "shutdown",
            ConnectOutcome::Unmatched => "unmatched",
        }
    }
}

/// What [`Pending::offer`] did with a connect.
#[derive(Debug)]
pub enum Offer {
    /// Parked; the result rules run later. Carries the event it replaced
    /// (same socket), whose result rules are due now.
    Waiting(Option<Box<Event>>),
    /// No room: evaluate the result rules now, with `EINPROGRESS`.
    Full,
}

struct Waiting {
    event: Event,
    seq: u64,
}

pub struct Pending {
    wait: Duration,
    cap: usize,
    waiting: HashMap<u64, Waiting>,
    /// (deadline, cookie, seq) in offer order, which is deadline order
    /// (one wait for all). Entries resolved early stay until they reach
    /// the front or the queue is compacted.
    deadlines: VecDeque<(Instant, u64, u64)>,
    seq: u64,
    /// Unmatched results not yet counted: every connect's result arrives
    /// when no rule reads it, so they are counted once per batch.
    unmatched: u64,
    metrics: Option<Arc<Metrics>>,
}

impl Pending {
    /// `wait` zero: nothing waits (see [`Pending::enabled`]).
    pub fn new(wait: Duration, cap: usize, metrics: Option<Arc<Metrics>>) -> Pending {
        if let Some(metrics) = &metrics {
            metrics.declare_connect_outcomes();
        }
        Pending {
            wait,
            cap,
            waiting: HashMap::new(),
            deadlines: VecDeque::new(),
            seq: 0,
            unmatched: 0,
            metrics,
        }
    }

    /// Whether connects wait for their result at all.
    pub fn enabled(&self) -> bool {
        !self.wait.is_zero() && self.cap > 0
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    fn count(&self, outcome: ConnectOutcome, n: u64) {
        if let Some(metrics) = &self.metrics {
            metrics.connect_outcome(outcome, n);
        }
    }

    /// Parks a copy of `event` (a connect whose result rules are due).
    pub fn offer(&mut self, event: &Event, now: Instant) -> Offer {
        let cookie = event.attempt.socket_cookie;
        let replaced = self.waiting.remove(&cookie);
        if replaced.is_none() && self.waiting.len() >= self.cap {
            self.count(ConnectOutcome::TableFull, 1);
            return Offer::Full;
        }
        if replaced.is_some() {
            self.count(ConnectOutcome::Replaced, 1);
        }
        self.seq += 1;
        if self.deadlines.len() >= self.cap.saturating_mul(4) {
            let waiting = &self.waiting;
            self.deadlines
                .retain(|(_, cookie, seq)| waiting.get(cookie).is_some_and(|w| w.seq == *seq));
        }
        self.deadlines
            .push_back((now + self.wait, cookie, self.seq));
        self.waiting.insert(
            cookie,
            Waiting {
                event: event.clone(),
                seq: self.seq,
            },
        );
        Offer::Waiting(replaced.map(|w| Box::new(w.event)))
    }

    /// The waiting connect `result` belongs to, now carrying it; `None`
    /// (counted) when none waits. The thread must match too: a cookie is
    /// unique per boot, so a mismatch means a stale kernel entry.
    pub fn resolve(&mut self, result: &ConnectResult) -> Option<Event> {
        let matches = self
            .waiting
            .get(&result.socket_cookie)
            .is_some_and(|w| w.event.attempt.tid == result.tid);
        if !matches {
            self.unmatched += 1;
            return None;
        }
        let mut event = self.waiting.remove(&result.socket_cookie)?.event;
        self.count(ConnectOutcome::Result, 1);
        event.set_result(result.ret);
        Some(event)
    }

    /// When the oldest waiting connect is due, if any waits.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some((deadline, cookie, seq)) = self.deadlines.front().copied() {
            if self.waiting.get(&cookie).is_some_and(|w| w.seq == seq) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Moves every connect due by `now` to `out` (still `EINPROGRESS`),
    /// and counts the unmatched results seen since the last call (once per
    /// batch).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Event>) {
        let unmatched = std::mem::take(&mut self.unmatched);
        self.count(ConnectOutcome::Unmatched, unmatched);
        let before = out.len();
        while let Some((deadline, cookie, seq)) = self.deadlines.front().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.waiting.get(&cookie).is_some_and(|w| w.seq == seq)
                && let Some(waiting) = self.waiting.remove(&cookie)
            {
                out.push(waiting.event);
            }
        }
        self.count(ConnectOutcome::Deadline, (out.len() - before) as u64);
    }

    /// Everything still waiting (the agent is stopping).
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        let unmatched = std::mem::take(&mut self.unmatched);
        self.count(ConnectOutcome::Unmatched, unmatched);
        let before = out.len();
        self.deadlines.clear();
        out.extend(self.waiting.drain().map(|(_, w)| w.event));
        self.count(ConnectOutcome::Shutdown, (out.len() - before) as u64);
    }
}

#[cfg(test)]
mod tests {
    use egret_common::Hook;
    use egret_rules::Event as _;

    use super::*;
    use crate::pipeline::decode::ResultSource;

    fn connect(cookie: u64, tid: u32) -> Event {
        crate::pipeline::enrich::test_event(Hook::Connect4, cookie, tid)
    }

    fn result(cookie: u64, tid: u32, ret: i32) -> ConnectResult {
        ConnectResult {
            socket_cookie: cookie,
            tgid: tid,
            tid,
            ret,
            mono_ns: 0,
            source: ResultSource::Syscall,
        }
    }

    fn res(event: &Event) -> String {
        match event.value(egret_rules::FieldId::EvtRes) {
            egret_rules::Value::Str(s) => s.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn results_resolve_their_connect_and_strangers_are_counted() {
        let metrics = Metrics::new(&Default::default());
        let mut pending = Pending::new(Duration::from_secs(1), 8, Some(metrics.clone()));
        let now = Instant::now();
        assert!(matches!(
            pending.offer(&connect(7, 70), now),
            Offer::Waiting(None)
        ));
        assert_eq!(res(&connect(7, 70)), "EINPROGRESS");
        assert!(pending.resolve(&result(7, 71, 0)).is_none(), "other thread");
        assert!(pending.resolve(&result(8, 70, 0)).is_none(), "other socket");
        let done = pending.resolve(&result(7, 70, -111)).expect("resolved");
        assert_eq!(res(&done), "ECONNREFUSED");
        assert!(matches!(
            done.value(egret_rules::FieldId::EvtArgs),
            egret_rules::Value::Str("res=-111(ECONNREFUSED) addr=198.51.100.7:443")
        ));
        assert!(matches!(
            done.value(egret_rules::FieldId::EvtRawres),
            egret_rules::Value::I64(-111)
        ));
        assert!(pending.is_empty());
        assert!(pending.resolve(&result(7, 70, 0)).is_none(), "only once");
        pending.expire(now, &mut Vec::new());
        assert_eq!(metrics.connect_outcomes(ConnectOutcome::Unmatched), 3);
        assert_eq!(metrics.connect_outcomes(ConnectOutcome::Result), 1);
    }

    #[test]
    fn deadlines_expire_in_order_and_the_table_is_bounded() {
        let metrics = Metrics::new(&Default::default());
        let mut pending = Pending::new(Duration::from_secs(1), 2, Some(metrics.clone()));
        let t0 = Instant::now();
        pending.offer(&connect(1, 1), t0);
        pending.offer(&connect(2, 2), t0 + Duration::from_millis(10));
        assert!(matches!(pending.offer(&connect(3, 3), t0), Offer::Full));
        // The same socket again replaces (and hands back) the first.
        match pending.offer(&connect(1, 1), t0 + Duration::from_millis(20)) {
            Offer::Waiting(Some(old)) => assert_eq!(old.attempt.socket_cookie, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pending.next_deadline(),
            Some(t0 + Duration::from_millis(1010)),
            "the replaced entry's deadline is skipped"
        );
        let mut out = Vec::new();
        pending.expire(t0 + Duration::from_millis(1015), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(res(&out[0]), "EINPROGRESS");
        pending.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert!(pending.next_deadline().is_none());
        for (outcome, n) in [
            (ConnectOutcome::TableFull, 1),
            (ConnectOutcome::Replaced, 1),
            (ConnectOutcome::Deadline, 1),
            (ConnectOutcome::Shutdown, 1),
        ] {
            assert_eq!(metrics.connect_outcomes(outcome), n, "{outcome:?}");
        }
        assert!(!Pending::new(Duration::ZERO, 8, None).enabled());
    }
}
