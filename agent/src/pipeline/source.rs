//! Source stage: drains the kernel ring buffer when epoll says it is readable
//! (an idle agent never polls on a timer), decodes records, and forwards
//! batches.
//!
//! Wake-ups, not work, are what a connect storm costs: the kernel signals a
//! consumer that has caught up on every record it commits, so draining each
//! record as soon as it is signalled means a wake-up (and a hop through
//! every stage) per event. While events keep coming the stage therefore
//! pauses [`LINGER`] between drains, and the kernel, seeing the consumer
//! behind, does not signal; the first event after a quiet spell is still
//! drained the moment it is signalled.
//!
//! Backpressure, not loss: when the next stage is slow, `send` waits, the ring
//! buffer fills, and the kernel counts the reserve failures it then suffers
//! (`ringbuf_full`), so every lost event is accounted for.
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{Metrics, Verdict},
    pipeline::decode::{self, Record},
};

/// Events per batch: large enough to amortise channel and write costs, small
/// enough that one batch never holds latency back noticeably.
pub const BATCH: usize = 512;

/// Pause between drains while events keep arriving. Tokio's timer ticks in
/// milliseconds, so this adds at most about 2 ms to an event that arrives
/// mid-storm, and nothing to one that arrives after a quiet spell.
pub const LINGER: Duration = Duration::from_millis(1);

pub type Batch = Vec<Record>;

pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd,
    // so the fd stays open and unchanged for the AsyncFd's whole life.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
    'wait: loop {
        let mut guard = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            guard = ring.readable_mut() => guard?,
        };
        // Clear first, then drain: a record committed after this point wakes
        // us again, and one committed before it is read by the drain below.
        guard.clear_ready();
        let mut drained = false;
        while let Some(batch) = drain(guard.get_inner_mut(), &metrics) {
            drained = true;
            if !batch.is_empty() && tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
        // Events are flowing: collect them for a moment rather than be
        // signalled once per record. Until a drain finds the ring empty,
        // the kernel sees us behind and stays quiet; after that, the next
        // record signals again and is read at once.
        while drained {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'wait,
                () = tokio::time::sleep(LINGER) => {}
            }
            drained = false;
            while let Some(batch) = drain(ring.get_mut(), &metrics) {
                drained = true;
                if !batch.is_empty() && tx.send(batch).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    // Whatever the kernel committed before shutdown still goes out.
    while let Some(batch) = drain(ring.get_mut(), &metrics) {
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Up to [`BATCH`] decoded records, or `None` when the ring is empty. The
/// batch is allocated only once there is something to put in it: every
/// wake-up and linger tick ends with a drain that finds the ring empty.
fn drain(ring: &mut RingBuf<MapData>, metrics: &Metrics) -> Option<Batch> {
    let first = ring.next()?;
    let offset = decode::wall_offset_ns();
    let mut batch = Vec::with_capacity(BATCH);
    let mut errors = 0;
    let mut push = |record: &[u8], batch: &mut Batch| match decode::decode(record, offset) {
        Ok(record) => batch.push(record),
        Err(err) => {
            errors += 1;
            tracing::debug!(%err, "undecodable ring buffer record");
        }
    };
    push(&first, &mut batch);
    drop(first);
    let mut read = 1;
    while read < BATCH {
        let Some(record) = ring.next() else { break };
        push(&record, &mut batch);
        read += 1;
    }
    if errors > 0 {
        metrics.observe_events(Verdict::DecodeError, errors);
    }
    Some(batch)
}
