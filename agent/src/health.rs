//! `/healthz` (liveness: the process serves and its pipeline is not stuck)
//! and `/readyz` (readiness: every kernel program is attached and the
//! pipeline is not wedged) for Kubernetes probes. The [`crate::watchdog`]
//! decides "stuck" and "wedged"; a 503 body says why.
use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::Limits;

#[derive(Default)]
struct Inner {
    attached: AtomicBool,
    wedged: Mutex<Option<String>>,
    stalled: Mutex<Option<String>>,
}

#[derive(Clone, Default)]
pub struct Readiness(Arc<Inner>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Readiness {
    /// Programs attached (true) or detached (false).
    pub fn set(&self, ready: bool) {
        self.0.attached.store(ready, Ordering::Release);
    }

    pub fn set_wedged(&self, reason: Option<String>) {
        let mut wedged = lock(&self.0.wedged);
        if *wedged != reason {
            match &reason {
                Some(why) => tracing::warn!(reason = %why, "pipeline wedged: not ready"),
                None => tracing::info!("pipeline flowing again: ready"),
            }
            *wedged = reason;
        }
    }

    pub fn set_stalled(&self, reason: Option<String>) {
        let mut stalled = lock(&self.0.stalled);
        if *stalled != reason {
            if let Some(why) = &reason {
                tracing::error!(reason = %why, "pipeline stalled: liveness failing");
            }
            *stalled = reason;
        }
    }

    pub fn is_ready(&self) -> bool {
        self.0.attached.load(Ordering::Acquire) && lock(&self.0.wedged).is_none()
    }

    pub fn is_live(&self) -> bool {
        lock(&self.0.stalled).is_none()
    }

    /// Why the agent is not ready, when it is not.
    pub fn reason(&self) -> Option<String> {
        if !self.0.attached.load(Ordering::Acquire) {
            return Some("kernel programs not attached".into());
        }
        lock(&self.0.wedged).clone()
    }
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn healthz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match lock(&readiness.0.stalled).clone() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("stalled: {why}\n")),
    }
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    match readiness.reason() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Serves until shutdown with the default [`Limits`]; the caller binds
/// first, so a bad address fails start-up.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::listener::serve(listener, router, Limits::default(), shutdown).await
}
