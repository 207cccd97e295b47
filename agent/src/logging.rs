//! Rate-limited logging for faults that can repeat (a rejected webhook
//! delivery, an audit write error, a cgroup walk failure): the first line
//! is logged at once, later ones at most once per interval, each carrying
//! how many lines were suppressed since the last one, so a storm of one
//! fault costs a handful of log lines and no information about its size.
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Default interval between two lines of the same fault.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One limiter per fault site (a `static` or a field), shared by threads.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimited {
    pub const fn new(interval: Duration) -> RateLimited {
        RateLimited {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be logged now (`suppressed` lines
    /// were held back since the previous one), `None` when this one is to
    /// be suppressed (and is counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if due {
            *last = Some(now);
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Lines held back since the last one logged (for a final summary).
    pub fn pending(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

impl Default for RateLimited {
    fn default() -> RateLimited {
        RateLimited::new(DEFAULT_INTERVAL)
    }
}

/// `warn!` through a [`RateLimited`]: logs with a `suppressed` field, or
/// counts the line as suppressed.
///
/// ```ignore
/// static LIMIT: RateLimited = RateLimited::new(DEFAULT_INTERVAL);
/// warn_limited!(LIMIT, endpoint = %name, status, "webhook delivery rejected");
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    };
}

/// `error!` through a [`RateLimited`], like [`warn_limited!`].
#[macro_export]
macro_rules! error_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.check() {
            ::tracing::error!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_passes_then_counts_until_the_interval() {
        let limiter = RateLimited::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.check_at(start), Some(0));
        for i in 1..=5 {
            assert_eq!(limiter.check_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(limiter.pending(), 5);
        assert_eq!(limiter.check_at(start + Duration::from_secs(10)), Some(5));
        assert_eq!(limiter.pending(), 0);
        assert_eq!(limiter.check_at(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn the_macro_compiles_for_static_limiters() {
        static LIMIT: RateLimited = RateLimited::new(Duration::from_secs(3600));
        warn_limited!(LIMIT, reason = "test", "first");
        warn_limited!(LIMIT, reason = "test", "second");
        assert_eq!(LIMIT.pending(), 1);
    }
}
