//! Definitions gathered from all files in load order, with Falco's
//! define/append/replace rules. Every definition, append or replacement takes
//! the next index; an item's `visibility` is the index of its last change,
//! which decides which lists and macros it can see.
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use crate::Priority;
use crate::diagnostics::{Loc, Text};
use crate::exceptions::{self, ExceptionInfo};
use crate::yaml::Scalars;

pub(crate) struct Indexed<T> {
    pub items: Vec<T>,
    by_name: HashMap<String, usize>,
}

impl<T> Default for Indexed<T> {
    fn default() -> Self {
        Indexed {
            items: Vec::new(),
            by_name: HashMap::new(),
        }
    }
}

impl<T> Indexed<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.by_name.get(name).and_then(|&i| self.items.get(i))
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        let i = *self.by_name.get(name)?;
        self.items.get_mut(i)
    }

    fn upsert(&mut self, name: &str, item: T, keep: impl FnOnce(&T, &mut T)) {
        match self.by_name.get(name).copied() {
            Some(i) => {
                if let Some(slot) = self.items.get_mut(i) {
                    let mut item = item;
                    keep(slot, &mut item);
                    *slot = item;
                }
            }
            None => {
                self.by_name.insert(name.to_string(), self.items.len());
                self.items.push(item);
            }
        }
    }
}

/// An item of a short list, or of one with items that own their text.
pub(crate) struct ListItem<'s> {
    pub text: Cow<'s, str>,
    pub loc: Loc,
}

/// A list's items, in the parts its definition and appends brought. A long
/// sequence of scalars written as they read (an IOC feed) stays the YAML
/// reader's [`Scalars`]: positions in the source text, 12 bytes an item.
#[derive(Default)]
pub(crate) struct ListItems<'s> {
    parts: Vec<Part<'s>>,
}

pub(crate) enum Part<'s> {
    Items(Vec<ListItem<'s>>),
    Scalars { file: u32, scalars: Scalars<'s> },
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Items(items) => items.len(),
            Part::Scalars { scalars, .. } => scalars.len(),
        }
    }
}

/// One item, wherever it is kept.
#[derive(Clone, Copy)]
pub(crate) struct ItemAt<'c, 's> {
    part: &'c Part<'s>,
    index: usize,
}

impl<'c> ItemAt<'c, '_> {
    pub fn text(&self) -> &'c str {
        match self.part {
            Part::Items(items) => items.get(self.index).map_or("", |i| &*i.text),
            Part::Scalars { scalars, .. } => scalars.get(self.index).map_or("", |(text, _)| text),
        }
    }

    pub fn loc(&self) -> Loc {
        match self.part {
            Part::Items(items) => items.get(self.index).map(|i| i.loc).unwrap_or_default(),
            Part::Scalars { file, scalars } => scalars
                .get(self.index)
                .map(|(_, mark)| Loc::at(*file, mark))
                .unwrap_or_default(),
        }
    }

    /// Tells items apart (for what the compiler keeps per item).
    pub fn key(&self) -> (usize, usize) {
        (std::ptr::from_ref(self.part) as usize, self.index)
    }
}

impl<'s> ListItems<'s> {
    pub fn from_items(items: Vec<ListItem<'s>>) -> Self {
        ListItems {
            parts: vec![Part::Items(items)],
        }
    }

    pub fn from_scalars(file: u32, scalars: Scalars<'s>) -> Self {
        ListItems {
            parts: vec![Part::Scalars { file, scalars }],
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = ItemAt<'_, 's>> + '_ {
        self.parts
            .iter()
            .flat_map(|part| (0..part.len()).map(move |index| ItemAt { part, index }))
    }

    fn extend(&mut self, other: ListItems<'s>) {
        self.parts
            .extend(other.parts.into_iter().filter(|p| p.len() > 0));
    }
}

pub(crate) struct ListInfo<'s> {
    pub name: String,
    pub items: ListItems<'s>,
    pub index: u32,
    pub visibility: u32,
    pub loc: Loc,
}

pub(crate) struct MacroInfo {
    pub name: String,
    pub cond: Text,
    pub index: u32,
    pub visibility: u32,
    pub loc: Loc,
}

pub(crate) struct RuleInfo {
    pub name: String,
    pub desc: String,
    pub cond: Text,
    pub output: Text,
    pub priority: Priority,
    pub tags: BTreeSet<String>,
    pub enabled: bool,
    pub source: String,
    pub exceptions: Vec<ExceptionInfo>,
    pub skip_if_unknown_filter: bool,
    /// Falco's `warn_evttypes`: warn when the rule matches every event type.
    pub warn_evttypes: bool,
    pub index: u32,
    pub loc: Loc,
}

/// A partial rule from `append: true` or `override:`.
#[derive(Default)]
pub(crate) struct RuleUpdate {
    pub cond: Option<Text>,
    pub output: Option<Text>,
    pub desc: Option<String>,
    pub tags: Option<BTreeSet<String>>,
    pub exceptions: Option<Vec<ExceptionInfo>>,
    pub priority: Option<Priority>,
    pub enabled: Option<bool>,
    pub skip_if_unknown_filter: Option<bool>,
    /// Accepted for Falco compatibility; Egret has no use for them.
    pub warn_evttypes: Option<bool>,
    pub capture: Option<bool>,
    pub capture_duration: Option<u64>,
    /// The `source` the update names, if any: it must be the rule's.
    pub source: Option<String>,
}

const OTHER_SOURCE: &str = "Rule has been re-defined with a different source";

impl RuleUpdate {
    pub fn is_empty(&self) -> bool {
        self.cond.is_none()
            && self.output.is_none()
            && self.desc.is_none()
            && self.tags.is_none()
            && self.exceptions.is_none()
            && self.priority.is_none()
            && self.enabled.is_none()
            && self.skip_if_unknown_filter.is_none()
            && self.warn_evttypes.is_none()
            && self.capture.is_none()
            && self.capture_duration.is_none()
    }
}

#[derive(Default)]
pub(crate) struct Collection<'s> {
    pub lists: Indexed<ListInfo<'s>>,
    pub macros: Indexed<MacroInfo>,
    pub rules: Indexed<RuleInfo>,
    next: u32,
}

pub(crate) const SYSCALL: &str = "syscall";

impl<'s> Collection<'s> {
    fn next_index(&mut self) -> u32 {
        let i = self.next;
        self.next = self.next.saturating_add(1);
        i
    }

    /// A redefinition replaces the old one but keeps its place in the order.
    pub fn define_list(&mut self, mut info: ListInfo<'s>) {
        let id = self.next_index();
        info.index = id;
        info.visibility = id;
        let name = info.name.clone();
        self.lists
            .upsert(&name, info, |old, new| new.index = old.index);
    }

    pub fn append_list(&mut self, name: &str, items: ListItems<'s>) -> Result<(), String> {
        let id = self.next_index();
        let list = self.lists.get_mut(name).ok_or_else(|| {
            format!(
                "List '{name}' has 'append' or 'override' but no list by that name already exists"
            )
        })?;
        list.items.extend(items);
        list.visibility = id;
        Ok(())
    }

    pub fn define_macro(&mut self, mut info: MacroInfo) {
        let id = self.next_index();
        info.index = id;
        info.visibility = id;
        let name = info.name.clone();
        self.macros
            .upsert(&name, info, |old, new| new.index = old.index);
    }

    pub fn append_macro(&mut self, name: &str, cond: &Text) -> Result<(), String> {
        let id = self.next_index();
        let m = self.macros.get_mut(name).ok_or_else(|| {
            format!(
                "Macro '{name}' has 'append' or 'override' but no macro by that name already exists"
            )
        })?;
        m.cond.append(cond);
        m.visibility = id;
        Ok(())
    }

    pub fn define_rule(&mut self, mut info: RuleInfo) -> Result<(), String> {
        if let Some(old) = self.rules.get(&info.name)
            && old.source != info.source
        {
            return Err(OTHER_SOURCE.into());
        }
        info.index = self.next_index();
        let name = info.name.clone();
        self.rules
            .upsert(&name, info, |old, new| new.index = old.index);
        Ok(())
    }

    pub fn append_rule(&mut self, name: &str, update: RuleUpdate) -> Result<(), String> {
        let rule = self
            .rules
            .get_mut(name)
            .ok_or_else(|| format!("Rule '{name}' has 'append' or 'override: append' but no rule by that name already exists"))?;
        if update.is_empty() {
            return Err(
                "Appended rule must have at least one field that can be appended to".into(),
            );
        }
        if update.source.as_ref().is_some_and(|s| *s != rule.source) {
            return Err(OTHER_SOURCE.into());
        }
        // Check the exceptions first so that a refused append changes nothing.
        let mut extra_values = Vec::new();
        let mut added = Vec::new();
        for ex in update.exceptions.unwrap_or_default() {
            match rule.exceptions.iter().position(|e| e.name == ex.name) {
                Some(i) => {
                    if ex.fields.is_some() || ex.comps.is_some() {
                        return Err(format!(
                            "exception '{}': can not append fields or comps to an existing exception, only values",
                            ex.name
                        ));
                    }
                    extra_values.push((i, ex.values));
                }
                None => {
                    if ex.fields.is_none() {
                        return Err(format!(
                            "exception '{}': rule exception must have fields property with a list of fields",
                            ex.name
                        ));
                    }
                    if ex.values.is_empty() {
                        return Err(format!(
                            "exception '{}': a new exception must have values",
                            ex.name
                        ));
                    }
                    added.push(exceptions::validate(ex)?);
                }
            }
        }
        for (i, values) in extra_values {
            if let Some(prev) = rule.exceptions.get_mut(i) {
                prev.values.extend(values);
            }
        }
        rule.exceptions.extend(added);
        if let Some(cond) = &update.cond {
            rule.cond.append(cond);
        }
        if let Some(output) = &update.output {
            rule.output.append(output);
        }
        if let Some(desc) = &update.desc {
            rule.desc.push(' ');
            rule.desc.push_str(desc);
        }
        if let Some(tags) = update.tags {
            rule.tags.extend(tags);
        }
        self.next_index();
        Ok(())
    }

    pub fn replace_rule(&mut self, name: &str, update: RuleUpdate) -> Result<(), String> {
        let rule = self.rules.get_mut(name).ok_or_else(|| {
            format!("Rule '{name}' has 'override: replace' but no rule by that name already exists")
        })?;
        if update.is_empty() {
            return Err("The rule must have at least one field that can be replaced".into());
        }
        if update.source.as_ref().is_some_and(|s| *s != rule.source) {
            return Err(OTHER_SOURCE.into());
        }
        let exceptions = match update.exceptions {
            Some(list) => Some(
                list.into_iter()
                    .map(exceptions::validate)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        if let Some(exceptions) = exceptions {
            rule.exceptions = exceptions;
        }
        if let Some(cond) = update.cond {
            rule.cond = cond;
        }
        if let Some(output) = update.output {
            rule.output = output;
        }
        if let Some(desc) = update.desc {
            rule.desc = desc;
        }
        if let Some(tags) = update.tags {
            rule.tags = tags;
        }
        if let Some(priority) = update.priority {
            rule.priority = priority;
        }
        if let Some(enabled) = update.enabled {
            rule.enabled = enabled;
        }
        if let Some(warn) = update.warn_evttypes {
            rule.warn_evttypes = warn;
        }
        if let Some(skip) = update.skip_if_unknown_filter {
            rule.skip_if_unknown_filter = skip;
        }
        self.next_index();
        Ok(())
    }

    pub fn enable_rule(&mut self, name: &str, enabled: bool) -> Result<(), String> {
        let rule = self.rules.get_mut(name).ok_or_else(|| {
            "Rule has 'enabled' key but no rule by that name already exists".to_string()
        })?;
        rule.enabled = enabled;
        Ok(())
    }
}
