//! What the engine reads from an event: the agent implements [`Event`].
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use crate::FieldId;

/// One field's value, borrowed from the event so that evaluation allocates
/// nothing.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// Not known for this event. Every comparison on a missing value is false
    /// (so `not <comparison>` is true), as in Falco.
    Missing,
    Str(&'a str),
    U64(u64),
    /// Signed numbers: `evt.rawres`, `user.loginuid` (-1 when unset).
    I64(i64),
    /// IPv4-mapped IPv6 addresses may be passed either way: the engine
    /// compares them as IPv4.
    Ip(IpAddr),
    Bool(bool),
    Labels(&'a dyn Labels),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Missing => f.write_str("Missing"),
            Value::Str(s) => f.debug_tuple("Str").field(s).finish(),
            Value::U64(n) => f.debug_tuple("U64").field(n).finish(),
            Value::I64(n) => f.debug_tuple("I64").field(n).finish(),
            Value::Ip(ip) => f.debug_tuple("Ip").field(ip).finish(),
            Value::Bool(b) => f.debug_tuple("Bool").field(b).finish(),
            Value::Labels(labels) => {
                let mut map = f.debug_map();
                labels.for_each_label(&mut |k, v| {
                    map.entry(&k, &v);
                });
                map.finish()
            }
        }
    }
}

/// An event as the rule engine sees it. Implementations should be cheap:
/// `value` is called once per field comparison.
pub trait Event {
    fn value(&self, field: FieldId) -> Value<'_>;
}

impl<E: Event + ?Sized> Event for &E {
    fn value(&self, field: FieldId) -> Value<'_> {
        (**self).value(field)
    }
}

/// Pod labels. Implemented for the usual maps and pair vectors.
pub trait Labels {
    fn get(&self, key: &str) -> Option<&str>;
    /// Visits every label; order is the implementation's.
    fn for_each_label(&self, visit: &mut dyn FnMut(&str, &str));
}

impl<K, V> Labels for BTreeMap<K, V>
where
    K: std::borrow::Borrow<str> + Ord,
    V: AsRef<str>,
{
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(AsRef::as_ref)
    }

    fn for_each_label(&self, visit: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            visit(k.borrow(), v.as_ref());
        }
    }
}

impl<K, V, S> Labels for HashMap<K, V, S>
where
    K: std::borrow::Borrow<str> + Hash + Eq,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(AsRef::as_ref)
    }

    fn for_each_label(&self, visit: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            visit(k.borrow(), v.as_ref());
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Labels for [(K, V)] {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.as_ref())
    }

    fn for_each_label(&self, visit: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            visit(k.as_ref(), v.as_ref());
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Labels for Vec<(K, V)> {
    fn get(&self, key: &str) -> Option<&str> {
        Labels::get(self.as_slice(), key)
    }

    fn for_each_label(&self, visit: &mut dyn FnMut(&str, &str)) {
        self.as_slice().for_each_label(visit)
    }
}
