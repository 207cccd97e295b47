//! Resolves lists and macros, checks every field against the catalog, and
//! builds the evaluator tree for each rule.
use std::collections::{HashMap, HashSet};

use crate::ast::{Expr, ExprKind, Quant, Rhs};
use crate::checks::{self, Val};
use crate::collect::{Collection, ListInfo, MacroInfo, RuleInfo};
use crate::diagnostics::{Files, Loc, Sink, Text};
use crate::eval::{Node, Test};
use crate::exceptions;
use crate::fields::{self, FieldError};
use crate::lexer::Cursor;
use crate::output::{self, Template};
use crate::parser;

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

#[derive(Clone)]
struct ListValue {
    text: String,
    loc: Loc,
}

struct MacroEntry<'c> {
    info: &'c MacroInfo,
    ast: Option<Expr>,
}

pub(crate) struct Compiler<'c, 'f> {
    files: &'c Files<'f>,
    lists: HashMap<&'c str, Vec<ListValue>>,
    macros: HashMap<&'c str, MacroEntry<'c>>,
    /// Names referenced as macros or list values anywhere.
    used: HashSet<String>,
    /// Nodes and values spent so far, against MAX_TOTAL.
    spent: usize,
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
}

/// A fully quoted list item stands for its unquoted content, as when Falco
/// pastes list items into a condition.
fn unquote(text: &str) -> String {
    let mut cursor = Cursor::new(text);
    match cursor.quoted() {
        Ok(Some(inner)) if cursor.at_end() => inner,
        _ => text.to_string(),
    }
}

fn scan_refs(expr: &Expr, used: &mut HashSet<String>) {
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

impl<'c, 'f> Compiler<'c, 'f> {
    pub fn new(coll: &'c Collection, files: &'c Files<'f>, sink: &mut Sink) -> Self {
        let mut c = Compiler {
            files,
            lists: HashMap::new(),
            macros: HashMap::new(),
            used: HashSet::new(),
            spent: 0,
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
        for info in &coll.macros.items {
            let ast = match parser::parse(&info.cond.text) {
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

    /// Falco resolves every macro, used or not: a macro naming an undefined
    /// macro, or a reference loop, is an error even if no rule uses it. Each
    /// macro's own mistakes are reported once, at its text; the result is
    /// memoized so shared macros are walked once.
    fn check_macro(
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
    fn resolve_list(
        &mut self,
        coll: &'c Collection,
        info: &'c ListInfo,
        depth: u32,
    ) -> Vec<ListValue> {
        let mut out = Vec::new();
        for item in &info.items {
            if out.len() > MAX_LIST_VALUES {
                break;
            }
            if self.spent.saturating_add(out.len()) > MAX_TOTAL {
                break;
            }
            match coll.lists.get(&item.text) {
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
                    if let Some(values) = self.lists.get(r.name.as_str()) {
                        out.extend(values.iter().take(MAX_LIST_VALUES + 1).cloned());
                    }
                }
                _ => out.push(ListValue {
                    text: unquote(&item.text),
                    loc: item.loc,
                }),
            }
        }
        out
    }

    pub fn is_used(&self, name: &str) -> bool {
        self.used.contains(name)
    }

    /// Records what a rule that will not be compiled refers to.
    pub fn note_refs(&mut self, rule: &RuleInfo) {
        if let Ok(ast) = parser::parse(&rule.cond.text) {
            scan_refs(&ast, &mut self.used);
        }
    }

    pub fn compile_rule(&mut self, rule: &'c RuleInfo) -> Compiled {
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        let cond = parser::parse(&rule.cond.text)
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
            size: 0,
            nodes: 0,
            reported_size: false,
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
        let (size, unknown, errors) = (cx.size, cx.unknown, cx.errors);
        self.spent = self.spent.saturating_add(size);
        Compiled {
            node: all(parts),
            output,
            unknown,
            errors,
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

#[derive(Clone, Copy)]
enum Place<'a> {
    Condition,
    Macro(&'a str),
    Exception(&'a str),
}

struct Scope<'a> {
    /// The text positions refer to; exceptions have none and use `fixed`.
    text: Option<&'a Text>,
    fixed: Loc,
    /// Macros see macros defined before their last change; rules see all.
    visibility: u32,
    place: Place<'a>,
}

struct Cx<'a, 'c, 'f> {
    comp: &'a Compiler<'c, 'f>,
    unknown: Vec<Unknown>,
    errors: Vec<(Loc, String)>,
    stack: Vec<&'a str>,
    size: usize,
    nodes: usize,
    reported_size: bool,
}

impl<'a> Cx<'a, '_, '_> {
    fn locate(&self, scope: &Scope<'_>, pos: u32) -> Loc {
        match scope.text {
            Some(text) => text.locate(pos as usize, self.comp.files),
            None => scope.fixed,
        }
    }

    fn note_unknown(&mut self, field: String, place: String) {
        if !self.unknown.iter().any(|u| u.field == field) {
            self.unknown.push(Unknown { field, place });
        }
    }

    fn exception_fields(&mut self, ex: &crate::exceptions::ExceptionInfo) {
        use crate::exceptions::Entry;
        let names: Vec<&str> = match &ex.fields {
            Some(Entry::Item(f)) => vec![f.as_str()],
            Some(Entry::List(fs)) => fs
                .iter()
                .filter_map(|f| match f {
                    Entry::Item(f) => Some(f.as_str()),
                    Entry::List(_) => None,
                })
                .collect(),
            None => Vec::new(),
        };
        for text in names {
            let Some((name, arg)) = parser::parse_field(text) else {
                self.errors.push((
                    ex.loc,
                    format!(
                        "exception '{}': '{text}' is not a valid field name",
                        ex.name
                    ),
                ));
                continue;
            };
            match fields::lookup(&name, arg.as_deref()) {
                Ok(_) => {}
                Err(FieldError::Unknown(field)) => {
                    let at = self.comp.files.location(ex.loc);
                    self.note_unknown(field, format!("exception '{}' at {at}", ex.name));
                }
                Err(e) => self
                    .errors
                    .push((ex.loc, format!("exception '{}': {e}", ex.name))),
            }
        }
    }

    fn spend(&mut self, n: usize, at: Loc) -> bool {
        self.size = self.size.saturating_add(n);
        if self.size <= MAX_SIZE
            && self.nodes <= MAX_NODES
            && self.comp.spent.saturating_add(self.size) <= MAX_TOTAL
        {
            return true;
        }
        if !self.reported_size {
            self.reported_size = true;
            let message = if self.nodes > MAX_NODES {
                format!("condition expands to more than {MAX_NODES} nodes")
            } else if self.size > MAX_SIZE {
                format!("condition expands to more than {MAX_SIZE} nodes and values")
            } else {
                format!("the rules expand to more than {MAX_TOTAL} nodes and values in all")
            };
            self.errors.push((at, message));
        }
        false
    }

    fn expr(&mut self, e: &'a Expr, scope: &Scope<'a>, depth: u32) -> Node {
        if depth > MAX_DEPTH {
            let at = self.locate(scope, e.pos);
            self.errors.push((
                at,
                format!("condition nests more than {MAX_DEPTH} levels deep after macro expansion"),
            ));
            return Node::Const(false);
        }
        self.nodes = self.nodes.saturating_add(1);
        if !self.spend(1, scope.fixed) {
            return Node::Const(false);
        }
        match &e.kind {
            ExprKind::And(children) => all(children
                .iter()
                .map(|c| self.expr(c, scope, depth + 1))
                .collect()),
            ExprKind::Or(children) => any(children
                .iter()
                .map(|c| self.expr(c, scope, depth + 1))
                .collect()),
            ExprKind::Not(inner) => negate(self.expr(inner, scope, depth + 1)),
            ExprKind::Ident(name) => self.macro_ref(name, e.pos, scope, depth),
            ExprKind::Check(check) => self.check(check, e.pos, scope),
        }
    }

    fn macro_ref(&mut self, name: &str, pos: u32, scope: &Scope<'a>, depth: u32) -> Node {
        let at = self.locate(scope, pos);
        let comp = self.comp;
        // Inside a macro, reference mistakes were reported at the macro
        // (`check_macro`); the rule only learns that it cannot load.
        if matches!(scope.place, Place::Macro(_)) {
            let broken = match comp.macros.get(name) {
                Some(entry) if entry.info.index < scope.visibility => {
                    self.stack.contains(&name) || entry.ast.is_none()
                }
                _ => true,
            };
            if broken {
                self.errors.push((at, String::new()));
                return Node::Const(false);
            }
        }
        let entry = match comp.macros.get(name) {
            Some(entry) if entry.info.index < scope.visibility => entry,
            Some(_) if matches!(scope.place, Place::Macro(m) if m == name) => {
                self.errors
                    .push((at, format!("macro '{name}' refers to itself")));
                return Node::Const(false);
            }
            Some(_) => {
                self.errors.push((at, format!("undefined macro '{name}' used in filter: it is defined after the macro that uses it")));
                return Node::Const(false);
            }
            None => {
                self.errors
                    .push((at, format!("undefined macro '{name}' used in filter")));
                return Node::Const(false);
            }
        };
        if self.stack.contains(&name) {
            self.errors
                .push((at, format!("reference loop in macro '{name}'")));
            return Node::Const(false);
        }
        let Some(ast) = &entry.ast else {
            self.errors
                .push((at, format!("macro '{name}' has a syntax error")));
            return Node::Const(false);
        };
        let inner = Scope {
            text: Some(&entry.info.cond),
            fixed: entry.info.loc,
            visibility: entry.info.visibility,
            place: Place::Macro(&entry.info.name),
        };
        self.stack.push(&entry.info.name);
        let node = self.expr(ast, &inner, depth + 1);
        self.stack.pop();
        node
    }

    fn check(&mut self, check: &'a crate::ast::Check, pos: u32, scope: &Scope<'a>) -> Node {
        let field = match fields::lookup(&check.field, check.arg.as_deref()) {
            Ok(field) => field,
            Err(FieldError::Unknown(name)) => {
                let at = self.comp.files.location(self.locate(scope, pos));
                let place = match scope.place {
                    Place::Condition => format!("condition at {at}"),
                    Place::Macro(m) => format!("macro '{m}' at {at}"),
                    Place::Exception(e) => format!("exception '{e}' at {at}"),
                };
                self.note_unknown(name, place);
                return Node::Const(false);
            }
            Err(e) => {
                let at = self.locate(scope, pos);
                self.errors.push((at, e.to_string()));
                return Node::Const(false);
            }
        };
        // Where each value was written, located only if an error needs it.
        let mut vals: Vec<Val<'a>> = Vec::new();
        let mut wheres: Vec<Result<u32, Loc>> = Vec::new();
        let mut push = |text: &'a str, at: Result<u32, Loc>| {
            vals.push(Val {
                text,
                at: wheres.len(),
            });
            wheres.push(at);
        };
        match &check.rhs {
            Rhs::None => {}
            Rhs::Value(lit) => push(&lit.text, Ok(lit.pos)),
            Rhs::List(items) => {
                for lit in items {
                    match self
                        .comp
                        .lists
                        .get(lit.text.as_str())
                        .filter(|_| !lit.quoted)
                    {
                        Some(values) => values.iter().for_each(|v| push(&v.text, Err(v.loc))),
                        None => push(&lit.text, Ok(lit.pos)),
                    }
                }
            }
        }
        if !self.spend(vals.len(), scope.fixed) {
            return Node::Const(false);
        }
        if let Some(quant) = check.quant {
            // `op oneof (a, b)`: the operator against each value.
            let mut nodes = Vec::with_capacity(vals.len());
            for v in &vals {
                let one = [Val {
                    text: v.text,
                    at: v.at,
                }];
                match checks::build(&check.field, &field, check.op, &one) {
                    Ok((cmp, negate)) => nodes.push(Node::Check(Box::new(Test {
                        src: field.src.clone(),
                        cmp,
                        negate,
                    }))),
                    Err((_, message)) => {
                        let at = match wheres.get(v.at) {
                            Some(Err(loc)) => *loc,
                            Some(Ok(p)) => self.locate(scope, *p),
                            None => self.locate(scope, pos),
                        };
                        self.errors.push((at, message));
                        return Node::Const(false);
                    }
                }
            }
            return match quant {
                Quant::Any => any(nodes),
                Quant::All => all(nodes),
                Quant::One => Node::One(nodes.into_boxed_slice()),
            };
        }
        match checks::build(&check.field, &field, check.op, &vals) {
            Ok((cmp, negate)) => Node::Check(Box::new(Test {
                src: field.src,
                cmp,
                negate,
            })),
            Err((index, message)) => {
                let at = match index.and_then(|i| wheres.get(i)) {
                    Some(Err(loc)) => *loc,
                    Some(Ok(p)) => self.locate(scope, *p),
                    None => self.locate(scope, pos),
                };
                self.errors.push((at, message));
                Node::Const(false)
            }
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
