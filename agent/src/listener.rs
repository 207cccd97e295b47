//! The HTTP listener behind `/healthz`, `/readyz` and `/metrics`, hardened
//! so that no client can blind the agent by holding connections: a file
//! descriptor spent on an idle socket is one the agent cannot use for a
//! cgroup walk or a webhook.
//!
//! - At most [`Limits::max_connections`] connections are open. When a new
//!   one arrives at the cap, the oldest connection not handling a request is
//!   closed to make room, so a flood of idle connections cannot lock the
//!   kubelet's probe out (a refusing cap would: the flood holds every slot).
//! - A connection must send its request headers within
//!   [`Limits::header_timeout`], and an idle keep-alive connection is closed
//!   after the same time (hyper's header-read timer runs while waiting for
//!   the next request).
//! - No connection lives longer than [`Limits::max_lifetime`], which bounds
//!   slow readers of a large `/metrics`.
//! - Accept errors (`EMFILE` when the process is at its fd limit) back off
//!   instead of spinning, and are logged rate-limited.
//! - With TLS ([`serve_with`], the control API), the handshake must finish
//!   within the header timeout too; each request carries the [`Peer`]
//!   (address, and the verified client certificate's fingerprint).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::logging::{DEFAULT_INTERVAL, RateLimited};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A node has a kubelet and one or two Prometheus servers.
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(60),
        }
    }
}

/// Open connections by arrival order (ids only grow, so the first entry
/// that is not busy is the oldest idle one).
#[derive(Default)]
struct Connections(Mutex<BTreeMap<u64, Entry>>);

struct Entry {
    busy: Arc<AtomicBool>,
    close: CancellationToken,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers connection `id`, first closing the oldest idle one when
    /// `cap` are open. `None`: every open connection is busy; refuse.
    fn admit(&self, id: u64, cap: usize) -> Option<(Arc<AtomicBool>, CancellationToken)> {
        let mut open = self.lock();
        if open.len() >= cap {
            let victim = open
                .iter()
                .find(|(_, e)| !e.busy.load(Ordering::Acquire))
                .map(|(id, _)| *id)?;
            if let Some(entry) = open.remove(&victim) {
                entry.close.cancel();
            }
        }
        let busy = Arc::new(AtomicBool::new(false));
        let close = CancellationToken::new();
        open.insert(
            id,
            Entry {
                busy: busy.clone(),
                close: close.clone(),
            },
        );
        Some((busy, close))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

static ACCEPT_FAILED: RateLimited = RateLimited::new(DEFAULT_INTERVAL);
static EVICTED: RateLimited = RateLimited::new(DEFAULT_INTERVAL);
static HANDSHAKE_FAILED: RateLimited = RateLimited::new(DEFAULT_INTERVAL);

/// Who sent a request: a request extension every handler can read.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// `sha256:<hex>` of the client certificate the TLS handshake verified
    /// (what `openssl x509 -noout -fingerprint -sha256` prints, lowercase,
    /// without colons); `None` without TLS or without a certificate.
    pub client_cert: Option<Arc<str>>,
}

/// Serves `router` until `shutdown`; open connections are then closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, None, shutdown).await
}

/// As [`serve`], over TLS when `tls` is given. A failed handshake (no
/// client certificate where one is required, one from another CA) closes
/// the connection before any request is read; it is logged (rate-limited)
/// on the `egret::control::audit` target, TLS being the control API's.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Connections::default());
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    crate::warn_limited!(ACCEPT_FAILED, %err, "HTTP accept failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        next_id += 1;
        let id = next_id;
        let at_cap = connections.lock().len() >= limits.max_connections;
        let Some((busy, close)) = connections.admit(id, limits.max_connections) else {
            // Every slot is serving a request: this one waits for none.
            drop(stream);
            continue;
        };
        if at_cap {
            crate::warn_limited!(
                EVICTED,
                max_connections = limits.max_connections,
                "HTTP connection cap reached; closed the oldest idle connection"
            );
        }
        let conns = connections.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut peer = Peer {
                addr: peer,
                client_cert: None,
            };
            match tls {
                None => drive(stream, router, peer, busy, limits, &close, &shutdown).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    let accepted = tokio::select! {
                        accepted = handshake => accepted,
                        () = close.cancelled() => { conns.remove(id); return; }
                        () = shutdown.cancelled() => { conns.remove(id); return; }
                    };
                    match accepted {
                        Ok(Ok(stream)) => {
                            peer.client_cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|cert| fingerprint(cert.as_ref()).into());
                            drive(stream, router, peer, busy, limits, &close, &shutdown).await;
                        }
                        Ok(Err(err)) => {
                            if let Some(suppressed) = HANDSHAKE_FAILED.check() {
                                tracing::info!(
                                    target: "egret::control::audit",
                                    suppressed,
                                    peer = %peer.addr,
                                    %err,
                                    "TLS handshake refused"
                                );
                            }
                        }
                        Err(_) => {
                            if let Some(suppressed) = HANDSHAKE_FAILED.check() {
                                tracing::info!(
                                    target: "egret::control::audit",
                                    suppressed,
                                    peer = %peer.addr,
                                    "TLS handshake timed out"
                                );
                            }
                        }
                    }
                }
            }
            conns.remove(id);
        });
    }
    // Connection tasks see the token and drop their sockets.
    Ok(())
}

/// One connection's HTTP/1.1 until it ends, is evicted, outlives its
/// lifetime, or the agent stops.
async fn drive<S>(
    stream: S,
    router: Router,
    peer: Peer,
    busy: Arc<AtomicBool>,
    limits: Limits,
    close: &CancellationToken,
    shutdown: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        busy.store(true, Ordering::Release);
        request.extensions_mut().insert(peer.clone());
        let busy = busy.clone();
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await;
            busy.store(false, Ordering::Release);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = close.cancelled() => {}
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(limits.max_lifetime) => {}
    }
}

/// `sha256:<64 hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let conns = Connections::default();
        let (busy1, close1) = conns.admit(1, 2).unwrap();
        let (_busy2, close2) = conns.admit(2, 2).unwrap();
        busy1.store(true, Ordering::Release);
        // 1 is busy, so 2 (the oldest idle) goes.
        let (busy3, _close3) = conns.admit(3, 2).unwrap();
        assert!(close2.is_cancelled() && !close1.is_cancelled());
        busy3.store(true, Ordering::Release);
        // Everything busy: refused, nothing closed.
        assert!(conns.admit(4, 2).is_none());
        assert!(!close1.is_cancelled());
        assert_eq!(conns.lock().len(), 2);
    }
}
