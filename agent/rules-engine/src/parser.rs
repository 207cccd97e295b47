//! Falco's condition grammar (libsinsp's filter parser), by recursive descent:
//!
//! ```text
//! Expr      ::= AndExpr ('or' AndExpr)*
//! AndExpr   ::= NotExpr ('and' NotExpr)*
//! NotExpr   ::= ('not' blank)* ('not(' Expr ')' | Check)
//! Check     ::= '(' Expr ')' | Field Condition | Identifier
//! Condition ::= 'exists' | NumOp Number | StrOp Str | ListOp ('(' Str (',' Str)* ')' | Identifier)
//! ```
//!
//! `and`/`or` must be followed by a blank or `(`, word operators by a blank,
//! and `<`, `<=`, `>`, `>=` take numbers, all as in Falco. Field transformers
//! (`val()`, `tolower()`, ...) are refused with a clear message.
use crate::ast::{Check, Expr, ExprKind, Literal, Op, Quant, Rhs};
use crate::lexer::{Cursor, LexError};

/// Parenthesised nesting allowed in one condition. Each level costs a few
/// stack frames here and in the compiler, so this bounds stack use.
pub(crate) const MAX_NESTING: u32 = 250;

/// A condition that does not parse; `offset` is a byte offset into it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at offset {offset})")]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

pub(crate) const TRANSFORMERS: [&str; 9] = [
    "val(",
    "tolower(",
    "toupper(",
    "b64(",
    "basename(",
    "len(",
    "join(",
    "concat(",
    "getopt(",
];

const STR_WORD_OPS: [(&str, Op); 9] = [
    ("glob", Op::Glob),
    ("iglob", Op::IGlob),
    ("contains", Op::Contains),
    ("icontains", Op::IContains),
    ("bcontains", Op::BContains),
    ("startswith", Op::StartsWith),
    ("bstartswith", Op::BStartsWith),
    ("endswith", Op::EndsWith),
    ("regex", Op::Regex),
];

const OPERATORS: &str = "'exists', '<=', '<', '>=', '>', '==', '=', '!=', 'glob', 'iglob', \
'contains', 'icontains', 'bcontains', 'startswith', 'bstartswith', 'endswith', 'regex', 'intersects', 'in', 'pmatch'";

/// Parses one condition.
pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.is_empty() {
        return Err(ParseError {
            offset: 0,
            message: "condition is empty".into(),
        });
    }
    let mut p = Parser {
        c: Cursor::new(src),
        depth: 0,
        last: (0, 0),
    };
    let expr = p.parse_or()?;
    p.c.blank();
    if !p.c.at_end() {
        let last = src.get(p.last.0..p.last.1).unwrap_or("");
        return Err(p.error(format!(
            "unexpected token after '{last}', expecting 'or', 'and'"
        )));
    }
    Ok(expr)
}

struct Parser<'a> {
    c: Cursor<'a>,
    depth: u32,
    /// The last token consumed, for error messages.
    last: (usize, usize),
}

fn at(pos: usize) -> u32 {
    u32::try_from(pos).unwrap_or(u32::MAX)
}

impl From<LexError> for ParseError {
    fn from(e: LexError) -> Self {
        ParseError {
            offset: e.pos,
            message: e.message,
        }
    }
}

impl<'a> Parser<'a> {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            offset: self.c.pos,
            message: message.into(),
        }
    }

    fn mark(&mut self, start: usize) {
        self.last = (start, self.c.pos);
    }

    fn parse_or(&mut self) -> Result<Expr, ParseError> {
        self.c.blank();
        let pos = at(self.c.pos);
        let mut children = vec![self.parse_and()?];
        self.c.blank();
        while self.c.eat("or") {
            children.push(self.after_keyword("or", Self::parse_and)?);
            self.c.blank();
        }
        Ok(join(children, pos, ExprKind::Or))
    }

    fn parse_and(&mut self) -> Result<Expr, ParseError> {
        self.c.blank();
        let pos = at(self.c.pos);
        let mut children = vec![self.parse_not()?];
        self.c.blank();
        while self.c.eat("and") {
            children.push(self.after_keyword("and", Self::parse_not)?);
            self.c.blank();
        }
        Ok(join(children, pos, ExprKind::And))
    }

    fn after_keyword(
        &mut self,
        keyword: &str,
        next: fn(&mut Self) -> Result<Expr, ParseError>,
    ) -> Result<Expr, ParseError> {
        if self.c.blank() {
            next(self)
        } else if self.c.eat("(") {
            self.parse_embedded()
        } else {
            Err(self.error(format!("expected blank or '(' after '{keyword}'")))
        }
    }

    fn parse_not(&mut self) -> Result<Expr, ParseError> {
        self.c.blank();
        let pos = at(self.c.pos);
        let mut negate = false;
        while self.c.eat_not_blank() {
            negate = !negate;
        }
        let child = if self.c.eat("not(") {
            negate = !negate;
            self.parse_embedded()?
        } else {
            self.parse_check()?
        };
        Ok(if negate {
            Expr {
                kind: ExprKind::Not(Box::new(child)),
                pos,
            }
        } else {
            child
        })
    }

    /// After a `(`: the nested expression and its `)`.
    fn parse_embedded(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error(format!(
                "condition nests more than {MAX_NESTING} levels of parentheses"
            )));
        }
        let expr = self.parse_or()?;
        self.c.blank();
        if !self.c.eat(")") {
            return Err(self.error("expected a ')' token"));
        }
        self.depth -= 1;
        Ok(expr)
    }

    fn refuse_transformer(&self) -> Result<(), ParseError> {
        let rest = self.c.rest();
        match TRANSFORMERS.iter().find(|t| rest.starts_with(*t)) {
            Some(t) => Err(self.error(format!(
                "field transformer '{})' is not supported by Egret",
                t
            ))),
            None => Ok(()),
        }
    }

    fn parse_check(&mut self) -> Result<Expr, ParseError> {
        self.c.blank();
        let start = self.c.pos;
        let pos = at(start);
        if self.c.eat("(") {
            return self.parse_embedded();
        }
        self.refuse_transformer()?;
        if let Some(field) = self.c.field_name() {
            self.mark(start);
            let arg = self.field_arg()?;
            return self.parse_condition(field.to_string(), arg, pos);
        }
        if let Some(name) = self.c.identifier() {
            self.mark(start);
            return Ok(Expr {
                kind: ExprKind::Ident(name.to_string()),
                pos,
            });
        }
        Err(self.error("expected a '(' token, a field check, or an identifier"))
    }

    fn field_arg(&mut self) -> Result<Option<String>, ParseError> {
        if !self.c.eat("[") {
            return Ok(None);
        }
        let arg = match self.c.quoted()? {
            Some(quoted) => quoted,
            None => match self.c.field_arg_bare() {
                Some(bare) => bare.to_string(),
                None => {
                    return Err(self.error(
                        "expected a valid field argument: a quoted string or a bare string",
                    ));
                }
            },
        };
        if !self.c.eat("]") {
            return Err(self.error("expected a ']' token"));
        }
        Ok(Some(arg))
    }

    fn parse_condition(
        &mut self,
        field: String,
        arg: Option<String>,
        pos: u32,
    ) -> Result<Expr, ParseError> {
        self.c.blank();
        let start = self.c.pos;
        let mut quant = None;
        let (op, rhs) = if self.c.eat("exists") {
            self.mark(start);
            (Op::Exists, Rhs::None)
        } else if let Some(op) = self.num_op() {
            (op, Rhs::Value(self.num_value()?))
        } else if let Some(op) = self.str_op() {
            self.c.blank();
            match self.modifier() {
                Some(q) => {
                    quant = Some(q);
                    (op, self.list_value()?)
                }
                None => (op, Rhs::Value(self.str_value()?)),
            }
        } else if let Some(op) = self.list_op() {
            (op, self.list_value()?)
        } else {
            return Err(self.error(format!(
                "expected a valid check operator: one of {OPERATORS}"
            )));
        };
        Ok(Expr {
            kind: ExprKind::Check(Box::new(Check {
                field,
                arg,
                op,
                quant,
                rhs,
            })),
            pos,
        })
    }

    /// `oneof`, `anyof` or `allof`, followed by a blank or `(`.
    fn modifier(&mut self) -> Option<Quant> {
        for word in ["oneof", "anyof", "allof"] {
            let rest = self.c.rest();
            let follows = rest
                .strip_prefix(word)
                .and_then(|r| r.bytes().next())
                .is_some_and(|b| b == b'(' || b.is_ascii_whitespace());
            if follows && self.c.eat(word) {
                return Quant::parse(word);
            }
        }
        None
    }

    fn num_op(&mut self) -> Option<Op> {
        let start = self.c.pos;
        let op = [("<=", Op::Le), ("<", Op::Lt), (">=", Op::Ge), (">", Op::Gt)]
            .into_iter()
            .find(|(text, _)| self.c.eat(text))?
            .1;
        self.mark(start);
        Some(op)
    }

    fn str_op(&mut self) -> Option<Op> {
        let start = self.c.pos;
        for (text, op) in [("==", Op::Eq), ("=", Op::Eq), ("!=", Op::Ne)] {
            if self.c.eat(text) {
                self.mark(start);
                return Some(op);
            }
        }
        for (word, op) in STR_WORD_OPS {
            if self.c.eat_word_then_blank(word) {
                self.mark(start);
                return Some(op);
            }
        }
        None
    }

    fn list_op(&mut self) -> Option<Op> {
        let start = self.c.pos;
        let op = [
            ("intersects", Op::Intersects),
            ("in", Op::In),
            ("pmatch", Op::PMatch),
        ]
        .into_iter()
        .find(|(text, _)| self.c.eat(text))?
        .1;
        self.mark(start);
        Some(op)
    }

    fn num_value(&mut self) -> Result<Literal, ParseError> {
        self.c.blank();
        self.refuse_transformer()?;
        let start = self.c.pos;
        match self.c.number() {
            Some(n) => {
                self.mark(start);
                Ok(literal(n.to_string(), false, start))
            }
            None => Err(self.error("expected a number value")),
        }
    }

    fn str_value(&mut self) -> Result<Literal, ParseError> {
        self.c.blank();
        self.refuse_transformer()?;
        let start = self.c.pos;
        if let Some(quoted) = self.c.quoted()? {
            self.mark(start);
            return Ok(literal(quoted, true, start));
        }
        match self.c.bare_str() {
            Some(bare) => {
                self.mark(start);
                Ok(literal(bare.to_string(), false, start))
            }
            None => Err(self.error("expected a string value")),
        }
    }

    fn list_value(&mut self) -> Result<Rhs, ParseError> {
        self.c.blank();
        let start = self.c.pos;
        if self.c.eat("(") {
            let mut items = Vec::new();
            self.c.blank();
            if self.c.peek() != Some(b')') {
                items.push(self.str_value()?);
                self.c.blank();
                while self.c.eat(",") {
                    items.push(self.str_value()?);
                    self.c.blank();
                }
            }
            if !self.c.eat(")") {
                return Err(self.error("expected a ')' token"));
            }
            self.mark(start);
            return Ok(Rhs::List(items));
        }
        self.refuse_transformer()?;
        match self.c.identifier() {
            // `in name` means the list `name`, or the single value `name`.
            Some(name) => {
                self.mark(start);
                Ok(Rhs::List(vec![literal(name.to_string(), false, start)]))
            }
            None => Err(self.error("expected a list, or an identifier naming a list")),
        }
    }
}

fn literal(text: String, quoted: bool, pos: usize) -> Literal {
    Literal {
        text,
        quoted,
        pos: at(pos),
    }
}

fn join(mut children: Vec<Expr>, pos: u32, make: fn(Vec<Expr>) -> ExprKind) -> Expr {
    if children.len() == 1
        && let Some(only) = children.pop()
    {
        return only;
    }
    Expr {
        kind: make(children),
        pos,
    }
}

/// `(a, b, ...)` on its own, as an exception value for a list operator.
pub(crate) fn parse_list(text: &str) -> Option<Vec<Literal>> {
    let mut p = Parser {
        c: Cursor::new(text.trim()),
        depth: 0,
        last: (0, 0),
    };
    match p.list_value().ok()? {
        Rhs::List(items) if p.c.at_end() => Some(items),
        _ => None,
    }
}

/// A field reference on its own, as written in an exception's `fields`.
pub(crate) fn parse_field(text: &str) -> Option<(String, Option<String>)> {
    let mut p = Parser {
        c: Cursor::new(text.trim()),
        depth: 0,
        last: (0, 0),
    };
    let name = p.c.field_name()?.to_string();
    let arg = p.field_arg().ok()?;
    p.c.at_end().then_some((name, arg))
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
