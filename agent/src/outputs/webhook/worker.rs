//! The task behind one endpoint: takes alerts off its queue, coalesces
//! them, keeps up to `max_in_flight` deliveries running, and on shutdown
//! drains within the grace period, counting whatever is left as dropped.
use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{Queued, coalesce::Coalescer, dingtalk::Limiter, endpoint::Endpoint, format::Delivery};
use crate::metrics::DropReason;

pub(super) struct Worker {
    pub endpoint: Arc<Endpoint>,
    pub rx: mpsc::Receiver<Queued>,
    pub coalescer: Coalescer,
    /// Messages per period (DingTalk's 20/min); what exceeds it is held
    /// and sent as one summary when a slot frees.
    pub limiter: Option<Limiter>,
    pub max_in_flight: usize,
    pub shutdown: CancellationToken,
    pub grace: Duration,
}

/// Far enough to never fire; `sleep_until` needs some instant.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl Worker {
    pub async fn run(mut self) {
        let ep = self.endpoint.clone();
        // Cancelled when the grace period ends: every delivery stops and
        // counts itself as dropped.
        let hard_stop = CancellationToken::new();
        // Each delivery that took a rate-limit slot returns when it took it
        // and when its answer came, for `Limiter::answered`.
        let mut in_flight: JoinSet<Option<(std::time::Instant, std::time::Instant)>> =
            JoinSet::new();
        let mut ready: VecDeque<Delivery> = VecDeque::new();
        let mut due = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut open = true;
        loop {
            while in_flight.len() < self.max_in_flight {
                let now = Instant::now().into_std();
                let (d, slot) = match &mut self.limiter {
                    // Held alerts go first, as one summary, once a slot frees.
                    Some(limiter) if limiter.held() > 0 => {
                        if !limiter.try_send(now) {
                            ready.drain(..).for_each(|d| limiter.hold(d));
                            break;
                        }
                        let Some(summary) = limiter.take_summary() else {
                            break;
                        };
                        tracing::info!(endpoint = %ep.name, alerts = summary.alerts,
                            "sending a summary of alerts held back by the rate limit");
                        (summary, Some(now))
                    }
                    Some(limiter) => {
                        let Some(d) = ready.pop_front() else { break };
                        if !limiter.try_send(now) {
                            limiter.hold(d);
                            continue;
                        }
                        (d, Some(now))
                    }
                    None => {
                        let Some(d) = ready.pop_front() else { break };
                        (d, None)
                    }
                };
                let (ep, stop) = (ep.clone(), hard_stop.clone());
                in_flight.spawn(async move {
                    ep.deliver(d, &stop).await;
                    slot.map(|taken| (taken, std::time::Instant::now()))
                });
            }
            let held = self.limiter.as_ref().map_or(0, Limiter::held);
            if !open
                && ready.is_empty()
                && in_flight.is_empty()
                && held == 0
                && self.coalescer.pending_alerts() == 0
            {
                break;
            }
            let slot_free = self
                .limiter
                .as_ref()
                .filter(|l| l.held() > 0)
                .and_then(Limiter::next_slot)
                .map(Instant::from_std);
            let window_end = self.coalescer.next_deadline().map(Instant::from_std);
            // Read the queue only with a free slot and nothing waiting, so
            // a slow receiver backs alerts up into the bounded queue (where
            // overflow is counted) instead of into memory here.
            let can_take = open && ready.is_empty() && in_flight.len() < self.max_in_flight;
            tokio::select! {
                biased;
                () = sleep_until(deadline.unwrap_or_else(never)), if deadline.is_some() => break,
                () = self.shutdown.cancelled(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + self.grace);
                    self.coalescer.flush(&mut due);
                }
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => match joined {
                    Ok(Some((taken, answered))) => {
                        if let Some(limiter) = &mut self.limiter {
                            limiter.answered(taken, answered);
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::error!(endpoint = %ep.name, %err, "webhook delivery task failed");
                    }
                },
                () = sleep_until(window_end.unwrap_or_else(never)), if window_end.is_some() => {
                    self.coalescer.expire(std::time::Instant::now(), &mut due);
                }
                () = sleep_until(slot_free.unwrap_or_else(never)), if slot_free.is_some() => {}
                msg = self.rx.recv(), if can_take => match msg {
                    Some(q) => {
                        if self.coalescer.offer(q.alert, q.key, std::time::Instant::now(), &mut due) {
                            ep.metrics.coalesced.inc();
                        }
                    }
                    None => {
                        open = false;
                        deadline.get_or_insert_with(|| Instant::now() + self.grace);
                        self.coalescer.flush(&mut due);
                    }
                },
            }
            ready.extend(due.drain(..));
        }
        hard_stop.cancel();
        while in_flight.join_next().await.is_some() {}
        let mut left = ready.iter().map(|d| d.alerts).sum::<u64>()
            + self.coalescer.pending_alerts()
            + self.limiter.as_ref().map_or(0, Limiter::held);
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            ep.metrics.dropped(DropReason::Shutdown, left);
        }
        tracing::info!(
            endpoint = %ep.name,
            url = %ep.shown_url,
            deliveries = ep.metrics.deliveries.get(),
            delivered_alerts = ep.metrics.delivered_alerts.get(),
            dropped = DropReason::ALL.iter().map(|r| ep.metrics.drops(*r)).sum::<u64>(),
            suppressed_warnings = ep.suppressed_warnings(),
            "webhook endpoint stopped"
        );
    }
}
