//! Diagnostics (`file:line:col: severity: message`) and the bookkeeping that
//! maps a position inside a YAML scalar back to the file.
use std::cell::OnceCell;
use std::fmt;
use std::sync::Arc;

use crate::yaml::{Mark, Style};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A place in a rules source; line and column are 1-based.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.severity, self.message)
    }
}

/// An internal position: file index, 1-based line, 0-based column in chars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Loc {
    pub file: u32,
    pub line: u32,
    pub col: u32,
}

impl Loc {
    pub fn at(file: u32, mark: Mark) -> Loc {
        Loc {
            file,
            line: mark.line,
            col: mark.col,
        }
    }
}

/// Where a scalar starts and how it was written, enough to find the source
/// position of a byte offset into its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScalarLoc {
    pub loc: Loc,
    pub style: Style,
}

/// Condition or output text, possibly joined from several YAML scalars by
/// appends and overrides, with where each piece came from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Text {
    pub text: String,
    segments: Vec<(usize, ScalarLoc)>,
}

impl Text {
    pub fn new(text: String, at: ScalarLoc) -> Text {
        Text {
            text,
            segments: vec![(0, at)],
        }
    }

    /// Falco joins appended conditions, outputs and descriptions with a space.
    pub fn append(&mut self, other: &Text) {
        self.text.push(' ');
        let base = self.text.len();
        self.text.push_str(&other.text);
        self.segments
            .extend(other.segments.iter().map(|&(start, at)| (base + start, at)));
    }

    pub fn start(&self) -> Loc {
        self.segments.first().map(|s| s.1.loc).unwrap_or_default()
    }

    pub fn locate(&self, offset: usize, files: &Files<'_>) -> Loc {
        let i = self.segments.partition_point(|&(start, _)| start <= offset);
        match i.checked_sub(1).and_then(|i| self.segments.get(i)) {
            Some(&(start, at)) => files.locate_in_scalar(at, offset - start),
            None => self.start(),
        }
    }
}

/// The sources being loaded, plus the built-in definitions.
pub(crate) struct Files<'a> {
    names: Vec<Arc<str>>,
    texts: Vec<&'a str>,
    /// Byte offset of each line's start, per file: made the first time a
    /// position inside a scalar is asked for (an error in a condition), so
    /// a million-line IOC file that loads cleanly never pays for it.
    lines: Vec<OnceCell<Vec<u32>>>,
}

fn line_starts(text: &str) -> Vec<u32> {
    // Rules files are far below 4 GiB (MAX_SOURCE_BYTES).
    std::iter::once(0)
        .chain(
            text.match_indices('\n')
                .map(|(i, _)| u32::try_from(i + 1).unwrap_or(u32::MAX)),
        )
        .collect()
}

pub(crate) const BUILTIN_FILE: u32 = 0;

impl<'a> Files<'a> {
    pub fn new(builtin: &'a str) -> Self {
        Files {
            names: vec![Arc::from("<builtin>")],
            texts: vec![builtin],
            lines: vec![OnceCell::new()],
        }
    }

    pub fn add(&mut self, name: &str, text: &'a str) -> u32 {
        self.names.push(Arc::from(name));
        self.texts.push(text);
        self.lines.push(OnceCell::new());
        u32::try_from(self.names.len() - 1).unwrap_or(u32::MAX)
    }

    pub fn location(&self, loc: Loc) -> Location {
        let file = self
            .names
            .get(loc.file as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("<unknown>"));
        Location {
            file,
            line: loc.line.max(1),
            column: loc.col.saturating_add(1),
        }
    }

    /// Approximates YAML folding: each source line of the scalar contributes
    /// its content plus one character for the line break. Exact for the usual
    /// plain, quoted (without escapes) and block scalars.
    fn locate_in_scalar(&self, at: ScalarLoc, offset: usize) -> Loc {
        let file = at.loc.file as usize;
        let (Some(text), Some(starts)) = (self.texts.get(file), self.lines.get(file)) else {
            return at.loc;
        };
        let starts = starts.get_or_init(|| line_starts(text));
        let skip = (at.loc.line as usize).saturating_sub(1);
        let from = starts.get(skip).map_or(text.len(), |&s| s as usize);
        let mut lines = text.get(from..).unwrap_or("").split('\n');
        let block = matches!(at.style, Style::Literal | Style::Folded);
        let mut line = at.loc.line;
        let (mut col, mut content, indent) = if block {
            // Block content starts on the line after the `|` or `>`, at the
            // indentation of its first non-empty line.
            lines.next();
            let rest = lines.clone();
            let indent = rest
                .map(|l| l.trim_end_matches('\r'))
                .find(|l| !l.trim().is_empty())
                .map_or(0, |l| l.len() - l.trim_start_matches(' ').len());
            let Some(first) = lines.next() else {
                return at.loc;
            };
            line += 1;
            let strip = indent.min(first.len() - first.trim_start_matches(' ').len());
            (strip, first.get(strip..).unwrap_or(""), indent)
        } else {
            let Some(first) = lines.next() else {
                return at.loc;
            };
            let quoted = matches!(at.style, Style::SingleQuoted | Style::DoubleQuoted);
            let col = at.loc.col as usize + usize::from(quoted);
            (col, skip_chars(first, col), 0)
        };
        let mut remaining = offset;
        loop {
            let trimmed = content.trim_end_matches([' ', '\t', '\r']);
            if remaining <= trimmed.len() {
                let chars = trimmed
                    .char_indices()
                    .take_while(|&(i, _)| i < remaining)
                    .count();
                let col = col.saturating_add(chars);
                return Loc {
                    file: at.loc.file,
                    line,
                    col: u32::try_from(col).unwrap_or(u32::MAX),
                };
            }
            remaining -= trimmed.len() + 1;
            let Some(next) = lines.next() else {
                return Loc {
                    file: at.loc.file,
                    line,
                    col: u32::try_from(col).unwrap_or(u32::MAX),
                };
            };
            line += 1;
            let leading = next.len() - next.trim_start_matches([' ', '\t']).len();
            col = if block { indent.min(leading) } else { leading };
            content = next.get(col..).unwrap_or("");
        }
    }
}

fn skip_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => s.get(i..).unwrap_or(""),
        None => "",
    }
}

/// Collects diagnostics with internal positions; resolved at the end.
#[derive(Default)]
pub(crate) struct Sink {
    pub items: Vec<(Severity, Loc, String)>,
}

impl Sink {
    pub fn error(&mut self, at: Loc, message: impl Into<String>) {
        self.items.push((Severity::Error, at, message.into()));
    }

    pub fn warning(&mut self, at: Loc, message: impl Into<String>) {
        self.items.push((Severity::Warning, at, message.into()));
    }

    pub fn finish(mut self, files: &Files<'_>) -> Vec<Diagnostic> {
        self.items.sort_by_key(|(_, at, _)| *at);
        // A macro's warning repeats for every rule that uses it.
        let mut seen = std::collections::HashSet::new();
        self.items
            .retain(|(severity, at, message)| seen.insert((*severity, *at, message.clone())));
        self.items
            .into_iter()
            .map(|(severity, at, message)| Diagnostic {
                severity,
                location: files.location(at),
                message,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locate(src: &str, at: (u32, u32), style: Style, offset: usize) -> (u32, u32) {
        let mut files = Files::new("");
        let file = files.add("f", src);
        let loc = Loc {
            file,
            line: at.0,
            col: at.1,
        };
        let found = files.locate_in_scalar(ScalarLoc { loc, style }, offset);
        (found.line, found.col)
    }

    #[test]
    fn offsets_map_back_to_the_source() {
        // Folded block: content starts on the line after the indicator.
        let src = "a: >\n    one two\n    three\n";
        assert_eq!(locate(src, (1, 3), Style::Folded, 0), (2, 4));
        assert_eq!(locate(src, (1, 3), Style::Folded, 4), (2, 8));
        assert_eq!(locate(src, (1, 3), Style::Folded, 8), (3, 4));
        // Plain scalars continue on less indented lines.
        let src = "a: one two\n  three\n";
        assert_eq!(locate(src, (1, 3), Style::Plain, 4), (1, 7));
        assert_eq!(locate(src, (1, 3), Style::Plain, 10), (2, 4));
        // Quoted: skip the quote.
        assert_eq!(
            locate("a: \"x y\"\n", (1, 3), Style::DoubleQuoted, 2),
            (1, 6)
        );
        // Past the end (appended text is located by its own segment): no panic.
        locate("a: b", (1, 3), Style::Plain, 99);
        locate("a: >", (1, 3), Style::Folded, 99);
    }

    #[test]
    fn appended_text_keeps_each_origin() {
        let mut files = Files::new("");
        let f = files.add("f", "x: abc\ny: def\n");
        let at = |line| ScalarLoc {
            loc: Loc {
                file: f,
                line,
                col: 3,
            },
            style: Style::Plain,
        };
        let mut text = Text::new("abc".into(), at(1));
        text.append(&Text::new("def".into(), at(2)));
        assert_eq!(text.text, "abc def");
        assert_eq!(
            text.locate(5, &files),
            Loc {
                file: f,
                line: 2,
                col: 4
            }
        );
        assert_eq!(files.location(text.locate(1, &files)).to_string(), "f:1:5");
    }
}
