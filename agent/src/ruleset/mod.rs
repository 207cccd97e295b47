//! Rule sources for the agent: the bundled rules (embedded, so an installed
//! binary needs no source tree), user files and directories loaded in order,
//! change detection for reloads, and `egret rules check`.
pub mod reload;

use std::{path::PathBuf, time::SystemTime};

use egret_rules::{Diagnostic, Options, RuleMatching, Ruleset, Severity, Source};

/// The bundled rules, in load order. `rules_dir_is_fully_bundled` (test)
/// fails if a file in rules/ is missing here.
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "rules/egress.yaml",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/egress.yaml")),
    ),
    // After egress.yaml, whose `private_networks` and `never_true` it uses.
    (
        "rules/flows.yaml",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/flows.yaml")),
    ),
    // Observed DNS: evt.type = dns and fd.sip.name (issue 14).
    (
        "rules/dns.yaml",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/dns.yaml")),
    ),
];

/// A rules path naming the bundled rules, so user files loaded after them
/// can `append` to or `override` their lists, macros and rules without a
/// source checkout (`--rules bundled --rules /etc/egret/local.yaml`). A
/// file or directory of that name in the working directory wins.
pub const BUNDLED_ENTRY: &str = "bundled";

fn is_bundled_entry(path: &std::path::Path) -> bool {
    path.as_os_str() == BUNDLED_ENTRY && !path.exists()
}

fn bundled_sources() -> impl Iterator<Item = (String, String)> {
    BUNDLED
        .iter()
        .map(|(name, text)| (format!("bundled:{name}"), (*text).to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A rule file that is not a regular file, too large, or not text.
    #[error(transparent)]
    Source(#[from] egret_rules::ReadError),
    /// The rules did not load; every diagnostic, one per line.
    #[error("rules did not load:\n{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Per rule file: modification time, length and inode (`None`: unreadable).
pub type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

/// Files to load, in order: a directory contributes its `*.yaml`/`*.yml`
/// files sorted by name; an empty list means the bundled rules.
#[derive(Clone, Debug, Default)]
pub struct RulePaths(pub Vec<PathBuf>);

impl RulePaths {
    pub fn is_bundled(&self) -> bool {
        self.0.is_empty()
    }

    fn files(&self) -> Result<Vec<PathBuf>, RulesError> {
        let mut files = Vec::new();
        for path in self.0.iter().filter(|p| !is_bundled_entry(p)) {
            let read_err = |source| RulesError::Read {
                path: path.display().to_string(),
                source,
            };
            if path.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(read_err)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && p.extension()
                                .is_some_and(|ext| ext == "yaml" || ext == "yml")
                    })
                    .collect();
                entries.sort();
                files.extend(entries);
            } else {
                std::fs::metadata(path).map_err(read_err)?;
                files.push(path.clone());
            }
        }
        Ok(files)
    }

    /// (name, text) of every source, read now.
    pub fn read(&self) -> Result<Vec<(String, String)>, RulesError> {
        if self.is_bundled() {
            return Ok(BUNDLED
                .iter()
                .map(|(name, text)| (name.to_string(), text.to_string()))
                .collect());
        }
        let mut out = Vec::new();
        for path in &self.0 {
            if is_bundled_entry(path) {
                out.extend(bundled_sources());
                continue;
            }
            for file in RulePaths(vec![path.clone()]).files()? {
                // Bounded and regular files only: a FIFO or /dev/zero named
                // as a rules file must not hang or exhaust the agent.
                let text = egret_rules::read_source(&file).map_err(RulesError::from)?;
                out.push((file.display().to_string(), text));
            }
        }
        Ok(out)
    }

    /// Changes when any rule file is added, removed, replaced or modified
    /// (ConfigMap updates swap a symlink, which changes the inode).
    pub fn fingerprint(&self) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        let files = self.files().unwrap_or_default();
        files
            .into_iter()
            .map(|file| {
                let meta = std::fs::metadata(&file)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
                (file, meta)
            })
            .collect()
    }
}

pub fn options(rule_matching: RuleMatching, skip_unsupported: bool) -> Options {
    Options {
        rule_matching,
        skip_unsupported,
        ..Options::default()
    }
}

/// Loads and compiles; warnings are logged, any error refuses the set.
pub fn load(paths: &RulePaths, options: &Options) -> Result<Ruleset, RulesError> {
    compile(&paths.read()?, options)
}

/// Compiles sources already read ([`RulePaths::read`]).
pub fn compile(texts: &[(String, String)], options: &Options) -> Result<Ruleset, RulesError> {
    let sources: Vec<Source<'_>> = texts
        .iter()
        .map(|(name, text)| Source::new(name, text))
        .collect();
    let loaded = egret_rules::load(&sources, options);
    if loaded.has_errors() {
        return Err(RulesError::Invalid(
            loaded
                .diagnostics
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect(),
        ));
    }
    for warning in &loaded.diagnostics {
        tracing::warn!("{warning}");
    }
    Ok(loaded.ruleset)
}

/// `egret rules check`: every problem of the files, loaded in order.
pub fn check(files: &[PathBuf], skip_unsupported: bool) -> Result<Vec<Diagnostic>, RulesError> {
    let texts = RulePaths(files.to_vec()).read()?;
    let sources: Vec<Source<'_>> = texts
        .iter()
        .map(|(name, text)| Source::new(name, text))
        .collect();
    let options = options(RuleMatching::default(), skip_unsupported);
    Ok(egret_rules::check(&sources, &options))
}

pub fn describe(paths: &RulePaths) -> String {
    if paths.is_bundled() {
        "bundled rules".into()
    } else {
        paths
            .0
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn rules_dir_is_fully_bundled() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| format!("rules/{}", e.file_name().to_string_lossy()))
            .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
            .collect();
        on_disk.sort();
        let mut bundled: Vec<String> = BUNDLED.iter().map(|(name, _)| name.to_string()).collect();
        bundled.sort();
        assert_eq!(on_disk, bundled);
    }

    #[test]
    fn a_bundled_entry_lets_user_files_append_to_bundled_lists() {
        let dir = std::env::temp_dir().join(format!("egret-bundled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let local = dir.join("local.yaml");
        std::fs::write(
            &local,
            "- rule: Outbound Connection in Container\n  enabled: false\n  override:\n    enabled: replace\n",
        )
        .unwrap();
        let paths = RulePaths(vec![PathBuf::from(BUNDLED_ENTRY), local.clone()]);
        let names: Vec<String> = paths.read().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "bundled:rules/egress.yaml");
        assert_eq!(names[1], "bundled:rules/flows.yaml");
        assert_eq!(names[2], "bundled:rules/dns.yaml");
        assert!(names[3].ends_with("local.yaml"));
        let ruleset = load(&paths, &Options::default()).unwrap();
        let id = ruleset.find("Outbound Connection in Container").unwrap();
        assert!(!ruleset.rule(id).unwrap().enabled());
        // Only real files are watched for changes.
        assert_eq!(paths.fingerprint().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bundled_rules_load() {
        let ruleset = load(&RulePaths::default(), &Options::default()).unwrap();
        assert!(ruleset.rules().len() >= 7);
        assert!(ruleset.find("Outbound Connection in Container").is_some());
    }

    #[test]
    fn directories_load_sorted_and_broken_files_report_positions() {
        let dir = std::env::temp_dir().join(format!("egret-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.yaml"), "- list: ports\n  items: [1]\n").unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "- rule: R\n  desc: d\n  condition: fd.sport in (1\n  output: o\n  priority: INFO\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not rules").unwrap();
        let paths = RulePaths(vec![dir.clone()]);
        let names: Vec<String> = paths.read().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 2, "only YAML files");
        assert!(names[0].ends_with("a.yaml") && names[1].ends_with("b.yaml"));
        let err = load(&paths, &Options::default()).unwrap_err().to_string();
        assert!(err.contains("a.yaml:3:"), "{err}");
        let before = paths.fingerprint();
        std::fs::write(dir.join("b.yaml"), "- list: ports\n  items: [1, 2]\n").unwrap();
        assert_ne!(before, paths.fingerprint());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn special_files_are_refused_without_reading() {
        let err = RulePaths(vec!["/dev/zero".into()]).read().unwrap_err();
        assert!(
            err.to_string()
                .contains("not a regular file (a character device)"),
            "{err}"
        );
    }
}
