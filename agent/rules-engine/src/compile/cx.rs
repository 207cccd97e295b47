//! One rule's compilation: macro expansion in scope, field lookup, value
//! checks and the size budgets.
use super::{Compiler, MAX_DEPTH, MAX_NODES, MAX_SIZE, MAX_TOTAL, Unknown, all, any, negate};
use crate::ast::{Expr, ExprKind, Quant, Rhs};
use crate::checks::{self, Val};
use crate::diagnostics::{Loc, Text};
use crate::eval::{Node, Test};
use crate::fields::{self, FieldError};
use crate::parser;

/// Falco's warning for a string value that reads like a field or a field
/// transformer: the rule compares with that text, which is rarely meant.
fn ambiguity(text: &str) -> Option<String> {
    let trimmed = text.trim();
    if let Some((name, arg)) = parser::parse_field(trimmed)
        && name.contains('.')
        && fields::lookup(&name, arg.as_deref()).is_ok()
    {
        return Some(format!(
            "'{text}' may be a valid field misused as a const string value"
        ));
    }
    let transformer = parser::TRANSFORMERS
        .iter()
        .any(|t| trimmed.starts_with(t) && trimmed.ends_with(')'));
    transformer.then(|| {
        format!("'{text}' may be a valid field transformer misused as a const string value")
    })
}

/// `toupper(proc.pname)` as a whole value: Falco compares with the
/// transformed field; Egret has no transformers, and refuses it rather than
/// compare with the text.
fn transformer_value(text: &str) -> Option<String> {
    let t = parser::TRANSFORMERS.iter().find(|t| text.starts_with(*t))?;
    let inner = text.get(t.len()..)?.strip_suffix(')')?;
    parser::parse_field(inner).filter(|_| !inner.starts_with(' '))?;
    Some(format!(
        "field transformer '{t})' in the value '{text}' is not supported by Egret"
    ))
}

#[derive(Clone, Copy)]
pub(super) enum Place<'a> {
    Condition,
    Macro(&'a str),
    Exception(&'a str),
}

pub(super) struct Scope<'a> {
    /// The text positions refer to; exceptions have none and use `fixed`.
    pub(super) text: Option<&'a Text>,
    pub(super) fixed: Loc,
    /// Macros see macros defined before their last change; rules see all.
    pub(super) visibility: u32,
    pub(super) place: Place<'a>,
}

pub(super) struct Cx<'a, 'c, 'f> {
    pub(super) comp: &'a Compiler<'c, 'f>,
    pub(super) unknown: Vec<Unknown>,
    pub(super) errors: Vec<(Loc, String)>,
    pub(super) stack: Vec<&'a str>,
    pub(super) warnings: Vec<(Loc, String)>,
    pub(super) size: usize,
    pub(super) nodes: usize,
    pub(super) reported_size: bool,
    /// Every `evt.type` value the condition compares with, for the reason
    /// a rule is unsupported.
    pub(super) evt_types: std::collections::BTreeSet<String>,
}

impl<'a> Cx<'a, '_, '_> {
    pub(super) fn locate(&self, scope: &Scope<'_>, pos: u32) -> Loc {
        match scope.text {
            Some(text) => text.locate(pos as usize, self.comp.files),
            None => scope.fixed,
        }
    }

    pub(super) fn note_unknown(&mut self, field: String, place: String) {
        if !self.unknown.iter().any(|u| u.field == field) {
            self.unknown.push(Unknown { field, place });
        }
    }

    pub(super) fn exception_fields(&mut self, ex: &crate::exceptions::ExceptionInfo) {
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
                let transformer = parser::TRANSFORMERS
                    .iter()
                    .any(|t| text.trim().starts_with(t));
                let why = if transformer {
                    "field transformers are not supported by Egret"
                } else {
                    "not a valid field name"
                };
                self.errors
                    .push((ex.loc, format!("exception '{}': '{text}': {why}", ex.name)));
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

    pub(super) fn expr(&mut self, e: &'a Expr, scope: &Scope<'a>, depth: u32) -> Node {
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
                // Neither true nor false for the event-type analysis (the
                // rule is not loaded): its event types decide whether it is
                // unsupported for its types or only for its fields.
                return Node::Check(Box::new(Test::new(
                    fields::Src::NotProvided,
                    crate::eval::Cmp::Never,
                    false,
                )));
            }
            Err(e) => {
                let at = self.locate(scope, pos);
                self.errors.push((at, e.to_string()));
                return Node::Const(false);
            }
        };
        if let (Rhs::List(items), None, fields::Kind::Ip | fields::Kind::Net) =
            (&check.rhs, check.quant, field.kind)
        {
            return self.address_list(check, items, field.src, pos, scope);
        }
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
        let literals: &[crate::ast::Literal] = match &check.rhs {
            Rhs::Value(lit) => std::slice::from_ref(lit),
            Rhs::List(items) => items,
            Rhs::None => &[],
        };
        if field.kind == fields::Kind::Str {
            for lit in literals {
                if let Some(error) = transformer_value(&lit.text) {
                    let at = self.locate(scope, lit.pos);
                    self.errors.push((at, error));
                    return Node::Const(false);
                }
                if let Some(warning) = ambiguity(&lit.text) {
                    let at = self.locate(scope, lit.pos);
                    self.warnings.push((at, warning));
                }
            }
        }
        match &check.rhs {
            Rhs::None => {}
            // Falco pastes list items over a bare list name anywhere, so
            // `proc.name = one_item_list` compares with that item; more
            // items there make Falco's condition a syntax error.
            Rhs::Value(lit) if !lit.quoted && self.comp.lists.contains_key(lit.text.as_str()) => {
                let values = self.comp.lists.get(lit.text.as_str());
                match values.and_then(|v| v.single()) {
                    Some(one) => push(self.comp.value_text(one), Err(one.loc())),
                    None => {
                        let at = self.locate(scope, lit.pos);
                        self.errors.push((
                            at,
                            format!(
                                "list '{}' has {} items where one value is expected (use 'in')",
                                lit.text,
                                values.map_or(0, |v| v.len())
                            ),
                        ));
                        return Node::Const(false);
                    }
                }
            }
            Rhs::Value(lit) => push(&lit.text, Ok(lit.pos)),
            Rhs::List(items) => {
                for lit in items {
                    match self
                        .comp
                        .lists
                        .get(lit.text.as_str())
                        .filter(|_| !lit.quoted)
                    {
                        Some(values) => values
                            .iter()
                            .for_each(|v| push(self.comp.value_text(v), Err(v.loc()))),
                        None => push(&lit.text, Ok(lit.pos)),
                    }
                }
            }
        }
        if !self.spend(vals.len(), scope.fixed) {
            return Node::Const(false);
        }
        if field.src == fields::Src::Event(crate::FieldId::EvtType) {
            // A set: a hostile list of millions of values stays n log n.
            for v in &vals {
                if !self.evt_types.contains(v.text) {
                    self.evt_types.insert(v.text.to_string());
                }
            }
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
                    Ok((cmp, negate)) => nodes.push(Node::Check(Box::new(Test::new(
                        field.src.clone(),
                        cmp,
                        negate,
                    )))),
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
            Ok((cmp, negate)) => Node::Check(Box::new(Test::new(field.src, cmp, negate))),
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

    /// `field in (...)` for an address field, its values streamed from the
    /// literals and lists into the matcher: an IOC list of a million items
    /// is never gathered into a vector of values first.
    fn address_list(
        &mut self,
        check: &'a crate::ast::Check,
        items: &'a [crate::ast::Literal],
        src: fields::Src,
        pos: u32,
        scope: &Scope<'a>,
    ) -> Node {
        let comp = self.comp;
        let list =
            |lit: &crate::ast::Literal| comp.lists.get(lit.text.as_str()).filter(|_| !lit.quoted);
        let count = items
            .iter()
            .map(|lit| list(lit).map_or(1, |v| v.len()))
            .fold(0, usize::saturating_add);
        if !self.spend(count, scope.fixed) {
            return Node::Const(false);
        }
        let values = items.iter().flat_map(|lit| {
            let (one, many) = match list(lit) {
                Some(values) => (None, Some(values)),
                None => (Some((lit.text.as_str(), Ok(lit.pos))), None),
            };
            one.into_iter().chain(
                many.into_iter()
                    .flat_map(|v| v.iter())
                    .map(|v| (comp.value_text(v), Err(v.loc()))),
            )
        });
        match checks::build_net(&check.field, check.op, count, values) {
            Ok((cmp, negate)) => Node::Check(Box::new(Test::new(src, cmp, negate))),
            Err((at, message)) => {
                let at = match at {
                    Some(Err(loc)) => loc,
                    Some(Ok(p)) => self.locate(scope, p),
                    None => self.locate(scope, pos),
                };
                self.errors.push((at, message));
                Node::Const(false)
            }
        }
    }
}
