//! Hostile and malformed input: every case must end in diagnostics, never
//! a panic, a stack overflow or an unbounded expansion.
mod common;

use std::time::Duration;

use common::*;
use egret_rules::{Options, Severity, Source, load, parse_condition};

fn first_error(yaml: &str) -> String {
    let loaded = load_text(yaml, &Options::default());
    loaded
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("no error for {:.80}", yaml))
}

#[test]
fn yaml_errors_have_positions() {
    assert_eq!(
        first_error("- rule: a\n  desc: [unclosed\n"),
        "test.yaml:3:1: error: invalid YAML: Parser error: line 3 column 1: did not find expected ',' or ']' while parsing a flow sequence (line 2 column 9)"
    );
    assert!(first_error("rule: a\n").contains("rules content is not a YAML array"));
    assert!(first_error("- just a string\n").contains("each element should be a YAML mapping"));
    assert!(
        first_error("- rule: a\n  condition: [x]\n  desc: d\n  output: o\n  priority: info\n")
            .contains("is not a scalar")
    );
    assert!(
        first_error("- macro: m\n  condition:\n").contains("mapping for key 'condition' is empty")
    );
    // Falco >= 0.38 only warns about an invalid macro name.
    let loaded = load_text(
        "- macro: 1m\n  condition: fd.sport = 1\n",
        &Options::default(),
    );
    assert!(!loaded.has_errors());
    assert!(diagnostics(&loaded)[0].contains("invalid name"));
    assert!(first_error("- list: l\n  items: a\n").contains("is not a sequence"));
    assert!(first_error("- list: l\n  items: [[a]]\n").contains("is not a scalar"));
    assert!(
        first_error("- required_engine_version: latest\n")
            .contains("unable to parse engine version")
    );
    assert!(
        first_error("- required_plugin_versions: [{name: container}]\n")
            .contains("no mapping for key 'version'")
    );
    assert!(first_error("- rule: a\n  desc: d\n  condition: fd.sport=1\n  output: o\n  priority: info\n  enabled: maybe\n").contains("not a boolean"));
}

#[test]
fn versions_and_multiple_documents_load() {
    let yaml = "
- required_engine_version: 12
- required_engine_version: 0.57.0
- required_plugin_versions:
    - name: container
      version: 0.4.0
      alternatives:
        - name: k8smeta
          version: 0.1.0
---
---
- rule: r
  desc: d
  condition: evt.type = connect and fd.sport = 1
  output: o
  priority: info
...
";
    let loaded = load_text(yaml, &Options::default());
    assert!(loaded.diagnostics.is_empty(), "{:?}", diagnostics(&loaded));
    assert_eq!(loaded.ruleset.rules().len(), 1);
}

#[test]
fn diagnostics_name_the_right_file() {
    let loaded = load(
        &[
            Source::new("a.yaml", "- list: l\n  items: [x]\n"),
            Source::new("b.yaml", "- macro: m\n  condition: (\n"),
        ],
        &Options::default(),
    );
    assert_eq!(
        diagnostics(&loaded),
        [
            "a.yaml:1:3: warning: list 'l' is not used by any rule, macro or list",
            "b.yaml:1:3: warning: macro 'm' is not used by any rule or macro",
            "b.yaml:2:15: error: macro 'm': expected a '(' token, a field check, or an identifier",
        ]
    );
}

#[test]
fn deep_yaml_and_alias_bombs() {
    let deep = format!("- rule: {}a{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(
        first_error(&deep).contains("invalid YAML") || first_error(&deep).contains("nested deeper")
    );
    let block = format!("- {}x\n", "- ".repeat(50_000));
    assert!(first_error(&block).contains("nested deeper"));
    let mut bomb = String::from("- list: l\n  items: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!("- list: l{i}\n  items: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
    }
    let start = CpuTimer::start();
    assert!(first_error(&bomb).contains("more than"));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(first_error("- list: l\n  items: [*nope]\n").contains("unknown anchor"));
}

#[test]
fn deep_conditions_and_macro_chains() {
    let deep = format!("{}fd.sport = 1{}", "(".repeat(5_000), ")".repeat(5_000));
    assert!(first_error(&rule_yaml("r", &deep)).contains("nests more than"));
    assert!(parse_condition(&"(".repeat(1_000_000)).is_err());

    // Each macro doubles the previous one: 2^40 checks if expanded naively.
    let mut yaml = String::from("- macro: m0\n  condition: fd.sport = 1\n");
    for i in 1..40 {
        yaml.push_str(&format!(
            "- macro: m{i}\n  condition: m{p} and m{p}\n",
            p = i - 1
        ));
    }
    yaml.push_str(&rule_yaml("r", "m39"));
    let start = CpuTimer::start();
    assert!(first_error(&yaml).contains("expands to more than"));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    // A long chain of macros, each using the previous one.
    let mut chain = String::from("- macro: c0\n  condition: fd.sport = 1\n");
    for i in 1..1_100 {
        chain.push_str(&format!("- macro: c{i}\n  condition: c{p}\n", p = i - 1));
    }
    chain.push_str(&rule_yaml("r", "c1099"));
    assert!(first_error(&chain).contains("levels deep"));

    let cycle = "- macro: a\n  condition: fd.sport = 1\n- macro: a\n  condition: or a\n  override:\n    condition: append\n";
    assert!(
        first_error(&format!("{cycle}{}", rule_yaml("r", "a")))
            .contains("reference loop in macro 'a'")
    );
}

#[test]
fn list_bombs_and_cycles() {
    let mut yaml = String::from("- list: l0\n  items: [a, b, c, d, e, f, g, h, i, j]\n");
    for i in 1..12 {
        yaml.push_str(&format!(
            "- list: l{i}\n  items: [l{p}, l{p}, l{p}, l{p}, l{p}, l{p}, l{p}, l{p}, l{p}, l{p}]\n",
            p = i - 1
        ));
    }
    yaml.push_str(&rule_yaml("r", "proc.name in (l11)"));
    let start = CpuTimer::start();
    assert!(first_error(&yaml).contains("more than"));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    let cycle = "
- list: a
  items: [x]
- list: b
  items: [a]
- list: a
  items: [b]
  override:
    items: append
";
    let rules = ruleset(&format!("{cycle}{}", rule_yaml("r", "proc.name in (a)")));
    assert_eq!(rules.rules().len(), 1);
}

#[test]
fn garbage_never_panics() {
    let samples = [
        "",
        "\0",
        "- ",
        "-",
        "- rule:",
        "- rule: [",
        "- {rule: x, desc: y, condition: 'a', output: b, priority: c}",
        "- rule: r\n  desc: d\n  condition: \"\\xff\"\n  output: o\n  priority: info\n",
        "- rule: r\n  desc: d\n  condition: fd.sip in (\"\u{1F600}\")\n  output: \"%\"\n  priority: info\n",
        "- rule: r\n  desc: d\n  condition: proc.name glob '[[[[:alpha:'\n  output: '%fd.sip[' \n  priority: info\n",
        "- rule: r\n  desc: d\n  condition: proc.name regex '('\n  output: o\n  priority: info\n",
        "- rule: r\n  desc: d\n  condition: proc.name regex 'a{1000}{1000}{1000}'\n  output: o\n  priority: info\n",
        "- rule: r\n  exceptions: [{name: e, fields: [[[[a]]]], values: [[[[b]]]]}]\n  condition: and x\n  append: true\n",
        "- list: l\n  items: [a]\n  override: [items]\n",
        "- macro: m\n  condition: a\n  override: {condition: [append]}\n",
        "\u{feff}- list: l\n  items: [a]\n",
        "- list: l\r\n  items: [a]\r\n",
        "- list: ! l\n  items: !!seq [a]\n",
    ];
    for sample in samples {
        let _ = load_text(sample, &Options::default());
    }
}

#[test]
fn scalars_ending_the_input() {
    // Each of these made libyaml-safer 0.3 panic at end of input.
    for text in [
        "- a: >\n    b",
        "- >\n  a\n  b",
        "\"ab\\",
        "a: |2\n   x",
        "- a: >\n    b # c",
    ] {
        let _ = load_text(text, &Options::default());
    }
    let rules = ruleset(
        &rule_yaml("r", "fd.sport = 1").replace("warn_evttypes: false\n", "warn_evttypes: false"),
    );
    assert_eq!(rules.rules().len(), 1);
}

#[test]
fn parser_panic_paths_become_diagnostics() {
    // libyaml-safer 0.3 panics ("TODO") on a tag followed by ',' inside a
    // flow collection; found by the CI fuzz pass. The loader must turn that
    // into an error for the file, not take the agent down.
    let error = first_error("- list: l\n  items: [!x, a]\n");
    assert!(error.contains("YAML parser failed"), "{error}");
}

#[test]
fn huge_event_type_lists_stay_cheap_when_skipping() {
    let items: Vec<String> = (0..200_000).map(|i| format!("t{i}")).collect();
    let yaml = format!(
        "- list: types\n  items: [{}]\n{}",
        items.join(", "),
        rule_yaml("r", "evt.type in (types)")
    );
    let options = Options {
        skip_unsupported: true,
        ..Options::default()
    };
    let start = CpuTimer::start();
    let loaded = load_text(&yaml, &options);
    assert!(loaded.has_errors(), "unknown event types stay errors");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}
