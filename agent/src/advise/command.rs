//! `egret advise networkpolicy`: flags and the command's run. Exit status:
//! 0 written (or, with `--diff`, nothing would change), 1 with `--diff`
//! when something would change, 2 on bad input.
use std::{collections::BTreeSet, io::Write as _, path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use super::{
    Options,
    cidr::Widening,
    model::{DnsSelector, LabelPolicy},
    records::Window,
    render::RenderOptions,
};

#[derive(Debug, Subcommand)]
pub enum AdviseCommand {
    /// Write NetworkPolicies (and optionally CiliumNetworkPolicies) that
    /// allow what each workload was seen doing, from audit logs.
    #[command(name = "networkpolicy")]
    NetworkPolicy(Box<NetworkPolicyArgs>),
}

#[derive(Debug, Args)]
pub struct NetworkPolicyArgs {
    /// Audit log files or directories of them (one or many nodes; walked
    /// four levels deep, hidden files skipped).
    #[arg(long = "from", value_name = "PATH", required = true, num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// A learned baseline profile (`baseline.path` of a running agent).
    #[arg(long = "profile", value_name = "FILE")]
    pub profiles: Vec<PathBuf>,
    /// Only records at or after this time (RFC 3339, or Unix seconds).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<u64>,
    /// Only records at or before this time (RFC 3339, or Unix seconds).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<u64>,
    /// `kubectl get pods,services -A -o json`: destinations that are pods
    /// or Services become pod/namespace selectors.
    #[arg(long, value_name = "FILE")]
    pub pods: Option<PathBuf>,
    /// Shortest IPv4 prefix an aggregated ipBlock may have (32: one block
    /// per address).
    #[arg(long, value_name = "BITS", default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub widen_v4: u8,
    /// Shortest IPv6 prefix an aggregated ipBlock may have (128: one block
    /// per address).
    #[arg(long, value_name = "BITS", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub widen_v6: u8,
    /// Namespace of the cluster resolver.
    #[arg(long, value_name = "NS", default_value = "kube-system")]
    pub dns_namespace: String,
    /// Labels of the cluster resolver's pods (repeatable KEY=VALUE).
    #[arg(long = "dns-label", value_name = "KEY=VALUE", value_parser = parse_label, default_values = ["k8s-app=kube-dns"])]
    pub dns_labels: Vec<(String, String)>,
    /// No rule for the cluster resolver.
    #[arg(long)]
    pub no_dns_rule: bool,
    /// No default-deny egress policy per namespace.
    #[arg(long)]
    pub no_default_deny: bool,
    /// Also write CiliumNetworkPolicies, with toFQDNs for destinations
    /// whose records carry the resolved name (`fd.sip.name`).
    #[arg(long)]
    pub cilium: bool,
    /// Only these namespaces (repeatable) [default: all].
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Also ignore this label in workload identity (repeatable).
    #[arg(long = "drop-label", value_name = "KEY")]
    pub drop_labels: Vec<String>,
    /// Keep this label although it is on the built-in per-pod list.
    #[arg(long = "keep-label", value_name = "KEY")]
    pub keep_labels: Vec<String>,
    /// Write `<namespace>.yaml` and `<namespace>.cilium.yaml` here instead
    /// of YAML on stdout.
    #[arg(long, value_name = "DIR", conflicts_with = "diff")]
    pub out: Option<PathBuf>,
    /// Compare with the policies in this directory and print what would
    /// change instead of writing.
    #[arg(long, value_name = "DIR")]
    pub diff: Option<PathBuf>,
}

fn parse_time(raw: &str) -> Result<u64, String> {
    if let Ok(secs) = raw.parse::<u64>() {
        return secs
            .checked_mul(1_000_000_000)
            .ok_or_else(|| format!("`{raw}` is too far in the future"));
    }
    let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            format!("`{raw}` is not an RFC 3339 time (2026-12-01T08:00:00Z) or Unix seconds")
        })?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("`{raw}` is before 1970"))
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

impl NetworkPolicyArgs {
    pub fn options(&self) -> Options {
        Options {
            from: self.from.clone(),
            profiles: self.profiles.clone(),
            window: Window {
                since_ns: self.since,
                until_ns: self.until,
            },
            pods: self.pods.clone(),
            labels: LabelPolicy::new(&self.drop_labels, &self.keep_labels),
            render: RenderOptions {
                widening: Widening {
                    v4: self.widen_v4,
                    v6: self.widen_v6,
                },
                dns: DnsSelector {
                    namespace: self.dns_namespace.clone(),
                    labels: self.dns_labels.iter().cloned().collect(),
                },
                dns_rule: !self.no_dns_rule,
                default_deny: !self.no_default_deny,
                cilium: self.cilium,
            },
            namespaces: self.namespaces.iter().cloned().collect::<BTreeSet<_>>(),
        }
    }
}

/// Writes never panic on a closed stdout or stderr.
fn say(to_stdout: bool, text: &str) -> bool {
    if to_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    } else {
        std::io::stderr().lock().write_all(text.as_bytes()).is_ok()
    }
}

pub fn main(command: AdviseCommand) -> ExitCode {
    let AdviseCommand::NetworkPolicy(args) = command;
    let advice = match super::advise(&args.options()) {
        Ok(advice) => advice,
        Err(err) => {
            say(false, &format!("egret: error: {err}\n"));
            return ExitCode::from(2);
        }
    };
    let s = &advice.stats;
    let mut report = String::new();
    for problem in &s.problems {
        report.push_str(&format!("egret: warning: {problem}\n"));
    }
    report.push_str(&format!(
        "egret: {} file(s), {} record(s): {} used, {} malformed, {} not from a pod, {} host-network, {} not TCP/UDP/SCTP, {} outside the window\n",
        s.files, s.lines, s.used, s.malformed, s.not_a_pod, s.host_network, s.unsupported_proto, s.outside_window
    ));
    if advice.dropped > 0 {
        report.push_str(&format!(
            "egret: warning: {} attempt(s) to new destinations past the {} destination bound were not used\n",
            advice.dropped,
            super::model::MAX_DESTINATIONS
        ));
    }
    let unlabelled: BTreeSet<&String> = advice.unlabelled.iter().collect();
    for ns in unlabelled {
        report.push_str(&format!(
            "egret: warning: namespace {ns}: pods without stable labels get no policy (a selector {{}} would select the whole namespace)\n"
        ));
    }
    say(false, &report);
    if let Some(dir) = &args.diff {
        let existing = match super::diff::load_dir(dir) {
            Ok(existing) => existing,
            Err(err) => {
                say(false, &format!("egret: error: {err}\n"));
                return ExitCode::from(2);
            }
        };
        let lines = super::diff::diff(&super::as_values(&advice.documents), &existing);
        let changes = lines.iter().any(|l| !l.starts_with('='));
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        if !changes {
            text.push_str("no changes\n");
        }
        say(true, &text);
        return if changes {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    if let Some(dir) = &args.out {
        match super::write_dir(dir, &advice.documents) {
            Ok(files) => {
                let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                say(false, &format!("egret: wrote {}\n", list.join(", ")));
                ExitCode::SUCCESS
            }
            Err(err) => {
                say(false, &format!("egret: error: {err}\n"));
                ExitCode::from(2)
            }
        }
    } else if say(true, &super::to_yaml(&advice.documents)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Command, Parsed, parse};

    use super::*;

    #[test]
    fn flags_parse_and_refuse_bad_values() {
        let Parsed::Cli(cli) = parse([
            "egret",
            "advise",
            "networkpolicy",
            "--from",
            "a",
            "b",
            "--since",
            "2026-12-01T08:00:00Z",
            "--until",
            "1800000000",
            "--widen-v4",
            "32",
            "--dns-label",
            "app=coredns",
            "--cilium",
        ]) else {
            panic!("should parse")
        };
        let Command::Advise(AdviseCommand::NetworkPolicy(args)) = cli.command else {
            panic!("advise expected")
        };
        let opts = args.options();
        assert_eq!(opts.from.len(), 2);
        assert_eq!(opts.window.since_ns, Some(1_796_112_000_000_000_000));
        assert_eq!(opts.window.until_ns, Some(1_800_000_000_000_000_000));
        assert_eq!(opts.render.widening, Widening { v4: 32, v6: 64 });
        assert_eq!(
            opts.render.dns.labels.len(),
            1,
            "the flag replaces the default"
        );
        for bad in [
            &["egret", "advise", "networkpolicy"][..],
            &[
                "egret",
                "advise",
                "networkpolicy",
                "--from",
                "a",
                "--widen-v4",
                "33",
            ],
            &[
                "egret",
                "advise",
                "networkpolicy",
                "--from",
                "a",
                "--since",
                "yesterday",
            ],
            &[
                "egret",
                "advise",
                "networkpolicy",
                "--from",
                "a",
                "--dns-label",
                "=x",
            ],
            &[
                "egret",
                "advise",
                "networkpolicy",
                "--from",
                "a",
                "--out",
                "x",
                "--diff",
                "y",
            ],
        ] {
            match parse(bad) {
                Parsed::Error(message) => assert!(!message.contains('\n'), "{message}"),
                _ => panic!("{bad:?} should fail"),
            }
        }
    }
}
