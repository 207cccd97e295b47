//! Rule exceptions: validation when defined, and the condition they add,
//! `and not ((f1 c1 v1 and f2 c2 v2) or ...)`, built the way Falco builds it
//! from text, but directly as syntax so that values need no re-quoting.
use crate::ast::{Check, Expr, ExprKind, Literal, Op, Quant, Rhs};
use crate::diagnostics::Loc;
use crate::lexer::Cursor;
use crate::parser;

/// A `fields`, `comps` or `values` entry: a string or a (nested) list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Item(String),
    List(Vec<Entry>),
}

/// One exception as read, before it becomes a condition.
#[derive(Clone, Debug)]
pub(crate) struct ExceptionInfo {
    pub name: String,
    pub fields: Option<Entry>,
    pub comps: Option<Entry>,
    pub values: Vec<Entry>,
    pub loc: Loc,
}

fn item(entry: &Entry) -> Option<&str> {
    match entry {
        Entry::Item(s) => Some(s),
        Entry::List(_) => None,
    }
}

/// A comparison as written in `comps`: an operator, optionally followed by
/// a modifier (`startswith oneof`); surrounding blanks are ignored.
fn comparison(text: &str) -> Result<(Op, Option<Quant>), String> {
    let refuse = || format!("'{}' is not a supported comparison operator", text.trim());
    let mut words = text.split_whitespace();
    let op = match words.next().and_then(Op::parse) {
        Some(Op::Exists) | None => return Err(refuse()),
        Some(op) => op,
    };
    let quant = match words.next() {
        None => None,
        Some(word) => match Quant::parse(word) {
            Some(q) if op.takes_modifier() => Some(q),
            _ => return Err(refuse()),
        },
    };
    if words.next().is_some() {
        return Err(refuse());
    }
    Ok((op, quant))
}

/// Falco's checks on a newly defined exception; fills in default `comps`.
pub(crate) fn validate(mut ex: ExceptionInfo) -> Result<ExceptionInfo, String> {
    let prefix = |m: &str| format!("exception '{}': {m}", ex.name);
    match &ex.fields {
        None => return Err(prefix("item has no mapping for key 'fields'")),
        Some(Entry::List(fields)) => {
            let comps = match ex.comps.take() {
                None => vec![Entry::Item("=".into()); fields.len()],
                Some(Entry::List(comps)) => comps,
                Some(Entry::Item(_)) => {
                    return Err(prefix("fields and comps lists must have equal length"));
                }
            };
            if comps.len() != fields.len() {
                return Err(prefix("fields and comps lists must have equal length"));
            }
            for c in &comps {
                let text = item(c).ok_or_else(|| prefix("comps must be strings"))?;
                comparison(text).map_err(|e| prefix(&e))?;
            }
            if fields.iter().any(|f| item(f).is_none()) {
                return Err(prefix("fields must be strings"));
            }
            ex.comps = Some(Entry::List(comps));
        }
        Some(Entry::Item(_)) => {
            let comp = match ex.comps.take() {
                None => "in".to_string(),
                Some(Entry::Item(c)) => c,
                Some(Entry::List(_)) => {
                    return Err(prefix("fields and comps must both be strings"));
                }
            };
            if !matches!(comp.trim(), "in" | "pmatch" | "intersects") {
                return Err(prefix(
                    "when fields is a single value, comps must be one of (in, pmatch, intersects)",
                ));
            }
            ex.comps = Some(Entry::Item(comp));
        }
    }
    Ok(ex)
}

/// A value as Falco's text substitution would lex it: a fully quoted value
/// is unquoted; anything else is taken literally, and a bare word may still
/// name a list.
fn literal(text: &str) -> Literal {
    let mut cursor = Cursor::new(text);
    if let Ok(Some(unquoted)) = cursor.quoted()
        && cursor.at_end()
    {
        return Literal {
            text: unquoted,
            quoted: true,
            pos: 0,
        };
    }
    Literal {
        text: text.to_string(),
        quoted: text.contains(' '),
        pos: 0,
    }
}

/// A value for a list operator: `(a, b)` or `(list_name)` as Falco pastes
/// it into the condition (so list names expand), or one bare value.
fn list_rhs(text: &str) -> Rhs {
    if text.trim_start().starts_with('(')
        && let Some(items) = parser::parse_list(text)
    {
        return Rhs::List(items);
    }
    Rhs::List(vec![literal(text)])
}

fn check(field: &str, (op, quant): (Op, Option<Quant>), rhs: Rhs) -> Result<Expr, String> {
    let (name, arg) =
        parser::parse_field(field).ok_or_else(|| format!("'{field}' is not a valid field name"))?;
    Ok(Expr {
        kind: ExprKind::Check(Box::new(Check {
            field: name,
            arg,
            op,
            quant,
            rhs,
        })),
        pos: 0,
    })
}

fn values_of(entries: &[Entry]) -> Result<Vec<Literal>, String> {
    entries
        .iter()
        .map(|e| {
            item(e)
                .map(literal)
                .ok_or_else(|| "exception values nest too deeply".to_string())
        })
        .collect()
}

fn any(mut alternatives: Vec<Expr>) -> Option<Expr> {
    match alternatives.len() {
        0 => None,
        1 => alternatives.pop(),
        _ => Some(Expr {
            kind: ExprKind::Or(alternatives),
            pos: 0,
        }),
    }
}

/// What the exception excludes, or None when it has no values yet.
pub(crate) fn condition(ex: &ExceptionInfo) -> Result<Option<Expr>, String> {
    let prefix = |m: &str| format!("exception '{}': {m}", ex.name);
    match (&ex.fields, &ex.comps) {
        (Some(Entry::Item(field)), Some(Entry::Item(comp))) => {
            if ex.values.is_empty() {
                return Ok(None);
            }
            let op = comparison(comp).map_err(|e| prefix(&e))?;
            let values = values_of(&ex.values)
                .map_err(|_| prefix("expected values array to contain a list of strings"))?;
            // A value written `(list_name)` names the list, as in Falco.
            let values = values
                .into_iter()
                .flat_map(|v| match list_rhs(&v.text) {
                    Rhs::List(items) if !v.quoted => items,
                    _ => vec![v],
                })
                .collect();
            check(field, op, Rhs::List(values))
                .map(Some)
                .map_err(|e| prefix(&e))
        }
        (Some(Entry::List(fields)), Some(Entry::List(comps))) => {
            let mut alternatives = Vec::new();
            for tuple in &ex.values {
                let Entry::List(tuple) = tuple else {
                    return Err(prefix("each value must be a list with one entry per field"));
                };
                if tuple.len() != fields.len() {
                    return Err(prefix("fields and values lists must have equal length"));
                }
                let mut all = Vec::new();
                for ((field, comp), value) in fields.iter().zip(comps).zip(tuple) {
                    let (Some(field), Some(comp)) = (item(field), item(comp)) else {
                        return Err(prefix("fields and comps must be strings"));
                    };
                    let op = comparison(comp).map_err(|e| prefix(&e))?;
                    let listed = op.0.takes_list() || op.1.is_some();
                    let rhs = match value {
                        Entry::List(items) => Rhs::List(values_of(items).map_err(|e| prefix(&e))?),
                        Entry::Item(v) if listed => list_rhs(v),
                        Entry::Item(v) => Rhs::Value(literal(v)),
                    };
                    if matches!(rhs, Rhs::List(_)) && !listed {
                        return Err(prefix(&format!(
                            "comparison '{}' takes one value, not a list",
                            comp.trim()
                        )));
                    }
                    all.push(check(field, op, rhs).map_err(|e| prefix(&e))?);
                }
                alternatives.push(Expr {
                    kind: ExprKind::And(all),
                    pos: 0,
                });
            }
            Ok(any(alternatives))
        }
        _ => Err(prefix("fields and comps do not match")),
    }
}
