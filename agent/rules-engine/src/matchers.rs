//! String matchers compiled once per check: sets, globs, path prefixes.
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: lookups hash short strings, where SipHash's setup dominates. Only
/// rule authors choose the keys, so flooding is not a concern.
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvSet<T> = HashSet<T, BuildHasherDefault<Fnv>>;

/// Below this many items a linear scan beats hashing.
const SMALL: usize = 8;

#[derive(Debug)]
pub(crate) enum StrSet {
    Small(Box<[Box<str>]>),
    Hashed(FnvSet<Box<str>>),
}

impl StrSet {
    pub fn new(items: Vec<String>) -> StrSet {
        let mut items: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        items.sort_unstable();
        items.dedup();
        if items.len() <= SMALL {
            StrSet::Small(items.into_boxed_slice())
        } else {
            StrSet::Hashed(items.into_iter().collect())
        }
    }

    pub fn contains(&self, value: &str) -> bool {
        match self {
            StrSet::Small(items) => items.iter().any(|i| &**i == value),
            StrSet::Hashed(set) => set.contains(value),
        }
    }
}

#[derive(Debug)]
pub(crate) enum U64Set {
    Small(Box<[u64]>),
    Hashed(FnvSet<u64>),
}

impl U64Set {
    pub fn new(mut items: Vec<u64>) -> U64Set {
        items.sort_unstable();
        items.dedup();
        if items.len() <= SMALL {
            U64Set::Small(items.into_boxed_slice())
        } else {
            U64Set::Hashed(items.into_iter().collect())
        }
    }

    pub fn contains(&self, value: u64) -> bool {
        match self {
            U64Set::Small(items) => items.contains(&value),
            U64Set::Hashed(set) => set.contains(&value),
        }
    }
}

/// ASCII case-insensitive substring search, like glibc's `strcasestr`.
pub(crate) fn icontains(haystack: &str, needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[derive(Clone, Debug)]
enum ClassItem {
    Char(char),
    Range(char, char),
    Named(fn(char) -> bool),
}

#[derive(Clone, Debug)]
enum Token {
    Lit(char),
    One,
    Star,
    Class {
        negated: bool,
        items: Vec<ClassItem>,
    },
}

/// A shell pattern with fnmatch(3) semantics and no flags (what Falco's
/// `glob` uses): `*` and `?` match `/` too, and `\` quotes the next char.
#[derive(Clone, Debug)]
pub(crate) struct Glob {
    tokens: Box<[Token]>,
    fold_case: bool,
}

fn named_class(name: &str) -> Option<fn(char) -> bool> {
    Some(match name {
        "alpha" => |c: char| c.is_ascii_alphabetic(),
        "digit" => |c: char| c.is_ascii_digit(),
        "alnum" => |c: char| c.is_ascii_alphanumeric(),
        "upper" => |c: char| c.is_ascii_uppercase(),
        "lower" => |c: char| c.is_ascii_lowercase(),
        "space" => |c: char| c.is_ascii_whitespace() || c == '\u{b}',
        "xdigit" => |c: char| c.is_ascii_hexdigit(),
        "punct" => |c: char| c.is_ascii_punctuation(),
        "blank" => |c: char| c == ' ' || c == '\t',
        "cntrl" => |c: char| c.is_ascii_control(),
        "print" => |c: char| c.is_ascii_graphic() || c == ' ',
        "graph" => |c: char| c.is_ascii_graphic(),
        _ => return None,
    })
}

/// Parses a bracket expression after its `[`; None if it never closes, in
/// which case fnmatch takes the `[` literally.
fn parse_class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = matches!(chars.first(), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, items }, i + 1));
        }
        first = false;
        if c == '['
            && chars.get(i + 1) == Some(&':')
            && let Some(end) = (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&']'))
        {
            let name: String = chars.get(i + 2..end)?.iter().collect();
            if let Some(test) = named_class(&name) {
                items.push(ClassItem::Named(test));
                i = end + 2;
                continue;
            }
        }
        let (lo, used) = match c {
            '\\' => (*chars.get(i + 1)?, 2),
            _ => (c, 1),
        };
        i += used;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            let (hi, used) = match chars.get(i + 1)? {
                '\\' => (*chars.get(i + 2)?, 3),
                &hi => (hi, 2),
            };
            items.push(ClassItem::Range(lo, hi));
            i += used;
        } else {
            items.push(ClassItem::Char(lo));
        }
    }
}

impl Glob {
    pub fn new(pattern: &str, fold_case: bool) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            match c {
                '*' => {
                    if !matches!(tokens.last(), Some(Token::Star)) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::One),
                '\\' => match chars.get(i) {
                    Some(&next) => {
                        tokens.push(Token::Lit(next));
                        i += 1;
                    }
                    None => tokens.push(Token::Lit('\\')),
                },
                '[' => match parse_class(chars.get(i..).unwrap_or(&[])) {
                    Some((class, used)) => {
                        tokens.push(class);
                        i += used;
                    }
                    None => tokens.push(Token::Lit('[')),
                },
                c => tokens.push(Token::Lit(c)),
            }
        }
        Glob {
            tokens: tokens.into_boxed_slice(),
            fold_case,
        }
    }

    fn eq(&self, a: char, b: char) -> bool {
        a == b || (self.fold_case && a.eq_ignore_ascii_case(&b))
    }

    fn single(&self, token: &Token, c: char) -> bool {
        match token {
            Token::Lit(l) => self.eq(*l, c),
            Token::One => true,
            Token::Star => false,
            Token::Class { negated, items } => {
                let hit = items.iter().any(|item| match item {
                    ClassItem::Char(x) => self.eq(*x, c),
                    ClassItem::Range(lo, hi) => {
                        (lo..=hi).contains(&&c)
                            || (self.fold_case
                                && ((lo..=hi).contains(&&c.to_ascii_lowercase())
                                    || (lo..=hi).contains(&&c.to_ascii_uppercase())))
                    }
                    ClassItem::Named(test) => test(c),
                });
                hit != *negated
            }
        }
    }

    /// Greedy matching with one backtrack point per star: linear in the
    /// common case, never recursive.
    pub fn matches(&self, text: &str) -> bool {
        let (mut t, mut s) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        loop {
            let ch = text.get(s..).and_then(|rest| rest.chars().next());
            let Some(c) = ch else { break };
            match self.tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, s));
                    t += 1;
                }
                Some(token) if self.single(token, c) => {
                    t += 1;
                    s += c.len_utf8();
                }
                _ => match star {
                    Some((st, ss)) => {
                        let skipped = text
                            .get(ss..)
                            .and_then(|r| r.chars().next())
                            .map_or(1, char::len_utf8);
                        star = Some((st, ss + skipped));
                        t = st + 1;
                        s = ss + skipped;
                    }
                    None => return false,
                },
            }
        }
        self.tokens
            .get(t..)
            .unwrap_or(&[])
            .iter()
            .all(|tok| matches!(tok, Token::Star))
    }
}

/// Falco's `pmatch`: the value is one of the paths or below one of them,
/// compared by `/`-separated components; a component may be a glob.
#[derive(Debug)]
pub(crate) struct PathSet {
    paths: Vec<Vec<Glob>>,
}

impl PathSet {
    pub fn new(paths: &[String]) -> PathSet {
        PathSet {
            paths: paths
                .iter()
                .map(|p| {
                    p.split('/')
                        .filter(|c| !c.is_empty())
                        .map(|c| Glob::new(c, false))
                        .collect()
                })
                .collect(),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        self.paths.iter().any(|prefix| {
            let mut components = value.split('/').filter(|c| !c.is_empty());
            prefix
                .iter()
                .all(|glob| components.next().is_some_and(|c| glob.matches(c)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_fnmatch() {
        let g = |p: &str, t: &str| Glob::new(p, false).matches(t);
        assert!(g("*.example.com", "api.example.com"));
        assert!(g("/usr/*", "/usr/local/bin"));
        assert!(g("a?c", "abc"));
        assert!(!g("a?c", "ac"));
        assert!(g("[a-c]x", "bx"));
        assert!(!g("[!a-c]x", "bx"));
        assert!(g("[[:digit:]]*", "9lives"));
        assert!(g("a\\*", "a*"));
        assert!(!g("a\\*", "ab"));
        assert!(g("[", "["));
        assert!(g("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!g("*a*b*c*", "xxaxxcxxbxx"));
        assert!(g("", ""));
        assert!(g("**", "é"));
        assert!(Glob::new("CURL*", true).matches("curl"));
        assert!(!Glob::new("CURL*", false).matches("curl"));
    }

    #[test]
    fn pmatch_by_components() {
        let set = PathSet::new(&["/var/run".into(), "/opt/*/bin".into(), "/etc/".into()]);
        assert!(set.matches("/var/run"));
        assert!(set.matches("/var/run/docker.sock"));
        assert!(!set.matches("/var/running"));
        assert!(!set.matches("/var"));
        assert!(set.matches("/opt/app/bin/tool"));
        assert!(!set.matches("/opt/app/lib"));
        assert!(set.matches("/etc/passwd"));
        assert!(PathSet::new(&["/".into()]).matches("/anything"));
    }

    #[test]
    fn sets_and_icontains() {
        let many: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        assert!(StrSet::new(many).contains("p13"));
        assert!(!StrSet::new(vec!["a".into()]).contains("b"));
        assert!(U64Set::new((0..50).collect()).contains(49));
        assert!(icontains("Mozilla CURL/8", b"curl"));
        assert!(!icontains("wget", b"curl"));
    }
}
