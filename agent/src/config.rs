//! `egret.yaml`: one file for everything, in a shape Falco users know.
//! Unknown keys are errors (with file:line:col), never silently ignored: a
//! misspelt option in a security daemon's config must not go unnoticed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

mod control;
mod overrides;

pub use control::{ControlConfig, RuleActionMode};

use crate::{
    metrics::MetricsConfig,
    outputs::{
        alert::{Additions, AppendOutputs},
        webhook::EndpointConfig,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Already formatted as `file:line:col: message`.
    #[error("{0}")]
    Invalid(String),
}

pub use egret_rules::RuleMatching;

/// `first` or `all`, parsed by the rule engine's own parser.
fn rule_matching<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RuleMatching, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a map of settings")]
pub struct Config {
    /// Rule files or directories, loaded in order. Empty: the bundled rules.
    pub rules_files: Vec<PathBuf>,
    #[serde(deserialize_with = "rule_matching")]
    pub rule_matching: RuleMatching,
    /// Lets a reload take an empty rules file, or a set of zero rules in
    /// place of active ones (off: such a reload is refused and counted as
    /// failed, so a truncated file cannot switch detection off).
    pub rules_allow_empty: bool,
    /// Skip rules needing event types or fields Egret cannot provide (one
    /// summarised warning) instead of refusing the rules; typos stay
    /// errors. `--skip-unsupported-rules` sets it.
    pub skip_unsupported_rules: bool,
    /// Milliseconds a connect waits for its result before the rules that
    /// read it (`evt.res`, `evt.rawres`, `evt.args`) are evaluated with
    /// `EINPROGRESS` [default: 1000]; 0 evaluates them at the attempt.
    /// `--connect-result-wait-ms` sets it (docs/rules.md, "When Egret alerts").
    pub connect_result_wait_ms: Option<u64>,
    pub listen: Option<SocketAddr>,
    /// Alert `hostname`; default `$NODE_NAME`, else the host name.
    pub hostname: Option<String>,
    pub log_level: Option<String>,
    pub audit: AuditConfig,
    pub kernel: KernelConfig,
    pub identity: IdentityConfig,
    pub metrics: MetricsConfig,
    pub webhooks: Vec<EndpointConfig>,
    pub control: ControlConfig,
    pub baseline: BaselineSection,
    /// Falco's `append_output`; unset: the workload identity fields on
    /// every alert (see [`crate::outputs::alert::WORKLOAD_FIELDS`]); `[]`: nothing.
    pub append_output: AppendOutputs,
    /// Static fields on every alert (falcosidekick's `customfields`), e.g.
    /// the cluster name; labels too where the output has labels.
    pub custom_fields: std::collections::BTreeMap<String, String>,
    /// `--summary`: where to write the exit totals as JSON. Command line only.
    #[serde(skip)]
    pub summary: Option<PathBuf>,
}

/// `baseline:`: per-workload destination learning for
/// `egret.dest.new_for_workload` (docs/advisor.md#baseline-alerts).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "baseline settings (a map)")]
pub struct BaselineSection {
    pub enabled: bool,
    /// The profile on the node; delete it (agent stopped) to reset.
    pub path: PathBuf,
    /// Seconds each workload learns from its first event.
    pub learning_seconds: u64,
    pub max_workloads: usize,
    pub max_destinations: usize,
    /// Seconds between writes of a changed profile (and at shutdown).
    pub flush_seconds: u64,
}

impl Default for BaselineSection {
    fn default() -> Self {
        let d = crate::baseline::BaselineConfig::default();
        BaselineSection {
            enabled: false,
            path: PathBuf::from("/var/lib/egret/baseline.json"),
            learning_seconds: d.learning.as_secs(),
            max_workloads: d.max_workloads,
            max_destinations: d.max_destinations,
            flush_seconds: d.flush_interval.as_secs(),
        }
    }
}

impl BaselineSection {
    pub fn to_config(&self) -> crate::baseline::BaselineConfig {
        crate::baseline::BaselineConfig {
            path: Some(self.path.clone()),
            learning: std::time::Duration::from_secs(self.learning_seconds),
            max_workloads: self.max_workloads,
            max_destinations: self.max_destinations,
            flush_interval: std::time::Duration::from_secs(self.flush_seconds),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "audit settings (a map)")]
pub struct AuditConfig {
    /// Where every egress event goes: unset/"" off, "-" stdout, else a file.
    pub path: AuditTarget,
    /// Rotate the file when it reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `.N`).
    pub max_files: u32,
}

/// Where the audit log goes, decided once when the config is read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(from = "Option<String>")]
pub enum AuditTarget {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

impl From<Option<String>> for AuditTarget {
    /// The config and `--audit` spelling: unset or empty is off, `-` is
    /// stdout, anything else a file path.
    fn from(text: Option<String>) -> Self {
        match text.as_deref() {
            None | Some("") => AuditTarget::Off,
            Some("-") => AuditTarget::Stdout,
            Some(path) => AuditTarget::File(PathBuf::from(path)),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: AuditTarget::Off,
            max_bytes: 100 * 1024 * 1024,
            max_files: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "kernel settings (a map)")]
pub struct KernelConfig {
    /// cgroup v2 directory to attach to; default the cgroup2 root.
    pub cgroup: Option<PathBuf>,
    /// Destination networks dropped in the kernel, on top of what the rules
    /// make ignorable and the built-in loopback/unspecified networks.
    pub ignore_networks: Vec<IpNet>,
    pub builtin_ignore: bool,
    pub ringbuf_bytes: u32,
    /// Flow accounting (bytes, packets, duration per connection).
    pub flows: bool,
    /// Interim flow records of live flows, in ms (0: end records only).
    pub flow_interim_ms: u64,
    /// TCP flow state slots (a power of two, 128 bytes each).
    pub flow_tcp_slots: u32,
    /// DNS ports besides 53 whose messages are captured (at most
    /// `egret_common::DNS_PORTS_MAX`), e.g. a node-local cache on 5353.
    pub dns_ports: Vec<u16>,
    /// Capture DNS messages (`--no-dns` turns it off).
    pub dns_capture: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            cgroup: None,
            ignore_networks: Vec::new(),
            builtin_ignore: true,
            ringbuf_bytes: egret_common::DEFAULT_RINGBUF_BYTES,
            flows: true,
            flow_interim_ms: egret_common::FLOW_INTERIM_DEFAULT_NS / 1_000_000,
            flow_tcp_slots: egret_common::TCP_SLOTS_MAX_ENTRIES,
            dns_ports: Vec::new(),
            dns_capture: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "identity settings (a map)")]
pub struct IdentityConfig {
    pub enabled: bool,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub host_passwd: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            enabled: true,
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespace: String::from("k8s.io"),
            host_passwd: PathBuf::from("/etc/passwd"),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// The file (if any) with `-o key=value` overrides applied on top. The
    /// file is checked on its own first, so its errors keep file:line:col.
    pub fn load_with_overrides(
        path: Option<&Path>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let (name, text) = match path {
            Some(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            ),
            None => ("defaults".to_owned(), String::new()),
        };
        if overrides.is_empty() {
            return Config::parse(&name, &text);
        }
        Config::parse(&name, &text)?;
        let mut doc: serde_yaml_ng::Value = if text.trim().is_empty() {
            serde_yaml_ng::Value::Null
        } else {
            serde_yaml_ng::from_str(&text)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?
        };
        for o in overrides {
            overrides::apply(&mut doc, o)
                .map_err(|e| ConfigError::Invalid(format!("-o {o}: {e}")))?;
        }
        let shown = format!("{name} with -o {}", overrides.join(" -o "));
        if doc.is_null() {
            return Ok(Config::default());
        }
        let config: Config = serde_yaml_ng::from_value(doc).map_err(|e| {
            ConfigError::Invalid(format!("{shown}: {}", strip_location(&e.to_string())))
        })?;
        config.finish(&shown)
    }

    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        // An empty file is a valid "all defaults" config.
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let located = |err: serde_yaml_ng::Error| {
            let message = user_terms(&strip_location(&err.to_string()));
            ConfigError::Invalid(match err.location() {
                Some(at) => format!("{name}:{}:{}: {message}", at.line(), at.column()),
                None => format!("{name}: {message}"),
            })
        };
        // The whole file must be YAML before any key is judged: the typed
        // pass reads as it goes and would report `a: [unclosed` as an
        // unknown key `a` rather than the unclosed list.
        serde_yaml_ng::from_str::<serde::de::IgnoredAny>(text).map_err(located)?;
        let config: Config = serde_yaml_ng::from_str(text).map_err(located)?;
        config.finish(name)
    }

    fn finish(self, name: &str) -> Result<Config, ConfigError> {
        let mut config = self;
        // Empty strings in YAML mean "not set", as for `hostname`.
        config.kernel.cgroup = config.kernel.cgroup.filter(|p| !p.as_os_str().is_empty());
        config.validate(name)?;
        config.metrics.const_labels = config
            .custom_fields
            .iter()
            .map(|(k, v)| {
                (
                    crate::outputs::webhook::alertmanager::label_name(k),
                    v.clone(),
                )
            })
            .collect();
        Ok(config)
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let bytes = self.kernel.ringbuf_bytes;
        if bytes < 4096 || !bytes.is_power_of_two() {
            return Err(ConfigError::Invalid(format!(
                "{name}: kernel.ringbuf_bytes: {bytes} must be a power of two of at least 4096"
            )));
        }
        let slots = self.kernel.flow_tcp_slots;
        if !slots.is_power_of_two() || slots > MAX_FLOW_TCP_SLOTS {
            return Err(ConfigError::Invalid(format!(
                "{name}: kernel.flow_tcp_slots: {slots} must be a power of two from 1 to {MAX_FLOW_TCP_SLOTS}"
            )));
        }
        let ports = &self.kernel.dns_ports;
        if ports.len() > egret_common::DNS_PORTS_MAX as usize || ports.contains(&0) {
            return Err(ConfigError::Invalid(format!(
                "{name}: kernel.dns_ports: at most {} ports, none 0",
                egret_common::DNS_PORTS_MAX
            )));
        }
        if self.audit.max_bytes < 4096 {
            return Err(ConfigError::Invalid(format!(
                "{name}: audit.max_bytes: {} is below 4096",
                self.audit.max_bytes
            )));
        }
        self.check_control(name)?;
        let b = &self.baseline;
        if b.enabled && (b.max_workloads == 0 || b.max_destinations == 0) {
            return Err(ConfigError::Invalid(format!(
                "{name}: baseline: max_workloads and max_destinations must be above 0"
            )));
        }
        if b.max_workloads.saturating_mul(b.max_destinations) > crate::baseline::MAX_ENTRIES {
            return Err(ConfigError::Invalid(format!(
                "{name}: baseline: max_workloads × max_destinations is above {}",
                crate::baseline::MAX_ENTRIES
            )));
        }
        if b.enabled && b.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{name}: baseline.path is empty"
            )));
        }
        Additions::build(&self.append_output.0, &self.custom_fields)
            .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
        // Custom fields are labels of every metric series too.
        let mut labels = std::collections::HashSet::new();
        for key in self.custom_fields.keys() {
            let label = crate::outputs::webhook::alertmanager::label_name(key);
            if crate::metrics::RESERVED_LABELS.contains(&label.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: custom_fields.{key}: `{label}` is a label of Egret's own metrics; choose another name"
                )));
            }
            if !labels.insert(label.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: custom_fields.{key}: another key is also the metric label `{label}`"
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        for hook_name in self.webhooks.iter().filter_map(|h| h.name.as_deref()) {
            if !names.insert(hook_name) {
                return Err(ConfigError::Invalid(format!(
                    "{name}: webhooks: the name `{hook_name}` is used twice"
                )));
            }
        }
        Ok(())
    }
}

/// [`Config::connect_result_wait_ms`] unset.
pub const DEFAULT_CONNECT_RESULT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait accepted: a blackholed destination must still alert
/// within a minute.
const MAX_CONNECT_RESULT_WAIT_MS: u64 = 60_000;
/// 128 MiB of TCP flow slots: beyond any node's live connections.
const MAX_FLOW_TCP_SLOTS: u32 = 1 << 20;

impl Config {
    /// How long a connect waits for its result (zero: not at all).
    pub fn connect_result_wait(&self) -> std::time::Duration {
        self.connect_result_wait_ms
            .map_or(DEFAULT_CONNECT_RESULT_WAIT, |ms| {
                std::time::Duration::from_millis(ms.min(MAX_CONNECT_RESULT_WAIT_MS))
            })
    }

    fn check_control(&self, name: &str) -> Result<(), ConfigError> {
        self.control
            .check(self.listen)
            .map_err(|m| ConfigError::Invalid(format!("{name}: {m}")))
    }

    /// Config for `egret run`: the file named by `--config` (if any) with
    /// every flag given on the command line applied on top.
    pub fn for_run(args: crate::cli::RunArgs) -> Result<Config, ConfigError> {
        let mut config = Config::load_with_overrides(args.config.as_deref(), &args.options)?;
        if !args.rules.is_empty() {
            config.rules_files = args.rules;
        }
        if let Some(matching) = args.rule_matching.as_deref() {
            // clap allows only the two values the engine parses.
            config.rule_matching = matching.parse().unwrap_or_default();
        }
        if args.skip_unsupported_rules {
            config.skip_unsupported_rules = true;
        }
        if args.connect_result_wait_ms.is_some() {
            config.connect_result_wait_ms = args.connect_result_wait_ms;
        }
        if args.audit.is_some() {
            config.audit.path = AuditTarget::from(args.audit);
        }
        config
            .webhooks
            .extend(args.webhooks.iter().map(EndpointConfig::from_url));
        config.summary = args.summary;
        if args.hostname.is_some() {
            config.hostname = args.hostname;
        }
        if args.listen.is_some() {
            config.listen = args.listen;
        }
        if args.cgroup.is_some() {
            config.kernel.cgroup = args.cgroup;
        }
        config.kernel.ignore_networks.extend(args.ignore_cidrs);
        if args.no_dns {
            config.kernel.dns_capture = false;
        }
        if args.no_builtin_ignore {
            config.kernel.builtin_ignore = false;
        }
        if let Some(bytes) = args.ringbuf_bytes {
            config.kernel.ringbuf_bytes = bytes;
        }
        if let Some(socket) = args.containerd_socket {
            config.identity.containerd_socket = socket;
        }
        if let Some(namespace) = args.containerd_namespace {
            config.identity.containerd_namespace = namespace;
        }
        if let Some(passwd) = args.host_passwd {
            config.identity.host_passwd = passwd;
        }
        if args.no_identity {
            config.identity.enabled = false;
        }
        if args.control_listen.is_some() {
            config.control.listen = args.control_listen;
        }
        if args.control_token_file.is_some() {
            config.control.token_file = args.control_token_file;
        }
        if args.control_tls_cert.is_some() {
            config.control.tls_cert = args.control_tls_cert;
        }
        if args.control_tls_key.is_some() {
            config.control.tls_key = args.control_tls_key;
        }
        if args.control_client_ca.is_some() {
            config.control.client_ca = args.control_client_ca;
        }
        if args.control_advertise.is_some() {
            config.control.advertise = args.control_advertise;
        }
        if let Some(mode) = args.rule_actions {
            config.control.rule_actions = mode;
        }
        if let Some(path) = args.quarantine_state {
            config.control.state_file = path;
        }
        if args.quarantine_file.is_some() {
            config.control.quarantine_file = args.quarantine_file;
        }
        config.check_control("command line")?;
        Ok(config)
    }
}

/// serde names Rust types where the user wrote YAML (`expected u32`); say
/// it in the file's terms instead.
fn user_terms(message: &str) -> String {
    const TERMS: [(&str, &str); 11] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of at least 0"),
        ("expected usize", "expected a whole number of at least 0"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a borrowed string", "expected a string"),
        ("expected path string", "expected a path"),
        (
            "expected socket address",
            "expected an address such as 127.0.0.1:9464",
        ),
    ];
    let mut out = message.to_owned();
    for (from, to) in TERMS {
        if let Some(at) = out.find(from) {
            // Only whole words: `expected u32` but not `expected u320`.
            let end = at + from.len();
            if out[end..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric())
            {
                out.replace_range(at..end, to);
            }
        }
    }
    out
}

/// serde_yaml_ng appends " at line N column M"; the location is printed in
/// front instead, compiler style.
fn strip_location(message: &str) -> String {
    // Syntax errors name two places (`…at line 2 column 1, while parsing a
    // flow sequence at line 1 column 4`): every one goes.
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " at line ".len()..];
        let digits = |s: &str| s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line_end = after.len() - digits(after);
        match after[line_end..].strip_prefix(" column ") {
            Some(col) if line_end > 0 => rest = &col[col.len() - digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::parse("e.yaml", "").unwrap();
        assert!(config.rules_files.is_empty());
        assert_eq!(config.rule_matching, RuleMatching::First);
        assert!(!config.skip_unsupported_rules, "strict by default");
        assert!(config.kernel.builtin_ignore);
        assert!(config.identity.enabled);
        assert_eq!(config.append_output, AppendOutputs::default());
        let none = Config::parse("e.yaml", "append_output: []").unwrap();
        assert!(none.append_output.0.is_empty());
    }

    #[test]
    fn full_example_parses() {
        let text = "
rules_files: [/etc/egret/rules.d, /etc/egret/extra.yaml]
rule_matching: all
skip_unsupported_rules: true
listen: 0.0.0.0:9464
hostname: node-7
audit: {path: /var/log/egret/audit.jsonl, max_bytes: 1048576, max_files: 3}
kernel: {ignore_networks: [10.0.0.0/8, 'fd00::/8'], builtin_ignore: true, ringbuf_bytes: 16777216}
identity: {containerd_socket: /run/k3s/containerd/containerd.sock, containerd_namespace: k8s.io}
metrics: {falco_compat: true}
webhooks:
  - name: soar
    url: https://soar.example.internal/egret
    min_priority: warning
";
        let config = Config::parse("e.yaml", text).unwrap();
        assert_eq!(config.rule_matching, RuleMatching::All);
        assert!(config.skip_unsupported_rules);
        assert_eq!(config.kernel.ignore_networks.len(), 2);
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.audit.max_files, 3);
    }

    #[test]
    fn unknown_key_is_an_error_with_line_and_column() {
        let text = "listen: 127.0.0.1:9464\nkernel:\n  ringbuf_byte: 4096\n";
        let err = Config::parse("egret.yaml", text).unwrap_err().to_string();
        assert!(err.starts_with("egret.yaml:3:3: "), "{err}");
        assert!(err.contains("ringbuf_byte"), "{err}");
    }

    #[test]
    fn secrets_are_plain_maps_and_empty_strings_mean_unset() {
        let text = "
kernel: {cgroup: ''}
webhooks:
  - url: https://soar.example.internal/egret
    bearer_token: {file: /etc/egret/secrets/token}
    hmac: {secret: {env: EGRET_HMAC}, header: X-Egret-Signature}
";
        let config = Config::parse("c.yaml", text).unwrap();
        assert!(config.webhooks[0].bearer_token.is_some());
        assert_eq!(config.kernel.cgroup, None);
        let both = "webhooks: [{url: 'http://127.0.0.1:1/', bearer_token: {file: /a, env: B}}]";
        assert!(Config::parse("c.yaml", both).is_err());
    }

    #[test]
    fn control_tls_rule_actions_and_advertise() {
        let config: Config = Config::parse("egret.yaml", "control:\n  listen: 0.0.0.0:9465\n  tls_cert: c.pem\n  tls_key: k.pem\n  client_ca: ca.pem\n  rule_actions: dry_run\n  rule_action_allow: [10.96.0.10/32]\n  rule_action_ttl: 30m\n")
        .unwrap();
        assert_eq!(config.control.rule_actions, RuleActionMode::DryRun);
        assert!(config.control.wanted());
        assert_eq!(
            config.control.advertised_url("node-1").as_deref(),
            Some("https://node-1:9465")
        );
        for bad in [
            "control: {listen: 127.0.0.1:9465}\n",
            "control: {listen: 127.0.0.1:9465, token_file: t, tls_cert: c.pem}\n",
            "control: {listen: 127.0.0.1:9465, client_ca: ca.pem}\n",
            "control: {rule_action_ttl: soon}\n",
            "control: {rule_actions: always}\n",
            "control: {advertise: node-1:9465}\n",
        ] {
            assert!(Config::parse("egret.yaml", bad).is_err(), "{bad}");
        }
        let plain: Config = Config::parse(
            "egret.yaml",
            "control: {listen: 10.1.2.3:9465, token_file: t, advertise: ''}\n",
        )
        .unwrap();
        assert_eq!(
            plain.control.advertised_url("n").as_deref(),
            Some("http://10.1.2.3:9465")
        );
        assert!(!Config::default().control.wanted());
    }

    #[test]
    fn baseline_section() {
        let config = Config::parse(
            "c.yaml",
            "baseline: {enabled: true, path: /var/lib/x.json, learning_seconds: 60}",
        )
        .unwrap();
        let b = config.baseline.to_config();
        assert!(config.baseline.enabled);
        assert_eq!(
            b.path.as_deref(),
            Some(std::path::Path::new("/var/lib/x.json"))
        );
        assert_eq!(b.learning, std::time::Duration::from_secs(60));
        assert!(!Config::default().baseline.enabled, "off by default");
    }

    #[test]
    fn dash_o_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("egret-config-o-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("egret.yaml");
        std::fs::write(
            &file,
            "hostname: from-file\nwebhooks: [{url: 'http://127.0.0.1:1/'}]\n",
        )
        .unwrap();
        let c = Config::load_with_overrides(
            Some(&file),
            &[
                "hostname=node-9".into(),
                "webhooks[0].min_priority=error".into(),
                "custom_fields.cluster=eu-1".into(),
                "kernel.builtin_ignore=false".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node-9"));
        assert_eq!(
            c.webhooks[0].min_priority,
            crate::outputs::alert::Priority::Error
        );
        assert_eq!(c.custom_fields["cluster"], "eu-1");
        assert_eq!(
            c.metrics.const_labels,
            [("cluster".to_owned(), "eu-1".to_owned())]
        );
        let err =
            Config::load_with_overrides(Some(&file), &["custom_fields.rule=x".into()]).unwrap_err();
        assert!(
            err.to_string().contains("label of Egret's own metrics"),
            "{err}"
        );
        let err = Config::parse("c.yaml", "custom_fields: {k8s.ns.name: x}\n").unwrap_err();
        assert!(err.to_string().contains("`k8s_ns_name`"), "{err}");
        let twice = "custom_fields: {a.b: x, a_b: y}\n";
        let err = Config::parse("c.yaml", twice).unwrap_err();
        assert!(
            err.to_string().contains("also the metric label `a_b`"),
            "{err}"
        );
        assert!(!c.kernel.builtin_ignore);
        let none = Config::load_with_overrides(None, &["rule_matching=all".into()]).unwrap();
        assert_eq!(none.rule_matching, RuleMatching::All);
        for bad in ["kernel.ringbuf_bytes=1000", "nosuchkey=1", "hostname"] {
            let err = Config::load_with_overrides(Some(&file), &[bad.into()]).unwrap_err();
            assert!(
                err.to_string().contains(bad.split('=').next().unwrap()),
                "{bad}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flow_tcp_slots_take_powers_of_two() {
        for slots in [1, 64, 32_768, 1 << 20] {
            let config = Config::parse("c.yaml", &format!("kernel: {{flow_tcp_slots: {slots}}}"))
                .unwrap_or_else(|e| panic!("{slots}: {e}"));
            assert_eq!(config.kernel.flow_tcp_slots, slots);
        }
        assert_eq!(
            Config::default().kernel.flow_tcp_slots,
            egret_common::TCP_SLOTS_MAX_ENTRIES
        );
        let err = Config::parse("c.yaml", "kernel: {flow_tcp_slots: 48}").unwrap_err();
        assert!(
            err.to_string()
                .contains("kernel.flow_tcp_slots: 48 must be a power of two"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_errors() {
        for text in [
            "kernel: {ringbuf_bytes: 1000}",
            "kernel: {flow_tcp_slots: 0}",
            "kernel: {flow_tcp_slots: 1000}",
            "kernel: {flow_tcp_slots: 2097152}",
            "kernel: {ignore_networks: [not-a-net]}",
            "listen: nowhere",
            "rule_matching: some",
            "audit: {max_bytes: 10}",
            "baseline: {enabled: true, max_workloads: 0}",
            "baseline: {max_workloads: 100000, max_destinations: 100000}",
            "baseline: {learning: 3}",
            "webhooks: [{name: a, url: 'http://127.0.0.1:1/'}, {name: a, url: 'http://127.0.0.1:2/'}]",
            "- just\n- a list",
            "append_output: [{extra_fields: [proc.sname]}]",
            "append_output: [{match: {rules: x}}]",
            "{{{{",
        ] {
            let err = Config::parse("c.yaml", text);
            assert!(err.is_err(), "{text} should fail");
            let message = err.unwrap_err().to_string();
            assert!(message.starts_with("c.yaml"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn errors_name_the_key_and_place_in_the_users_terms() {
        for (text, at, wanted) in [
            (
                "webhooks:\n  - url: http://127.0.0.1:1/\n    timeout: -5\n",
                "c.yaml:3:14: webhooks[0].timeout: ",
                "`-5` is negative",
            ),
            (
                "a: [unclosed",
                "c.yaml:2:1: ",
                "did not find expected ',' or ']', while parsing a flow sequence",
            ),
            (
                "kernel: 5",
                "c.yaml:1:9: kernel: ",
                "expected kernel settings (a map)",
            ),
            (
                "kernel: {ringbuf_bytes: abc}",
                "c.yaml:1:25: kernel.ringbuf_bytes: ",
                "expected a whole number from 0 to 4294967295",
            ),
        ] {
            let message = Config::parse("c.yaml", text).unwrap_err().to_string();
            assert!(message.starts_with(at), "{text}: {message}");
            assert!(message.contains(wanted), "{text}: {message}");
            for internal in ["Raw", "struct", "untagged", "u32", "unknown field"] {
                assert!(!message.contains(internal), "{text}: {message}");
            }
        }
    }

    #[test]
    fn inline_secrets_are_refused_without_echo() {
        for text in [
            "webhooks: [{url: 'http://127.0.0.1:1/', bearer_token: \"inline-secret\"}]",
            "webhooks: [{url: 'http://127.0.0.1:1/', hmac: {secret: inline-secret}}]",
            "webhooks: [{url: 'http://127.0.0.1:1/', headers: {X-Key: [inline-secret]}}]",
        ] {
            let message = Config::parse("c.yaml", text).unwrap_err().to_string();
            assert!(message.starts_with("c.yaml:1:"), "{message}");
            assert!(message.contains("webhooks[0]."), "{message}");
            assert!(!message.contains("inline-secret"), "{message}");
            assert!(!message.contains("Raw"), "{message}");
        }
    }
}
