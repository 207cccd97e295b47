//! `output_fields` of an alert.
use std::sync::Arc;

use serde::Serialize;

/// `output_fields`: keys sorted (the order Falco's JSON and a `BTreeMap`
/// give), each once, in one vector. An alert has about a dozen fields; a
/// `BTreeMap` of them cost a node allocation per few entries and pointer
/// chasing on every insert and lookup, a sixth of an alert's cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputFields(Vec<(Arc<str>, serde_json::Value)>);

impl OutputFields {
    pub fn new() -> Self {
        OutputFields(Vec::new())
    }

    /// Fields whose keys are distinct (a rendered template's), in any
    /// order, with room for `extra` more; sorted in place.
    pub fn from_distinct(mut fields: Vec<(Arc<str>, serde_json::Value)>, extra: usize) -> Self {
        fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A caller that broke the promise still gets one value per key
        // (the first after sorting; unstable, so any of the duplicates).
        fields.dedup_by(|a, b| a.0 == b.0);
        fields.reserve(extra);
        OutputFields(fields)
    }

    /// Fields already sorted by key, each key once (a [`FieldPlan`]'s).
    ///
    /// [`FieldPlan`]: super::alert::FieldPlan
    pub(crate) fn from_sorted(fields: Vec<(Arc<str>, serde_json::Value)>) -> Self {
        debug_assert!(fields.windows(2).all(|w| w[0].0 < w[1].0));
        OutputFields(fields)
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.position(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&mut self, key: Arc<str>, value: serde_json::Value) -> Option<serde_json::Value> {
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Sets `key` to `value()` unless it is already set.
    pub fn insert_if_absent(&mut self, key: &Arc<str>, value: impl FnOnce() -> serde_json::Value) {
        if let Err(i) = self.position(key) {
            self.0.insert(i, (key.clone(), value()));
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<serde_json::Value> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &serde_json::Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// As a `BTreeMap` collects: a later value for the same key wins.
impl FromIterator<(Arc<str>, serde_json::Value)> for OutputFields {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, serde_json::Value)>>(iter: I) -> Self {
        let mut fields = OutputFields::new();
        for (k, v) in iter {
            fields.insert(k, v);
        }
        fields
    }
}

impl<const N: usize> From<[(Arc<str>, serde_json::Value); N]> for OutputFields {
    fn from(fields: [(Arc<str>, serde_json::Value); N]) -> Self {
        fields.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a OutputFields {
    type Item = (&'a Arc<str>, &'a serde_json::Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Arc<str>, serde_json::Value)>,
        fn(&'a (Arc<str>, serde_json::Value)) -> (&'a Arc<str>, &'a serde_json::Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// Like a map's index: panics when the key is missing (tests).
impl std::ops::Index<&str> for OutputFields {
    type Output = serde_json::Value;

    fn index(&self, key: &str) -> &serde_json::Value {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no output field {key:?}"),
        }
    }
}

impl Serialize for OutputFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}
