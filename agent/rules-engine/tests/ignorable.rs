//! `Ruleset::kernel_ignorable_networks`: what the kernel may drop without
//! losing an alert.
mod common;

use common::*;
use egret_rules::{Options, Priority, RuleMatching, Source, TestEvent, load};

fn nets(yaml: &str) -> Vec<String> {
    ruleset(yaml)
        .kernel_ignorable_networks()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const SEED: &str = "
- rule: Outbound Connection in Container
  desc: Detects outbound network connection from container to external IP
  condition: >
    evt.type = connect and
    container and
    not fd.sip in (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
  output: >
    Container outbound connection to external IP: (command=%proc.cmdline connection=%fd.name user=%user.name)
  priority: WARNING
  tags: [network, outbound]
";

#[test]
fn seed_rule_ignores_rfc1918() {
    assert_eq!(
        nets(SEED),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    );
}

#[test]
fn every_rule_must_exclude_the_network() {
    // A rule that can fire for any destination empties the set.
    let any = format!("{SEED}{}", rule_yaml("any", "proc.name = nc"));
    assert!(nets(&any).is_empty());
    // A rule that only fires for some destinations keeps the rest.
    let ioc = format!(
        "{SEED}{}",
        rule_yaml("ioc", "fd.sip in (10.1.2.3, 203.0.113.0/24)")
    );
    assert_eq!(
        nets(&ioc),
        [
            "10.0.0.0/16",
            "10.1.0.0/23",
            "10.1.2.0/31",
            "10.1.2.2/32",
            "10.1.2.4/30",
            "10.1.2.8/29",
            "10.1.2.16/28",
            "10.1.2.32/27",
            "10.1.2.64/26",
            "10.1.2.128/25",
            "10.1.3.0/24",
            "10.1.4.0/22",
            "10.1.8.0/21",
            "10.1.16.0/20",
            "10.1.32.0/19",
            "10.1.64.0/18",
            "10.1.128.0/17",
            "10.2.0.0/15",
            "10.4.0.0/14",
            "10.8.0.0/13",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.64.0.0/10",
            "10.128.0.0/9",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ]
    );
    // Port-only conditions say nothing about destinations.
    assert!(nets(&format!("{SEED}{}", rule_yaml("port", "fd.sport = 6443"))).is_empty());
}

#[test]
fn reasons_through_and_or_not() {
    let cases: [(&str, &[&str]); 8] = [
        (
            "not (fd.sip in (10.0.0.0/8) or fd.snet in (192.168.0.0/16))",
            &["10.0.0.0/8", "192.168.0.0/16"],
        ),
        (
            "not fd.sip in (10.0.0.0/8, 192.168.0.0/16) or not fd.net in (10.0.0.0/8)",
            &["10.0.0.0/8"],
        ),
        (
            "proc.name = curl and not fd.rnet in (\"fd00::/8\", \"::ffff:10.0.0.0/104\")",
            &["10.0.0.0/8", "fd00::/8"],
        ),
        ("fd.sip != 198.51.100.7", &["198.51.100.7/32"]),
        ("not (proc.name = a and fd.sip in (10.0.0.0/8))", &[]),
        ("not not not fd.rip in (10.0.0.0/8)", &["10.0.0.0/8"]),
        (
            "evt.type in (open, openat) or not fd.sip = 10.0.0.0/8",
            &["10.0.0.0/8"],
        ),
        ("fd.cip in (10.0.0.0/8) or not fd.sip in (10.0.0.0/8)", &[]),
    ];
    for (cond, want) in cases {
        assert_eq!(nets(&rule_yaml("r", cond)), want, "{cond}");
    }
    // Macros and exceptions are part of the condition.
    let yaml = "
- macro: private
  condition: fd.snet in (10.0.0.0/8)
- rule: r
  desc: d
  condition: not private and proc.name = x
  output: o
  priority: INFO
  exceptions:
    - name: lab
      fields: fd.sip
      values: [203.0.113.0/24]
";
    assert_eq!(nets(yaml), ["10.0.0.0/8", "203.0.113.0/24"]);
}

#[test]
fn only_active_rules_that_see_hook_events_count() {
    let disabled = format!(
        "{SEED}{}",
        rule_yaml("off", "proc.name = nc")
            .replace("priority: INFO", "priority: INFO\n  enabled: false")
    );
    assert_eq!(
        nets(&disabled),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    );
    let other_types = format!("{SEED}{}", rule_yaml("exec", "evt.type = execve"));
    assert_eq!(
        nets(&other_types),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    );
    // Below the minimum priority a rule is not evaluated, so it cannot alert.
    let yaml = format!("{SEED}{}", rule_yaml("debug", "proc.name = nc"));
    let options = Options {
        rule_matching: RuleMatching::All,
        min_priority: Priority::Notice,
        ..Options::default()
    };
    let loaded = load(&[Source::new("t.yaml", &yaml)], &options);
    assert_eq!(loaded.ruleset.kernel_ignorable_networks().len(), 3);
    // Nothing to derive from: no rule, or none seeing connects and sends.
    assert!(nets("").is_empty());
    assert!(nets(&rule_yaml("exec", "evt.type = execve")).is_empty());
}

#[test]
fn ignorable_destinations_really_never_match() {
    let yaml = format!("{SEED}{}", rule_yaml("ioc", "fd.sip in (10.1.2.3)"));
    let rules = ruleset(&yaml);
    let ignorable = rules.kernel_ignorable_networks();
    for dest in [
        "10.0.0.1",
        "10.1.2.2",
        "10.1.2.4",
        "172.20.0.1",
        "192.168.9.9",
        "::ffff:10.9.9.9",
    ] {
        let addr = ip(dest).to_canonical();
        assert!(
            ignorable.iter().any(|n| n.contains(&addr)),
            "{dest} should be ignorable"
        );
        let ev = TestEvent::connect(ip(dest), 443).in_pod("a", "b", "c");
        assert!(!fires(&rules, &ev), "{dest}");
    }
    assert!(!ignorable.iter().any(|n| n.contains(&ip("10.1.2.3"))));
    assert!(fires(&rules, &TestEvent::connect(ip("10.1.2.3"), 443)));
}

/// A list far larger than any kernel map next to rules that bound the
/// destinations: the ignore list is those bounds minus the list's entries
/// inside them (worked out within the bounds, never over the whole list),
/// and the list alone yields nothing to ignore.
#[test]
fn large_list_is_cut_to_the_other_rules_bounds() {
    // Odd addresses: each a hole of its own in the ignore list.
    let inside: Vec<String> = (0..500u32)
        .map(|i| format!("10.7.{}.{}", i / 100, (i % 100) * 2 + 1))
        .collect();
    // Every other address: as many ranges as hosts, and their complement
    // more networks than the kernel list takes.
    let outside: Vec<String> = (0..40_000u32)
        .map(|i| format!("240.{}.{}.{}", i >> 15, (i >> 7) & 0xff, (i & 0x7f) * 2))
        .collect();
    let items: Vec<&str> = inside.iter().chain(&outside).map(String::as_str).collect();
    let list = format!("- list: ioc\n  items: [{}]\n", items.join(", "));
    let ioc = rule_yaml("ioc", "evt.type = connect and fd.sip in (ioc)");
    assert!(nets(&format!("{list}{ioc}")).is_empty());

    let rules = ruleset(&format!("{list}{SEED}{ioc}"));
    let ignorable = rules.kernel_ignorable_networks();
    let covered = |a: &str| ignorable.iter().any(|n| n.contains(&ip(a)));
    assert!(ignorable.len() > 500, "{}", ignorable.len());
    for host in &inside {
        assert!(!covered(host), "{host} is in the list");
        let ev = TestEvent::connect(ip(host), 443).in_pod("a", "b", "c");
        assert!(fires(&rules, &ev), "{host}");
    }
    for free in [
        "10.7.0.2",
        "10.7.4.200",
        "10.7.5.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
    ] {
        assert!(covered(free), "{free} should be ignorable");
    }
    assert!(!covered("240.0.0.1") && !covered("198.51.100.1"));
}
