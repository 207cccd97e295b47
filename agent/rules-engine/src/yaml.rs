//! A small YAML tree with a position on every node, built from
//! saphyr-parser's event stream without recursion.
use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Rule files are a few levels deep; deeper input is hostile or a mistake,
/// and refusing it keeps the tree's recursive drop and clone shallow.
const MAX_DEPTH: usize = 64;
/// Caps what aliases can expand to (the "billion laughs" document).
const MAX_NODES: usize = 1_000_000;

/// 1-based line, 0-based column in characters: saphyr's convention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub line: u32,
    pub col: u32,
}

impl Mark {
    fn of(span: &Span) -> Mark {
        Mark {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            col: u32::try_from(span.start.col()).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Scalar(String, ScalarStyle),
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

    pub fn style(&self) -> Option<ScalarStyle> {
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

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Scalar(..) => "a scalar",
            Kind::Seq(_) => "a sequence",
            Kind::Map(_) => "a mapping",
        }
    }
}

enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

struct Open {
    frame: Frame,
    mark: Mark,
    anchor: usize,
    nodes: usize,
}

struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, (Node, usize)>,
    docs: Vec<Node>,
    nodes: usize,
}

fn is_null(value: &str, style: ScalarStyle) -> bool {
    style == ScalarStyle::Plain && matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

impl Builder {
    fn push(&mut self, node: Node, count: usize, anchor: usize, at: Mark) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(count);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                mark: at,
                message: format!("document expands to more than {MAX_NODES} nodes"),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), count));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(open) => {
                open.nodes = open.nodes.saturating_add(count);
                match &mut open.frame {
                    Frame::Seq(items) => items.push(node),
                    Frame::Map(entries, key) => match key.take() {
                        None => *key = Some(node),
                        Some(k) => entries.push((k, node)),
                    },
                }
            }
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, mark: Mark, anchor: usize) -> Result<(), YamlError> {
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
            nodes: 1,
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
        self.push(node, open.nodes, open.anchor, at)
    }
}

/// Parses every document in `text`. A document that is empty is `Null`.
pub(crate) fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        nodes: 0,
    };
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| YamlError {
            mark: Mark {
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                col: u32::try_from(e.marker().col()).unwrap_or(u32::MAX),
            },
            message: e.info().to_string(),
        })?;
        let mark = Mark::of(&span);
        match event {
            Event::Scalar(value, style, anchor, _) => {
                let kind = if is_null(&value, style) {
                    Kind::Null
                } else {
                    Kind::Scalar(Cow::into_owned(value), style)
                };
                b.push(Node { kind, mark }, 1, anchor, mark)?;
            }
            Event::SequenceStart(anchor, _) => b.open(Frame::Seq(Vec::new()), mark, anchor)?,
            Event::MappingStart(anchor, _) => b.open(Frame::Map(Vec::new(), None), mark, anchor)?,
            Event::SequenceEnd | Event::MappingEnd => b.close(mark)?,
            Event::Alias(id) => {
                let Some((node, count)) = b.anchors.get(&id).cloned() else {
                    return Err(YamlError {
                        mark,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                b.push(node, count, 0, mark)?;
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
    }
    Ok(b.docs)
}
