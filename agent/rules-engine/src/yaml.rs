//! A small YAML tree with a position on every node, built from libyaml's
//! event stream without recursion.
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use libyaml_safer::{EventData, Parser};

/// Rule files are a few levels deep; deeper input is hostile or a mistake,
/// and refusing it keeps the tree's recursive drop and clone shallow.
const MAX_DEPTH: usize = 64;
/// Caps what aliases can expand to (the "billion laughs" document), in nodes
/// and in scalar bytes: a few large scalars aliased many times cost memory
/// without many nodes. Generous enough for IOC lists of a few million items.
pub(crate) const MAX_NODES: usize = 2_000_000;
pub(crate) const MAX_BYTES: usize = 96 << 20;

/// 1-based line, 0-based column in characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub line: u32,
    pub col: u32,
}

impl Mark {
    fn of(mark: libyaml_safer::Mark) -> Mark {
        Mark {
            line: u32::try_from(mark.line.saturating_add(1)).unwrap_or(u32::MAX),
            col: u32::try_from(mark.column).unwrap_or(u32::MAX),
        }
    }
}

/// How a scalar was written. Block scalars are marked at their `|` or `>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

impl From<libyaml_safer::ScalarStyle> for Style {
    fn from(style: libyaml_safer::ScalarStyle) -> Self {
        use libyaml_safer::ScalarStyle as S;
        match style {
            S::SingleQuoted => Style::SingleQuoted,
            S::DoubleQuoted => Style::DoubleQuoted,
            S::Literal => Style::Literal,
            S::Folded => Style::Folded,
            _ => Style::Plain,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Scalar(String, Style),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct YamlError {
    pub mark: Mark,
    pub message: String,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn style(&self) -> Option<Style> {
        match &self.kind {
            Kind::Scalar(_, style) => Some(*style),
            _ => None,
        }
    }

    /// The value under `key` in a mapping (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[(Node, Node)] {
        match &self.kind {
            Kind::Map(entries) => entries,
            _ => &[],
        }
    }
}

enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

/// What a node costs: nodes and scalar bytes, aliases expanded.
#[derive(Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    bytes: usize,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

struct Open {
    frame: Frame,
    mark: Mark,
    anchor: Option<String>,
    cost: Cost,
}

struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<String, (Node, Cost)>,
    docs: Vec<Node>,
    cost: Cost,
}

fn is_null(value: &str, style: Style) -> bool {
    style == Style::Plain && matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

impl Builder {
    /// Charges `cost` to the document, before anything is built or cloned.
    fn spend(&mut self, cost: Cost, at: Mark) -> Result<(), YamlError> {
        self.cost.add(cost);
        if self.cost.nodes > MAX_NODES {
            return Err(YamlError {
                mark: at,
                message: format!(
                    "the rules expand to more than {MAX_NODES} YAML nodes (aliases included)"
                ),
            });
        }
        if self.cost.bytes > MAX_BYTES {
            return Err(YamlError {
                mark: at,
                message: format!(
                    "the rules expand to more than {} MiB of text (aliases included)",
                    MAX_BYTES >> 20
                ),
            });
        }
        Ok(())
    }

    /// Adds a node whose cost was already spent.
    fn push(&mut self, node: Node, cost: Cost, anchor: Option<String>) {
        if let Some(anchor) = anchor {
            self.anchors.insert(anchor, (node.clone(), cost));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(open) => {
                open.cost.add(cost);
                match &mut open.frame {
                    Frame::Seq(items) => items.push(node),
                    Frame::Map(entries, key) => match key.take() {
                        None => *key = Some(node),
                        Some(k) => entries.push((k, node)),
                    },
                }
            }
        }
    }

    fn open(&mut self, frame: Frame, mark: Mark, anchor: Option<String>) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                mark,
                message: format!("YAML nested deeper than {MAX_DEPTH} levels"),
            });
        }
        self.stack.push(Open {
            frame,
            mark,
            anchor,
            cost: Cost::default(),
        });
        Ok(())
    }

    fn close(&mut self, at: Mark) -> Result<(), YamlError> {
        let Some(open) = self.stack.pop() else {
            return Err(YamlError {
                mark: at,
                message: "unbalanced YAML collection end".into(),
            });
        };
        let kind = match open.frame {
            Frame::Seq(items) => Kind::Seq(items),
            Frame::Map(entries, _) => Kind::Map(entries),
        };
        let node = Node {
            kind,
            mark: open.mark,
        };
        // The collection's contents were charged as they arrived.
        self.spend(Cost { nodes: 1, bytes: 0 }, at)?;
        let mut cost = open.cost;
        cost.nodes = cost.nodes.saturating_add(1);
        self.push(node, cost, open.anchor);
        Ok(())
    }
}

/// Parses every document in `text`. A document that is empty is `Null`.
pub(crate) fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    // libyaml-safer 0.3 panics ("unexpected end of input") when some
    // scalars end the input without a line break; a final line break
    // changes nothing else.
    let owned;
    let text = if text.ends_with('\n') {
        text
    } else {
        owned = format!("{text}\n");
        &owned
    };
    // Rule files may be hostile: should the parser still panic on some
    // input, report it rather than take the agent down.
    std::panic::catch_unwind(AssertUnwindSafe(|| parse_events(text))).unwrap_or_else(|_| {
        Err(YamlError {
            mark: Mark::default(),
            message: "the YAML parser failed on this input".into(),
        })
    })
}

fn parse_events(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut input = text.as_bytes();
    let mut parser = Parser::new();
    parser.set_input_string(&mut input);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        cost: Cost::default(),
    };
    loop {
        let event = parser.parse().map_err(|e| YamlError {
            mark: e.problem_mark().map(Mark::of).unwrap_or_default(),
            message: e.to_string(),
        })?;
        let mark = Mark::of(event.start_mark);
        match event.data {
            EventData::Scalar {
                anchor,
                value,
                style,
                ..
            } => {
                let style = Style::from(style);
                let cost = Cost {
                    nodes: 1,
                    bytes: value.len(),
                };
                b.spend(cost, mark)?;
                let kind = if is_null(&value, style) {
                    Kind::Null
                } else {
                    Kind::Scalar(value, style)
                };
                b.push(Node { kind, mark }, cost, anchor);
            }
            EventData::SequenceStart { anchor, .. } => {
                b.open(Frame::Seq(Vec::new()), mark, anchor)?
            }
            EventData::MappingStart { anchor, .. } => {
                b.open(Frame::Map(Vec::new(), None), mark, anchor)?
            }
            EventData::SequenceEnd | EventData::MappingEnd => b.close(mark)?,
            EventData::Alias { anchor } => {
                let Some(&(_, cost)) = b.anchors.get(&anchor) else {
                    return Err(YamlError {
                        mark,
                        message: format!("alias to unknown anchor '{anchor}'"),
                    });
                };
                // Charged before the copy is made, so a refused alias costs nothing.
                b.spend(cost, mark)?;
                if let Some((node, _)) = b.anchors.get(&anchor).cloned() {
                    b.push(node, cost, None);
                }
            }
            EventData::StreamEnd => return Ok(b.docs),
            EventData::StreamStart { .. }
            | EventData::DocumentStart { .. }
            | EventData::DocumentEnd { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_positioned_tree() {
        let docs = parse("- rule: r\n  tags: [a, 'b']\n  none:\n  text: >\n    x\n").unwrap();
        let item = match &docs[0].kind {
            Kind::Seq(items) => &items[0],
            other => panic!("{other:?}"),
        };
        assert_eq!(item.mark, Mark { line: 1, col: 2 });
        assert_eq!(item.get("rule").and_then(Node::as_str), Some("r"));
        assert_eq!(item.get("none").map(|n| &n.kind), Some(&Kind::Null));
        let text = item.get("text").unwrap();
        assert_eq!(
            (text.as_str(), text.style()),
            (Some("x\n"), Some(Style::Folded))
        );
        assert_eq!(text.mark, Mark { line: 4, col: 8 });
        let Some(Kind::Seq(tags)) = item.get("tags").map(|n| &n.kind) else {
            panic!()
        };
        assert_eq!(tags[1].mark, Mark { line: 2, col: 12 });
        assert_eq!(tags[1].style(), Some(Style::SingleQuoted));
    }

    #[test]
    fn aliases_expand_within_budget() {
        let docs = parse("- &a {list: l, items: [x]}\n- *a\n").unwrap();
        let Kind::Seq(items) = &docs[0].kind else {
            panic!()
        };
        assert_eq!(items[0], items[1]);
        assert!(parse("- *missing\n").is_err());
    }

    #[test]
    fn several_documents() {
        let docs = parse("- a: 1\n---\n- b: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(parse("").unwrap().len(), 0);
    }
}
