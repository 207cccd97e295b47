//! A small YAML tree with a position on every node, built from libyaml's
//! event stream without recursion. Scalars written as they read (most of
//! them: an IOC list's every item) borrow from the source text instead of
//! owning a copy.
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, Read};
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
pub(crate) enum Kind<'a> {
    Null,
    Scalar(Cow<'a, str>, Style),
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node<'a> {
    pub kind: Kind<'a>,
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct YamlError {
    pub mark: Mark,
    pub message: String,
}

impl<'a> Node<'a> {
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

    /// The scalar's text, taken out of the node (empty for other kinds).
    pub fn into_text(self) -> Cow<'a, str> {
        match self.kind {
            Kind::Scalar(s, _) => s,
            _ => Cow::Borrowed(""),
        }
    }

    /// The value under `key` in a mapping (the first, if repeated).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node<'a>> {
        match &mut self.kind {
            Kind::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key` in a mapping (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[(Node<'a>, Node<'a>)] {
        match &self.kind {
            Kind::Map(entries) => entries,
            _ => &[],
        }
    }
}

enum Frame<'a> {
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>, Option<Node<'a>>),
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

struct Open<'a> {
    frame: Frame<'a>,
    mark: Mark,
    anchor: Option<String>,
    cost: Cost,
}

struct Builder<'a> {
    stack: Vec<Open<'a>>,
    anchors: HashMap<String, (Node<'a>, Cost)>,
    docs: Vec<Node<'a>>,
    cost: Cost,
}

fn is_null(value: &str, style: Style) -> bool {
    style == Style::Plain && matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

impl<'a> Builder<'a> {
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
    fn push(&mut self, node: Node<'a>, cost: Cost, anchor: Option<String>) {
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

    fn open(
        &mut self,
        frame: Frame<'a>,
        mark: Mark,
        anchor: Option<String>,
    ) -> Result<(), YamlError> {
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

/// libyaml's reader decodes whatever its input offers at once into a queue
/// of 4-byte chars: handed a whole 20 MiB file it held 80 MiB before the
/// first event. Offered this much at a time, it holds a few pages.
const CHUNK: usize = 64 << 10;

/// The text in [`CHUNK`]-sized slices, then an optional final line break.
struct Chunked<'a> {
    parts: [&'a [u8]; 2],
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunked<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.parts[0].is_empty() {
            self.parts = [self.parts[1], &[]];
        }
        let part = self.parts[0];
        Ok(&part[..part.len().min(CHUNK)])
    }

    fn consume(&mut self, amount: usize) {
        let part = self.parts[0];
        self.parts[0] = &part[amount.min(part.len())..];
    }
}

/// Parses every document in `text`. A document that is empty is `Null`.
pub(crate) fn parse(text: &str) -> Result<Vec<Node<'_>>, YamlError> {
    // Rule files may be hostile: should the parser still panic on some
    // input, report it rather than take the agent down.
    std::panic::catch_unwind(AssertUnwindSafe(|| parse_events(text))).unwrap_or_else(|_| {
        Err(YamlError {
            mark: Mark::default(),
            message: "the YAML parser failed on this input".into(),
        })
    })
}

/// `value` as a slice of `text` when the scalar at byte offsets
/// `start..end` was written exactly so (plain, or inside its quotes).
fn written<'a>(text: &'a str, start: u64, end: u64, style: Style, value: &str) -> Option<&'a str> {
    let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
    let slice = match style {
        Style::Plain => text.get(start..end)?,
        Style::SingleQuoted | Style::DoubleQuoted => text.get(start + 1..end.checked_sub(1)?)?,
        Style::Literal | Style::Folded => return None,
    };
    (slice == value).then_some(slice)
}

fn parse_events(text: &str) -> Result<Vec<Node<'_>>, YamlError> {
    // libyaml-safer 0.3 panics ("unexpected end of input") when some
    // scalars end the input without a line break; a final line break
    // changes nothing else.
    let newline: &[u8] = if text.ends_with('\n') { &[] } else { b"\n" };
    let mut parser = Parser::new();
    parser.set_input(Chunked {
        parts: [text.as_bytes(), newline],
    });
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
                    match written(
                        text,
                        event.start_mark.index,
                        event.end_mark.index,
                        style,
                        &value,
                    ) {
                        Some(slice) => Kind::Scalar(Cow::Borrowed(slice), style),
                        None => Kind::Scalar(Cow::Owned(value), style),
                    }
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

    /// Scalars written as they read borrow from the text; others own their
    /// value; input far longer than one chunk, with multi-byte characters
    /// across chunk boundaries and no final line break, reads the same.
    #[test]
    fn borrows_what_it_can_across_chunks() {
        let docs = parse("- [plain, 'single', \"double\", \"esc\\tape\", 'it''s']\n").unwrap();
        let Kind::Seq(outer) = &docs[0].kind else {
            panic!()
        };
        let Kind::Seq(items) = &outer[0].kind else {
            panic!()
        };
        let got: Vec<(&str, bool)> = items
            .iter()
            .map(|n| match &n.kind {
                Kind::Scalar(s, _) => (&**s, matches!(s, Cow::Borrowed(_))),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            got,
            [
                ("plain", true),
                ("single", true),
                ("double", true),
                ("esc\tape", false),
                ("it's", false)
            ]
        );
        let item = "- \"é\u{1F600}x\"\n";
        let n = 3 * CHUNK / item.len();
        let text = item.repeat(n) + "- last";
        let docs = parse(&text).unwrap();
        let Kind::Seq(items) = &docs[0].kind else {
            panic!()
        };
        assert_eq!(items.len(), n + 1);
        assert!(items[..n].iter().all(|i| i.as_str() == Some("é\u{1F600}x")));
        assert_eq!(items[n].as_str(), Some("last"));
        assert_eq!(items[n].mark.line as usize, n + 1);
    }

    #[test]
    fn several_documents() {
        let docs = parse("- a: 1\n---\n- b: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(parse("").unwrap().len(), 0);
    }
}
