//! The alert line, written by hand: the same bytes `serde_json::to_writer`
//! makes of an [`Alert`] (field order of the struct, compact, serde_json's
//! string escapes), without its `Serializer` machinery. In an alert storm
//! serialisation was a quarter of the agent's CPU, most of it serde_json's
//! string escaper, which looks every byte up in a table; here runs of eight
//! bytes that need no escape are skipped with one word test. The tests
//! compare every byte with serde_json, on hostile strings too.
use serde_json::Value;

use super::alert::Alert;

/// Appends `alert` as one JSON object (no newline).
pub fn write_alert(out: &mut Vec<u8>, alert: &Alert) {
    out.extend_from_slice(b"{\"time\":");
    write_str(out, &alert.time);
    out.extend_from_slice(b",\"rule\":");
    write_str(out, &alert.rule);
    out.extend_from_slice(b",\"priority\":");
    write_str(out, alert.priority.as_str());
    out.extend_from_slice(b",\"output\":");
    write_str(out, &alert.output);
    out.extend_from_slice(b",\"output_fields\":");
    write_object(out, alert.output_fields.iter().map(|(k, v)| (&**k, v)));
    out.extend_from_slice(b",\"tags\":[");
    for (i, tag) in alert.tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, tag);
    }
    out.extend_from_slice(b"],\"source\":");
    write_str(out, alert.source);
    out.extend_from_slice(b",\"hostname\":");
    write_str(out, &alert.hostname);
    out.push(b'}');
}

/// One JSON value as serde_json writes it compactly.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            } else {
                // Floats are rare here (none in rule output); serde_json's
                // own shortest-representation formatting keeps them exact.
                // Writing to a Vec cannot fail, and a number has no keys.
                let _ = serde_json::to_writer(&mut *out, n);
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map.iter().map(|(k, v)| (k.as_str(), v))),
    }
}

/// `{"key":value,…}` in the order given.
fn write_object<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a str, &'a Value)>) {
    out.push(b'{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `w` that is a control character (below
/// 0x20), `"` or `\\`, and maybe of bytes above one: exact as a yes/no
/// answer (zero only when no byte needs an escape), since a borrow can
/// only set a high bit above a byte that really matched. Bytes of 0x80
/// and up are masked out by `!w`.
fn escape_bits(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    (w.wrapping_sub(ONES * 0x20) & !w
        | quote.wrapping_sub(ONES) & !quote
        | backslash.wrapping_sub(ONES) & !backslash)
        & HIGHS
}

/// serde_json's escape for `byte`, or 0 for none: `\b \t \n \f \r \" \\`,
/// `u` for the other control characters (`\u00XX`, lower-case hex).
fn escape_of(byte: u8) -> u8 {
    match byte {
        0x08 => b'b',
        0x09 => b't',
        0x0a => b'n',
        0x0c => b'f',
        0x0d => b'r',
        b'"' => b'"',
        b'\\' => b'\\',
        0x00..=0x1f => b'u',
        _ => 0,
    }
}

/// `s` as a JSON string, quotes included, escaped exactly as serde_json
/// escapes it (non-ASCII and DEL pass through unchanged).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Almost every string of an alert needs no escape: tested first, word
    // by word, then copied in one piece. Interleaving the test with the
    // copy, and padding the tail through a variable-length copy, cost
    // about 200 instructions a string (an alert has about twenty).
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
    } else {
        write_escaped(out, bytes);
    }
    out.push(b'"');
}

/// Whether no byte of `bytes` needs an escape. Words are tested without a
/// branch each (strings here are short, an early exit buys nothing); the
/// last word overlaps the one before it, so no byte is copied to pad a
/// tail (bytes tested twice are harmless).
fn is_clean(bytes: &[u8]) -> bool {
    if let Some(last) = bytes.last_chunk::<8>() {
        let mut chunks = bytes.chunks_exact(8);
        let mut found = 0;
        for chunk in &mut chunks {
            found |= escape_bits(<[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes));
        }
        if !chunks.remainder().is_empty() {
            found |= escape_bits(u64::from_le_bytes(*last));
        }
        found == 0
    } else if let (Some(head), Some(tail)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        let halves =
            u64::from(u32::from_le_bytes(*head)) | u64::from(u32::from_le_bytes(*tail)) << 32;
        escape_bits(halves) == 0
    } else {
        bytes.iter().all(|b| escape_of(*b) == 0)
    }
}

/// The body of a string that needs escapes, byte by byte (rare: a hostile
/// or unusual command line, label or name).
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // bytes[run..i] need no escape; copied in one piece at the next escape.
    let mut run = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape = escape_of(byte);
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if escape == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outputs::alert::{OutputFields, Priority};

    /// serde_json's bytes for a string, the reference.
    fn reference(s: &str) -> Vec<u8> {
        serde_json::to_vec(s).unwrap()
    }

    fn mine(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_str(&mut out, s);
        out
    }

    #[test]
    fn every_single_char_escapes_like_serde_json() {
        for c in (0u32..0x800).chain([0xfffd, 0xffff, 0x10ffff, 0x2028, 0x2029, 0xd7ff, 0xe000]) {
            let Some(c) = char::from_u32(c) else { continue };
            // Alone, and at every position of a word and across word ends.
            for pad in 0..17 {
                let s = format!("{}{c}{}", "a".repeat(pad), "b".repeat(16 - pad));
                assert_eq!(mine(&s), reference(&s), "{c:?} at {pad}");
            }
        }
    }

    #[test]
    fn every_length_and_position_escapes_like_serde_json() {
        // The clean test reads short strings as two overlapping halves and
        // long ones with an overlapping last word: every length up to three
        // words, with each ASCII byte at every position.
        for len in 0..=24 {
            for at in 0..len.max(1) {
                for byte in 0..0x80u8 {
                    let mut b = vec![b'x'; len];
                    if let Some(slot) = b.get_mut(at) {
                        *slot = byte;
                    }
                    let s = String::from_utf8(b).unwrap();
                    assert_eq!(mine(&s), reference(&s), "{byte:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn word_test_never_misses_an_escape() {
        // Every byte value at every position of a word of otherwise safe
        // (and of high, non-ASCII) bytes.
        for filler in [b'a', 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'] {
            for at in 0..8 {
                for byte in 0..=255u8 {
                    let mut w = [filler; 8];
                    w[at] = byte;
                    let needs = w.iter().any(|b| escape_of(*b) != 0);
                    if needs {
                        assert!(escape_bits(u64::from_le_bytes(w)) != 0, "{w:?}");
                    }
                }
            }
        }
    }

    /// xorshift, so the hostile strings are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A string of pieces a hostile workload could put in a command line,
    /// a pod name or a label: controls, quotes, backslashes, escapes that
    /// look like JSON or unicode escapes, multi-byte characters, long runs.
    fn hostile(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "\"",
            "\\",
            "\\\"",
            "\\u0000",
            "\u{0}",
            "\u{1}",
            "\u{8}",
            "\t",
            "\n",
            "\u{b}",
            "\u{c}",
            "\r",
            "\u{1b}[31m",
            "\u{1f}",
            " ",
            "\u{7f}",
            "\u{80}",
            "é",
            "€",
            "😀",
            "\u{2028}",
            "\u{fffd}",
            "\u{feff}",
            "\\ud800",
            "\\uDFFF",
            "</script>",
            "{\"a\":1}",
            "%",
            "<NA>",
            "curl",
            "abcdefgh",
            "ABCDEFGHIJKLMNOP",
            "/",
            "'",
        ];
        let mut s = String::new();
        for _ in 0..rng.below(40) {
            match rng.below(10) {
                0 => s.push_str(&"x".repeat(rng.below(300))),
                1 => {
                    if let Some(c) = char::from_u32(rng.next() as u32 % 0x11_0000) {
                        s.push(c);
                    }
                }
                _ => s.push_str(PIECES[rng.below(PIECES.len())]),
            }
        }
        s
    }

    #[test]
    fn hostile_strings_escape_like_serde_json() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let s = hostile(&mut rng);
            assert_eq!(mine(&s), reference(&s), "{s:?}");
        }
        let huge = format!("{}\"{}\n", "y".repeat(1 << 20), "\u{1}".repeat(4096));
        assert_eq!(mine(&huge), reference(&huge));
    }

    fn alert(rng: &mut Rng) -> Alert {
        let mut fields = OutputFields::default();
        for _ in 0..rng.below(16) {
            let value = match rng.below(8) {
                0 => Value::Null,
                1 => Value::Bool(rng.below(2) == 0),
                2 => Value::from(rng.next()),
                3 => Value::from(-(rng.below(1 << 20) as i64)),
                4 => Value::from(rng.below(1000) as f64 / 7.0),
                5 => {
                    serde_json::json!({ hostile(rng): hostile(rng), "b": [1, null, hostile(rng)] })
                }
                _ => Value::String(hostile(rng)),
            };
            fields.insert(Arc::from(hostile(rng)), value);
        }
        Alert {
            time: hostile(rng),
            rule: hostile(rng).into(),
            priority: [Priority::Critical, Priority::Warning, Priority::Debug][rng.below(3)],
            output: hostile(rng),
            output_fields: fields,
            tags: (0..rng.below(5))
                .map(|_| Arc::from(hostile(rng)))
                .collect::<Vec<_>>()
                .into(),
            source: "syscall",
            hostname: hostile(rng).into(),
        }
    }

    #[test]
    fn alerts_are_the_bytes_serde_json_writes() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..3000 {
            let alert = alert(&mut rng);
            let mut out = Vec::new();
            write_alert(&mut out, &alert);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&serde_json::to_vec(&alert).unwrap())
            );
        }
    }

    #[test]
    fn numbers_like_serde_json() {
        for v in [
            Value::from(0u64),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(-1i64),
            Value::from(0.1f64),
            Value::from(1e300f64),
            Value::from(10.0f64),
            Value::from(-0.0f64),
        ] {
            let mut out = Vec::new();
            write_value(&mut out, &v);
            assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{v}");
        }
    }
}
