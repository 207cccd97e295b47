//! Falco conformance: cases rewritten from Falco's own rule-loading suites
//! (tests/conformance/*.cases), each with Falco's verdict. Prints the figure
//! per suite and fails below 95%; every case that does not give Falco's
//! verdict is printed with the reason.
//!
//! Case format (one file per suite):
//!
//! ```text
//! === name                      starts a case
//! from: where it comes from     (documentation)
//! code: LOAD_ERR_VALIDATE       Falco's error or warning code (documentation)
//! expect: ok|warning|error      Falco's verdict: loads clean (warnings allowed),
//!                               loads with a warning, or fails to load
//! nowarn                        ok, and no warning at all
//! message: text                 a diagnostic of the verdict's severity contains
//!                               this (case-insensitive); may repeat
//! warn: text                    a warning contains this (any verdict)
//! match: a, b <- f=v f="v w"    the event built from the fields matches exactly
//!                               these rules (`-` for none); may repeat
//! prop: rule key = value        desc, output, priority or enabled of a rule
//! absent: rule                  the rule is not in the ruleset
//! --- file.yaml                 starts a rules file; its text follows
//! ```
use std::net::IpAddr;

use egret_rules::{FieldId, Loaded, Options, RuleMatching, Severity, Source, TestEvent, load};

const THRESHOLD: f64 = 0.95;

#[derive(Default)]
struct Case {
    name: String,
    expect: String,
    nowarn: bool,
    messages: Vec<String>,
    warns: Vec<String>,
    matches: Vec<String>,
    props: Vec<String>,
    absent: Vec<String>,
    files: Vec<(String, String)>,
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut in_file = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("=== ") {
            cases.push(Case {
                name: name.trim().to_string(),
                ..Case::default()
            });
            in_file = false;
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue;
        };
        if let Some(file) = line.strip_prefix("--- ") {
            case.files.push((file.trim().to_string(), String::new()));
            in_file = true;
            continue;
        }
        if in_file {
            if let Some((_, body)) = case.files.last_mut() {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim().to_string();
        match key.trim() {
            "expect" => case.expect = value,
            "nowarn" => case.nowarn = true,
            "message" => case.messages.push(value),
            "warn" => case.warns.push(value),
            "match" => case.matches.push(value),
            "prop" => case.props.push(value),
            "absent" => case.absent.push(value),
            "from" | "code" | "note" | "" => {}
            other if other.starts_with('#') => {}
            other => panic!("case {}: unknown directive '{other}'", case.name),
        }
    }
    cases
}

fn field_id(name: &str) -> FieldId {
    match name {
        "evt.type" => FieldId::EvtType,
        "fd.sip" => FieldId::ServerIp,
        "fd.sport" => FieldId::ServerPort,
        "fd.name" => FieldId::FdName,
        "fd.l4proto" => FieldId::L4Proto,
        "proc.pid" => FieldId::Pid,
        "proc.name" => FieldId::ProcName,
        "proc.exepath" => FieldId::ProcExepath,
        "proc.cmdline" => FieldId::ProcCmdline,
        "proc.pname" => FieldId::ProcPname,
        "user.name" => FieldId::UserName,
        "user.uid" => FieldId::Uid,
        "container.id" => FieldId::ContainerId,
        "container.image.repository" => FieldId::ContainerImageRepository,
        "k8s.ns.name" => FieldId::K8sNsName,
        other => panic!("no field {other} in the case runner"),
    }
}

/// `f=v f="v w"` into an event (a connect to 198.51.100.1:80 by default).
fn event(spec: &str) -> TestEvent {
    let ip: IpAddr = "198.51.100.1".parse().unwrap();
    let mut ev = TestEvent::connect(ip, 80);
    let mut rest = spec.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("field=value");
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(' ').unwrap_or((after, ""))
        };
        let id = field_id(key.trim());
        ev = match id {
            FieldId::ServerIp => ev.with(id, egret_rules::OwnedValue::Ip(value.parse().unwrap())),
            FieldId::ServerPort | FieldId::Pid | FieldId::Uid => {
                ev.with(id, egret_rules::OwnedValue::U64(value.parse().unwrap()))
            }
            _ => ev.with(id, value),
        };
        rest = next.trim_start();
    }
    ev
}

fn matched(loaded: &Loaded, ev: &TestEvent) -> Vec<String> {
    let mut ids = Vec::new();
    loaded.ruleset.evaluate(ev, &mut ids);
    ids.iter()
        .filter_map(|id| loaded.ruleset.rule(*id))
        .map(|r| r.name().to_string())
        .collect()
}

/// Why the case does not give Falco's verdict, if it does not.
fn run(case: &Case) -> Result<(), String> {
    let sources: Vec<Source<'_>> = case
        .files
        .iter()
        .map(|(name, text)| Source::new(name, text))
        .collect();
    let options = Options {
        rule_matching: RuleMatching::All,
        ..Options::default()
    };
    let loaded = load(&sources, &options);
    let shown = || {
        loaded
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let errors = loaded.has_errors();
    let warnings = loaded
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Warning);
    let severity = match case.expect.as_str() {
        "ok" if errors => return Err(format!("Falco loads it; Egret: {}", shown())),
        "warning" if errors => return Err(format!("Falco only warns; Egret: {}", shown())),
        "warning" if !warnings => return Err("Falco warns; Egret says nothing".into()),
        "error" if !errors => return Err(format!("Falco refuses it; Egret loads it: {}", shown())),
        "ok" => Severity::Warning,
        "warning" => Severity::Warning,
        "error" => Severity::Error,
        other => panic!("case {}: expect '{other}'", case.name),
    };
    if case.nowarn && warnings {
        return Err(format!("Falco gives no warning; Egret: {}", shown()));
    }
    for m in &case.messages {
        let needle = m.to_lowercase();
        let found = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .any(|d| d.message.to_lowercase().contains(&needle));
        if !found {
            return Err(format!("no {severity} containing '{m}': {}", shown()));
        }
    }
    for w in &case.warns {
        let needle = w.to_lowercase();
        let found = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .any(|d| d.message.to_lowercase().contains(&needle));
        if !found {
            return Err(format!("no warning containing '{w}': {}", shown()));
        }
    }
    for spec in &case.matches {
        let (want, fields) = spec.split_once("<-").expect("match: rules <- fields");
        let want: Vec<String> = want
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty() && *w != "-")
            .map(String::from)
            .collect();
        let got = matched(&loaded, &event(fields));
        if got != want {
            return Err(format!("event {fields}: matched {got:?}, Falco {want:?}"));
        }
    }
    for spec in &case.props {
        let (lhs, value) = spec.split_once(" = ").expect("prop: rule key = value");
        let (rule, key) = lhs.rsplit_once(' ').expect("prop: rule key = value");
        let id = loaded
            .ruleset
            .find(rule)
            .ok_or_else(|| format!("rule '{rule}' not loaded: {}", shown()))?;
        let r = loaded.ruleset.rule(id).unwrap();
        let got = match key {
            "desc" => r.desc().to_string(),
            "output" => r.output_template().to_string(),
            "priority" => r.priority().as_str().to_string(),
            "enabled" => r.enabled().to_string(),
            other => panic!("case {}: prop {other}", case.name),
        };
        if got != value.trim() {
            return Err(format!(
                "rule '{rule}' {key}: '{got}', Falco '{}'",
                value.trim()
            ));
        }
    }
    for rule in &case.absent {
        if loaded.ruleset.find(rule).is_some() {
            return Err(format!("rule '{rule}' loaded; Falco does not load it"));
        }
    }
    Ok(())
}

fn suite(file: &str) -> (usize, usize) {
    let path = format!("{}/tests/conformance/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cases = parse_cases(&text);
    assert!(!cases.is_empty(), "{file}: no cases");
    let mut names = std::collections::BTreeSet::new();
    let mut passed = 0;
    for case in &cases {
        assert!(names.insert(&case.name), "{file}: case {} twice", case.name);
        assert!(
            !case.files.is_empty(),
            "{file}: case {} has no file",
            case.name
        );
        match run(case) {
            Ok(()) => passed += 1,
            Err(why) => println!("  DIFFERS {file} {}: {why}", case.name),
        }
    }
    (passed, cases.len())
}

#[test]
fn falco_conformance() {
    let mut low = Vec::new();
    for file in ["rule_loader.cases", "legacy.cases"] {
        let (passed, total) = suite(file);
        let share = passed as f64 / total as f64;
        println!(
            "conformance {file}: {passed} of {total} cases give Falco's verdict ({:.1}%)",
            share * 100.0
        );
        if share < THRESHOLD {
            low.push(file);
        }
    }
    assert!(low.is_empty(), "below {THRESHOLD}: {low:?}");
}
