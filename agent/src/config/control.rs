//! `control:`: the quarantine control API, its TLS, rule actions and where
//! quarantines are kept (docs/quarantine.md).
use std::{net::SocketAddr, path::PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// The quarantine control API (docs/quarantine.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "control settings (a map)")]
pub struct ControlConfig {
    /// Its own listener, never the metrics one; unset: no control API.
    pub listen: Option<SocketAddr>,
    /// Bearer token file; with `listen`, this or `client_ca` is required.
    pub token_file: Option<PathBuf>,
    /// Server certificate chain (PEM): the control API speaks TLS.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) client certificates must chain to; set: every client
    /// needs one (mTLS), on top of the token when `token_file` is set too.
    pub client_ca: Option<PathBuf>,
    /// The control API's URL as a SOAR reaches it, carried in every alert
    /// (`egret.control.url`); default: from the node name and the port.
    pub advertise: Option<String>,
    /// What rules tagged `egret.quarantine` do on a match.
    pub rule_actions: RuleActionMode,
    /// Destinations a rule-action quarantine leaves reachable (CIDRs).
    pub rule_action_allow: Vec<IpNet>,
    /// How long a rule-action quarantine lasts (`30m`, `1h`); empty: until
    /// lifted through the API.
    pub rule_action_ttl: String,
    /// Persisted quarantines, re-applied at start before readiness.
    pub state_file: PathBuf,
    /// A quarantine list (a mounted ConfigMap key), applied for the targets
    /// that run on this node; re-read every second.
    pub quarantine_file: Option<PathBuf>,
}

/// `control.rule_actions`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleActionMode {
    /// Tagged rules alert only (the default: acting is opted into twice,
    /// by the tag and here).
    #[default]
    Off,
    /// Tagged rules log and count the quarantine they would apply.
    DryRun,
    /// Tagged rules quarantine the offending container.
    Enforce,
}

impl RuleActionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleActionMode::Off => "off",
            RuleActionMode::DryRun => "dry_run",
            RuleActionMode::Enforce => "enforce",
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            advertise: None,
            rule_actions: RuleActionMode::default(),
            rule_action_allow: Vec::new(),
            rule_action_ttl: "1h".into(),
            state_file: PathBuf::from("/var/lib/egret/quarantines.json"),
            quarantine_file: None,
        }
    }
}

impl ControlConfig {
    /// The control section's own consistency; `metrics_listen` is the
    /// top-level `listen`, which the control API must not share.
    pub(super) fn check(&self, metrics_listen: Option<SocketAddr>) -> Result<(), String> {
        let c = self;
        let invalid = |m: &str| Err(m.to_owned());
        if c.listen.is_some() && c.token_file.is_none() && c.client_ca.is_none() {
            return invalid(
                "control.listen needs control.token_file (--control-token-file) or \
                 control.client_ca (--control-client-ca): the control API never runs unauthenticated",
            );
        }
        if metrics_listen.is_some() && metrics_listen == c.listen {
            return invalid("control.listen must differ from listen (the metrics port)");
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return invalid("control.tls_cert and control.tls_key go together");
        }
        if c.client_ca.is_some() && c.tls_cert.is_none() {
            return invalid(
                "control.client_ca needs control.tls_cert and control.tls_key (client certificates are a TLS feature)",
            );
        }
        if !c.rule_action_ttl.is_empty()
            && let Err(message) = crate::quarantine::model::parse_ttl(&c.rule_action_ttl)
        {
            return invalid(&format!(
                "control.rule_action_ttl: {}",
                message.trim_start_matches("ttl: ")
            ));
        }
        if c.rule_action_allow.len() > crate::quarantine::model::MAX_ALLOW {
            return invalid(&format!(
                "control.rule_action_allow: at most {} entries",
                crate::quarantine::model::MAX_ALLOW
            ));
        }
        if let Some(url) = c.advertise.as_deref()
            && !url.is_empty()
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(&format!(
                "control.advertise: `{url}` is not an http:// or https:// URL"
            ));
        }
        Ok(())
    }

    /// Whether the quarantine manager runs at all.
    pub fn wanted(&self) -> bool {
        self.listen.is_some()
            || self.quarantine_file.is_some()
            || self.rule_actions != RuleActionMode::Off
    }

    /// The URL alerts carry: `advertise`, else `http(s)://<node>:<port>`.
    pub fn advertised_url(&self, node: &str) -> Option<String> {
        if let Some(url) = self.advertise.as_deref().filter(|u| !u.is_empty()) {
            return Some(url.to_owned());
        }
        let addr = self.listen?;
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        // A wildcard or loopback bind is no address a SOAR can use; the node
        // name is (the kubelet registers it in DNS in most clusters).
        let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
            if node.is_empty() {
                addr.ip().to_string()
            } else {
                node.to_owned()
            }
        } else {
            match addr.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            }
        };
        Some(format!("{scheme}://{host}:{}", addr.port()))
    }
}
