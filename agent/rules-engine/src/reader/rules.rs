//! Reading `- rule:` items: definitions, `append: true`, `override:` and the
//! legacy enable/disable form.
use std::collections::BTreeSet;

use super::{
    APPEND_DEPRECATED, ENABLED_DEPRECATED, Failure, RULE_APPENDABLE, RULE_KEYS, RULE_REPLACEABLE,
    Reader,
};
use crate::Priority;
use crate::collect::{RuleInfo, RuleUpdate, SYSCALL};
use crate::exceptions::{self, Entry, ExceptionInfo};
use crate::yaml::{Kind, Node};

impl Reader<'_, '_> {
    pub(super) fn read_rule(&mut self, item: &Node<'_>) -> Result<(), Failure> {
        let (name, _) = self.required(item, "rule")?;
        self.check_keys(item, RULE_KEYS, "rule", name);
        let append_flag = self.boolean(item, "append")?.unwrap_or(false);
        if append_flag {
            self.sink.warning(self.loc(item), APPEND_DEPRECATED);
        }
        let (append, replace) = self.overrides(item, RULE_APPENDABLE, RULE_REPLACEABLE)?;
        let at = self.loc(item);
        if append_flag && !(append.is_empty() && replace.is_empty()) {
            return Err((
                at,
                "keys 'override' and 'append: true' cannot be used together".into(),
            ));
        }
        if !(append.is_empty() && replace.is_empty()) {
            self.check_override_keys(item, &append, &replace)?;
            if !append.is_empty() {
                let update = self.rule_update(item, &append, true)?;
                self.coll.append_rule(name, update).map_err(|m| (at, m))?;
            }
            if !replace.is_empty() {
                let update = self.rule_update(item, &replace, false)?;
                self.coll.replace_rule(name, update).map_err(|m| (at, m))?;
            }
            return Ok(());
        }
        if append_flag {
            let keys: BTreeSet<String> = ["condition", "exceptions"]
                .into_iter()
                .filter(|k| item.get(k).is_some())
                .map(String::from)
                .collect();
            if keys.is_empty() {
                return Err((
                    at,
                    "Appended rule must have exceptions or condition property".into(),
                ));
            }
            let update = self.rule_update(item, &keys, true)?;
            return self.coll.append_rule(name, update).map_err(|m| (at, m));
        }
        let defines = ["condition", "output", "desc", "priority"]
            .iter()
            .any(|k| item.get(k).is_some());
        if !defines {
            let enabled = self
                .boolean(item, "enabled")?
                .ok_or_else(|| (at, "item has no mapping for key 'enabled'".to_string()))?;
            self.sink.warning(at, ENABLED_DEPRECATED);
            return self.coll.enable_rule(name, enabled).map_err(|m| (at, m));
        }
        self.define_rule(item, name)
    }

    /// Every key under `override` must be present, and every overridable
    /// key present must be under `override`.
    fn check_override_keys(
        &self,
        item: &Node<'_>,
        append: &BTreeSet<String>,
        replace: &BTreeSet<String>,
    ) -> Result<(), Failure> {
        for (kind, keys) in [("append", append), ("replace", replace)] {
            if let Some(key) = keys.iter().find(|k| item.get(k).is_none()) {
                return self.fail(
                    item,
                    format!(
                        "an {kind} override for '{key}' was specified but '{key}' is not defined"
                    ),
                );
            }
        }
        for key in RULE_APPENDABLE.iter().chain(RULE_REPLACEABLE) {
            if let Some(value) = item.get(key)
                && !append.contains(*key)
                && !replace.contains(*key)
            {
                return self.fail(
                    value,
                    format!(
                        "unexpected key '{key}': no corresponding entry under 'override' is defined"
                    ),
                );
            }
        }
        Ok(())
    }

    fn rule_update(
        &mut self,
        item: &Node<'_>,
        keys: &BTreeSet<String>,
        appending: bool,
    ) -> Result<RuleUpdate, Failure> {
        let mut update = RuleUpdate::default();
        for key in keys {
            match key.as_str() {
                "condition" => {
                    let (text, node) = self.required(item, "condition")?;
                    update.cond = Some(self.text(text, node));
                }
                "output" => {
                    let (text, node) = self.required(item, "output")?;
                    update.output = Some(self.text(text, node));
                }
                "desc" => update.desc = Some(self.required(item, "desc")?.0.to_string()),
                "tags" => update.tags = self.tags(item)?,
                "exceptions" => update.exceptions = Some(self.exceptions(item, true)?),
                "priority" => update.priority = Some(self.priority(item)?),
                "enabled" => update.enabled = self.boolean(item, "enabled")?,
                "skip-if-unknown-filter" => {
                    update.skip_if_unknown_filter = self.boolean(item, "skip-if-unknown-filter")?;
                }
                "warn_evttypes" => update.warn_evttypes = self.boolean(item, "warn_evttypes")?,
                "capture" => update.capture = self.boolean(item, "capture")?,
                "capture_duration" => {
                    update.capture_duration = Some(self.duration(item)?);
                }
                _ => {}
            }
        }
        if appending {
            update.priority = None;
        }
        update.source = self.update_source(item)?;
        Ok(update)
    }

    /// `source` on an append or override: empty means "the rule's own".
    fn update_source(&self, item: &Node<'_>) -> Result<Option<String>, Failure> {
        match item.get("source").map(|n| &n.kind) {
            None | Some(Kind::Null) => Ok(None),
            Some(Kind::Scalar(s, _)) if s.is_empty() => Ok(None),
            Some(Kind::Scalar(s, _)) => Ok(Some(s.to_string())),
            Some(_) => self.fail(item, "value for key 'source' is not a scalar value"),
        }
    }

    /// Falco's `capture_duration`: a number of milliseconds. Egret takes no
    /// captures, so it is only checked.
    fn duration(&self, item: &Node<'_>) -> Result<u64, Failure> {
        let (text, node) = self.required(item, "capture_duration")?;
        text.parse().map_or_else(
            |_| {
                self.fail(
                    node,
                    format!("value for key 'capture_duration' is not a number: '{text}'"),
                )
            },
            Ok,
        )
    }

    fn priority(&self, item: &Node<'_>) -> Result<Priority, Failure> {
        let (text, node) = self.required(item, "priority")?;
        Priority::parse(text)
            .map_or_else(|| self.fail(node, format!("invalid priority '{text}'")), Ok)
    }

    fn define_rule(&mut self, item: &Node<'_>, name: &str) -> Result<(), Failure> {
        let (cond, cond_node) = self.required(item, "condition")?;
        let (output, output_node) = self.required(item, "output")?;
        let (desc, _) = self.required(item, "desc")?;
        let priority = self.priority(item)?;
        let source = self.scalar(item, "source")?.map_or(SYSCALL, |(s, _)| s);
        let enabled = self.boolean(item, "enabled")?.unwrap_or(true);
        let warn_evttypes = self.boolean(item, "warn_evttypes")?.unwrap_or(true);
        self.boolean(item, "capture")?;
        if item.get("capture_duration").is_some() {
            self.duration(item)?;
        }
        let skip = self
            .boolean(item, "skip-if-unknown-filter")?
            .unwrap_or(false);
        let tags = self.tags(item)?.unwrap_or_default();
        let exceptions = self
            .exceptions(item, false)?
            .into_iter()
            .map(|ex| {
                let at = ex.loc;
                exceptions::validate(ex).map_err(|m| (at, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if source != SYSCALL {
            self.sink.warning(
                self.loc(item),
                format!("rule '{name}': unknown source '{source}', skipping"),
            );
        }
        let info = RuleInfo {
            name: name.to_string(),
            desc: desc.to_string(),
            cond: self.text(cond, cond_node),
            output: self.text(output, output_node),
            priority,
            tags,
            enabled,
            source: source.to_string(),
            exceptions,
            skip_if_unknown_filter: skip,
            warn_evttypes,
            index: 0,
            loc: self.loc(item),
        };
        self.coll.define_rule(info).map_err(|m| (self.loc(item), m))
    }

    fn entry(&self, node: &Node<'_>, key: &str) -> Result<Entry, Failure> {
        match &node.kind {
            Kind::Scalar(s, _) if s.is_empty() => {
                self.fail(node, format!("exception '{key}' values must be non-empty"))
            }
            Kind::Scalar(s, _) => Ok(Entry::Item(s.to_string())),
            Kind::Seq(_) | Kind::Scalars(_) => node
                .seq()
                .unwrap_or_default()
                .iter()
                .map(|i| self.entry(i, key))
                .collect::<Result<Vec<_>, _>>()
                .map(Entry::List),
            _ => self.fail(
                node,
                format!("exception '{key}' must be a string or a list"),
            ),
        }
    }

    fn exceptions(
        &mut self,
        item: &Node<'_>,
        appending: bool,
    ) -> Result<Vec<ExceptionInfo>, Failure> {
        let Some(list) = item.get("exceptions") else {
            return Ok(Vec::new());
        };
        if matches!(list.kind, Kind::Null) {
            return Ok(Vec::new());
        }
        let Some(entries) = list.seq() else {
            return self.fail(list, "rule exceptions must be a sequence");
        };
        let mut out: Vec<ExceptionInfo> = Vec::new();
        for ex in entries.iter() {
            if !matches!(ex.kind, Kind::Map(_)) {
                return self.fail(ex, "rule exception must be a mapping");
            }
            let (name, _) = self.required(ex, "name")?;
            if out.iter().any(|e| e.name == name) {
                // A warning since Falco 0.38; both exceptions apply.
                self.sink.warning(
                    self.loc(ex),
                    format!("multiple definitions of exception '{name}' in the same rule"),
                );
            }
            let fields = ex
                .get("fields")
                .map(|f| self.entry(f, "fields"))
                .transpose()?;
            if fields.is_none() && !appending {
                return self.fail(
                    ex,
                    format!("exception '{name}': item has no mapping for key 'fields'"),
                );
            }
            let comps = ex
                .get("comps")
                .map(|c| self.entry(c, "comps"))
                .transpose()?;
            let mut values = Vec::new();
            match ex.get("values").filter(|v| !matches!(v.kind, Kind::Null)) {
                Some(list) => {
                    let Some(items) = list.seq() else {
                        return self.fail(ex, "rule exception values must be a sequence");
                    };
                    for v in items.iter() {
                        values.push(self.entry(v, "values")?);
                    }
                }
                None => {
                    if appending {
                        self.sink.warning(
                            self.loc(ex),
                            format!(
                                "exception '{name}': overriding/appending exception with no values"
                            ),
                        );
                    }
                }
            }
            out.push(ExceptionInfo {
                name: name.to_string(),
                fields,
                comps,
                values,
                loc: self.loc(ex),
            });
        }
        Ok(out)
    }
}
