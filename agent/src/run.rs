//! `egret run`: the process around the pipeline. Installs the signal
//! handler and the HTTP listener, starts the [`Pipeline`], waits for
//! SIGINT/SIGTERM (or a failed output) on the one shutdown token, and stops
//! it in order.
use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    health::{self, Readiness},
    metrics::{self, Metrics},
    pipeline::Pipeline,
};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let metrics = Metrics::new(&config.metrics);
    let readiness = Readiness::default();
    let health = match config.listen {
        Some(addr) => Some(serve_http(addr, &readiness, &metrics, &shutdown).await?),
        None => None,
    };

    let running = Pipeline::start(&config, &metrics, &shutdown).await?;
    readiness.set(true);
    running.log_ready();

    shutdown.cancelled().await;
    readiness.set(false);
    tracing::info!("shutting down");
    let summary = running.stop().await?;
    if let Some(task) = health {
        match tokio::time::timeout(crate::pipeline::STAGE_GRACE, task).await {
            Ok(joined) => joined.context("http task")?.context("serving HTTP")?,
            Err(_) => tracing::warn!("HTTP listener did not stop in time"),
        }
    }
    if let Some(path) = &config.summary {
        summary.write(path)?;
    }
    Ok(())
}

async fn serve_http(
    addr: SocketAddr,
    readiness: &Readiness,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("reading bound address")?;
    tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    let router = health::router(readiness.clone()).merge(metrics::router(metrics.clone()));
    Ok(tokio::spawn(health::serve(
        listener,
        router,
        shutdown.clone(),
    )))
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}
