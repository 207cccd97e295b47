//! Loads Falco's upstream rule files (shared/falco-rules, unmodified) and
//! reports, per rule, whether it compiled or which fields Egret lacks.
mod common;

use std::collections::{BTreeMap, BTreeSet};

use egret_rules::{Loaded, Options, RuleStatus, Severity, Source, load};

/// `shared/falco-rules` beside the checkout (or any directory above it, so
/// that git worktrees nested deeper find the same copy).
fn dir() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|a| a.join("shared/falco-rules"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no shared/falco-rules above {}", manifest.display()))
}
const FILES: [&str; 4] = [
    "falco_rules.yaml",
    "falco-incubating_rules.yaml",
    "falco-sandbox_rules.yaml",
    "falco-deprecated_rules.yaml",
];

/// Egret's catalog, written out independently of the engine's.
const CATALOG: &[&str] = &[
    "evt.type",
    "evt.time",
    "evt.hook",
    "egret.hook",
    "fd.sip",
    "fd.rip",
    "fd.sport",
    "fd.rport",
    "fd.l4proto",
    "fd.typechar",
    "fd.type",
    "fd.name",
    "fd.snet",
    "fd.rnet",
    "fd.net",
    "fd.cnet",
    "fd.cip",
    "fd.cport",
    "proc.pid",
    "proc.ppid",
    "thread.tid",
    "proc.name",
    "proc.exepath",
    "proc.exe",
    "proc.cmdline",
    "proc.pname",
    "proc.args",
    "user.uid",
    "group.gid",
    "user.name",
    "container.id",
    "container.name",
    "container.image",
    "container.image.repository",
    "container.image.tag",
    "container.host_network",
    "k8s.ns.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.pod.labels",
    "k8s.pod.label",
    "egret.v4_mapped",
    "egret.cgroup_id",
    "egret.netns_cookie",
    "fd.lport",
    "fd.lip",
    "fd.lnet",
    "fd.ip",
    "fd.port",
    "fd.sockfamily",
    "fd.connected",
    "fd.name_changed",
    "fd.sip.name",
    "fd.cip.name",
    "fd.rip.name",
    "fd.lip.name",
    "evt.num",
    "evt.dir",
    "evt.res",
    "evt.rawres",
    "evt.args",
    "user.loginuid",
    "proc.tty",
];

fn read(file: &str) -> String {
    std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

struct Summary {
    compiled: usize,
    unsupported: usize,
    skipped: usize,
    failed: usize,
    /// Unsupported only because of fields in the output.
    output_only: Vec<String>,
}

fn summarize(file: &str, loaded: &Loaded) -> Summary {
    let text = read(file);
    let mut s = Summary {
        compiled: 0,
        unsupported: 0,
        skipped: 0,
        failed: 0,
        output_only: Vec::new(),
    };
    println!("== {file}");
    for report in &loaded.rules {
        match &report.status {
            RuleStatus::Compiled { enabled } => {
                s.compiled += 1;
                println!(
                    "  compiled{}: {}",
                    if *enabled { "" } else { " (disabled)" },
                    report.name
                );
            }
            RuleStatus::Unsupported { fields, .. } => {
                s.unsupported += 1;
                println!("  unsupported: {} [{}]", report.name, fields.join(", "));
                // Independent check: each reported field is really missing
                // from Egret's catalog and really appears in the file.
                for f in fields {
                    assert!(!CATALOG.contains(&f.as_str()), "{f} is in the catalog");
                    assert!(text.contains(f.as_str()), "{f} not in {file}");
                }
            }
            RuleStatus::Skipped { source } => {
                s.skipped += 1;
                println!("  skipped (source {source}): {}", report.name);
            }
            RuleStatus::Failed => {
                s.failed += 1;
                println!("  FAILED: {}", report.name);
            }
        }
    }
    for d in &loaded.diagnostics {
        if d.message.contains("uses fields Egret does not provide")
            && d.message
                .split("' (")
                .skip(1)
                .all(|part| part.starts_with("output at"))
            && let Some(name) = d
                .message
                .strip_prefix("rule '")
                .and_then(|m| m.split("' uses").next())
        {
            s.output_only.push(name.to_string());
        }
    }
    println!(
        "  {} rules: {} compiled, {} unsupported ({} only for output fields), {} skipped, {} failed",
        loaded.rules.len(),
        s.compiled,
        s.unsupported,
        s.output_only.len(),
        s.skipped,
        s.failed
    );
    s
}

/// Every error must be an unsupported-field rejection: nothing fails to
/// parse, and a rule using only Egret's fields always compiles.
fn assert_only_unsupported(file: &str, loaded: &Loaded) {
    for d in &loaded.diagnostics {
        if d.severity == Severity::Error {
            assert!(
                d.message.contains("uses fields Egret does not provide"),
                "{file}: {d}"
            );
        }
    }
    for report in &loaded.rules {
        let supported = !matches!(report.status, RuleStatus::Unsupported { .. });
        let compiled = matches!(report.status, RuleStatus::Compiled { .. });
        assert_eq!(
            supported, compiled,
            "{file}: {} is {:?}",
            report.name, report.status
        );
    }
}

#[test]
fn falco_upstream_rules() {
    let mut totals = BTreeMap::new();
    let mut output_only = Vec::new();
    for file in FILES {
        let text = read(file);
        let loaded = load(&[Source::new(file, &text)], &Options::default());
        assert_only_unsupported(file, &loaded);
        let s = summarize(file, &loaded);
        totals.insert(
            file,
            (
                loaded.rules.len(),
                s.compiled,
                s.unsupported,
                s.output_only.len(),
            ),
        );
        output_only.extend(s.output_only.into_iter().map(|r| (file, r)));
    }
    // Regression guards: these are the counts observed for the pinned
    // upstream commit (rules total, compiled, unsupported, output-only).
    assert_eq!(totals["falco_rules.yaml"], (25, 3, 22, 8));
    assert_eq!(totals["falco-incubating_rules.yaml"], (31, 6, 25, 5));
    assert_eq!(totals["falco-sandbox_rules.yaml"], (37, 6, 31, 7));
    assert_eq!(totals["falco-deprecated_rules.yaml"], (4, 4, 0, 0));

    // Rules whose conditions only use Egret's fields compile once their
    // outputs are replaced, through Falco's `override`.
    for (file, rule) in &output_only {
        let text = read(file);
        let patch = format!(
            "- rule: {rule}\n  output: \"{rule} (command=%proc.cmdline container=%container.id)\"\n  override:\n    output: replace\n"
        );
        let loaded = load(
            &[Source::new(file, &text), Source::new("patch.yaml", &patch)],
            &Options::default(),
        );
        let report = loaded.rules.iter().find(|r| &r.name == rule).unwrap();
        assert!(
            matches!(report.status, RuleStatus::Compiled { .. }),
            "{rule}: {:?}",
            report.status
        );
        assert!(loaded.ruleset.find(rule).is_some());
    }
    println!(
        "output-only rules compiled after an output override: {}",
        output_only.len()
    );
}

#[test]
fn upstream_files_load_together_in_order() {
    let texts: Vec<(String, &str)> = FILES.iter().take(3).map(|f| (read(f), *f)).collect();
    let sources: Vec<Source<'_>> = texts.iter().map(|(t, f)| Source::new(f, t)).collect();
    let loaded = load(&sources, &Options::default());
    assert_only_unsupported("stable+incubating+sandbox", &loaded);
    let fields: BTreeSet<&str> = loaded
        .rules
        .iter()
        .flat_map(|r| match &r.status {
            RuleStatus::Unsupported { fields, .. } => fields.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        })
        .collect();
    println!(
        "{} rules; fields Egret lacks ({}): {fields:?}",
        loaded.rules.len(),
        fields.len()
    );
    assert_eq!(loaded.rules.len(), 93);
    assert_eq!(fields.len(), 44);
    assert!(fields.contains("evt.arg.flags") && fields.contains("proc.aname"));
}

/// The network rules of issue 20: what `--skip-unsupported-rules` must load.
const NETWORK_RULES: [&str; 11] = [
    "Contact K8S API Server From Container",
    "Packet socket created in container",
    "Disallowed SSH Connection Non Standard Port",
    "System procs network activity",
    "Unexpected UDP Traffic",
    "Contact EC2 Instance Metadata Service From Container",
    "Contact cloud metadata service from container",
    "Network Connection outside Local Subnet",
    "Interpreted procs outbound network activity",
    "Unexpected K8s NodePort Connection",
    "Detect outbound connections to common miner pool ports",
];

#[test]
fn skip_unsupported_loads_the_network_rules_of_the_three_files() {
    let texts: Vec<(String, &str)> = FILES.iter().take(3).map(|f| (read(f), *f)).collect();
    let sources: Vec<Source<'_>> = texts.iter().map(|(t, f)| Source::new(f, t)).collect();
    let options = Options {
        skip_unsupported: true,
        ..Options::default()
    };
    let loaded = load(&sources, &options);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let compiled: BTreeSet<&str> = loaded
        .rules
        .iter()
        .filter(|r| matches!(r.status, RuleStatus::Compiled { .. }))
        .map(|r| r.name.as_str())
        .collect();
    let expected: BTreeSet<&str> = NETWORK_RULES.iter().copied().collect();
    assert_eq!(compiled, expected);
    // Every other rule is skipped with its reason; none failed.
    let mut for_types = 0;
    for r in &loaded.rules {
        match &r.status {
            RuleStatus::Compiled { .. } => {}
            RuleStatus::Unsupported {
                fields,
                event_types,
                requested_skip: true,
            } => {
                assert!(!fields.is_empty() || !event_types.is_empty(), "{}", r.name);
                for_types += usize::from(!event_types.is_empty());
            }
            other => panic!("{}: {other:?}", r.name),
        }
    }
    // One summarised warning, grouped by reason.
    let summary: Vec<&str> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.message.starts_with("skipped "))
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(summary.len(), 1, "{summary:?}");
    let skipped = loaded.rules.len() - compiled.len();
    println!("{}", summary[0]);
    assert!(
        summary[0].starts_with(&format!(
            "skipped {skipped} unsupported rule(s) (skip_unsupported_rules): {for_types} need event types Egret does not see: "
        )),
        "{}",
        summary[0]
    );
    assert!(summary[0].contains("execve (39)"), "{}", summary[0]);
    // Without the option the same files are refused, as before.
    assert!(load(&sources, &Options::default()).has_errors());
}
