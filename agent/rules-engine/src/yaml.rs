//! A small YAML tree with a position on every node, built from libyaml's
//! event stream without recursion. Scalars written as they read (most of
//! them: an IOC list's every item) borrow from the source text instead of
//! owning a copy, and a long sequence of such scalars is kept as
//! [`Scalars`], 12 bytes an item instead of a 40-byte [`Node`].
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
    /// A sequence of at least [`COMPACT_MIN`] scalars, each borrowed from
    /// the text: read it with [`Node::seq`], or item by item.
    Scalars(Scalars<'a>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

/// Shorter sequences stay [`Kind::Seq`], so rule files' own small lists
/// (tags, exception values) look as they always did.
pub(crate) const COMPACT_MIN: usize = 64;

/// A sequence of scalars written as they read (plain or quoted, no
/// escapes), as positions in the text: a million-item IOC list is 12 MB
/// here where its nodes took 40 MB. A sequence with any other item, or a
/// scalar too long (16 KiB) or too far along its line (64 Ki characters)
/// for the packed position, is [`Kind::Seq`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scalars<'a> {
    text: &'a str,
    at: Vec<ScalarAt>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScalarAt {
    start: u32,
    line: u32,
    /// Length in bytes (low 14 bits) and style (high 2 bits).
    len_style: u16,
    col: u16,
}

const _: () = assert!(std::mem::size_of::<ScalarAt>() == 12);
const LEN_BITS: u32 = 14;

impl<'a> Scalars<'a> {
    fn new(text: &'a str) -> Self {
        Scalars {
            text,
            at: Vec::new(),
        }
    }

    /// Files `slice` (a part of the text) when its position packs.
    fn push(&mut self, slice: &'a str, mark: Mark, style: Style) -> bool {
        let code: u16 = match style {
            Style::Plain => 0,
            Style::SingleQuoted => 1,
            Style::DoubleQuoted => 2,
            Style::Literal | Style::Folded => return false,
        };
        let start = (slice.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        let inside = start
            .checked_add(slice.len())
            .is_some_and(|end| end <= self.text.len());
        let (Ok(start), Ok(len), Ok(col)) = (
            u32::try_from(start),
            u16::try_from(slice.len()),
            u16::try_from(mark.col),
        ) else {
            return false;
        };
        if !inside || len >= 1 << LEN_BITS {
            return false;
        }
        self.at.push(ScalarAt {
            start,
            line: mark.line,
            len_style: len | code << LEN_BITS,
            col,
        });
        true
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// The `i`-th scalar: its text and position.
    pub fn get(&self, i: usize) -> Option<(&'a str, Mark)> {
        let at = self.at.get(i)?;
        let start = at.start as usize;
        let len = usize::from(at.len_style & ((1 << LEN_BITS) - 1));
        let text = self.text.get(start..start + len)?;
        let mark = Mark {
            line: at.line,
            col: u32::from(at.col),
        };
        Some((text, mark))
    }

    fn style(&self, i: usize) -> Style {
        match self.at.get(i).map(|at| at.len_style >> LEN_BITS) {
            Some(1) => Style::SingleQuoted,
            Some(2) => Style::DoubleQuoted,
            _ => Style::Plain,
        }
    }

    fn to_nodes(&self) -> Vec<Node<'a>> {
        (0..self.len())
            .filter_map(|i| {
                let (text, mark) = self.get(i)?;
                Some(Node {
                    kind: Kind::Scalar(Cow::Borrowed(text), self.style(i)),
                    mark,
                })
            })
            .collect()
    }
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

    /// A sequence's items ([`Kind::Scalars`] made into nodes: only for
    /// readers of small sequences; list items read [`Scalars`] directly).
    pub fn seq(&self) -> Option<Cow<'_, [Node<'a>]>> {
        match &self.kind {
            Kind::Seq(items) => Some(Cow::Borrowed(items)),
            Kind::Scalars(scalars) => Some(Cow::Owned(scalars.to_nodes())),
            _ => None,
        }
    }

    /// As [`Node::seq`], taking the items out.
    pub fn into_seq(self) -> Option<Vec<Node<'a>>> {
        match self.kind {
            Kind::Seq(items) => Some(items),
            Kind::Scalars(scalars) => Some(scalars.to_nodes()),
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
    /// A sequence while every item so far packs into [`Scalars`].
    Scalars(Scalars<'a>),
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
    text: &'a str,
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
                    Frame::Scalars(scalars) => {
                        let packed = match &node.kind {
                            Kind::Scalar(Cow::Borrowed(slice), style) => {
                                scalars.push(slice, node.mark, *style)
                            }
                            _ => false,
                        };
                        if !packed {
                            let mut items = scalars.to_nodes();
                            items.push(node);
                            open.frame = Frame::Seq(items);
                        }
                    }
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
            Frame::Scalars(scalars) if scalars.len() >= COMPACT_MIN => Kind::Scalars(scalars),
            Frame::Scalars(scalars) => Kind::Seq(scalars.to_nodes()),
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
        text,
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
                b.open(Frame::Scalars(Scalars::new(b.text)), mark, anchor)?
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
        let Kind::Scalars(items) = &docs[0].kind else {
            panic!("{:?}", docs[0].kind)
        };
        assert_eq!(items.len(), n + 1);
        assert!((0..n).all(|i| items.get(i).map(|(t, _)| t) == Some("é\u{1F600}x")));
        let (last, mark) = items.get(n).unwrap();
        assert_eq!((last, mark.line as usize, mark.col), ("last", n + 1, 2));
    }

    fn items(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match i % 3 {
                0 => format!("198.51.100.{}", i % 250),
                1 => format!("'single {i}'"),
                _ => format!("\"2001:db8::{i:x}\""),
            })
            .collect()
    }

    /// What a long sequence of scalars reads as: the same texts, positions
    /// and styles as nodes would have.
    #[test]
    fn long_scalar_sequences_are_compact_with_exact_positions() {
        let block = items(100)
            .iter()
            .map(|i| format!("- {i}\n"))
            .collect::<String>();
        let flow = format!("x: [{}]\n", items(100).join(", "));
        // The same sequences with a null last, which keeps them nodes: the
        // positions libyaml gives, to compare the packed ones with.
        let block_nodes = format!("{block}- ~\n");
        let flow_nodes = flow.replace("]\n", ", ~]\n");
        for (text, as_nodes) in [(block, block_nodes), (flow, flow_nodes)] {
            let docs = parse(&text).unwrap();
            let seq = match &docs[0].kind {
                Kind::Map(entries) => &entries[0].1,
                _ => &docs[0],
            };
            let Kind::Scalars(compact) = &seq.kind else {
                panic!("{:?}", seq.kind)
            };
            let nodes = seq.seq().unwrap();
            let plain = parse(&as_nodes).unwrap();
            let plain = match &plain[0].kind {
                Kind::Map(entries) => entries[0].1.clone(),
                _ => plain[0].clone(),
            };
            let Kind::Seq(expected) = plain.kind else {
                panic!("{:?}", plain.kind)
            };
            assert_eq!(&nodes[..], &expected[..100]);
            assert_eq!(nodes.len(), 100);
            for (i, node) in nodes.iter().enumerate() {
                let (want, style) = match i % 3 {
                    0 => (format!("198.51.100.{}", i % 250), Style::Plain),
                    1 => (format!("single {i}"), Style::SingleQuoted),
                    _ => (format!("2001:db8::{i:x}"), Style::DoubleQuoted),
                };
                assert_eq!(
                    (node.as_str(), node.style()),
                    (Some(want.as_str()), Some(style))
                );
                assert_eq!(compact.get(i).map(|(t, _)| t), node.as_str());
                // The mark is where libyaml puts the scalar's start.
                let line = text.lines().nth(node.mark.line as usize - 1).unwrap();
                let rest: String = line.chars().skip(node.mark.col as usize).collect();
                assert!(rest.starts_with(&text_as_written(&want, style)), "{rest}");
            }
        }
    }

    fn text_as_written(text: &str, style: Style) -> String {
        match style {
            Style::SingleQuoted => format!("'{text}'"),
            Style::DoubleQuoted => format!("\"{text}\""),
            _ => text.to_string(),
        }
    }

    /// Anything that does not pack makes the whole sequence nodes, in order:
    /// an item that owns its text, a nested collection, a null, a short
    /// sequence, a scalar past column 65535.
    #[test]
    fn sequences_that_do_not_pack_are_nodes() {
        let mut many = items(80);
        for odd in ["\"tab\\there\"", "[nested]", "~", "|\n  literal"] {
            let mut list = many.clone();
            list.push(odd.to_string());
            list.push("after".to_string());
            let text: String = list.iter().map(|i| format!("- {i}\n")).collect();
            let docs = parse(&text).unwrap();
            let Kind::Seq(nodes) = &docs[0].kind else {
                panic!("{odd}: {:?}", docs[0].kind)
            };
            assert_eq!(nodes.len(), 82, "{odd}");
            assert_eq!(nodes[0].as_str(), Some("198.51.100.0"));
            assert_eq!(nodes[81].as_str(), Some("after"));
        }
        many.truncate(COMPACT_MIN - 1);
        let text: String = many.iter().map(|i| format!("- {i}\n")).collect();
        assert!(matches!(parse(&text).unwrap()[0].kind, Kind::Seq(_)));
        // The packed length is 14 bits: 16383 bytes pack, 16384 do not.
        for (len, compact) in [(16_383, true), (16_384, false)] {
            let mut list = items(COMPACT_MIN);
            list[10] = "x".repeat(len);
            let text: String = list.iter().map(|i| format!("- {i}\n")).collect();
            let docs = parse(&text).unwrap();
            assert_eq!(matches!(docs[0].kind, Kind::Scalars(_)), compact, "{len}");
            let nodes = docs[0].seq().unwrap();
            assert_eq!(nodes[10].as_str().map(str::len), Some(len));
            assert_eq!(nodes[11].mark.line, 12);
        }
        let wide = format!("[{}]\n", vec!["198.51.100.1"; 6000].join(", "));
        let docs = parse(&wide).unwrap();
        let Kind::Seq(nodes) = &docs[0].kind else {
            panic!()
        };
        assert_eq!(nodes[5999].mark.col, 5999 * 14 + 1);
    }

    #[test]
    fn several_documents() {
        let docs = parse("- a: 1\n---\n- b: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(parse("").unwrap().len(), 0);
    }
}
