//! `--diff DIR`: what applying the generated policies would change against
//! the policies in a directory (YAML files, any number of documents each).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{AdviseError, records};

type Key = (String, String, String);

/// Policies in `dir` by (kind, namespace, name), with the file they came from.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<Key, (PathBuf, Value)>, AdviseError> {
    let mut out = BTreeMap::new();
    for file in records::input_files(&[dir.to_path_buf()])? {
        if !file
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|source| AdviseError::Io {
            path: file.clone(),
            source,
        })?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(doc).map_err(|e| AdviseError::Policy {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            if let Some(key) = key_of(&value) {
                out.insert(key, (file.clone(), value));
            }
        }
    }
    Ok(out)
}

fn key_of(doc: &Value) -> Option<Key> {
    let kind = doc.get("kind")?.as_str()?;
    if kind != "NetworkPolicy" && kind != "CiliumNetworkPolicy" {
        return None;
    }
    let meta = doc.get("metadata")?;
    Some((
        kind.to_owned(),
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned(),
        meta.get("name")?.as_str()?.to_owned(),
    ))
}

/// The change report, one line per difference; empty when nothing changes.
pub fn diff(generated: &[Value], existing: &BTreeMap<Key, (PathBuf, Value)>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    for doc in generated {
        let Some(key) = key_of(doc) else { continue };
        let label = format!("{} {}/{}", key.0, key.1, key.2);
        match existing.get(&key) {
            None => lines.push(format!("+ {label}: new")),
            Some((file, old)) => {
                let changes = spec_changes(&old["spec"], &doc["spec"]);
                if !changes.is_empty() {
                    lines.push(format!("~ {label} ({}):", file.display()));
                    lines.extend(changes.into_iter().map(|c| format!("    {c}")));
                }
            }
        }
        seen.insert(key);
    }
    for ((kind, ns, name), (file, _)) in existing {
        if !seen.contains(&(kind.clone(), ns.clone(), name.clone())) {
            lines.push(format!(
                "= {kind} {ns}/{name} ({}): not generated (left alone)",
                file.display()
            ));
        }
    }
    lines
}

/// Field changes outside the rule lists, then egress rules added and
/// removed (compared as sets: order does not matter to NetworkPolicy).
fn spec_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = old
        .as_object()
        .into_iter()
        .flatten()
        .chain(new.as_object().into_iter().flatten())
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        let (a, b) = (&old[key.as_str()], &new[key.as_str()]);
        if key == "egress" || key == "ingress" {
            let rules = |v: &Value| -> BTreeSet<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| canonical(r).to_string())
                    .collect()
            };
            let (before, after) = (rules(a), rules(b));
            for r in after.difference(&before) {
                out.push(format!("+ {key} {r}"));
            }
            for r in before.difference(&after) {
                out.push(format!("- {key} {r}"));
            }
        } else if canonical(a) != canonical(b) {
            out.push(format!("{key}: {} -> {}", canonical(a), canonical(b)));
        }
    }
    out
}

/// Lists of peers and ports sorted, so equal rules compare equal.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(canonical).collect();
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_new_changed_and_untouched() {
        let dir = std::env::temp_dir().join(format!("egret-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("shop.yaml"),
            "---\nkind: NetworkPolicy\nmetadata: {name: a, namespace: shop}\n\
             spec:\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 443, protocol: TCP}]\n    to: [{ipBlock: {cidr: 198.51.100.7/32}}]\n\
             ---\nkind: NetworkPolicy\nmetadata: {name: mine, namespace: shop}\nspec: {}\n\
             ---\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
        let existing = load_dir(&dir).unwrap();
        assert_eq!(existing.len(), 2);
        let same: Value = serde_yaml_ng::from_str(
            "kind: NetworkPolicy\nmetadata: {name: a, namespace: shop}\n\
             spec:\n  egress:\n  - to: [{ipBlock: {cidr: 198.51.100.7/32}}]\n    ports: [{protocol: TCP, port: 443}]\n  policyTypes: [Egress]\n",
        )
        .unwrap();
        let lines = diff(std::slice::from_ref(&same), &existing);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("= NetworkPolicy shop/mine"));
        let mut changed = same.clone();
        changed["spec"]["egress"][0]["ports"][0]["port"] = 8443.into();
        let fresh: Value = serde_yaml_ng::from_str(
            "kind: NetworkPolicy\nmetadata: {name: b, namespace: x}\nspec: {}",
        )
        .unwrap();
        let lines = diff(&[changed, fresh], &existing);
        assert!(lines[0].starts_with("~ NetworkPolicy shop/a"), "{lines:?}");
        assert!(lines[1].contains("+ egress") && lines[1].contains("8443"));
        assert!(lines[2].contains("- egress") && lines[2].contains("443"));
        assert_eq!(lines[3], "+ NetworkPolicy x/b: new");
        std::fs::write(dir.join("bad.yaml"), "a: [").unwrap();
        let err = load_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("bad.yaml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
