//! Readiness and liveness that mean something: the HTTP probes answer from
//! what the pipeline is doing, not only from "the programs are attached".
//!
//! Once a second the watchdog samples the stage queues (`records`:
//! kernel → enrich, `events`: enrich → evaluate), the kernel's ring-buffer
//! drop counters and how many events the evaluate stage has finished.
//!
//! - **Not ready** (`/readyz` 503, with the reason) while a stage queue has
//!   been full for [`Bounds::queue_full`] or the ring buffer has been
//!   overflowing (drops rising every second) for [`Bounds::overflow`]: the
//!   agent is missing events and the node should be looked at. Ready again
//!   as soon as the condition clears.
//! - **Not live** (`/healthz` 503) when the evaluate stage has finished no
//!   event for [`Bounds::stalled`] while events wait for it: the pipeline
//!   is stuck and only a restart helps. Slow outputs cannot cause this —
//!   each drops and counts rather than blocking evaluation.
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::health::Readiness;

type QueueProbe = Box<dyn Fn() -> Option<(usize, usize)> + Send + Sync>;
type Counter = Box<dyn Fn() -> Option<u64> + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub queue_full: Duration,
    pub overflow: Duration,
    pub stalled: Duration,
    pub interval: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            queue_full: Duration::from_secs(10),
            overflow: Duration::from_secs(5),
            stalled: Duration::from_secs(60),
            interval: Duration::from_secs(1),
        }
    }
}

struct Queue {
    name: String,
    probe: QueueProbe,
    full_since: Option<Instant>,
}

pub struct Watchdog {
    readiness: Readiness,
    bounds: Bounds,
    queues: Vec<Queue>,
    ringbuf_drops: Option<Counter>,
    last_drops: Option<u64>,
    overflowing_since: Option<Instant>,
    /// Events evaluated so far, and the queue feeding the evaluate stage.
    progress: Option<(Counter, QueueProbe)>,
    last_progress: Option<(u64, Instant)>,
}

impl Watchdog {
    pub fn new(readiness: Readiness, bounds: Bounds) -> Self {
        Watchdog {
            readiness,
            bounds,
            queues: Vec::new(),
            ringbuf_drops: None,
            last_drops: None,
            overflowing_since: None,
            progress: None,
            last_progress: None,
        }
    }

    /// A stage queue: `probe` returns `(depth, capacity)`.
    pub fn queue(
        &mut self,
        name: &str,
        probe: impl Fn() -> Option<(usize, usize)> + Send + Sync + 'static,
    ) {
        self.queues.push(Queue {
            name: name.to_owned(),
            probe: Box::new(probe),
            full_since: None,
        });
    }

    /// Total ring-buffer drops so far (kernel counters).
    pub fn ringbuf_drops(&mut self, read: impl Fn() -> Option<u64> + Send + Sync + 'static) {
        self.ringbuf_drops = Some(Box::new(read));
    }

    /// Events the evaluate stage has finished, and its input queue.
    pub fn progress(
        &mut self,
        evaluated: impl Fn() -> Option<u64> + Send + Sync + 'static,
        input: impl Fn() -> Option<(usize, usize)> + Send + Sync + 'static,
    ) {
        self.progress = Some((Box::new(evaluated), Box::new(input)));
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.bounds.interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.check(Instant::now()),
            }
        }
    }

    fn check(&mut self, now: Instant) {
        let mut wedged = None;
        for queue in &mut self.queues {
            let full = (queue.probe)().is_some_and(|(depth, cap)| cap > 0 && depth >= cap);
            queue.full_since = match (full, queue.full_since) {
                (true, Some(since)) => Some(since),
                (true, None) => Some(now),
                (false, _) => None,
            };
            if let Some(since) = queue.full_since
                && now.duration_since(since) >= self.bounds.queue_full
            {
                wedged.get_or_insert(format!(
                    "stage queue `{}` full for {}s",
                    queue.name,
                    now.duration_since(since).as_secs()
                ));
            }
        }
        if let Some(read) = &self.ringbuf_drops
            && let Some(drops) = read()
        {
            let rising = self.last_drops.is_some_and(|last| drops > last);
            self.last_drops = Some(drops);
            self.overflowing_since = match (rising, self.overflowing_since) {
                (true, Some(since)) => Some(since),
                // Rising since the previous sample, a second ago.
                (true, None) => Some(now.checked_sub(self.bounds.interval).unwrap_or(now)),
                (false, _) => None,
            };
            if let Some(since) = self.overflowing_since
                && now.duration_since(since) >= self.bounds.overflow
            {
                wedged.get_or_insert(format!(
                    "kernel ring buffer overflowing for {}s",
                    now.duration_since(since).as_secs()
                ));
            }
        }
        let mut stalled = None;
        if let Some((evaluated, input)) = &self.progress {
            let waiting = input().is_some_and(|(depth, _)| depth > 0);
            let done = evaluated().unwrap_or(0);
            match self.last_progress {
                Some((last, _)) if last != done || !waiting => {
                    self.last_progress = Some((done, now));
                }
                Some((_, since)) if now.duration_since(since) >= self.bounds.stalled => {
                    stalled = Some(format!(
                        "evaluate stage made no progress for {}s with events waiting",
                        now.duration_since(since).as_secs()
                    ));
                }
                Some(_) => {}
                None => self.last_progress = Some((done, now)),
            }
        }
        self.readiness.set_wedged(wedged);
        self.readiness.set_stalled(stalled);
    }
}

/// `(depth, capacity)` of a channel, without keeping it open.
pub fn queue_probe<T: Send + 'static>(
    tx: &tokio::sync::mpsc::Sender<T>,
) -> impl Fn() -> Option<(usize, usize)> + Send + Sync + 'static {
    let weak = tx.downgrade();
    move || {
        let tx = weak.upgrade()?;
        Some((tx.max_capacity() - tx.capacity(), tx.max_capacity()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use super::*;

    type Cell = Arc<std::sync::atomic::AtomicU64>;

    fn bounds() -> Bounds {
        Bounds {
            queue_full: Duration::from_secs(10),
            overflow: Duration::from_secs(5),
            stalled: Duration::from_secs(60),
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_queue_full_longer_than_the_bound_makes_the_agent_unready() {
        let readiness = Readiness::default();
        readiness.set(true);
        let depth = Cell::default();
        let mut dog = Watchdog::new(readiness.clone(), bounds());
        let d = depth.clone();
        dog.queue("events", move || {
            Some((d.load(Ordering::Relaxed) as usize, 64))
        });
        let t0 = Instant::now();
        depth.store(64, Ordering::Relaxed);
        dog.check(t0);
        dog.check(t0 + Duration::from_secs(9));
        assert!(readiness.is_ready(), "a short burst is not a wedge");
        dog.check(t0 + Duration::from_secs(10));
        assert!(!readiness.is_ready());
        assert_eq!(
            readiness.reason().as_deref(),
            Some("stage queue `events` full for 10s")
        );
        depth.store(3, Ordering::Relaxed);
        dog.check(t0 + Duration::from_secs(11));
        assert!(readiness.is_ready(), "ready again once it drains");
    }

    #[test]
    fn a_ring_buffer_overflowing_for_the_bound_makes_the_agent_unready() {
        let readiness = Readiness::default();
        readiness.set(true);
        let drops = Cell::default();
        let mut dog = Watchdog::new(readiness.clone(), bounds());
        let d = drops.clone();
        dog.ringbuf_drops(move || Some(d.load(Ordering::Relaxed)));
        let t0 = Instant::now();
        for s in 0..=4 {
            drops.fetch_add(100, Ordering::Relaxed);
            dog.check(t0 + Duration::from_secs(s));
        }
        assert!(readiness.is_ready());
        drops.fetch_add(100, Ordering::Relaxed);
        dog.check(t0 + Duration::from_secs(5));
        assert!(!readiness.is_ready(), "{:?}", readiness.reason());
        dog.check(t0 + Duration::from_secs(6));
        assert!(readiness.is_ready(), "no new drops: ready");
    }

    #[test]
    fn liveness_fails_only_when_evaluation_stops_with_work_waiting() {
        let readiness = Readiness::default();
        let (done, waiting) = (Cell::default(), Cell::default());
        let mut dog = Watchdog::new(readiness.clone(), bounds());
        let (d, w) = (done.clone(), waiting.clone());
        dog.progress(
            move || Some(d.load(Ordering::Relaxed)),
            move || Some((w.load(Ordering::Relaxed) as usize, 64)),
        );
        let t0 = Instant::now();
        dog.check(t0);
        // Idle (nothing waiting) for long: alive.
        dog.check(t0 + Duration::from_secs(120));
        assert!(readiness.is_live());
        waiting.store(5, Ordering::Relaxed);
        dog.check(t0 + Duration::from_secs(150));
        assert!(readiness.is_live());
        dog.check(t0 + Duration::from_secs(181));
        assert!(!readiness.is_live());
        done.store(10, Ordering::Relaxed);
        dog.check(t0 + Duration::from_secs(182));
        assert!(readiness.is_live());
    }
}
