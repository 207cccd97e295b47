//! Reads rule files into a [`Collection`], item by item, with Falco's
//! validation. A bad item is reported and skipped; the rest still load.
use std::collections::BTreeSet;

use crate::collect::{Collection, ListInfo, ListItem, ListItems, MacroInfo};
use crate::diagnostics::{Loc, ScalarLoc, Sink, Text};
use crate::lexer::Cursor;
use crate::yaml::{self, Kind, Node, Style};

mod rules;

type Failure = (Loc, String);

const LIST_KEYS: &[&str] = &["list", "items", "append", "override"];
const MACRO_KEYS: &[&str] = &["macro", "condition", "append", "override"];
const RULE_KEYS: &[&str] = &[
    "rule",
    "desc",
    "condition",
    "output",
    "priority",
    "source",
    "enabled",
    "tags",
    "exceptions",
    "override",
    "append",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "capture",
    "capture_duration",
];
const RULE_APPENDABLE: &[&str] = &["condition", "output", "desc", "tags", "exceptions"];
const RULE_REPLACEABLE: &[&str] = &[
    "condition",
    "output",
    "desc",
    "priority",
    "tags",
    "exceptions",
    "enabled",
    "warn_evttypes",
    "skip-if-unknown-filter",
    "capture",
    "capture_duration",
];
/// The Falco rule engine version whose rules language Egret implements.
const ENGINE_VERSION: (u64, u64, u64) = (0, 63, 0);
const APPEND_DEPRECATED: &str = "'append' key is deprecated. Add an 'override' key with the fields to append, e.g. 'override: {condition: append}'";
const ENABLED_DEPRECATED: &str =
    "the form '- rule: name / enabled: bool' is deprecated. Use 'override: {enabled: replace}'";

pub(crate) struct Reader<'a, 's> {
    pub file: u32,
    pub coll: &'a mut Collection<'s>,
    pub sink: &'a mut Sink,
}

fn is_list_name(name: &str) -> bool {
    !name.is_empty()
        && !name.bytes().any(|b| {
            matches!(b, b'(' | b')' | b'"' | b'\'' | b'=' | b',')
                || b.is_ascii_whitespace()
                || b == 0x0b
        })
}

fn is_macro_name(name: &str) -> bool {
    Cursor::new(name)
        .identifier()
        .is_some_and(|id| id.len() == name.len())
}

fn is_version(text: &str) -> bool {
    let core = text.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" => Some(true),
        "false" | "no" | "off" | "n" => Some(false),
        _ => None,
    }
}

impl<'s> Reader<'_, 's> {
    pub fn read(&mut self, text: &'s str) {
        let docs = match yaml::parse(text) {
            Ok(docs) => docs,
            Err(e) => {
                self.sink.error(
                    Loc::at(self.file, e.mark),
                    format!("invalid YAML: {}", e.message),
                );
                return;
            }
        };
        // Consumed item by item: each is dropped once read, and a list's
        // items move into the collection without a copy.
        for doc in docs {
            let mark = doc.mark;
            if doc.kind == Kind::Null {
                continue;
            }
            match doc.into_seq() {
                Some(items) => {
                    for mut item in items.into_iter().filter(|i| i.kind != Kind::Null) {
                        if let Err((at, message)) = self.read_item(&mut item) {
                            self.sink.error(at, message);
                        }
                    }
                }
                None => self.sink.error(
                    Loc::at(self.file, mark),
                    "rules content is not a YAML array of objects",
                ),
            }
        }
    }

    fn loc(&self, node: &Node<'_>) -> Loc {
        Loc::at(self.file, node.mark)
    }

    fn fail<T>(&self, node: &Node<'_>, message: impl Into<String>) -> Result<T, Failure> {
        Err((self.loc(node), message.into()))
    }

    fn read_item(&mut self, item: &mut Node<'s>) -> Result<(), Failure> {
        if !matches!(item.kind, Kind::Map(_)) {
            return self.fail(
                item,
                "unexpected element type: each element should be a YAML mapping",
            );
        }
        if item.get("required_engine_version").is_some() {
            self.engine_version(item)
        } else if let Some(plugins) = item.get("required_plugin_versions") {
            self.plugin_versions(plugins)
        } else if item.get("list").is_some() {
            self.read_list(item)
        } else if item.get("macro").is_some() {
            self.read_macro(item)
        } else if item.get("rule").is_some() {
            self.read_rule(item)
        } else {
            self.sink
                .warning(self.loc(item), "unknown top level item, ignored");
            Ok(())
        }
    }

    /// Falco's `decode_val`: absent is None; present must be a non-empty scalar.
    fn scalar<'n, 'y>(
        &self,
        item: &'n Node<'y>,
        key: &str,
    ) -> Result<Option<(&'n str, &'n Node<'y>)>, Failure> {
        let Some(value) = item.get(key) else {
            return Ok(None);
        };
        match &value.kind {
            Kind::Null => self.fail(value, format!("mapping for key '{key}' is empty")),
            Kind::Scalar(s, _) if s.is_empty() => {
                self.fail(value, format!("value for key '{key}' must be non-empty"))
            }
            Kind::Scalar(s, _) => Ok(Some((s, value))),
            _ => self.fail(
                value,
                format!("value for key '{key}' is not a scalar value"),
            ),
        }
    }

    fn required<'n, 'y>(
        &self,
        item: &'n Node<'y>,
        key: &str,
    ) -> Result<(&'n str, &'n Node<'y>), Failure> {
        self.scalar(item, key)?.map_or_else(
            || self.fail(item, format!("item has no mapping for key '{key}'")),
            Ok,
        )
    }

    fn boolean(&self, item: &Node<'_>, key: &str) -> Result<Option<bool>, Failure> {
        match self.scalar(item, key)? {
            None => Ok(None),
            Some((text, node)) => parse_bool(text).map(Some).map_or_else(
                || {
                    self.fail(
                        node,
                        format!("value for key '{key}' is not a boolean: '{text}'"),
                    )
                },
                Ok,
            ),
        }
    }

    fn strings(&self, item: &Node<'_>, key: &str) -> Result<Option<Vec<(String, Loc)>>, Failure> {
        let Some(value) = item.get(key) else {
            return Ok(None);
        };
        let Some(entries) = value.seq() else {
            return self.fail(value, format!("value for key '{key}' is not a sequence"));
        };
        entries
            .iter()
            .map(|e| match e.as_str() {
                Some(s) => Ok((s.to_string(), self.loc(e))),
                None => self.fail(e, format!("sequence value in '{key}' is not a scalar")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn tags(&self, item: &Node<'_>) -> Result<Option<BTreeSet<String>>, Failure> {
        Ok(self
            .strings(item, "tags")?
            .map(|tags| tags.into_iter().map(|(t, _)| t).collect()))
    }

    fn text(&self, value: &str, node: &Node<'_>) -> Text {
        let at = ScalarLoc {
            loc: self.loc(node),
            style: node.style().unwrap_or(Style::Plain),
        };
        Text::new(value.to_string(), at)
    }

    fn check_keys(&mut self, item: &Node<'_>, allowed: &[&str], what: &str, name: &str) {
        for (key, _) in item.entries() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => self.sink.warning(
                    self.loc(key),
                    format!("unknown key '{k}' in {what} '{name}' ignored"),
                ),
                None => self.sink.warning(
                    self.loc(key),
                    format!("non-string key in {what} '{name}' ignored"),
                ),
            }
        }
    }

    /// The keys under `override:`, split into (append, replace).
    fn overrides(
        &self,
        item: &Node<'_>,
        appendable: &[&str],
        replaceable: &[&str],
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), Failure> {
        let (mut append, mut replace) = (BTreeSet::new(), BTreeSet::new());
        let Some(node) = item.get("override") else {
            return Ok((append, replace));
        };
        if !matches!(node.kind, Kind::Map(_)) {
            return self.fail(
                node,
                "'override' must be a mapping of keys to 'append' or 'replace'",
            );
        }
        for (key, op) in node.entries() {
            let Some(key_text) = key.as_str() else {
                return self.fail(key, "override keys must be strings");
            };
            match op.as_str() {
                Some("append") if appendable.contains(&key_text) => {
                    append.insert(key_text.to_string())
                }
                Some("append") => {
                    return self.fail(
                        key,
                        format!("key '{key_text}' cannot be appended to, use 'replace' instead"),
                    );
                }
                Some("replace") if replaceable.contains(&key_text) => {
                    replace.insert(key_text.to_string())
                }
                Some("replace") => {
                    return self.fail(key, format!("key '{key_text}' cannot be replaced"));
                }
                _ => {
                    return self.fail(op, format!("invalid override operation for key '{key_text}': expected 'append' or 'replace'"));
                }
            };
        }
        Ok((append, replace))
    }

    fn engine_version(&self, item: &Node<'_>) -> Result<(), Failure> {
        let (text, node) = self.required(item, "required_engine_version")?;
        // An integer N is Falco's old form of 0.N.0.
        let required = match text.parse::<u64>() {
            Ok(minor) => Some((0, minor, 0)),
            Err(_) if is_version(text) => {
                let core = text.split(['-', '+']).next().unwrap_or("");
                let mut parts = core
                    .split('.')
                    .map(|p| p.parse::<u64>().unwrap_or(u64::MAX));
                Some((
                    parts.next().unwrap_or(0),
                    parts.next().unwrap_or(0),
                    parts.next().unwrap_or(0),
                ))
            }
            Err(_) => None,
        };
        if let Some(required) = required {
            if required > ENGINE_VERSION {
                let (a, b, c) = ENGINE_VERSION;
                return self.fail(
                    node,
                    format!("rules require engine version {text}, but Egret implements Falco's rule engine {a}.{b}.{c}"),
                );
            }
            return Ok(());
        }
        self.fail(
            node,
            format!("unable to parse engine version '{text}': expected an integer or \"x.y.z\""),
        )
    }

    /// Egret has no plugins (it provides the container fields itself), so the
    /// requirements are only checked for shape.
    fn plugin_versions(&self, plugins: &Node<'_>) -> Result<(), Failure> {
        let Some(entries) = plugins.seq() else {
            return self.fail(
                plugins,
                "value of required_plugin_versions must be a sequence",
            );
        };
        for plugin in entries.iter() {
            self.plugin_version(plugin)?;
            if let Some(alternatives) = plugin.get("alternatives") {
                let Some(alts) = alternatives.seq() else {
                    return self.fail(
                        alternatives,
                        "value of plugin version alternatives must be a sequence",
                    );
                };
                for alt in alts.iter() {
                    self.plugin_version(alt)?;
                }
            }
        }
        Ok(())
    }

    fn plugin_version(&self, plugin: &Node<'_>) -> Result<(), Failure> {
        if !matches!(plugin.kind, Kind::Map(_)) {
            return self.fail(plugin, "plugin version must be a mapping");
        }
        let (name, _) = self.required(plugin, "name")?;
        let (version, node) = self.required(plugin, "version")?;
        if !is_version(version) {
            return self.fail(
                node,
                format!("invalid required version '{version}' for plugin '{name}'"),
            );
        }
        Ok(())
    }

    fn read_list(&mut self, item: &mut Node<'s>) -> Result<(), Failure> {
        let name = self.required(item, "list")?.0.to_string();
        let name = name.as_str();
        if !is_list_name(name) {
            // A warning since Falco 0.38: such a list can only be used quoted.
            self.sink.warning(self.loc(item), format!("list '{name}' has an invalid name: list names should match ([^()\"'[:space:]=,]+)"));
        }
        self.check_keys(item, LIST_KEYS, "list", name);
        let items = self.list_items(item)?;
        let append = self.appends(item, &["items"])?;
        if append {
            return self
                .coll
                .append_list(name, items)
                .map_err(|m| (self.loc(item), m));
        }
        self.coll.define_list(ListInfo {
            name: name.to_string(),
            items,
            index: 0,
            visibility: 0,
            loc: self.loc(item),
        });
        Ok(())
    }

    /// A list's items, moved out of the tree: a long list of scalars as the
    /// reader kept it, a short one node by node (the allocation is reused:
    /// a node and an item are the same size). Only scalars are items.
    fn list_items(&self, item: &mut Node<'s>) -> Result<ListItems<'s>, Failure> {
        let at = self.loc(item);
        let Some(value) = item.get_mut("items") else {
            return Err((at, "item has no mapping for key 'items'".to_string()));
        };
        if !matches!(value.kind, Kind::Seq(_) | Kind::Scalars(_)) {
            return self.fail(value, "value for key 'items' is not a sequence");
        }
        let entries = match std::mem::replace(&mut value.kind, Kind::Null) {
            Kind::Scalars(scalars) => return Ok(ListItems::from_scalars(self.file, scalars)),
            Kind::Seq(entries) => entries,
            _ => return Ok(ListItems::default()),
        };
        if let Some(bad) = entries.iter().find(|e| e.as_str().is_none()) {
            return self.fail(bad, "sequence value in 'items' is not a scalar");
        }
        let file = self.file;
        Ok(ListItems::from_items(
            entries
                .into_iter()
                .map(|e| ListItem {
                    loc: Loc::at(file, e.mark),
                    text: e.into_text(),
                })
                .collect(),
        ))
    }

    /// For lists and macros, which have one overridable key: whether the item
    /// appends (`append: true` or `override: {key: append}`) or redefines.
    fn appends(&mut self, item: &Node<'_>, key: &[&str]) -> Result<bool, Failure> {
        let flag = self.boolean(item, "append")?.unwrap_or(false);
        if flag {
            self.sink.warning(self.loc(item), APPEND_DEPRECATED);
        }
        let (append, replace) = self.overrides(item, key, key)?;
        if flag && !(append.is_empty() && replace.is_empty()) {
            return self.fail(
                item,
                "keys 'override' and 'append: true' cannot be used together",
            );
        }
        Ok(flag || !append.is_empty())
    }

    fn read_macro(&mut self, item: &Node<'_>) -> Result<(), Failure> {
        let (name, _) = self.required(item, "macro")?;
        if !is_macro_name(name) {
            // A warning since Falco 0.38; such a macro cannot be referred to.
            self.sink.warning(self.loc(item), format!("macro '{name}' has an invalid name: macro names should match ([a-zA-Z]+[a-zA-Z0-9_]*)"));
        }
        self.check_keys(item, MACRO_KEYS, "macro", name);
        let (cond, node) = self.required(item, "condition")?;
        let cond = self.text(cond, node);
        if self.appends(item, &["condition"])? {
            return self
                .coll
                .append_macro(name, &cond)
                .map_err(|m| (self.loc(item), m));
        }
        self.coll.define_macro(MacroInfo {
            name: name.to_string(),
            cond,
            index: 0,
            visibility: 0,
            loc: self.loc(item),
        });
        Ok(())
    }
}
