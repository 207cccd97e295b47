//! Falco's loading rules: visibility, load order, overrides, exceptions,
//! and the diagnostics for everything that goes wrong.
mod common;

use common::*;
use egret_rules::{FieldId, Options, RuleStatus, Severity, Source, TestEvent, check, load};

fn curl_to(dest: &str, port: u16) -> TestEvent {
    TestEvent::connect(ip(dest), port)
}

fn errors(loaded: &egret_rules::Loaded) -> Vec<String> {
    loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn lists_expand_by_load_order_and_unquote() {
    let rules = ruleset(
        r#"
- rule: early
  desc: conditions see every list, whatever the order
  condition: proc.name in (shells) and fd.sport = 7
  output: o
  priority: INFO
- list: shells
  items: [sh, bash]
- list: tools
  items: [shells, curl, later_tools]
- list: later_tools
  items: [wget]
- list: nets
  items: ['"10.0.0.0/8"', "'192.168.0.0/16'"]
- rule: r
  desc: d
  condition: proc.name in (tools) and fd.sip in (nets)
  output: o
  priority: INFO
- rule: s
  desc: d
  condition: proc.name in (later_tools, "shells")
  output: o
  priority: INFO
"#,
    );
    let ev = |dest: &str, name: &str| curl_to(dest, 1).with(FieldId::ProcName, name);
    assert_eq!(matched(&rules, &ev("10.1.1.1", "bash")), ["r"]);
    assert_eq!(matched(&rules, &ev("192.168.1.1", "curl")), ["r"]);
    assert_eq!(
        matched(&rules, &ev("172.16.1.1", "curl")),
        Vec::<String>::new()
    );
    // `later_tools` was defined after `tools`: there it is a literal. Quoted
    // names are never lists.
    assert_eq!(matched(&rules, &ev("10.1.1.1", "wget")), ["s"]);
    assert_eq!(matched(&rules, &ev("10.1.1.1", "later_tools")), ["r"]);
    assert_eq!(matched(&rules, &ev("198.51.100.1", "shells")), ["s"]);
    assert_eq!(
        matched(
            &rules,
            &curl_to("198.51.100.1", 7).with(FieldId::ProcName, "sh")
        ),
        ["early"]
    );
}

#[test]
fn macro_visibility_follows_falco() {
    // Rules see every macro; a macro sees only macros defined before its
    // last change.
    let ok = load_text(
        "
- rule: r
  desc: d
  condition: is_https
  output: o
  priority: INFO
- macro: is_https
  condition: fd.sport = 443
",
        &all_matches(),
    );
    assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
    let early = "
- macro: outer
  condition: inner and proc.name = curl
- macro: inner
  condition: fd.sport = 443
- rule: r
  desc: d
  condition: outer
  output: o
  priority: INFO
";
    let bad = load_text(early, &all_matches());
    assert_eq!(
        errors(&bad),
        [
            "test.yaml:3:14: error: macro 'outer': undefined macro 'inner' used in filter: it is defined after the macro that uses it",
            "test.yaml:6:3: error: rule 'r' not loaded: a macro it uses has errors",
        ]
    );
    assert_eq!(bad.rules[0].status, RuleStatus::Failed);
    // Appending to `outer` after `inner` exists makes `inner` visible.
    let fixed = format!(
        "{early}- macro: outer\n  condition: and fd.sport > 0\n  override:\n    condition: append\n"
    );
    let rules = ruleset(&fixed);
    assert!(fires(&rules, &curl_to("198.51.100.1", 443)));
    assert!(!fires(&rules, &curl_to("198.51.100.1", 80)));
}

#[test]
fn later_files_override_and_append() {
    let base = r#"
- list: ports
  items: [80]
- macro: web
  condition: fd.sport in (ports)
- rule: Web
  desc: base
  condition: web or fd.sport = 7070
  output: "port=%fd.sport"
  priority: NOTICE
  tags: [a]
  exceptions:
    - name: tools
      fields: [proc.name]
      values: [[wget]]
"#;
    let user = r#"
- list: ports
  items: [8080]
  override:
    items: append
- macro: web
  condition: or fd.sport = 9090
  override:
    condition: append
- rule: Web
  condition: and not proc.name = nc
  output: "proc=%proc.name"
  desc: more
  tags: [b]
  exceptions:
    - name: tools
      values: [[curl]]
  override:
    condition: append
    output: append
    desc: append
    tags: append
    exceptions: append
- rule: Web
  priority: critical
  override:
    priority: replace
"#;
    let loaded = load(
        &[
            Source::new("base.yaml", base),
            Source::new("user.yaml", user),
        ],
        &all_matches(),
    );
    assert!(errors(&loaded).is_empty(), "{:?}", errors(&loaded));
    let rules = loaded.ruleset;
    let rule = &rules.rules()[0];
    assert_eq!(rule.priority(), egret_rules::Priority::Critical);
    assert_eq!(rule.desc(), "base more");
    assert_eq!(rule.output_template(), "port=%fd.sport proc=%proc.name");
    let tags: Vec<&str> = rule.tags().iter().map(|t| &**t).collect();
    assert_eq!(tags, ["a", "b"]);
    let with = |port, name: &str| curl_to("198.51.100.1", port).with(FieldId::ProcName, name);
    assert!(fires(&rules, &with(80, "python")));
    assert!(fires(&rules, &with(8080, "python")));
    assert!(fires(&rules, &with(9090, "python")));
    assert!(!fires(&rules, &with(443, "python")));
    assert!(!fires(&rules, &with(80, "wget")));
    assert!(!fires(&rules, &with(80, "curl")));
    // A macro is one operand, but an appended condition binds as Falco's
    // text append does: `web or fd.sport = 7070 and not proc.name = nc`.
    assert!(fires(&rules, &with(9090, "nc")));
    assert!(fires(&rules, &with(7070, "python")));
    assert!(!fires(&rules, &with(7070, "nc")));
    assert_eq!(rule.location().to_string(), "base.yaml:6:3");
}

#[test]
fn replace_and_legacy_forms() {
    let yaml = "
- list: l
  items: [a]
- list: l
  items: [b]
  append: true
- macro: m
  condition: proc.name in (l)
- rule: R
  desc: d
  condition: m
  output: o
  priority: INFO
- rule: R
  condition: or proc.name = c
  append: true
- rule: R
  enabled: false
- rule: S
  desc: d
  condition: m
  output: o
  priority: INFO
  enabled: false
- rule: S
  enabled: true
  condition: proc.name = z
  override:
    enabled: replace
    condition: replace
";
    let loaded = load_text(yaml, &all_matches());
    assert!(errors(&loaded).is_empty(), "{:?}", errors(&loaded));
    let warnings: Vec<String> = diagnostics(&loaded)
        .into_iter()
        .filter(|d| !d.contains("too many evt.type values"))
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].starts_with("test.yaml:4:3: warning: 'append' key is deprecated"));
    assert!(warnings[2].starts_with(
        "test.yaml:17:3: warning: the form '- rule: name / enabled: bool' is deprecated"
    ));
    let rules = loaded.ruleset;
    let r = &rules.rules()[0];
    assert!(!r.enabled());
    for name in ["a", "b", "c"] {
        assert!(
            r.matches(&curl_to("198.51.100.1", 1).with(FieldId::ProcName, name)),
            "{name}"
        );
    }
    assert_eq!(
        matched(
            &rules,
            &curl_to("198.51.100.1", 1).with(FieldId::ProcName, "z")
        ),
        ["S"]
    );
}

#[test]
fn override_mistakes_are_errors() {
    let yaml = "
- rule: R
  desc: d
  condition: proc.name = a
  output: o
  priority: INFO
- rule: R
  condition: and x.y = 1
  override:
    output: append
- rule: R
  condition: and fd.sport = 1
- rule: R
  priority: INFO
  override:
    priority: append
- rule: R
  condition: x
  override:
    condition: merge
- rule: Nope
  condition: and fd.sport = 1
  override:
    condition: append
- rule: R
  condition: and fd.sport = 1
  append: true
  override:
    condition: append
";
    let loaded = load_text(yaml, &all_matches());
    let errs = errors(&loaded);
    assert_eq!(errs.len(), 6, "{errs:#?}");
    assert!(
        errs[0]
            .contains("an append override for 'output' was specified but 'output' is not defined")
    );
    assert!(
        errs[1].contains("unexpected key 'condition': no corresponding entry under 'override'")
            || errs[1].contains("item has no mapping"),
        "{}",
        errs[1]
    );
    assert!(errs[2].contains("key 'priority' cannot be appended to"));
    assert!(errs[3].contains("invalid override operation for key 'condition'"));
    assert!(errs[4].contains("no rule by that name"));
    assert!(errs[5].contains("cannot be used together"));
    // The first definition still loads.
    assert_eq!(loaded.ruleset.rules().len(), 1);
}

#[test]
fn exceptions_become_and_not_conditions() {
    let rules = ruleset(
        r#"
- list: trusted_images
  items: [registry/agent, registry/probe]
- rule: R
  desc: d
  condition: fd.sport > 0
  output: o
  priority: INFO
  exceptions:
    - name: by_image
      fields: container.image.repository
      values: [trusted_images, "other image"]
    - name: by_proc_and_port
      fields: [proc.name, fd.sport]
      comps: [=, in]
      values:
        - [curl, [80, 443]]
        - [wget, 8080]
    - name: by_path
      fields: [proc.exepath]
      comps: [pmatch]
      values: [[/opt/tools]]
    - name: empty
      fields: [proc.name]
"#,
    );
    let ev = |image: &str, proc: &str, port: u16, path: &str| {
        curl_to("198.51.100.1", port)
            .in_pod("ns", "p", image)
            .with(FieldId::ContainerImageRepository, image)
            .with(FieldId::ProcName, proc)
            .with(FieldId::ProcExepath, path)
    };
    assert!(fires(&rules, &ev("nginx", "curl", 8080, "/usr/bin/curl")));
    assert!(!fires(
        &rules,
        &ev("registry/agent", "curl", 8080, "/usr/bin/curl")
    ));
    assert!(!fires(
        &rules,
        &ev("other image", "curl", 8080, "/usr/bin/curl")
    ));
    assert!(!fires(&rules, &ev("nginx", "curl", 443, "/usr/bin/curl")));
    assert!(!fires(&rules, &ev("nginx", "wget", 8080, "/usr/bin/wget")));
    assert!(fires(&rules, &ev("nginx", "wget", 80, "/usr/bin/wget")));
    assert!(!fires(&rules, &ev("nginx", "x", 1, "/opt/tools/bin/x")));
}

#[test]
fn exception_mistakes_are_errors() {
    let yaml = "
- rule: A
  desc: d
  condition: fd.sport > 0
  output: o
  priority: INFO
  exceptions:
    - name: e
      fields: [proc.name, fd.sport]
      comps: [=]
- rule: B
  desc: d
  condition: fd.sport > 0
  output: o
  priority: INFO
  exceptions:
    - name: e
      fields: proc.name
      comps: '='
- rule: C
  desc: d
  condition: fd.sport > 0
  output: o
  priority: INFO
  exceptions:
    - name: e
      fields: [proc.name]
      values: [[a, b]]
- rule: D
  desc: d
  condition: fd.sport > 0
  output: o
  priority: INFO
  exceptions:
    - name: e
      fields: [proc.name]
    - name: e
      fields: [proc.pid]
";
    let loaded = load_text(yaml, &all_matches());
    let errs = errors(&loaded);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "test.yaml:8:7: error: exception 'e': fields and comps lists must have equal length"
        ),
        "{}",
        errs[0]
    );
    assert!(errs[1].starts_with("test.yaml:17:7: error: exception 'e': when fields is a single value, comps must be one of (in, pmatch, intersects)"));
    assert!(errs[2].starts_with("test.yaml:26:7: error: rule 'C': exception 'e': fields and values lists must have equal length"), "{}", errs[2]);
    // Falco >= 0.38 only warns about a repeated exception name.
    assert!(
        diagnostics(&loaded)
            .iter()
            .any(|d| d.contains("warning: multiple definitions of exception 'e'"))
    );
}

#[test]
fn unknown_fields_reject_the_rule_and_the_rest_loads() {
    let yaml = "
- macro: tty
  condition: proc.sid != 0
- rule: Needs TTY
  desc: d
  condition: >
    fd.sport > 0
    and tty
  output: user=%user.loginname
  priority: INFO
- rule: Fine
  desc: d
  condition: evt.type = connect and fd.sport > 0
  output: ok
  priority: INFO
- rule: Optional
  desc: d
  condition: evt.is_io = true
  output: o
  priority: INFO
  skip-if-unknown-filter: true
";
    let loaded = load_text(yaml, &all_matches());
    assert_eq!(
        diagnostics(&loaded),
        [
            "test.yaml:4:3: error: rule 'Needs TTY' uses fields Egret does not provide: 'proc.sid' (macro 'tty' at test.yaml:3:14), 'user.loginname' (output at test.yaml:9:16); rule not loaded",
            "test.yaml:16:3: warning: rule 'Optional' uses fields Egret does not provide: 'evt.is_io' (condition at test.yaml:18:14); skipped (skip-if-unknown-filter)",
        ]
    );
    assert_eq!(
        loaded.rules[0].status,
        RuleStatus::Unsupported {
            fields: vec!["proc.sid".into(), "user.loginname".into()],
            event_types: Vec::new(),
            requested_skip: false
        }
    );
    assert_eq!(
        loaded.rules[1].status,
        RuleStatus::Compiled { enabled: true }
    );
    assert!(matches!(
        loaded.rules[2].status,
        RuleStatus::Unsupported {
            requested_skip: true,
            ..
        }
    ));
    assert_eq!(loaded.ruleset.rules().len(), 1);
    assert!(loaded.into_result().is_err());
}

#[test]
fn every_problem_is_reported_with_its_position() {
    let yaml = "- rule: Bad condition
  desc: d
  condition: >
    evt.type = connect and
    fd.sport >= http
  output: o
  priority: WARNING
- rule: Bad priority
  desc: d
  condition: fd.sport = 1
  output: o
  priority: LOUD
- list: bad name
  items: [a]
- macro: m
  condition: (fd.sport = 1
- rule: Bad value
  desc: d
  condition: fd.sport in (80, htttp) or fd.sip = 10.0.0.300 or fd.sport contains 1
  output: o
  priority: INFO
- rule: Missing output
  desc: d
  condition: fd.sport = 1
  priority: INFO
- rule: Other source
  desc: d
  condition: ka.verb = create
  output: o
  priority: INFO
  source: k8s_audit
- something: else
";
    let loaded = load_text(yaml, &all_matches());
    assert_eq!(
        diagnostics(&loaded),
        [
            "test.yaml:5:17: error: rule 'Bad condition': expected a number value",
            "test.yaml:12:13: error: invalid priority 'LOUD'",
            "test.yaml:13:3: warning: list 'bad name' has an invalid name: list names should match ([^()\"'[:space:]=,]+)",
            "test.yaml:13:3: warning: list 'bad name' is not used by any rule, macro or list",
            "test.yaml:15:3: warning: macro 'm' is not used by any rule or macro",
            "test.yaml:16:27: error: macro 'm': expected a ')' token",
            "test.yaml:19:31: error: rule 'Bad value': 'htttp' is not a valid unsigned number for field 'fd.sport'",
            "test.yaml:19:50: error: rule 'Bad value': '10.0.0.300' is not a valid IP address or CIDR for field 'fd.sip'",
            "test.yaml:19:64: error: rule 'Bad value': operator 'contains' is not supported for numeric field 'fd.sport'",
            "test.yaml:22:3: error: item has no mapping for key 'output'",
            "test.yaml:26:3: warning: rule 'Other source': unknown source 'k8s_audit', skipping",
            "test.yaml:32:3: warning: unknown top level item, ignored",
        ]
    );
    let skipped = loaded
        .rules
        .iter()
        .find(|r| r.name == "Other source")
        .unwrap();
    assert_eq!(
        skipped.status,
        RuleStatus::Skipped {
            source: "k8s_audit".into()
        }
    );
    assert_eq!(
        check(&[Source::new("test.yaml", yaml)], &Options::default()).len(),
        12
    );
}

/// Lists of 64 items or more are kept compact by the YAML reader (an IOC
/// feed's form): they must read, append, nest, unquote and report bad items
/// at their place exactly as short lists do.
#[test]
fn long_lists_behave_like_short_ones() {
    let mut feed: Vec<String> = (1..=100).map(|i| format!("198.51.100.{i}")).collect();
    feed[69] = "10.0.0.300".into();
    let more: String = (1..=100)
        .map(|i| format!("    - 203.0.113.{i}\n"))
        .collect();
    let mut tools: Vec<String> = (0..80).map(|i| format!("tool{i}")).collect();
    tools[5] = "'\"tool five\"'".into();
    let yaml = format!(
        "- list: feed\n  items: [{}]\n- list: feed\n  items:\n{more}  override:\n    items: append\n\
         - list: tools\n  items: [{}]\n- list: nested\n  items: [tools, other]\n\
         - rule: r\n  desc: d\n  condition: fd.sip in (feed) and proc.name in (nested)\n  output: o\n  priority: INFO\n\
         - rule: one\n  desc: d\n  condition: proc.name = feed\n  output: o\n  priority: INFO\n",
        feed.join(", "),
        tools.join(", ")
    );
    let loaded = load_text(&yaml, &all_matches());
    let col = "  items: [".len() + feed[..69].iter().map(|i| i.len() + 2).sum::<usize>();
    let one_line = 1 + yaml
        .lines()
        .position(|l| l == "  condition: proc.name = feed")
        .unwrap();
    assert_eq!(
        errors(&loaded),
        [
            format!(
                "test.yaml:2:{}: error: rule 'r': '10.0.0.300' is not a valid IP address or CIDR for field 'fd.sip'",
                col + 1
            ),
            format!(
                "test.yaml:{}:{}: error: rule 'one': list 'feed' has 200 items where one value is expected (use 'in')",
                one_line,
                "  condition: proc.name = ".len() + 1
            ),
        ]
    );
    let fixed = yaml.replace("10.0.0.300", "198.51.100.70").replace(
        "- rule: one\n  desc: d\n  condition: proc.name = feed\n  output: o\n  priority: INFO\n",
        "",
    );
    let rules = ruleset(&fixed);
    let ev = |dest: &str, name: &str| curl_to(dest, 1).with(FieldId::ProcName, name);
    assert_eq!(matched(&rules, &ev("198.51.100.70", "tool79")), ["r"]);
    assert_eq!(matched(&rules, &ev("203.0.113.100", "other")), ["r"]);
    assert_eq!(matched(&rules, &ev("198.51.100.1", "tool five")), ["r"]);
    assert!(matched(&rules, &ev("198.51.100.1", "\"tool five\"")).is_empty());
    assert!(matched(&rules, &ev("198.51.100.101", "tool1")).is_empty());
}

/// A long (compact) list naming another list: the named list's values take
/// its place, in order, and the items around it stay literal values.
#[test]
fn long_lists_expand_the_lists_they_name() {
    let mut items: Vec<String> = (0..70).map(|i| format!("tool{i}")).collect();
    items[30] = "shells".into();
    let rules = ruleset(&format!(
        "- list: shells\n  items: [sh, bash]\n- list: tools\n  items: [{}]\n\
         - rule: r\n  desc: d\n  condition: proc.name in (tools)\n  output: o\n  priority: INFO\n",
        items.join(", ")
    ));
    let ev = |name: &str| curl_to("198.51.100.1", 1).with(FieldId::ProcName, name);
    for name in ["tool0", "tool29", "bash", "sh", "tool31", "tool69"] {
        assert_eq!(matched(&rules, &ev(name)), ["r"], "{name}");
    }
    for name in ["shells", "tool30", "tool70"] {
        assert!(matched(&rules, &ev(name)).is_empty(), "{name}");
    }
}
