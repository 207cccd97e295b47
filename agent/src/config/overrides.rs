//! `-o key=value` on the command line, as Falco has it: a dotted path into
//! the config document (`webhooks[0].min_priority=error`, `rules_files[]=x`
//! appends), the value read as YAML (`true`, `5`, `[a, b]`, or text).
use serde_yaml_ng::{Mapping, Value};

enum Seg {
    Key(String),
    Index(usize),
    Append,
}

fn segments(path: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return Err(format!("`{path}`: empty key"));
        }
        out.push(Seg::Key(key.to_owned()));
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or_else(|| format!("`{path}`: `[` without `]`"))?;
            let index = &inner[..close];
            out.push(if index.is_empty() {
                Seg::Append
            } else {
                Seg::Index(
                    index
                        .parse()
                        .map_err(|_| format!("`{path}`: `{index}` is not an index"))?,
                )
            });
            rest = &inner[close + 1..];
        }
        if !rest.is_empty() {
            return Err(format!("`{path}`: unexpected `{rest}`"));
        }
    }
    Ok(out)
}

fn slot<'a>(at: &'a mut Value, seg: &Seg, path: &str) -> Result<&'a mut Value, String> {
    match seg {
        Seg::Key(key) => {
            if at.is_null() {
                *at = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(map) = at else {
                return Err(format!(
                    "`{path}`: `{key}` is inside something that is not a map"
                ));
            };
            Ok(map.entry(Value::String(key.clone())).or_insert(Value::Null))
        }
        Seg::Index(_) | Seg::Append => {
            if at.is_null() {
                *at = Value::Sequence(Vec::new());
            }
            let Value::Sequence(seq) = at else {
                return Err(format!("`{path}`: indexes something that is not a list"));
            };
            let i = match seg {
                Seg::Index(i) => *i,
                _ => seq.len(),
            };
            if i > seq.len() {
                return Err(format!(
                    "`{path}`: index {i} is past the end of a list of {}",
                    seq.len()
                ));
            }
            if i == seq.len() {
                seq.push(Value::Null);
            }
            Ok(&mut seq[i])
        }
    }
}

/// Applies one `key=value` to `doc`.
pub fn apply(doc: &mut Value, raw: &str) -> Result<(), String> {
    let (path, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not key=value"))?;
    let value: Value =
        serde_yaml_ng::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    let mut at = doc;
    for seg in segments(path.trim())? {
        at = slot(at, &seg, path)?;
    }
    *at = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_indexes_appends_and_typed_values() {
        let mut doc: Value =
            serde_yaml_ng::from_str("rules_files: [a.yaml]\nwebhooks: [{url: 'http://x/'}]")
                .unwrap();
        for o in [
            "rules_files[]=b.yaml",
            "webhooks[0].min_priority=error",
            "kernel.builtin_ignore=false",
            "kernel.ringbuf_bytes=16384",
            "custom_fields.cluster=prod-eu",
            "hostname=node-7",
        ] {
            apply(&mut doc, o).unwrap();
        }
        let want: Value = serde_yaml_ng::from_str(
            "rules_files: [a.yaml, b.yaml]
webhooks: [{url: 'http://x/', min_priority: error}]
kernel: {builtin_ignore: false, ringbuf_bytes: 16384}
custom_fields: {cluster: prod-eu}
hostname: node-7",
        )
        .unwrap();
        assert_eq!(doc, want);
    }

    #[test]
    fn bad_overrides_say_why() {
        let mut doc = Value::Null;
        assert!(
            apply(&mut doc, "novalue")
                .unwrap_err()
                .contains("key=value")
        );
        assert!(
            apply(&mut doc, "a[5]=1")
                .unwrap_err()
                .contains("past the end")
        );
        assert!(apply(&mut doc, "a..b=1").unwrap_err().contains("empty key"));
        assert!(
            apply(&mut doc, "a[x]=1")
                .unwrap_err()
                .contains("not an index")
        );
        apply(&mut doc, "s=text").unwrap();
        assert!(apply(&mut doc, "s.t=1").unwrap_err().contains("not a map"));
    }
}
