//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::net::IpAddr;
use std::time::Duration;

use egret_rules::{Loaded, Options, RuleMatching, Ruleset, Severity, Source, load};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn all_matches() -> Options {
    Options {
        rule_matching: RuleMatching::All,
        ..Options::default()
    }
}

pub fn load_text(yaml: &str, options: &Options) -> Loaded {
    load(&[Source::new("test.yaml", yaml)], options)
}

/// Loads, failing the test on any error.
pub fn ruleset(yaml: &str) -> Ruleset {
    let loaded = load_text(yaml, &all_matches());
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "unexpected errors:\n{}",
        errors.join("\n")
    );
    loaded.ruleset
}

/// A one-rule YAML document for `condition` (without Falco's warning for a
/// condition that does not restrict `evt.type`).
pub fn rule_yaml(name: &str, condition: &str) -> String {
    format!(
        "- rule: {name}\n  desc: test\n  condition: |\n    {}\n  output: \"{name} %proc.name\"\n  priority: INFO\n  warn_evttypes: false\n",
        condition.replace('\n', "\n    ")
    )
}

pub fn one_rule(condition: &str) -> Ruleset {
    ruleset(&rule_yaml("r", condition))
}

/// Names of the rules the event matches, in order.
pub fn matched<E: egret_rules::Event>(rules: &Ruleset, event: &E) -> Vec<String> {
    let mut ids = Vec::new();
    rules.evaluate(event, &mut ids);
    ids.iter()
        .map(|id| rules.rule(*id).unwrap().name().to_string())
        .collect()
}

pub fn fires<E: egret_rules::Event>(rules: &Ruleset, event: &E) -> bool {
    !matched(rules, event).is_empty()
}

/// Every diagnostic, rendered.
pub fn diagnostics(loaded: &Loaded) -> Vec<String> {
    loaded.diagnostics.iter().map(ToString::to_string).collect()
}

/// CPU time this thread has used (user + system). Bounds on the cost of
/// hostile input are checked in CPU time: wall time on a shared machine
/// says more about the neighbours than about the loader.
pub struct CpuTimer(Duration);

fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The command name may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel reports USER_HZ (100 on Linux) ticks.
    Duration::from_millis(ticks * 10)
}

impl CpuTimer {
    pub fn start() -> CpuTimer {
        CpuTimer(thread_cpu())
    }

    pub fn elapsed(&self) -> Duration {
        thread_cpu().saturating_sub(self.0)
    }
}
