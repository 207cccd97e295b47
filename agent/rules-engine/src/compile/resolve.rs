//! Lists and macros: list expansion, Falco's textual substitution for list
//! names the grammar cannot express, and the resolution of every macro.
use std::collections::{HashMap, HashSet};

use super::{Compiler, MAX_LIST_NESTING, MAX_LIST_VALUES, MAX_TOTAL, Resolved};
use crate::ast::{Expr, ExprKind, Rhs};
use crate::collect::ItemAt;
use crate::collect::{Collection, ListInfo};
use crate::diagnostics::Sink;
use crate::lexer::Cursor;
use crate::parser;

/// Characters Falco's textual list substitution treats as name boundaries.
pub(super) const LIST_DELIMS: &[char] = &[' ', '\t', '\n', '\r', '(', ')', ',', '='];

/// Falco substitutes list names into the condition text; Egret resolves
/// names while compiling, except for names the grammar cannot express,
/// which are substituted as Falco does (positions in errors then refer to
/// the substituted text).
fn substitute(text: &str, name: &str, items: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find(name) {
        let before = rest.get(..i).unwrap_or("");
        let after = rest.get(i + name.len()..).unwrap_or("");
        let bounded = before
            .chars()
            .next_back()
            .is_none_or(|c| LIST_DELIMS.contains(&c))
            && after
                .chars()
                .next()
                .is_none_or(|c| LIST_DELIMS.contains(&c));
        out.push_str(before);
        if bounded {
            out.push_str(items);
            changed = true;
        } else {
            out.push_str(name);
        }
        rest = after;
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// A fully quoted list item stands for its unquoted content, as when Falco
/// pastes list items into a condition; `None`: the text stands as it is.
fn unquote(text: &str) -> Option<String> {
    let mut cursor = Cursor::new(text);
    match cursor.quoted() {
        Ok(Some(inner)) if cursor.at_end() => Some(inner),
        _ => None,
    }
}

pub(super) fn scan_refs(expr: &Expr, used: &mut HashSet<String>) {
    match &expr.kind {
        ExprKind::And(children) | ExprKind::Or(children) => {
            children.iter().for_each(|c| scan_refs(c, used));
        }
        ExprKind::Not(inner) => scan_refs(inner, used),
        ExprKind::Ident(name) => {
            used.insert(name.clone());
        }
        ExprKind::Check(check) => {
            if let Rhs::List(items) = &check.rhs {
                used.extend(items.iter().filter(|i| !i.quoted).map(|i| i.text.clone()));
            }
        }
    }
}

/// Every macro name a condition refers to, with its offset.
fn idents<'e>(expr: &'e Expr, out: &mut Vec<(&'e str, u32)>) {
    let mut todo = vec![expr];
    while let Some(e) = todo.pop() {
        match &e.kind {
            ExprKind::And(children) | ExprKind::Or(children) => todo.extend(children.iter()),
            ExprKind::Not(inner) => todo.push(inner),
            ExprKind::Ident(name) => out.push((name, e.pos)),
            ExprKind::Check(_) => {}
        }
    }
    out.sort_by_key(|(_, pos)| *pos);
}

impl<'c, 'f> Compiler<'c, 'f> {
    /// Falco resolves every macro, used or not: a macro naming an undefined
    /// macro, or a reference loop, is an error even if no rule uses it. Each
    /// macro's own mistakes are reported once, at its text; the result is
    /// memoized so shared macros are walked once.
    pub(super) fn check_macro(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        checked: &mut HashMap<String, bool>,
        sink: &mut Sink,
    ) -> bool {
        if let Some(&ok) = checked.get(name) {
            return ok;
        }
        let Some(entry) = self.macros.get(name) else {
            return false;
        };
        let Some(ast) = &entry.ast else {
            checked.insert(name.to_string(), false);
            return false;
        };
        let mut refs = Vec::new();
        idents(ast, &mut refs);
        stack.push(name.to_string());
        let mut ok = true;
        for (r, pos) in refs {
            let at = || entry.info.cond.locate(pos as usize, self.files);
            match self.macros.get(r) {
                Some(m) if m.info.index < entry.info.visibility => {
                    if stack.iter().any(|s| s == r) {
                        sink.error(
                            at(),
                            format!("macro '{name}': reference loop in macro '{r}'"),
                        );
                        ok = false;
                    } else if !self.check_macro(r, stack, checked, sink) {
                        ok = false;
                    }
                }
                Some(_) if r == name => {
                    sink.error(at(), format!("macro '{name}' refers to itself"));
                    ok = false;
                }
                Some(_) => {
                    sink.error(at(), format!("macro '{name}': undefined macro '{r}' used in filter: it is defined after the macro that uses it"));
                    ok = false;
                }
                None => {
                    sink.error(
                        at(),
                        format!("macro '{name}': undefined macro '{r}' used in filter"),
                    );
                    ok = false;
                }
            }
        }
        stack.pop();
        checked.insert(name.to_string(), ok);
        ok
    }

    /// Items naming a list defined before this list's last change expand to
    /// that list's values.
    pub(super) fn resolve_list(
        &mut self,
        coll: &'c Collection<'f>,
        info: &'c ListInfo<'f>,
        depth: u32,
    ) -> Resolved<'c, 'f> {
        // References only once an item names a list; until then the values
        // are the items themselves.
        let mut refs: Option<Vec<ItemAt<'c, 'f>>> = None;
        let mut count = 0usize;
        for (i, item) in info.items.iter().enumerate() {
            if count > MAX_LIST_VALUES {
                break;
            }
            if self.spent.saturating_add(count) > MAX_TOTAL {
                break;
            }
            match coll.lists.get(item.text()) {
                Some(r)
                    if r.index < info.visibility
                        && r.name != info.name
                        && depth < MAX_LIST_NESTING =>
                {
                    self.used.insert(r.name.clone());
                    if !self.lists.contains_key(r.name.as_str()) {
                        let values = self.resolve_list(coll, r, depth + 1);
                        self.lists.insert(&r.name, values);
                    }
                    let out = refs.get_or_insert_with(|| {
                        let mut out = Vec::with_capacity(info.items.len().min(MAX_LIST_VALUES + 1));
                        out.extend(info.items.iter().take(i));
                        out
                    });
                    if let Some(values) = self.lists.get(r.name.as_str()) {
                        out.extend(values.iter().take(MAX_LIST_VALUES + 1));
                    }
                    count = out.len();
                }
                _ => {
                    if let Some(inner) = unquote(item.text()) {
                        self.unquoted.insert(item.key(), inner);
                    }
                    if let Some(out) = refs.as_mut() {
                        out.push(item);
                    }
                    count += 1;
                }
            }
        }
        match refs {
            Some(refs) => Resolved::Refs(refs),
            None => Resolved::Items(&info.items, count),
        }
    }

    /// Parses a condition, after substituting any oddly named lists.
    pub(super) fn parse(&mut self, text: &str) -> Result<Expr, parser::ParseError> {
        let mut owned: Option<String> = None;
        for (name, items) in &self.odd_lists {
            if let Some(new) = substitute(owned.as_deref().unwrap_or(text), name, items) {
                owned = Some(new);
                self.used.insert((*name).to_string());
            }
        }
        parser::parse(owned.as_deref().unwrap_or(text))
    }
}
