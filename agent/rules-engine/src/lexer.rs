//! Falco's condition tokens. Falco lexes by context (what may come next
//! decides which token is tried), so these are cursor methods rather than a
//! token stream; each mirrors one of libsinsp's token patterns.

/// Falco's "blank" between tokens: space, tab, backspace, CR, LF.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x08 | b'\r' | b'\n')
}

/// POSIX `[:space:]`, used inside Falco's token patterns.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

pub(crate) struct Cursor<'a> {
    pub src: &'a str,
    pub pos: usize,
}

/// A lexing failure; the message is completed by the parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LexError {
    pub pos: usize,
    pub message: String,
}

impl<'a> Cursor<'a> {
    pub fn new(src: &'a str) -> Self {
        Cursor { src, pos: 0 }
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.src.as_bytes().get(at).copied()
    }

    pub fn peek(&self) -> Option<u8> {
        self.byte(self.pos)
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    pub fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn take(&mut self, len: usize) -> &'a str {
        let start = self.pos;
        self.pos = (start + len).min(self.src.len());
        self.src.get(start..self.pos).unwrap_or("")
    }

    /// Skips blanks; true if there were any.
    pub fn blank(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Consumes `s` if the input continues with it.
    pub fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// `word` followed by at least one blank (Falco's word operators).
    pub fn eat_word_then_blank(&mut self, word: &str) -> bool {
        let save = self.pos;
        if self.eat(word) && self.blank() {
            return true;
        }
        self.pos = save;
        false
    }

    /// `not[[:space:]]+`.
    pub fn eat_not_blank(&mut self) -> bool {
        let rest = self.rest().as_bytes();
        if rest.starts_with(b"not") && rest.get(3).copied().is_some_and(is_space) {
            self.pos += 3;
            while self.peek().is_some_and(is_space) {
                self.pos += 1;
            }
            return true;
        }
        false
    }

    fn segment_len(bytes: &[u8]) -> usize {
        match bytes.first() {
            Some(b) if b.is_ascii_alphabetic() => bytes
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count(),
            _ => 0,
        }
    }

    /// `[a-zA-Z]+[a-zA-Z0-9_]*`.
    pub fn identifier(&mut self) -> Option<&'a str> {
        match Self::segment_len(self.rest().as_bytes()) {
            0 => None,
            n => Some(self.take(n)),
        }
    }

    /// Identifier segments joined by dots, at least two, longest match.
    pub fn field_name(&mut self) -> Option<&'a str> {
        let bytes = self.rest().as_bytes();
        let mut len = Self::segment_len(bytes);
        if len == 0 {
            return None;
        }
        let mut segments = 1;
        while bytes.get(len) == Some(&b'.') {
            let next = Self::segment_len(bytes.get(len + 1..).unwrap_or(&[]));
            if next == 0 {
                break;
            }
            len += 1 + next;
            segments += 1;
        }
        (segments >= 2).then(|| self.take(len))
    }

    /// A field argument's bare form: `[^][\"'[:space:]]+`.
    pub fn field_arg_bare(&mut self) -> Option<&'a str> {
        let n = self
            .rest()
            .bytes()
            .take_while(|&b| !matches!(b, b'[' | b']' | b'"' | b'\'') && !is_space(b))
            .count();
        (n > 0).then(|| self.take(n))
    }

    /// Falco's bare string: `[^()"'[:space:]=,]+`.
    pub fn bare_str(&mut self) -> Option<&'a str> {
        let n = self
            .rest()
            .bytes()
            .take_while(|&b| !matches!(b, b'(' | b')' | b'"' | b'\'' | b'=' | b',') && !is_space(b))
            .count();
        (n > 0).then(|| self.take(n))
    }

    /// `0[xX][0-9a-fA-F]+` or `[+\-]?[0-9]+[\.]?[0-9]*([eE][+\-][0-9]+)?`.
    pub fn number(&mut self) -> Option<&'a str> {
        let b = self.rest().as_bytes();
        if let [b'0', b'x' | b'X', hex @ ..] = b {
            let digits = hex.iter().take_while(|c| c.is_ascii_hexdigit()).count();
            if digits > 0 {
                return Some(self.take(2 + digits));
            }
        }
        let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
        let int = b
            .get(i..)
            .unwrap_or(&[])
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if int == 0 {
            return None;
        }
        i += int;
        if b.get(i) == Some(&b'.') {
            i += 1;
        }
        i += b
            .get(i..)
            .unwrap_or(&[])
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if matches!(b.get(i), Some(b'e' | b'E')) && matches!(b.get(i + 1), Some(b'+' | b'-')) {
            let exp = b
                .get(i + 2..)
                .unwrap_or(&[])
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if exp > 0 {
                i += 2 + exp;
            }
        }
        Some(self.take(i))
    }

    /// A single- or double-quoted string, unescaped the way libsinsp does.
    /// `Ok(None)` when no quote starts here.
    pub fn quoted(&mut self) -> Result<Option<String>, LexError> {
        let Some(delim) = self.peek().filter(|&b| b == b'"' || b == b'\'') else {
            return Ok(None);
        };
        let start = self.pos;
        let body = self.src.get(start + 1..).unwrap_or("");
        let mut out = String::new();
        let mut chars = body.char_indices();
        let fail = |at: usize, message: String| LexError {
            pos: start + 1 + at,
            message,
        };
        while let Some((i, c)) = chars.next() {
            if c == char::from(delim) {
                self.pos = start + 1 + i + 1;
                return Ok(Some(out));
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((j, e)) = chars.next() else { break };
            match e {
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                // libsinsp keeps "\ " as a lone backslash, for old rules.
                ' ' | '\\' => out.push('\\'),
                '/' => out.push('/'),
                '"' | '\'' if e == char::from(delim) => out.push(e),
                '"' | '\'' => {
                    return Err(fail(
                        j,
                        format!(
                            "invalid \\{e} escape in a string quoted with {}",
                            char::from(delim)
                        ),
                    ));
                }
                'x' => {
                    let hex = body.get(j + 1..j + 3).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(byte) if hex.len() == 2 && byte.is_ascii() => out.push(char::from(byte)),
                        _ => {
                            return Err(fail(
                                j,
                                format!(
                                    "invalid \\x escape '\\x{hex}': expected two hex digits below 80"
                                ),
                            ));
                        }
                    }
                    chars.next();
                    chars.next();
                }
                other => {
                    return Err(fail(
                        j,
                        format!("unsupported string escape sequence: \\{other}"),
                    ));
                }
            }
        }
        Err(LexError {
            pos: start,
            message: "unterminated quoted string".into(),
        })
    }
}
