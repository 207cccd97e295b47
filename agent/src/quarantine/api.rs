//! The control API: `POST/GET/DELETE /v1/quarantines` on its own listener,
//! never the metrics port. Every request needs the bearer token, a verified
//! client certificate (mTLS), or both, as configured; every request,
//! allowed or not, is audited (who, what, when, outcome) on the
//! `egret::control::audit` log target.
use std::sync::Arc;

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::{Limits, Peer};

use super::{
    manager::{Manager, QuarantineError},
    model::QuarantineRequest,
    target::TargetError,
};

const MAX_BODY: usize = 64 * 1024;

/// The bearer token. No Debug or Display: it must never reach a log.
pub struct Token(Box<[u8]>);

impl Token {
    /// Reads the token file; surrounding whitespace (a trailing newline from
    /// `echo` or a Secret volume) is not part of the token.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Token> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the control token must be at least 16 characters",
            ));
        }
        Ok(Token(token.as_bytes().into()))
    }

    /// Constant-time in the token's content (the length is not secret
    /// enough to matter: it is fixed by deployment).
    fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() != self.0.len() {
            return false;
        }
        presented
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// What a request must present. At least one is set (config check).
pub struct Auth {
    pub token: Option<Token>,
    /// A verified client certificate is required. The TLS handshake
    /// already refuses clients without one; this keeps a plain listener
    /// from ever passing such a policy.
    pub client_cert: bool,
}

#[derive(Clone)]
struct Control {
    manager: Arc<Manager>,
    auth: Arc<Auth>,
}

pub fn router(manager: Arc<Manager>, auth: Auth) -> Router {
    let state = Control {
        manager,
        auth: Arc::new(auth),
    };
    Router::new()
        .route("/v1/quarantines", get(list).post(add))
        .route("/v1/quarantines/{id}", delete(remove).get(show))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves until shutdown (TLS when `tls` is given), with the metrics
/// listener's connection limits; the caller binds first so a bad address
/// fails start-up.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::listener::serve_with(listener, router, Limits::default(), tls, shutdown).await
}

async fn authenticate(
    State(control): State<Control>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    mut request: axum::extract::Request,
    next: Next,
) -> Response {
    let auth = &control.auth;
    let token_ok = match &auth.token {
        None => true,
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|t| token.matches(t)),
    };
    let cert_ok = !auth.client_cert || peer.client_cert.is_some();
    let authorized = token_ok && cert_ok;
    // Who, as far as it was proven: never the token itself.
    let who = match (&peer.client_cert, auth.token.is_some() && token_ok) {
        (Some(cert), true) => format!("token+cert:{cert}"),
        (Some(cert), false) => format!("cert:{cert}"),
        (None, true) if auth.token.is_some() => "token".to_owned(),
        _ => "anonymous".to_owned(),
    };
    let response = if authorized {
        request.extensions_mut().insert(Requester(who.clone()));
        next.run(request).await
    } else if !token_ok {
        error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
    } else {
        error(StatusCode::UNAUTHORIZED, "a client certificate is required")
    };
    tracing::info!(
        target: "egret::control::audit",
        peer = %peer.addr,
        who,
        %method,
        path = %uri.path(),
        status = response.status().as_u16(),
        "control request"
    );
    response
}

/// The authenticated caller, for `requested_by`.
#[derive(Clone)]
struct Requester(String);

async fn list(State(control): State<Control>) -> Response {
    let views = control.manager.list();
    (StatusCode::OK, Json(json!({ "quarantines": views }))).into_response()
}

async fn show(State(control): State<Control>, Path(id): Path<String>) -> Response {
    match control
        .manager
        .list()
        .into_iter()
        .find(|v| v.record.id == id)
    {
        Some(view) => (StatusCode::OK, Json(view)).into_response(),
        None => failure(QuarantineError::UnknownId(id)),
    }
}

async fn add(
    State(control): State<Control>,
    Extension(peer): Extension<Peer>,
    Extension(requester): Extension<Requester>,
    body: Bytes,
) -> Response {
    let request = match serde_json::from_slice::<QuarantineRequest>(&body) {
        Ok(request) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("request body: {err}")),
    };
    let validated = match request.validate() {
        Ok(validated) => validated,
        Err(message) => return failure(QuarantineError::Invalid(message)),
    };
    let manager = control.manager.clone();
    let by = match requester.0.as_str() {
        "token" => format!("api:{}", peer.addr),
        who => format!("api:{} {who}", peer.addr),
    };
    // Resolution walks the cgroup tree: off the async workers.
    match tokio::task::spawn_blocking(move || manager.add(validated, &by)).await {
        Ok(Ok(view)) => (StatusCode::CREATED, Json(view)).into_response(),
        Ok(Err(err)) => failure(err),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "quarantine task failed"),
    }
}

async fn remove(
    State(control): State<Control>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> Response {
    match control.manager.remove(&id, &format!("api:{}", peer.addr)) {
        Ok(view) => (StatusCode::OK, Json(view)).into_response(),
        Err(err) => failure(err),
    }
}

fn failure(err: QuarantineError) -> Response {
    let status = match &err {
        QuarantineError::Invalid(_) => StatusCode::BAD_REQUEST,
        QuarantineError::Target(TargetError::NotFound(_)) | QuarantineError::UnknownId(_) => {
            StatusCode::NOT_FOUND
        }
        QuarantineError::Target(TargetError::Refused(_)) => StatusCode::FORBIDDEN,
        QuarantineError::Duplicate { .. } => StatusCode::CONFLICT,
        QuarantineError::Full => StatusCode::SERVICE_UNAVAILABLE,
        QuarantineError::Kernel(_) | QuarantineError::Persist { .. } => {
            tracing::error!(%err, "quarantine failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    error(status, &err.to_string())
}

/// JSON body (axum's `json` feature is not enabled in this crate).
struct Json<T>(T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_is_exact() {
        let token = Token(b"0123456789abcdef".to_vec().into());
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcde"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn short_tokens_are_refused() {
        let path = std::env::temp_dir().join(format!("egret-q-token-{}", std::process::id()));
        std::fs::write(&path, "short\n").unwrap();
        assert!(Token::from_file(&path).is_err());
        std::fs::write(&path, "  0123456789abcdef\n").unwrap();
        assert!(
            Token::from_file(&path)
                .unwrap()
                .matches(b"0123456789abcdef")
        );
        std::fs::remove_file(path).unwrap();
    }
}
