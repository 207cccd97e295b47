//! The loader and semantics gaps of issue 12, each against Falco's
//! behaviour (the conformance suites cover them too; these pin the details).
mod common;

use common::*;
use egret_rules::{FieldId, Options, Severity, TestEvent};

fn errors(yaml: &str) -> Vec<String> {
    load_text(yaml, &Options::default())
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect()
}

fn connect(name: &str, port: u16) -> TestEvent {
    TestEvent::connect(ip("198.51.100.7"), port).with(FieldId::ProcName, name)
}

#[test]
fn unknown_event_types_are_errors_with_a_suggestion() {
    let errs = errors(&rule_yaml("r", "evt.type = conect"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("unknown event type 'conect'; did you mean 'connect'?"),
        "{errs:?}"
    );
    assert!(errs[0].starts_with("test.yaml:4:16:"), "{errs:?}");
    let errs = errors(&rule_yaml("r", "evt.type in (connect, sendtoo)"));
    assert!(errs[0].contains("did you mean 'sendto'?"), "{errs:?}");
    // Falco's event names outside Egret's hooks still load.
    let rules = ruleset(&rule_yaml("r", "evt.type in (open, execve, sendmsg)"));
    assert!(fires(&rules, &TestEvent::udp_send(ip("198.51.100.7"), 53)));
}

#[test]
fn port_names_resolve() {
    let rules = ruleset(&rule_yaml(
        "r",
        "evt.type = connect and (fd.sport = https or fd.sport in (http, ssh))",
    ));
    for (port, hit) in [(443, true), (80, true), (22, true), (8443, false)] {
        assert_eq!(fires(&rules, &connect("curl", port)), hit, "{port}");
    }
    assert!(errors(&rule_yaml("r", "fd.sport = htps"))[0].contains("not a valid unsigned number"));
}

#[test]
fn comparison_modifiers_in_conditions() {
    let rules = ruleset(
        &[
            rule_yaml("one", "proc.name startswith oneof (cu, wg)"),
            rule_yaml("any", "proc.name startswith anyof (c, cu)"),
            rule_yaml("exactly", "proc.name startswith oneof (c, cu)"),
            rule_yaml("all", "proc.name contains allof (ur, rl)"),
            rule_yaml("listed", "proc.name endswith anyof (tools)"),
            "- list: tools\n  items: [rl, et]\n".to_string(),
        ]
        .concat(),
    );
    assert_eq!(
        matched(&rules, &connect("curl", 1)),
        ["one", "any", "all", "listed"]
    );
    assert_eq!(matched(&rules, &connect("wget", 1)), ["one", "listed"]);
    assert_eq!(matched(&rules, &connect("cat", 1)), ["any", "exactly"]);
    assert!(errors(&rule_yaml("r", "fd.sport > oneof (1, 2)"))[0].contains("expected a number"));
}

#[test]
fn parentheses_nest_as_deep_as_in_falco() {
    let deep = format!("{}proc.name = a{}", "(".repeat(200), ")".repeat(200));
    ruleset(&rule_yaml("r", &deep));
    let deeper = format!("{}proc.name = a{}", "(".repeat(251), ")".repeat(251));
    assert!(errors(&rule_yaml("r", &deeper))[0].contains("nests more than 250 levels"));
}

#[test]
fn outputs_are_checked_like_falco() {
    for (output, why) in [
        ("100% done", "'% done'"),
        ("done %", "'%'"),
        ("x=%foo", "'%foo'"),
        ("x=%not_a_real_field", "'%not_a_real_field'"),
    ] {
        let yaml = format!(
            "- rule: r\n  desc: d\n  condition: evt.type = connect\n  output: \"{output}\"\n  priority: INFO\n"
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1, "{output}: {errs:?}");
        assert!(
            errs[0].contains(&format!("invalid formatting token {why}")),
            "{errs:?}"
        );
    }
    let yaml = "- rule: r\n  desc: d\n  condition: evt.type = connect\n  output: \"%15proc.name %fd.name\"\n  priority: INFO\n";
    assert!(errors(yaml).is_empty());
}

#[test]
fn every_macro_is_resolved_even_unused() {
    let errs = errors("- macro: m\n  condition: foo and fd.sport = 1\n");
    assert_eq!(
        errs,
        ["test.yaml:2:14: error: macro 'm': undefined macro 'foo' used in filter"]
    );
    let lp = "- macro: a\n  condition: fd.sport = 1\n- macro: b\n  condition: a\n- macro: a\n  condition: b\n";
    assert!(errors(lp)[0].contains("reference loop"), "{:?}", errors(lp));
    let own = "- macro: a\n  condition: a\n";
    assert_eq!(
        errors(own),
        ["test.yaml:2:14: error: macro 'a' refers to itself"]
    );
}

#[test]
fn exception_values_name_lists() {
    let rules = ruleset(
        "
- list: cat_cmdlines
  items: [cat /dev/zero, \"cat /dev/null\"]
- rule: r
  desc: d
  condition: evt.type = connect
  output: o
  priority: INFO
  exceptions:
    - name: e
      fields: [proc.name, proc.cmdline]
      comps: [=, in]
      values:
        - [cat, (cat_cmdlines)]
",
    );
    let ev = |cmd: &str| connect("cat", 1).with(FieldId::ProcCmdline, cmd);
    assert!(!fires(&rules, &ev("cat /dev/null")));
    assert!(!fires(&rules, &ev("cat /dev/zero")));
    assert!(fires(&rules, &ev("(cat_cmdlines)")));
}

#[test]
fn exception_fields_are_checked_without_values() {
    let errs = errors(
        "- rule: r\n  desc: d\n  condition: evt.type = connect\n  output: o\n  priority: INFO\n  exceptions:\n    - name: e\n      fields: [not.exist]\n",
    );
    assert!(errs[0].contains("'not.exist' (exception 'e'"), "{errs:?}");
}

#[test]
fn invalid_names_only_warn_and_the_real_error_is_reported() {
    let loaded = load_text(
        "- macro: bad-name\n  condition: fd.sport = 1\n- list: bad list\n  items: [a]\n- rule: r\n  desc: d\n  condition: evt.type = connect and proc.name in (bad list)\n  output: \"%nope\"\n  priority: INFO\n",
        &Options::default(),
    );
    let all = diagnostics(&loaded);
    assert!(
        all.iter()
            .any(|d| d.contains("warning: macro 'bad-name' has an invalid name"))
    );
    assert!(
        all.iter()
            .any(|d| d.contains("warning: list 'bad list' has an invalid name"))
    );
    let errs: Vec<&String> = all.iter().filter(|d| d.contains("error")).collect();
    assert_eq!(errs.len(), 1, "{all:?}");
    assert!(errs[0].contains("invalid formatting token '%nope'"));
}

#[test]
fn rules_keep_their_source() {
    let errs = errors(
        "- rule: r\n  desc: d\n  condition: evt.type = connect\n  output: o\n  priority: INFO\n- rule: r\n  condition: and ka.verb = get\n  source: k8s_audit\n  override:\n    condition: append\n",
    );
    assert!(errs[0].contains("Rule has been re-defined with a different source"));
}
