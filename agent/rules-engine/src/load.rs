//! Loading: sources → collection → compiled ruleset, diagnostics and a
//! per-rule report.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::collect::{Collection, MacroInfo, RuleInfo, SYSCALL};
use crate::compile::{Compiled, Compiler};
use crate::diagnostics::{
    BUILTIN_FILE, Diagnostic, Files, Loc, Location, ScalarLoc, Severity, Sink, Text,
};
use crate::eval::{CLOSE, CONNECT, SENDTO, matches_unbounded_types, type_masks};
use crate::falco_fields;
use crate::reader::Reader;
use crate::ruleset::{Options, Rule, Ruleset};
use crate::source::{MAX_SOURCE_BYTES, MAX_TOTAL_BYTES, find_nul};
use crate::yaml::Style;

/// One rules file (or embedded text); `name` is what diagnostics show.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Self {
        Source { name, text }
    }
}

/// What became of one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleStatus {
    /// In the ruleset (and evaluated if enabled).
    Compiled { enabled: bool },
    /// Needs fields or event types Egret does not provide; not loaded.
    /// `event_types` is set (under [`Options::skip_unsupported`]) when no
    /// event type the rule can match is one Egret sees; `fields` lists the
    /// Falco fields Egret lacks. `requested_skip` is set when the rule has
    /// `skip-if-unknown-filter: true` or the load skips unsupported rules
    /// (a warning then, not an error).
    Unsupported {
        fields: Vec<String>,
        event_types: Vec<String>,
        requested_skip: bool,
    },
    /// `source:` other than `syscall`.
    Skipped { source: String },
    /// Not loaded because of errors (see the diagnostics).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleReport {
    pub name: String,
    pub location: Location,
    pub status: RuleStatus,
}

/// The outcome of a load: always a ruleset (of the rules that compiled),
/// every problem found, and what happened to each rule.
#[derive(Debug)]
pub struct Loaded {
    pub ruleset: Ruleset,
    /// Sorted by file (in load order), line and column.
    pub diagnostics: Vec<Diagnostic>,
    pub rules: Vec<RuleReport>,
}

/// The rules had errors; every diagnostic is included.
#[derive(Debug, thiserror::Error)]
#[error("rules have {} error(s); first: {}", count_errors(.diagnostics), first_error(.diagnostics))]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

fn count_errors(d: &[Diagnostic]) -> usize {
    d.iter().filter(|d| d.severity == Severity::Error).count()
}

fn first_error(d: &[Diagnostic]) -> String {
    d.iter()
        .find(|d| d.severity == Severity::Error)
        .map_or_else(String::new, ToString::to_string)
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Strict form: the ruleset and its warnings, or every diagnostic if
    /// anything was an error.
    pub fn into_result(self) -> Result<(Ruleset, Vec<Diagnostic>), LoadError> {
        if self.has_errors() {
            Err(LoadError {
                diagnostics: self.diagnostics,
            })
        } else {
            Ok((self.ruleset, self.diagnostics))
        }
    }
}

/// Built in, so that rules written for Falco's default files load alone.
const BUILTIN_CONTAINER: &str = "container.id != host";

/// Loads sources in order: later files may override or append to earlier
/// ones. Problems never stop the load; they are all reported.
pub fn load(sources: &[Source<'_>], options: &Options) -> Loaded {
    let mut files = Files::new(BUILTIN_CONTAINER);
    let mut coll = Collection::default();
    let mut sink = Sink::default();
    coll.define_macro(MacroInfo {
        name: "container".into(),
        cond: Text::new(
            BUILTIN_CONTAINER.into(),
            ScalarLoc {
                loc: Loc {
                    file: BUILTIN_FILE,
                    line: 1,
                    col: 0,
                },
                style: Style::Plain,
            },
        ),
        index: 0,
        visibility: 0,
        loc: Loc {
            file: BUILTIN_FILE,
            line: 1,
            col: 0,
        },
    });
    let mut total = 0usize;
    for source in sources {
        let file = files.add(source.name, source.text);
        let start = Loc {
            file,
            line: 1,
            col: 0,
        };
        total = total.saturating_add(source.text.len());
        if source.text.len() > MAX_SOURCE_BYTES {
            sink.error(
                start,
                format!(
                    "rules file is larger than {} MiB; not loaded",
                    MAX_SOURCE_BYTES >> 20
                ),
            );
            continue;
        }
        if total > MAX_TOTAL_BYTES {
            sink.error(
                start,
                format!(
                    "rules files add up to more than {} MiB; this one and the rest not loaded",
                    MAX_TOTAL_BYTES >> 20
                ),
            );
            break;
        }
        if let Some((line, col)) = find_nul(source.text) {
            let at = Loc {
                file,
                line: u32::try_from(line).unwrap_or(u32::MAX),
                col: u32::try_from(col - 1).unwrap_or(u32::MAX),
            };
            sink.error(
                at,
                "invalid YAML: NUL byte (rules files are text); not loaded",
            );
            continue;
        }
        Reader {
            file,
            coll: &mut coll,
            sink: &mut sink,
        }
        .read(source.text);
    }
    let (ruleset, rules) = compile(&coll, &files, options, &mut sink);
    Loaded {
        ruleset,
        diagnostics: sink.finish(&files),
        rules,
    }
}

/// Every diagnostic for the sources, for `egret rules check`.
pub fn check(sources: &[Source<'_>], options: &Options) -> Vec<Diagnostic> {
    load(sources, options).diagnostics
}

fn compile<'f>(
    coll: &Collection<'f>,
    files: &Files<'f>,
    options: &Options,
    sink: &mut Sink,
) -> (Ruleset, Vec<RuleReport>) {
    let mut compiler = Compiler::new(coll, files, sink);
    let mut rules = Vec::new();
    let mut report = Vec::new();
    let mut skipped = Skipped::default();
    for info in &coll.rules.items {
        let location = files.location(info.loc);
        let status = if info.source != SYSCALL {
            compiler.note_refs(info);
            RuleStatus::Skipped {
                source: info.source.clone(),
            }
        } else {
            let compiled = compiler.compile_rule(info);
            for (at, warning) in &compiled.warnings {
                sink.warning(*at, warning.clone());
            }
            let fields: Vec<String> = compiled.unknown.iter().map(|u| u.field.clone()).collect();
            // Falco skips a rule naming an unknown event type, like one
            // naming an unknown field, when it asks to.
            let unknown_type = |m: &String| m.starts_with("unknown event type");
            if info.skip_if_unknown_filter
                && !compiled.errors.is_empty()
                && compiled.errors.iter().all(|(_, m)| unknown_type(m))
            {
                for (at, message) in &compiled.errors {
                    sink.warning(
                        *at,
                        format!(
                            "rule '{}': {message}; skipped (skip-if-unknown-filter)",
                            info.name
                        ),
                    );
                }
                RuleStatus::Unsupported {
                    fields: Vec::new(),
                    event_types: Vec::new(),
                    requested_skip: true,
                }
            } else if !compiled.errors.is_empty() {
                let mut macro_errors = false;
                for (at, message) in compiled.errors {
                    // Empty: a mistake inside a macro, reported there.
                    if message.is_empty() {
                        if !macro_errors {
                            macro_errors = true;
                            sink.error(
                                info.loc,
                                format!(
                                    "rule '{}' not loaded: a macro it uses has errors",
                                    info.name
                                ),
                            );
                        }
                        continue;
                    }
                    sink.error(at, format!("rule '{}': {message}", info.name));
                }
                RuleStatus::Failed
            } else if options.skip_unsupported
                && let Some(status) = skip_unsupported(info, &compiled, &fields, &mut skipped, sink)
            {
                status
            } else if !fields.is_empty() {
                let uses: Vec<String> = compiled
                    .unknown
                    .iter()
                    .map(|u| format!("'{}' ({})", u.field, u.place))
                    .collect();
                let message = format!(
                    "rule '{}' uses fields Egret does not provide: {}",
                    info.name,
                    uses.join(", ")
                );
                if info.skip_if_unknown_filter {
                    sink.warning(
                        info.loc,
                        format!("{message}; skipped (skip-if-unknown-filter)"),
                    );
                } else {
                    sink.error(info.loc, format!("{message}; rule not loaded"));
                }
                RuleStatus::Unsupported {
                    fields,
                    event_types: Vec::new(),
                    requested_skip: info.skip_if_unknown_filter,
                }
            } else {
                let mut types = type_masks(&compiled.node).0;
                // Flow records (evt.type = close) reach only rules that ask
                // for them by name: a rule without an evt.type condition
                // (or `evt.type != connect`) was written for attempts, as
                // Falco's own rules are, and must not fire once per flow end.
                if !compiled.evt_types.contains("close") {
                    types &= !CLOSE;
                }
                if info.warn_evttypes && matches_unbounded_types(&compiled.node) {
                    sink.warning(
                        info.loc,
                        format!("rule '{}' matches too many evt.type values (every one): a significant performance penalty in Falco; restrict evt.type or set warn_evttypes: false", info.name),
                    );
                }
                let tags: BTreeSet<&String> = info.tags.iter().collect();
                rules.push(Rule {
                    name: Arc::from(info.name.as_str()),
                    desc: Arc::from(info.desc.as_str()),
                    priority: info.priority,
                    tags: tags.into_iter().map(|t| Arc::from(t.as_str())).collect(),
                    enabled: info.enabled,
                    location: location.clone(),
                    output_template: info.output.text.trim().to_string(),
                    types,
                    condition: {
                        let mut node = compiled.node;
                        node.learn_types();
                        node
                    },
                    output: compiled.output,
                });
                RuleStatus::Compiled {
                    enabled: info.enabled,
                }
            }
        };
        report.push(RuleReport {
            name: info.name.clone(),
            location,
            status,
        });
    }
    skipped.summarise(sink);
    for list in &coll.lists.items {
        if !compiler.is_used(&list.name) {
            sink.warning(
                list.loc,
                format!(
                    "list '{}' is not used by any rule, macro or list",
                    list.name
                ),
            );
        }
    }
    for m in &coll.macros.items {
        if m.loc.file != BUILTIN_FILE && !compiler.is_used(&m.name) {
            sink.warning(
                m.loc,
                format!("macro '{}' is not used by any rule or macro", m.name),
            );
        }
    }
    (Ruleset::new(rules, options), report)
}

/// Rules skipped under [`Options::skip_unsupported`], for the one summary.
#[derive(Default)]
struct Skipped {
    first: Option<Loc>,
    for_types: usize,
    for_fields: usize,
    /// How many skipped rules name each event type or field.
    types: BTreeMap<String, usize>,
    fields: BTreeMap<String, usize>,
}

impl Skipped {
    fn summarise(&self, sink: &mut Sink) {
        let Some(at) = self.first else { return };
        let by_count = |m: &BTreeMap<String, usize>| {
            let mut v: Vec<(&String, &usize)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if self.for_types > 0 {
            parts.push(format!(
                "{} need event types Egret does not see: {}",
                self.for_types,
                by_count(&self.types)
            ));
        }
        if self.for_fields > 0 {
            parts.push(format!(
                "{} need fields Egret does not provide: {}",
                self.for_fields,
                by_count(&self.fields)
            ));
        }
        sink.warning(
            at,
            format!(
                "skipped {} unsupported rule(s) (skip_unsupported_rules): {}; `egret rules list` shows each",
                self.for_types + self.for_fields,
                parts.join("; ")
            ),
        );
    }
}

/// Event types Egret's hooks report: a rule matching none of them cannot
/// fire. `sendmsg`/`sendmmsg` compile to `sendto`; `socket` is a packet or
/// raw socket's creation.
fn provided_type(name: &str) -> bool {
    matches!(
        name,
        "connect" | "sendto" | "sendmsg" | "sendmmsg" | "socket" | "close"
    )
}

/// Under `skip_unsupported`: the status of a rule that needs event types or
/// Falco fields Egret lacks (counted in `skipped`), or `None` to report it as
/// usual. A field unknown to Falco too is a typo: an error, never skipped.
fn skip_unsupported(
    info: &RuleInfo,
    compiled: &Compiled,
    fields: &[String],
    skipped: &mut Skipped,
    sink: &mut Sink,
) -> Option<RuleStatus> {
    let typos: Vec<&String> = fields
        .iter()
        .filter(|f| !falco_fields::is_falco_field(f))
        .collect();
    if !typos.is_empty() {
        for typo in typos {
            let hint = falco_fields::suggest(typo)
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            let place = compiled
                .unknown
                .iter()
                .find(|u| &u.field == typo)
                .map(|u| format!(" ({})", u.place))
                .unwrap_or_default();
            sink.error(
                info.loc,
                format!(
                    "rule '{}': unknown field '{typo}'{place}: not a Falco field either{hint}",
                    info.name
                ),
            );
        }
        return Some(RuleStatus::Failed);
    }
    let (may_true, _) = type_masks(&compiled.node);
    // `socket` events fall in the OTHER bucket with every unknown type.
    let types_unsupported = may_true & (CONNECT | SENDTO | CLOSE) == 0
        && !compiled.evt_types.iter().any(|t| t == "socket");
    if !types_unsupported && fields.is_empty() {
        return None;
    }
    skipped.first = Some(skipped.first.map_or(info.loc, |f| f.min(info.loc)));
    let event_types: Vec<String> = if types_unsupported {
        let mut names: Vec<String> = compiled
            .evt_types
            .iter()
            .filter(|t| !provided_type(t))
            .cloned()
            .collect();
        if names.is_empty() {
            names.push("(other)".into());
        }
        skipped.for_types += 1;
        for n in &names {
            *skipped.types.entry(n.clone()).or_default() += 1;
        }
        names
    } else {
        skipped.for_fields += 1;
        for f in fields {
            *skipped.fields.entry(f.clone()).or_default() += 1;
        }
        Vec::new()
    };
    Some(RuleStatus::Unsupported {
        fields: fields.to_vec(),
        event_types,
        requested_skip: true,
    })
}
