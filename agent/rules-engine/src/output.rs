//! Output templates: `%field` and `%field[arg]` expand to the event's
//! values, `<NA>` when missing; JSON fields carry `null` instead.
use std::fmt::Write;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::FieldId;
use crate::eval::read;
use crate::event::{Event, Labels, Value};
use crate::fields::{self, FieldError, Kind, Src};

#[derive(Debug)]
enum Part {
    Lit(String),
    Field { key: Arc<str>, src: Src, kind: Kind },
}

#[derive(Debug, Default)]
pub(crate) struct Template {
    parts: Vec<Part>,
    keys: Vec<Arc<str>>,
}

/// A field in a template that could not be resolved, at a byte offset.
pub(crate) struct BadField {
    pub offset: usize,
    pub name: String,
    pub error: FieldError,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

/// Parses a template. Falco trims it first; so do we.
pub(crate) fn parse(text: &str) -> (Template, Vec<BadField>) {
    let lead = text.len() - text.trim_start().len();
    let body = text.trim();
    let bytes = body.as_bytes();
    let mut t = Template::default();
    let mut bad = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let next_pct = body
            .get(i..)
            .and_then(|r| r.find('%'))
            .map_or(bytes.len(), |p| i + p);
        lit.push_str(body.get(i..next_pct).unwrap_or(""));
        i = next_pct;
        if i >= bytes.len() {
            break;
        }
        // As in libsinsp's formatter: `%`, an optional width, then a field.
        let width = bytes
            .get(i + 1..)
            .unwrap_or(&[])
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let from = i + 1 + width;
        let name_len = bytes
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .take_while(|b| is_name_byte(**b))
            .count();
        let name = body
            .get(from..from + name_len)
            .unwrap_or("")
            .trim_end_matches('.');
        // Every `%` starts a field: "100% done", "%foo" and a final `%` are
        // errors in Falco (LOAD_ERR_COMPILE_OUTPUT), not text.
        if !name.contains('.') {
            let rest: String = body.get(i..).unwrap_or("").chars().take(40).collect();
            bad.push(BadField {
                offset: lead + i,
                name: rest.clone(),
                error: FieldError::InvalidToken(rest),
            });
            i = from + name_len.max(1);
            continue;
        }
        let mut end = from + name.len();
        let mut arg = None;
        if bytes.get(end) == Some(&b'[')
            && let Some(close) = body.get(end..).and_then(|r| r.find(']'))
        {
            arg = body.get(end + 1..end + close);
            end += close + 1;
        }
        let key = body.get(from..end).unwrap_or(name);
        i = end;
        // Falco kept `%container.info` for compatibility; it expands to nothing.
        if name == "container.info" && arg.is_none() {
            continue;
        }
        match fields::lookup(name, arg) {
            Ok(field) => {
                if !lit.is_empty() {
                    t.parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                let key: Arc<str> = Arc::from(key);
                if !t.keys.contains(&key) {
                    t.keys.push(key.clone());
                }
                t.parts.push(Part::Field {
                    key,
                    src: field.src,
                    kind: field.kind,
                });
            }
            Err(error) => bad.push(BadField {
                offset: lead + next_pct,
                name: name.to_string(),
                error,
            }),
        }
    }
    if !lit.is_empty() {
        t.parts.push(Part::Lit(lit));
    }
    (t, bad)
}

/// Falco prints `evt.time` as the time of day; UTC here.
fn time_of_day(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:09}", ns % 1_000_000_000)
}

fn labels_text(labels: &dyn Labels) -> String {
    let mut out = String::from("(");
    labels.for_each_label(&mut |k, v| {
        if out.len() > 1 {
            out.push(',');
        }
        let _ = write!(out, "{k}:{v}");
    });
    out.push(')');
    out
}

fn labels_json(labels: &dyn Labels) -> Json {
    let mut map = serde_json::Map::new();
    labels.for_each_label(&mut |k, v| {
        map.insert(k.to_string(), Json::String(v.to_string()));
    });
    Json::Object(map)
}

/// The JSON rendering of one value.
fn json_of(value: Value<'_>, kind: Kind) -> Json {
    match (value, kind) {
        (Value::Str(s), Kind::Str) => Json::String(s.to_string()),
        (Value::U64(n), Kind::U64) => Json::from(n),
        (Value::I64(n), Kind::I64) => Json::from(n),
        (Value::Ip(ip), Kind::Ip | Kind::Net) => Json::String(ip.to_canonical().to_string()),
        (Value::Bool(b), Kind::Bool) => Json::Bool(b),
        (Value::Labels(l), Kind::Labels) => labels_json(l),
        _ => Json::Null,
    }
}

/// Appends the text rendering of one value to `text` and returns its JSON
/// rendering: the text goes straight into the output, so a field costs one
/// allocation (its JSON string) rather than two.
fn render_value(value: Value<'_>, src: &Src, kind: Kind, text: &mut String) -> Json {
    match (value, kind) {
        (Value::Str(s), Kind::Str) => text.push_str(s),
        (Value::U64(n), Kind::U64) if *src == Src::Event(FieldId::EvtTime) => {
            text.push_str(&time_of_day(n));
        }
        (Value::U64(n), Kind::U64) => text.push_str(itoa::Buffer::new().format(n)),
        (Value::I64(n), Kind::I64) => text.push_str(itoa::Buffer::new().format(n)),
        (Value::Ip(ip), Kind::Ip | Kind::Net) => {
            let _ = write!(text, "{}", ip.to_canonical());
        }
        (Value::Bool(b), Kind::Bool) => text.push_str(if b { "true" } else { "false" }),
        (Value::Labels(l), Kind::Labels) => text.push_str(&labels_text(l)),
        _ => text.push_str("<NA>"),
    }
    json_of(value, kind)
}

impl Template {
    pub fn render<E: Event + ?Sized>(&self, event: &E) -> (String, Vec<(Arc<str>, Json)>) {
        let mut text = String::with_capacity(self.text_hint());
        let mut json: Vec<(Arc<str>, Json)> = Vec::with_capacity(self.keys.len());
        for part in &self.parts {
            match part {
                Part::Lit(s) => text.push_str(s),
                Part::Field { key, src, kind } => {
                    let value = render_value(read(src, event), src, *kind, &mut text);
                    if !json.iter().any(|(k, _)| k == key) {
                        json.push((key.clone(), value));
                    }
                }
            }
        }
        (text, json)
    }

    /// The JSON value of a one-field template (`null` when missing), as
    /// [`render`](Self::render) gives it, without building the text; the
    /// text as a JSON string for any other template.
    pub fn value<E: Event + ?Sized>(&self, event: &E) -> Json {
        match self.parts.as_slice() {
            [Part::Field { src, kind, .. }] => json_of(read(src, event), *kind),
            _ => Json::String(self.render(event).0),
        }
    }

    /// Literal bytes plus a guess per field: one allocation for most texts.
    fn text_hint(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.len(),
                Part::Field { .. } => 24,
            })
            .sum()
    }

    /// The field keys in order of first appearance.
    pub fn keys(&self) -> &[Arc<str>] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEvent;

    #[test]
    fn expands_fields_and_missing_values() {
        let (t, bad) = parse(
            "  Outbound (command=%proc.cmdline to=%fd.name user=%user.name pod=%k8s.pod.label[app]).  ",
        );
        assert!(bad.is_empty());
        let ev = TestEvent::connect("203.0.113.9".parse().unwrap(), 443).with_label("app", "web");
        let (text, json) = t.render(&ev);
        assert_eq!(
            text,
            "Outbound (command=curl https://example.com to=203.0.113.9:443 user=root pod=web)."
        );
        assert_eq!(json.len(), 4);
        assert_eq!(json[3].0.as_ref(), "k8s.pod.label[app]");
        let (text, json) = t.render(&ev.without(FieldId::UserName));
        assert!(text.contains("user=<NA>"));
        assert_eq!(json[2].1, Json::Null);
    }

    #[test]
    fn typed_json_and_time() {
        let (t, _) = parse("%fd.sport %evt.time %container.host_network %fd.sip %k8s.pod.labels");
        let ev =
            TestEvent::connect("::ffff:198.51.100.1".parse().unwrap(), 53).with_label("a", "b");
        let (text, json) = t.render(&ev);
        assert!(
            text.starts_with("53 22:13:20.123456789 true 198.51.100.1 (a:b)"),
            "{text}"
        );
        assert_eq!(json[0].1, Json::from(53u64));
        assert_eq!(json[2].1, Json::Bool(true));
        assert_eq!(json[4].1["a"], "b");
    }

    #[test]
    fn reports_unknown_fields() {
        let (_, bad) = parse("x=%proc.sname y=%proc.aname[2] %container.info");
        let names: Vec<&str> = bad.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["proc.sname", "proc.aname"]);
        assert_eq!(bad[0].offset, 2);
    }

    #[test]
    fn every_percent_starts_a_field() {
        for text in ["100% done", "%foo", "x %", "%not_a_real_field", "%%"] {
            let (_, bad) = parse(text);
            assert!(
                matches!(
                    bad.first().map(|b| &b.error),
                    Some(FieldError::InvalidToken(_))
                ),
                "{text}"
            );
        }
        let (t, bad) = parse("%20proc.name!");
        assert!(bad.is_empty());
        assert_eq!(t.keys()[0].as_ref(), "proc.name");
    }
}
