//! A small block-style YAML writer with comments (serde's YAML writers
//! cannot write comments, and the per-rule comment is the point). Every
//! string is written double-quoted with JSON escapes, which YAML accepts,
//! so no value can change the document's structure.
use std::fmt::Write as _;

#[derive(Clone, Debug)]
pub enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Item>),
    Str(String),
    Int(i64),
}

#[derive(Clone, Debug)]
pub struct Item {
    pub comment: Vec<String>,
    pub node: Node,
}

impl Node {
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Node {
        Node::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn seq(items: impl IntoIterator<Item = Node>) -> Node {
        Node::Seq(
            items
                .into_iter()
                .map(|node| Item {
                    comment: Vec::new(),
                    node,
                })
                .collect(),
        )
    }

    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Node {
        Node::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.clone(), Node::str(v)))
                .collect(),
        )
    }
}

/// One document: comment lines, then the node (a map).
pub fn document(out: &mut String, comment: &[String], node: &Node) {
    out.push_str("---\n");
    for line in comment {
        write_comment(out, 0, line);
    }
    let mut lines = Vec::new();
    block(&mut lines, 0, node);
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
}

fn write_comment(out: &mut String, indent: usize, text: &str) {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let _ = writeln!(out, "{:indent$}# {}", "", clean.trim_end());
}

fn inline(node: &Node) -> Option<String> {
    match node {
        Node::Str(s) => Some(quote(s)),
        Node::Int(n) => Some(n.to_string()),
        Node::Map(m) if m.is_empty() => Some("{}".into()),
        Node::Seq(s) if s.is_empty() => Some("[]".into()),
        _ => None,
    }
}

fn block(lines: &mut Vec<String>, indent: usize, node: &Node) {
    match node {
        Node::Map(entries) => {
            for (key, value) in entries {
                let key = key_text(key);
                match inline(value) {
                    Some(v) => lines.push(format!("{:indent$}{key}: {v}", "")),
                    None => {
                        lines.push(format!("{:indent$}{key}:", ""));
                        block(lines, indent + 2, value);
                    }
                }
            }
        }
        Node::Seq(items) => {
            for item in items {
                let mut comment = String::new();
                for line in &item.comment {
                    write_comment(&mut comment, indent, line);
                }
                lines.extend(comment.lines().map(str::to_owned));
                match inline(&item.node) {
                    Some(v) => lines.push(format!("{:indent$}- {v}", "")),
                    None => {
                        let start = lines.len();
                        block(lines, indent + 2, &item.node);
                        if let Some(first) = lines.get_mut(start) {
                            first.replace_range(indent..indent + 2, "- ");
                        }
                    }
                }
            }
        }
        scalar => {
            if let Some(v) = inline(scalar) {
                lines.push(format!("{:indent$}{v}", ""));
            }
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Plain keys where YAML cannot misread them, quoted otherwise.
fn key_text(key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if plain { key.to_owned() } else { quote(key) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parsable_yaml_with_comments() {
        let node = Node::map([
            ("kind", Node::str("NetworkPolicy")),
            ("empty", Node::map::<String>([])),
            (
                "list",
                Node::Seq(vec![
                    Item {
                        comment: vec!["first\nrule: injected".into()],
                        node: Node::map([("a", Node::Int(1)), ("b", Node::seq([Node::str("x")]))]),
                    },
                    Item {
                        comment: vec![],
                        node: Node::str("plain: \"quoted\"\n- not an item"),
                    },
                ]),
            ),
            ("k8s:odd key", Node::str("v")),
        ]);
        let mut out = String::new();
        document(&mut out, &["header".into()], &node);
        assert!(
            out.contains("  # first rule: injected\n  - a: 1\n    b:\n"),
            "{out}"
        );
        let value: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(value["list"][0]["b"][0], "x");
        assert_eq!(value["list"][1], "plain: \"quoted\"\n- not an item");
        assert_eq!(value["k8s:odd key"], "v");
        assert_eq!(value["empty"], serde_json::json!({}));
    }
}
