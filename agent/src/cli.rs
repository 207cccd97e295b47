//! Command-line interface. Parse errors become one line on stderr, not
//! clap's multi-line usage dump, so they read well in container logs.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

#[derive(Debug, Parser)]
#[command(name = "egret", version, about = "eBPF runtime egress monitor")]
pub struct Cli {
    /// Log filter for stderr (tracing syntax, e.g. `info` or `egret=debug`).
    #[arg(long, global = true, default_value = "info", env = "EGRET_LOG")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel hooks and report outbound connection attempts.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Serve /healthz and /readyz on this address (e.g. 127.0.0.1:9464).
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

    /// containerd socket for container and pod metadata.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,

    /// containerd namespace of the Kubernetes containers.
    #[arg(long, value_name = "NAME", default_value = "k8s.io")]
    pub containerd_namespace: String,

    /// The host's passwd, for user names of processes whose own root is
    /// gone (in a DaemonSet: the node's /etc/passwd mounted read-only).
    #[arg(long, value_name = "PATH", default_value = "/etc/passwd")]
    pub host_passwd: PathBuf,

    /// Do not resolve containers, pods and user names (process fields only).
    #[arg(long)]
    pub no_identity: bool,

    /// Kernel ring buffer size in bytes: a power of two, at least one page.
    #[arg(long, value_name = "BYTES", default_value_t = egret_common::DEFAULT_RINGBUF_BYTES,
          value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,
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
        let Command::Run(args) = cli.command;
        assert_eq!(args.ringbuf_bytes, egret_common::DEFAULT_RINGBUF_BYTES);
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
        let Command::Run(args) = cli.command;
        assert_eq!(args.ignore_cidrs[1].to_string(), "2001:db8::1/128");
    }

    #[test]
    fn bad_input_is_one_line() {
        for args in [
            &["egret", "run", "--ignore-cidr", "10.0.0.0/33"][..],
            &["egret", "run", "--ringbuf-bytes", "1000"],
            &["egret", "run", "--listen", "nowhere"],
            &["egret", "run", "--bogus"],
            &["egret", "fly"],
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
