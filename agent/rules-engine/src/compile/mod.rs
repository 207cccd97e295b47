//! Resolves lists and macros, checks every field against the catalog, and
//! builds the evaluator tree for each rule.
use std::collections::{HashMap, HashSet};

use crate::ast::Expr;
use crate::collect::{Collection, ItemAt, ListItems, MacroInfo, RuleInfo};
use crate::diagnostics::{Files, Loc, Sink};
use crate::eval::Node;
use crate::exceptions;
use crate::fields::FieldError;
use crate::output::{self, Template};

mod cx;
mod resolve;

use cx::{Cx, Place, Scope};
use resolve::{LIST_DELIMS, scan_refs};

/// Depth of a condition after macro expansion; bounds the stack used by
/// compiling and evaluating it.
pub(crate) const MAX_DEPTH: u32 = 1000;
/// Nodes one rule may expand to (macros can nest exponentially).
pub(crate) const MAX_NODES: usize = 1_000_000;
/// Nodes plus values one rule may expand to: room for a few huge lists.
pub(crate) const MAX_SIZE: usize = 4_000_000;
/// Nodes plus values all lists and rules may expand to together: bounds the
/// memory a load takes (a value costs some 50 bytes once compiled).
pub(crate) const MAX_TOTAL: usize = 8_000_000;
/// Values one list may expand to (IOC lists run to millions), and how deep
/// lists may nest.
pub(crate) const MAX_LIST_VALUES: usize = 2_000_000;
const MAX_LIST_NESTING: u32 = 32;

/// A resolved list's values: the items themselves, not copies (at a million
/// items copies were the largest allocation of a load). A list naming no
/// other list is its own items (the first `n`, within the value budget);
/// one that does, references to the items it expands to. A value's text is
/// [`Compiler::value_text`].
pub(super) enum Resolved<'c, 'f> {
    Items(&'c ListItems<'f>, usize),
    Refs(Vec<ItemAt<'c, 'f>>),
}

impl<'c, 'f> Resolved<'c, 'f> {
    pub(super) fn len(&self) -> usize {
        match self {
            Resolved::Items(_, n) => *n,
            Resolved::Refs(refs) => refs.len(),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = ItemAt<'c, 'f>> + '_ {
        let (items, refs) = match self {
            Resolved::Items(items, n) => (Some(items.iter().take(*n)), None),
            Resolved::Refs(refs) => (None, Some(refs.iter().copied())),
        };
        items
            .into_iter()
            .flatten()
            .chain(refs.into_iter().flatten())
    }

    /// The value of a one-value list.
    pub(super) fn single(&self) -> Option<ItemAt<'c, 'f>> {
        (self.len() == 1).then(|| self.iter().next()).flatten()
    }
}

struct MacroEntry<'c> {
    info: &'c MacroInfo,
    ast: Option<Expr>,
}

pub(crate) struct Compiler<'c, 'f> {
    files: &'c Files<'f>,
    lists: HashMap<&'c str, Resolved<'c, 'f>>,
    /// The unquoted text of fully quoted items (`'"a b"'`), by item.
    unquoted: HashMap<(usize, usize), String>,
    macros: HashMap<&'c str, MacroEntry<'c>>,
    /// Names referenced as macros or list values anywhere.
    used: HashSet<String>,
    /// Nodes and values spent so far, against MAX_TOTAL.
    spent: usize,
    /// Lists whose names the grammar cannot express (`test list`), with
    /// their items as condition text.
    odd_lists: Vec<(&'c str, String)>,
}

/// A field the catalog lacks, and where the rule uses it.
pub(crate) struct Unknown {
    pub field: String,
    pub place: String,
}

pub(crate) struct Compiled {
    pub node: Node,
    pub output: Template,
    pub unknown: Vec<Unknown>,
    pub errors: Vec<(Loc, String)>,
    pub warnings: Vec<(Loc, String)>,
    /// The `evt.type` values the rule compares with.
    pub evt_types: std::collections::BTreeSet<String>,
}

impl<'c, 'f> Compiler<'c, 'f> {
    pub fn new(coll: &'c Collection<'f>, files: &'c Files<'f>, sink: &mut Sink) -> Self {
        let mut c = Compiler {
            files,
            lists: HashMap::new(),
            unquoted: HashMap::new(),
            macros: HashMap::new(),
            used: HashSet::new(),
            spent: 0,
            odd_lists: Vec::new(),
        };
        for info in &coll.lists.items {
            if !c.lists.contains_key(info.name.as_str()) {
                let values = c.resolve_list(coll, info, 0);
                c.spent = c.spent.saturating_add(values.len());
                if values.len() > MAX_LIST_VALUES {
                    sink.error(
                        info.loc,
                        format!(
                            "list '{}' expands to more than {MAX_LIST_VALUES} values",
                            info.name
                        ),
                    );
                }
                c.lists.insert(&info.name, values);
            }
        }
        for info in &coll.lists.items {
            if info.name.contains(LIST_DELIMS) || info.name.contains(['"', '\'']) {
                let items: Vec<String> = c
                    .lists
                    .get(info.name.as_str())
                    .map(|vs| {
                        vs.iter()
                            .map(|v| {
                                let text = c.value_text(v);
                                if text.contains(' ') {
                                    format!("\"{text}\"")
                                } else {
                                    text.to_string()
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                c.odd_lists.push((&info.name, items.join(", ")));
            }
        }
        for info in &coll.macros.items {
            let ast = match c.parse(&info.cond.text) {
                Ok(ast) => {
                    scan_refs(&ast, &mut c.used);
                    Some(ast)
                }
                Err(e) => {
                    sink.error(
                        info.cond.locate(e.offset, files),
                        format!("macro '{}': {}", info.name, e.message),
                    );
                    None
                }
            };
            c.macros.insert(&info.name, MacroEntry { info, ast });
        }
        let mut checked = HashMap::new();
        for info in &coll.macros.items {
            c.check_macro(&info.name, &mut Vec::new(), &mut checked, sink);
        }
        c
    }

    /// A list value's text: the item's, unquoted.
    pub(super) fn value_text<'s>(&'s self, item: ItemAt<'s, '_>) -> &'s str {
        self.unquoted
            .get(&item.key())
            .map_or(item.text(), String::as_str)
    }

    pub fn is_used(&self, name: &str) -> bool {
        self.used.contains(name)
    }

    /// Records what a rule that will not be compiled refers to.
    pub fn note_refs(&mut self, rule: &RuleInfo) {
        if let Ok(ast) = self.parse(&rule.cond.text) {
            scan_refs(&ast, &mut self.used);
        }
    }

    pub fn compile_rule(&mut self, rule: &'c RuleInfo) -> Compiled {
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        let cond = self
            .parse(&rule.cond.text)
            .map_err(|e| errors.push((rule.cond.locate(e.offset, self.files), e.message)))
            .ok();
        let exceptions: Vec<(String, Loc, Option<Expr>)> = rule
            .exceptions
            .iter()
            .map(|ex| match exceptions::condition(ex) {
                Ok(expr) => (ex.name.clone(), ex.loc, expr),
                Err(message) => {
                    errors.push((ex.loc, message));
                    (ex.name.clone(), ex.loc, None)
                }
            })
            .collect();
        for expr in cond
            .iter()
            .chain(exceptions.iter().filter_map(|e| e.2.as_ref()))
        {
            scan_refs(expr, &mut self.used);
        }
        let mut cx = Cx {
            comp: self,
            unknown: Vec::new(),
            errors,
            stack: Vec::new(),
            warnings: Vec::new(),
            size: 0,
            nodes: 0,
            reported_size: false,
            evt_types: Default::default(),
        };
        if self.spent > MAX_TOTAL {
            cx.errors.push((
                rule.loc,
                format!("the rules expand to more than {MAX_TOTAL} nodes and values in all; rule not loaded"),
            ));
        }
        // Falco checks exception fields when the exception is defined, even
        // before it has values.
        for ex in &rule.exceptions {
            cx.exception_fields(ex);
        }
        if let Some(cond) = &cond {
            let scope = Scope {
                text: Some(&rule.cond),
                fixed: rule.cond.start(),
                visibility: u32::MAX,
                place: Place::Condition,
            };
            parts.push(cx.expr(cond, &scope, 0));
        }
        for (name, loc, expr) in &exceptions {
            if let Some(expr) = expr {
                let scope = Scope {
                    text: None,
                    fixed: *loc,
                    visibility: u32::MAX,
                    place: Place::Exception(name),
                };
                parts.push(negate(cx.expr(expr, &scope, 0)));
            }
        }
        let (output, bad) = output::parse(&rule.output.text);
        for b in bad {
            let at = rule.output.locate(b.offset, cx.comp.files);
            match b.error {
                FieldError::Unknown(_) => {
                    cx.note_unknown(b.name, format!("output at {}", cx.comp.files.location(at)))
                }
                other => cx.errors.push((at, other.to_string())),
            }
        }
        let (size, unknown, errors, warnings) = (cx.size, cx.unknown, cx.errors, cx.warnings);
        let evt_types = cx.evt_types;
        self.spent = self.spent.saturating_add(size);
        Compiled {
            node: all(parts),
            output,
            unknown,
            errors,
            warnings,
            evt_types,
        }
    }
}

fn all(nodes: Vec<Node>) -> Node {
    let mut out = Vec::new();
    for node in nodes {
        match node {
            Node::Const(true) => {}
            Node::Const(false) => return Node::Const(false),
            Node::And(inner) => out.extend(inner.into_vec()),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Node::Const(true),
        1 => out.pop().unwrap_or(Node::Const(true)),
        _ => Node::And(out.into_boxed_slice()),
    }
}

fn any(nodes: Vec<Node>) -> Node {
    let mut out = Vec::new();
    for node in nodes {
        match node {
            Node::Const(false) => {}
            Node::Const(true) => return Node::Const(true),
            Node::Or(inner) => out.extend(inner.into_vec()),
            other => out.push(other),
        }
    }
    match out.len() {
        0 => Node::Const(false),
        1 => out.pop().unwrap_or(Node::Const(false)),
        _ => Node::Or(out.into_boxed_slice()),
    }
}

fn negate(node: Node) -> Node {
    match node {
        Node::Const(b) => Node::Const(!b),
        Node::Not(inner) => *inner,
        other => Node::Not(Box::new(other)),
    }
}
