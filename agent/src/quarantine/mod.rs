//! Respond: quarantining a workload's egress in the kernel on request (the
//! control API), from a mounted quarantine list, or from a rule's action.
//! The kernel side is `kernel::quarantine` and the eBPF `quarantine.rs`;
//! docs/quarantine.md is the operator's view.
pub mod actions;
pub mod api;
pub mod client;
pub mod file;
pub mod manager;
pub mod model;
pub mod target;
pub mod tls;

pub use manager::{Manager, QuarantineError};

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, metrics::Metrics};
use file::FileSource;
use target::TargetResolver;

/// The quarantine tasks; they own the manager, so once both have stopped
/// (on the shutdown token) every quarantine's links close.
pub struct Tasks {
    pub api: Option<JoinHandle<std::io::Result<()>>>,
    pub ticker: JoinHandle<()>,
    /// The rule-action worker, when `control.rule_actions` is not off.
    pub actions: Option<JoinHandle<()>>,
}

/// What `start` hands back: the tasks to join at shutdown, and the evaluate
/// stage's handle for rule actions.
pub struct Started {
    pub tasks: Tasks,
    pub rule_actions: Option<actions::RuleActions>,
}

/// Builds the quarantine manager, re-applies persisted quarantines, and
/// serves the control API (when configured); returns the API task and the
/// ticker (expiry, pending targets, the quarantine list).
pub async fn start(
    config: &Config,
    cgroup_path: &std::path::Path,
    programs: crate::kernel::quarantine::QuarantinePrograms,
    maps: crate::kernel::quarantine::QuarantineMaps,
    containerd: Option<Arc<crate::identity::containerd::ContainerdMetadata>>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Started> {
    let control = &config.control;
    let token = match (control.listen, &control.token_file) {
        (Some(_), Some(file)) => Some(
            api::Token::from_file(file)
                .with_context(|| format!("reading the control token {}", file.display()))?,
        ),
        _ => None,
    };
    if control.listen.is_some() && token.is_none() && control.client_ca.is_none() {
        anyhow::bail!("control.listen needs control.token_file or control.client_ca");
    }
    let tls = match (control.listen, &control.tls_cert, &control.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(
            tls::acceptor(cert, key, control.client_ca.as_deref()).context("control API TLS")?,
        ),
        _ => None,
    };
    let mount = crate::kernel::cgroup::cgroup2_root()?;
    let resolver = TargetResolver::new(mount, cgroup_path.to_path_buf(), containerd);
    let manager = Arc::new(Manager::new(
        programs,
        maps,
        resolver,
        Some(config.control.state_file.clone()),
        Some(metrics.clone()),
    ));
    let restored = manager.restore().context("restoring quarantines")?;
    tracing::info!(restored, "quarantines restored");
    let api_task = match control.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("control API: listening on {addr}"))?;
            let bound = listener.local_addr().context("reading bound address")?;
            tracing::info!(
                %bound,
                tls = tls.is_some(),
                client_certificates = control.client_ca.is_some(),
                token = token.is_some(),
                "serving the quarantine control API"
            );
            let auth = api::Auth {
                token,
                client_cert: control.client_ca.is_some(),
            };
            Some(tokio::spawn(api::serve(
                listener,
                api::router(manager.clone(), auth),
                tls,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let rule_ttl = Some(control.rule_action_ttl.as_str())
        .filter(|t| !t.is_empty())
        .map(model::parse_ttl)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("control.rule_action_ttl")?;
    let (rule_actions, actions_task) = match actions::spawn(
        actions::Settings {
            mode: control.rule_actions,
            allow: control.rule_action_allow.clone(),
            ttl: rule_ttl,
        },
        manager.clone(),
        metrics.clone(),
        shutdown.clone(),
    ) {
        Some((handle, task)) => {
            tracing::info!(
                mode = control.rule_actions.as_str(),
                tag = actions::TAG,
                "rule actions on"
            );
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let list = config
        .control
        .quarantine_file
        .clone()
        .map(|path| Arc::new(std::sync::Mutex::new(FileSource::new(path))));
    let ticker_shutdown = shutdown.clone();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker_shutdown.cancelled() => break,
                _ = every.tick() => {
                    let manager = manager.clone();
                    let list = list.clone();
                    // Cgroup walks and map reads: off the async workers.
                    let _ = tokio::task::spawn_blocking(move || {
                        manager.tick();
                        if let Some(list) = list {
                            list.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reconcile(&manager);
                        }
                    })
                    .await;
                }
            }
        }
    });
    Ok(Started {
        tasks: Tasks {
            api: api_task,
            ticker,
            actions: actions_task,
        },
        rule_actions,
    })
}
