//! Alerts on stdout without letting stdout stop the agent.
//!
//! A blocked stdout (a FIFO or pipe whose reader stopped reading, a stuck
//! log collector) would otherwise block the rules stage, back up every
//! queue to the ring buffer, and make shutdown wait for a write that never
//! returns. [`StdoutQueue`] is the writer the evaluate stage writes alert
//! lines to: it hands each batch to a dedicated thread through a queue
//! bounded in bytes, and never blocks. When the queue is full, the batch's
//! lines are dropped and counted
//! (`egret_output_lost_records_total{output="stdout",reason="queue_full"}`);
//! a failed write (stdout closed) counts `write_error`; lines still queued
//! when the shutdown deadline passes count `shutdown`. Alerts are never lost
//! silently, and the webhooks and metrics see every alert regardless.
//!
//! Each `poll_write` carries whole lines (one batch, written with one
//! `write_all`), so dropping a batch never splits a line.
use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::io::AsyncWrite;

use crate::{
    logging::{DEFAULT_INTERVAL, RateLimited},
    metrics::{LossReason, Metrics, Output},
};

/// Bytes of alert lines waiting for stdout (about 8,000 alerts).
pub const QUEUE_BYTES: usize = 4 << 20;

struct Shared {
    queued_bytes: AtomicUsize,
    /// Lines handed to the thread and not yet written (or counted lost).
    pending_lines: AtomicU64,
    written_lines: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A handle: clones share one queue and thread. The evaluate stage writes
/// through one; shutdown calls [`StdoutQueue::finish`] on another.
#[derive(Clone)]
pub struct StdoutQueue {
    tx: Arc<Mutex<Option<mpsc::SyncSender<Vec<u8>>>>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    shared: Arc<Shared>,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

static DROPPED: RateLimited = RateLimited::new(DEFAULT_INTERVAL);
static WRITE_FAILED: RateLimited = RateLimited::new(DEFAULT_INTERVAL);

fn lines(buf: &[u8]) -> u64 {
    buf.iter().filter(|b| **b == b'\n').count() as u64
}

impl StdoutQueue {
    /// Alert lines to the process's stdout.
    pub fn stdout(metrics: Arc<Metrics>) -> std::io::Result<Self> {
        StdoutQueue::new(std::io::stdout(), QUEUE_BYTES, metrics)
    }

    pub fn new<W: std::io::Write + Send + 'static>(
        mut out: W,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            pending_lines: AtomicU64::new(0),
            written_lines: AtomicU64::new(0),
            metrics,
        });
        // The byte bound is the real limit; the channel's own bound only
        // caps the number of (small) batches.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4096);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("egret-stdout".into())
                .spawn(move || {
                    for buf in rx {
                        let n = lines(&buf);
                        let result = out.write_all(&buf).and_then(|()| out.flush());
                        shared.queued_bytes.fetch_sub(buf.len(), Ordering::AcqRel);
                        shared.pending_lines.fetch_sub(n, Ordering::AcqRel);
                        match result {
                            Ok(()) => {
                                shared.written_lines.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(err) => {
                                shared.metrics.output_lost(
                                    Output::Stdout,
                                    LossReason::WriteError,
                                    n,
                                );
                                crate::error_limited!(
                                    WRITE_FAILED,
                                    %err,
                                    lines = n,
                                    "writing alerts to stdout failed; lines dropped and counted"
                                );
                            }
                        }
                    }
                })?
        };
        Ok(StdoutQueue {
            tx: Arc::new(Mutex::new(Some(tx))),
            thread: Arc::new(Mutex::new(Some(thread))),
            shared,
            capacity,
        })
    }

    /// `(bytes queued, capacity)`, for the queue-depth metric.
    pub fn probe(&self) -> impl Fn() -> Option<(usize, usize)> + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.shared);
        let capacity = self.capacity;
        move || {
            let shared = shared.upgrade()?;
            Some((shared.queued_bytes.load(Ordering::Relaxed), capacity))
        }
    }

    pub fn written(&self) -> u64 {
        self.shared.written_lines.load(Ordering::Relaxed)
    }

    fn enqueue(&self, buf: &[u8]) {
        let n = lines(buf);
        let queued = self.shared.queued_bytes.load(Ordering::Acquire);
        let tx = lock(&self.tx);
        let Some(tx) = tx.as_ref() else {
            // After `finish`: shutting down.
            self.shared
                .metrics
                .output_lost(Output::Stdout, LossReason::Shutdown, n);
            return;
        };
        let sent = queued + buf.len() <= self.capacity && {
            // Counted before the send, so the thread never decrements
            // below zero.
            self.shared
                .queued_bytes
                .fetch_add(buf.len(), Ordering::AcqRel);
            self.shared.pending_lines.fetch_add(n, Ordering::AcqRel);
            match tx.try_send(buf.to_vec()) {
                Ok(()) => true,
                Err(_) => {
                    self.shared
                        .queued_bytes
                        .fetch_sub(buf.len(), Ordering::AcqRel);
                    self.shared.pending_lines.fetch_sub(n, Ordering::AcqRel);
                    false
                }
            }
        };
        if !sent {
            self.shared
                .metrics
                .output_lost(Output::Stdout, LossReason::QueueFull, n);
            crate::warn_limited!(
                DROPPED,
                lines = n,
                queued_bytes = queued,
                "stdout is not keeping up; alert lines dropped and counted (webhooks and metrics still see them)"
            );
        }
    }

    /// Closes the queue and waits until `deadline` for the thread to write
    /// what is queued; lines still queued then are counted as lost. A write
    /// blocked forever is left behind: the thread does not keep the process
    /// alive. Returns the lines written in all.
    pub async fn finish(&self, deadline: Instant) -> u64 {
        drop(lock(&self.tx).take());
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // A slow reader gets until the deadline; one that has taken
            // nothing for STUCK is not waited for any longer.
            const STUCK: Duration = Duration::from_secs(2);
            let mut seen = self.written();
            let mut moved = Instant::now();
            while !thread.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = self.written();
                if now != seen {
                    (seen, moved) = (now, Instant::now());
                } else if moved.elapsed() >= STUCK {
                    break;
                }
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                let lost = self.shared.pending_lines.swap(0, Ordering::AcqRel);
                self.shared
                    .metrics
                    .output_lost(Output::Stdout, LossReason::Shutdown, lost);
                tracing::warn!(
                    lost,
                    "stdout did not take the queued alert lines before the shutdown deadline; counted as lost"
                );
            }
        }
        self.written()
    }
}

impl AsyncWrite for StdoutQueue {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.enqueue(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A stdout whose reader does not read until `open` is set.
    /// (open, what was written)
    type GateState = Mutex<(bool, Vec<u8>)>;

    #[derive(Clone, Default)]
    struct Gate(Arc<(GateState, Condvar)>);

    impl std::io::Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cond) = &*self.0;
            let mut state = lock.lock().unwrap();
            while !state.0 {
                state = cond.wait(state).unwrap();
            }
            state.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Gate {
        fn open(&self) {
            let (lock, cond) = &*self.0;
            lock.lock().unwrap().0 = true;
            cond.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0.0.lock().unwrap().1.clone()).unwrap()
        }
    }

    fn metrics() -> Arc<Metrics> {
        Metrics::new(&crate::metrics::MetricsConfig::default())
    }

    #[tokio::test]
    async fn a_blocked_stdout_drops_whole_batches_and_counts_them() {
        let gate = Gate::default();
        let metrics = metrics();
        let mut queue = StdoutQueue::new(gate.clone(), 64, metrics.clone()).unwrap();
        // The first batch is taken by the thread (blocked in write), the
        // next fill the 64-byte queue, the rest are dropped.
        for i in 0..10 {
            queue
                .write_all(format!("{{\"n\":{i:03}}}\n{{\"n\":{i:03}}}\n").as_bytes())
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        let lost = metrics.output_lost_total(Output::Stdout);
        assert!(lost >= 10, "dropped lines counted: {lost}");
        assert_eq!(lost % 2, 0, "whole batches only");
        gate.open();
        let written = queue.finish(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(written + lost, 20);
        let text = gate.text();
        assert!(text.lines().all(|l| l.len() == 9), "{text}");
    }

    #[tokio::test]
    async fn finish_is_bounded_when_stdout_never_reads() {
        let gate = Gate::default();
        let metrics = metrics();
        let mut queue = StdoutQueue::new(gate.clone(), 1 << 20, metrics.clone()).unwrap();
        for _ in 0..3 {
            queue.write_all(b"{}\n{}\n").await.unwrap();
        }
        let started = Instant::now();
        let written = queue
            .finish(Instant::now() + Duration::from_millis(200))
            .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(written, 0);
        assert_eq!(metrics.output_lost_total(Output::Stdout), 6);
        gate.open();
    }
}
