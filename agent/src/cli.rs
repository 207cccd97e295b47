//! Command-line interface. Parse errors become one line on stderr, not
//! clap's multi-line usage dump, so they read well in container logs.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

#[derive(Debug, Parser)]
#[command(name = "egret", version, about = "eBPF runtime egress monitor")]
pub struct Cli {
    /// Log filter for stderr (tracing syntax, e.g. `info` or `egret=debug`)
    /// [default: the config file's `log_level`, else info].
    #[arg(long, global = true, env = "EGRET_LOG")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel hooks and report outbound connection attempts.
    Run(Box<RunArgs>),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Rule file tools.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Policies from observed egress (docs/advisor.md).
    #[command(subcommand)]
    Advise(crate::advise::command::AdviseCommand),
    /// Alert output tools.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Quarantines through a node's control API (docs/quarantine.md). Exit
    /// codes: 0 done, 1 the agent refused (message on stderr), 2 usage or a
    /// local file, 3 the agent could not be reached (or TLS failed).
    Quarantine(Box<QuarantineArgs>),
}

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// The control API, e.g. https://node-1:9465.
    #[arg(
        long,
        value_name = "URL",
        env = "EGRET_CONTROL_URL",
        default_value = "http://127.0.0.1:9465",
        global = true
    )]
    pub url: String,
    /// File holding the bearer token.
    #[arg(
        long,
        value_name = "FILE",
        env = "EGRET_CONTROL_TOKEN_FILE",
        global = true
    )]
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the agent's certificate [default: the
    /// system roots].
    #[arg(long, value_name = "FILE", env = "EGRET_CONTROL_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --key.
    #[arg(
        long,
        value_name = "FILE",
        env = "EGRET_CONTROL_CERT",
        global = true,
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "EGRET_CONTROL_KEY",
        global = true,
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: QuarantineCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// The node's quarantines (`--json`: the API's answer as is).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Quarantine one workload; prints the new quarantine's id.
    Add {
        /// Container id (or a prefix of at least 12 characters).
        #[arg(long, value_name = "ID", group = "target", required_unless_present_any = ["pod_uid", "pod"])]
        container: Option<String>,
        /// Pod uid: every container of the pod, also ones started later.
        #[arg(long, value_name = "UID", group = "target")]
        pod_uid: Option<String>,
        /// Pod by `namespace/name`.
        #[arg(long, value_name = "NAMESPACE/NAME", group = "target")]
        pod: Option<String>,
        /// Destination that stays reachable (CIDR or address; repeatable).
        #[arg(long, value_name = "CIDR")]
        allow: Vec<String>,
        /// Lifted after this long (`30m`, `1h30m`); default: until removed.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Allow a kube-system target.
        #[arg(long)]
        force: bool,
    },
    /// Lift a quarantine by id.
    Remove {
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send a synthetic alert to every configured output (webhooks, Slack,
    /// DingTalk, Alertmanager) and report each endpoint's result; exits
    /// non-zero if any endpoint did not accept it.
    Test {
        /// Configuration file (egret.yaml).
        #[arg(long, value_name = "FILE", env = "EGRET_CONFIG")]
        config: Option<PathBuf>,
        /// Config override, as `egret run -o` (repeatable).
        #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Also send to this URL, falcosidekick payload (repeatable).
        #[arg(long = "webhook", value_name = "URL")]
        webhooks: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate rule files, loaded in the order given (directories: their
    /// *.yaml files by name); prints `file:line:col: severity: message` per
    /// problem and exits non-zero on any error.
    Check {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Skip rules that need event types or fields Egret cannot provide
        /// (Falco's own files load; one warning summarises what was
        /// skipped) instead of refusing them; typos stay errors.
        #[arg(long)]
        skip_unsupported_rules: bool,
    },
    /// The fields rules may use, with their types and descriptions.
    Fields,
    /// Every rule loaded from PATHs (default: the bundled rules; `bundled`
    /// names them among other paths): enabled state and source location.
    List {
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Skip rules that need event types or fields Egret cannot provide
        /// (Falco's own files load; one warning summarises what was
        /// skipped) instead of refusing them; typos stay errors.
        #[arg(long)]
        skip_unsupported_rules: bool,
    },
    /// Evaluate rules against a sample event (JSON keyed by field names,
    /// e.g. an audit log line) and print the alerts it would raise.
    Test {
        #[arg(required = true, value_name = "RULES")]
        paths: Vec<PathBuf>,
        #[arg(long, value_name = "EVENT.json")]
        event: PathBuf,
        /// `first` (default) or `all` matching rules alert.
        #[arg(long, value_name = "MODE", value_parser = ["first", "all"])]
        rule_matching: Option<String>,
        /// Skip rules that need event types or fields Egret cannot provide
        /// (Falco's own files load; one warning summarises what was
        /// skipped) instead of refusing them; typos stay errors.
        #[arg(long)]
        skip_unsupported_rules: bool,
    },
    /// Print the bundled rule files, to copy from or to read what
    /// `bundled` loads.
    Dump,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate config files; prints `file:line:col: message` per problem.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Flags override the config file; unset flags leave its value (or the
/// default) in place.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (egret.yaml).
    #[arg(long, value_name = "FILE", env = "EGRET_CONFIG")]
    pub config: Option<PathBuf>,

    /// Override one config file key, Falco style: `-o hostname=n1`,
    /// `-o webhooks[0].min_priority=error`, `-o rules_files[]=x.yaml`
    /// (repeatable; applied in order, before the other flags).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,

    /// Rule file or directory (repeatable; loaded in order; `bundled` is
    /// the bundled rules, so local files can append to them) [default:
    /// the bundled rules].
    #[arg(long = "rules", value_name = "PATH")]
    pub rules: Vec<PathBuf>,

    /// `first`: one alert per event, from the first matching rule (Falco's
    /// default); `all`: every matching rule alerts.
    #[arg(long, value_name = "MODE", value_parser = ["first", "all"])]
    pub rule_matching: Option<String>,

    /// Skip rules that need event types or fields Egret cannot provide,
    /// with one summarised warning, instead of refusing to start (config
    /// `skip_unsupported_rules`); typos stay errors.
    #[arg(long)]
    pub skip_unsupported_rules: bool,

    /// Milliseconds a connect waits for its result before rules reading
    /// `evt.res`/`evt.rawres`/`evt.args` are evaluated with EINPROGRESS
    /// (config `connect_result_wait_ms`; 0: at the attempt) [default: 1000].
    #[arg(long, value_name = "MS")]
    pub connect_result_wait_ms: Option<u64>,

    /// Write every egress event as a JSON line to this file (`-`: stdout),
    /// besides the alerts on stdout.
    #[arg(long, value_name = "PATH")]
    pub audit: Option<String>,

    /// At exit, write the totals (kernel counters per hook, pipeline and
    /// output totals) to this file as JSON.
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,

    /// Send alerts to this URL, falcosidekick payload (repeatable; more
    /// options in the config file's `webhooks`).
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,

    /// `hostname` in alerts [default: $NODE_NAME, else the host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Serve /healthz, /readyz and /metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// cgroup v2 directory to attach to [default: the cgroup2 mount root,
    /// mounted at /run/egret/cgroup2 if the host has none].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Destination network the kernel drops before userspace (repeatable).
    /// Added to the built-in loopback and unspecified networks.
    #[arg(long = "ignore-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub ignore_cidrs: Vec<IpNet>,

    /// Do not ignore loopback and unspecified destinations in the kernel.
    #[arg(long)]
    pub no_builtin_ignore: bool,

    /// Do not capture DNS messages (no dns events, fd.sip.name stays <NA>).
    #[arg(long)]
    pub no_dns: bool,

    /// containerd socket for container and pod metadata
    /// [default: /run/containerd/containerd.sock].
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,

    /// containerd namespace of the Kubernetes containers [default: k8s.io].
    #[arg(long, value_name = "NAME")]
    pub containerd_namespace: Option<String>,

    /// The host's passwd, for user names of processes whose own root is
    /// gone (in a DaemonSet: the node's /etc/passwd mounted read-only)
    /// [default: /etc/passwd].
    #[arg(long, value_name = "PATH")]
    pub host_passwd: Option<PathBuf>,

    /// Do not resolve containers, pods and user names (process fields only).
    #[arg(long)]
    pub no_identity: bool,

    /// Kernel ring buffer size in bytes: a power of two, at least one page
    /// [default: 8388608].
    #[arg(long, value_name = "BYTES", value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: Option<u32>,

    /// Serve the quarantine control API on this address (its own listener,
    /// never the metrics one); needs --control-token-file.
    #[arg(long, value_name = "ADDR")]
    pub control_listen: Option<SocketAddr>,

    /// File holding the control API's bearer token (at least 16 characters).
    #[arg(long, value_name = "FILE")]
    pub control_token_file: Option<PathBuf>,

    /// Where quarantines are persisted across restarts
    /// [default: /var/lib/egret/quarantines.json].
    #[arg(long, value_name = "FILE")]
    pub quarantine_state: Option<PathBuf>,

    /// Quarantine list to apply (a mounted ConfigMap key, re-read every
    /// second); needs the control API.
    #[arg(long, value_name = "FILE")]
    pub quarantine_file: Option<PathBuf>,

    /// Serve the control API over TLS with this certificate chain (PEM);
    /// needs --control-tls-key.
    #[arg(long, value_name = "FILE")]
    pub control_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --control-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub control_tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA bundle (PEM) on the
    /// control API (mTLS; with a token file, both are required).
    #[arg(long, value_name = "FILE")]
    pub control_client_ca: Option<PathBuf>,

    /// The control API's URL as alerts carry it (`egret.control.url`)
    /// [default: scheme, node name and the control port].
    #[arg(long, value_name = "URL")]
    pub control_advertise: Option<String>,

    /// What rules tagged `egret.quarantine` do on a match:
    /// off, dry_run (log and count) or enforce [default: off].
    #[arg(long, value_name = "MODE", value_parser = parse_rule_actions)]
    pub rule_actions: Option<crate::config::RuleActionMode>,
}

fn parse_rule_actions(raw: &str) -> Result<crate::config::RuleActionMode, String> {
    use crate::config::RuleActionMode;
    match raw {
        "off" => Ok(RuleActionMode::Off),
        "dry_run" | "dry-run" => Ok(RuleActionMode::DryRun),
        "enforce" => Ok(RuleActionMode::Enforce),
        _ => Err(format!("`{raw}` is not off, dry_run or enforce")),
    }
}

fn parse_cidr(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{raw}` is not an IP network such as 10.0.0.0/8 or 2001:db8::/32"))
}

fn parse_ringbuf_bytes(raw: &str) -> Result<u32, String> {
    let bytes: u32 = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not a byte count"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("{bytes} must be a power of two of at least 4096"));
    }
    Ok(bytes)
}

pub enum Parsed {
    Cli(Cli),
    /// `--help` or `--version`: print to stdout and exit 0.
    Display(String),
    /// Usage error, already reduced to one line.
    Error(String),
}

pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Parsed::Cli(cli),
        Err(err) => match err.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                Parsed::Display(err.render().to_string())
            }
            _ => {
                let rendered = err.render().to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                Parsed::Error(format!("{first} (see `egret --help`)"))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(args: &[&str]) -> String {
        match parse(args) {
            Parsed::Error(message) => message,
            _ => panic!("expected an error for {args:?}"),
        }
    }

    #[test]
    fn run_defaults() {
        let Parsed::Cli(cli) = parse(["egret", "run"]) else {
            panic!("run should parse")
        };
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(args.ringbuf_bytes, None);
        assert!(args.ignore_cidrs.is_empty());
    }

    #[test]
    fn cidr_and_bare_address() {
        let Parsed::Cli(cli) = parse([
            "egret",
            "run",
            "--ignore-cidr",
            "10.0.0.0/8",
            "--ignore-cidr",
            "2001:db8::1",
        ]) else {
            panic!("should parse")
        };
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(args.ignore_cidrs[1].to_string(), "2001:db8::1/128");
    }

    #[test]
    fn new_subcommands_parse() {
        let Parsed::Cli(cli) = parse(["egret", "run", "-o", "hostname=a", "-o", "x.y=1"]) else {
            panic!("-o should parse")
        };
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(args.options, ["hostname=a", "x.y=1"]);
        for args in [
            &["egret", "rules", "fields"][..],
            &["egret", "rules", "list"],
            &["egret", "rules", "list", "bundled", "local.yaml"],
            &["egret", "rules", "dump"],
            &["egret", "rules", "test", "r.yaml", "--event", "e.json"],
            &["egret", "quarantine", "list", "--url", "https://n:9465"],
            &["egret", "quarantine", "--token-file", "t", "remove", "q-1"],
            &[
                "egret",
                "quarantine",
                "add",
                "--pod",
                "ns/web",
                "--allow",
                "10.0.0.1",
            ],
            &[
                "egret",
                "alert",
                "test",
                "--config",
                "c.yaml",
                "-o",
                "hostname=x",
            ],
        ] {
            assert!(matches!(parse(args), Parsed::Cli(_)), "{args:?}");
        }
        assert!(!error_of(&["egret", "rules", "test", "r.yaml"]).contains('\n'));
    }

    #[test]
    fn bad_input_is_one_line() {
        for args in [
            &["egret", "run", "--ignore-cidr", "10.0.0.0/33"][..],
            &["egret", "run", "--ringbuf-bytes", "1000"],
            &["egret", "run", "--listen", "nowhere"],
            &["egret", "run", "--bogus"],
            &["egret", "fly"],
            &["egret", "quarantine", "add"],
            &[
                "egret",
                "quarantine",
                "add",
                "--container",
                "a",
                "--pod-uid",
                "b",
            ],
            &["egret", "quarantine", "list", "--cert", "c.pem"],
            &["egret", "run", "--rule-actions", "sometimes"],
        ] {
            let message = error_of(args);
            assert!(!message.contains('\n'), "{message}");
            assert!(message.contains("egret --help"), "{message}");
        }
        assert!(
            error_of(&["egret", "run", "--ignore-cidr", "x"]).contains("`x` is not an IP network")
        );
    }
}
