//! Alert-storm coalescing for one endpoint.
//!
//! The first alert of a kind goes out at once and opens a window; identical
//! alerts inside it are only counted, and when it closes one summary (the
//! latest alert, with the count) goes out and a new window opens. A window
//! that closes with nothing suppressed is forgotten, so the next alert of
//! that kind is again sent at once. A sustained storm therefore costs one
//! request per window per kind.
//!
//! Pure and clock-injected, so the worker's timing and the tests agree.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use super::format::Delivery;
use crate::outputs::alert::Alert;

struct Window {
    ends: Instant,
    suppressed: u64,
    latest: Option<Arc<Alert>>,
}

pub(super) struct Coalescer {
    window: Duration,
    max_keys: usize,
    open: HashMap<u64, Window>,
    /// Window ends, earliest first; an entry is stale once its window was
    /// renewed or forgotten.
    ends: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Coalescer {
    /// A zero `window` passes every alert through.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Coalescer {
            window,
            max_keys,
            open: HashMap::new(),
            ends: BinaryHeap::new(),
        }
    }

    /// Takes one alert; appends what is due now to `out`: summaries of
    /// windows that have closed, then this alert if it is not suppressed.
    /// Returns whether the alert was suppressed.
    pub fn offer(
        &mut self,
        alert: Arc<Alert>,
        key: u64,
        now: Instant,
        out: &mut Vec<Delivery>,
    ) -> bool {
        self.expire(now, out);
        if self.window.is_zero() {
            out.push(Delivery::single(alert));
            return false;
        }
        if let Some(w) = self.open.get_mut(&key) {
            w.suppressed += 1;
            w.latest = Some(alert);
            return true;
        }
        if self.open.len() < self.max_keys {
            let ends = now + self.window;
            self.open.insert(
                key,
                Window {
                    ends,
                    suppressed: 0,
                    latest: None,
                },
            );
            self.ends.push(Reverse((ends, key)));
        }
        // Beyond max_keys alerts pass untracked: memory stays bounded and
        // nothing is hidden.
        out.push(Delivery::single(alert));
        false
    }

    /// Closes every window that ended by `now`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Delivery>) {
        while let Some(&Reverse((ends, key))) = self.ends.peek() {
            if ends > now {
                break;
            }
            self.ends.pop();
            let Some(w) = self.open.get_mut(&key) else {
                continue;
            };
            if w.ends != ends {
                continue;
            }
            match w.latest.take() {
                Some(latest) => {
                    out.push(Delivery {
                        alert: latest,
                        alerts: std::mem::take(&mut w.suppressed),
                        window: Some(self.window),
                    });
                    w.ends = ends + self.window;
                    self.ends.push(Reverse((w.ends, key)));
                }
                None => {
                    self.open.remove(&key);
                }
            }
        }
    }

    /// Summaries of every window with suppressed alerts, now (shutdown).
    /// The windows stay open, so identical alerts arriving while the
    /// pipeline drains are still folded, into the next flush.
    pub fn flush(&mut self, out: &mut Vec<Delivery>) {
        for w in self.open.values_mut() {
            if let Some(latest) = w.latest.take() {
                out.push(Delivery {
                    alert: latest,
                    alerts: std::mem::take(&mut w.suppressed),
                    window: Some(self.window),
                });
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.ends.peek().map(|Reverse((t, _))| *t)
    }

    /// Alerts counted but not yet sent in a summary.
    pub fn pending_alerts(&self) -> u64 {
        self.open.values().map(|w| w.suppressed).sum()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::outputs::alert::Priority;

    fn alert(n: u32) -> Arc<Alert> {
        Arc::new(Alert {
            time: format!("t{n}"),
            rule: "R".into(),
            priority: Priority::Warning,
            output: format!("alert {n}"),
            output_fields: crate::outputs::alert::OutputFields::new(),
            tags: Vec::new().into(),
            source: "syscall",
            hostname: "h".into(),
        })
    }

    #[test]
    fn first_now_then_one_summary_per_window() {
        let w = Duration::from_secs(10);
        let mut c = Coalescer::new(w, 100);
        let t0 = Instant::now();
        let mut out = Vec::new();
        assert!(!c.offer(alert(0), 1, t0, &mut out));
        assert_eq!(out.len(), 1);
        assert!(out[0].window.is_none());
        for i in 1..=5 {
            assert!(c.offer(
                alert(i),
                1,
                t0 + Duration::from_secs(u64::from(i)),
                &mut out
            ));
        }
        // Another kind is not held back by the first.
        assert!(!c.offer(alert(9), 2, t0 + Duration::from_secs(1), &mut out));
        assert_eq!(out.len(), 2);
        assert_eq!(c.pending_alerts(), 5);
        assert_eq!(c.next_deadline(), Some(t0 + w));
        out.clear();
        c.expire(t0 + w, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].alerts, 5);
        assert_eq!(out[0].alert.output, "alert 5");
        assert_eq!(out[0].window, Some(w));
        // The storm goes on: suppressed again, summarised at the next close.
        out.clear();
        assert!(c.offer(alert(6), 1, t0 + Duration::from_secs(12), &mut out));
        c.expire(t0 + 2 * w, &mut out);
        assert_eq!(out.iter().map(|d| d.alerts).collect::<Vec<_>>(), [1]);
        // A quiet window ends the episode; the next alert goes out at once.
        out.clear();
        c.expire(t0 + 3 * w, &mut out);
        assert!(out.is_empty());
        assert!(!c.offer(alert(7), 1, t0 + 3 * w + Duration::from_secs(1), &mut out));
        assert_eq!(out.len(), 1);
        assert!(out[0].window.is_none());
    }

    #[test]
    fn zero_window_and_key_cap_pass_through() {
        let mut out = Vec::new();
        let mut off = Coalescer::new(Duration::ZERO, 100);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(!off.offer(alert(0), 1, t, &mut out));
        }
        assert_eq!(out.len(), 3);
        let mut capped = Coalescer::new(Duration::from_secs(5), 1);
        out.clear();
        capped.offer(alert(0), 1, t, &mut out);
        capped.offer(alert(1), 2, t, &mut out);
        capped.offer(alert(2), 2, t, &mut out);
        assert_eq!(out.len(), 3, "key 2 is untracked, so never suppressed");
    }

    #[test]
    fn flush_summarises_open_windows() {
        let mut c = Coalescer::new(Duration::from_secs(60), 100);
        let t = Instant::now();
        let mut out = Vec::new();
        c.offer(alert(0), 1, t, &mut out);
        c.offer(alert(1), 1, t, &mut out);
        c.offer(alert(2), 1, t, &mut out);
        c.offer(alert(3), 2, t, &mut out);
        out.clear();
        c.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].alerts, 2);
        assert_eq!(c.pending_alerts(), 0);
        // Still folding after a flush; the next flush carries the rest.
        out.clear();
        assert!(c.offer(alert(4), 1, t, &mut out));
        c.flush(&mut out);
        assert_eq!(out.iter().map(|d| d.alerts).collect::<Vec<_>>(), [1]);
        out.clear();
        c.flush(&mut out);
        assert!(out.is_empty());
    }
}
