//! Secrets in configuration (bearer tokens, HMAC keys, DingTalk signing
//! secrets, credential-bearing URLs and header values): never shown, not
//! even in the error that rejects them.
//!
//! serde's stock errors quote the offending value (`invalid type: string
//! "hunter2", expected …`), and a config error goes straight to the logs.
//! Everything here reports *what kind* of value was found and where, never
//! the value itself. Use [`SecretSource`] for a secret the agent loads, and
//! [`de_opaque_string`] / [`de_opaque_string_map`] for strings that may carry
//! a credential inline (webhook URLs, header values).
use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

/// A secret's value: `Debug` and `Display` are redacted, so neither a log
/// line nor a `{:?}` of a config can show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret lives: `{ file: /path }` or `{ env: NAME }`. Inline values
/// are refused: a config file is read by more people and tools than a
/// mounted Kubernetes Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

const SECRET_SHAPE: &str = "`{file: PATH}` or `{env: NAME}`";

/// What kind of value was found, without the value.
fn kind(unexpected: &str) -> String {
    format!("expected {SECRET_SHAPE}, found {unexpected} (value not shown)")
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

/// Every non-map shape is answered with [`kind`], so no serde message that
/// quotes the input is ever produced.
macro_rules! refuse {
    ($($name:ident: $ty:ty => $what:literal),* $(,)?) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<SecretSource, E> {
            Err(E::custom(kind($what)))
        })*
    };
}

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_SHAPE)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Err(E::custom(format!(
            "inline secrets are not accepted (value not shown); write {SECRET_SHAPE}"
        )))
    }

    refuse! {
        visit_bool: bool => "a boolean",
        visit_i64: i64 => "a number",
        visit_u64: u64 => "a number",
        visit_f64: f64 => "a number",
        visit_bytes: &[u8] => "bytes",
    }

    fn visit_unit<E: de::Error>(self) -> Result<SecretSource, E> {
        Err(E::custom(kind("nothing")))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretSource, A::Error> {
        Err(de::Error::custom(kind("a list")))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let mut file: Option<PathBuf> = None;
        let mut env: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                // A path or a variable name is not the secret; serde's
                // messages about them may quote them.
                "file" if file.is_none() => file = Some(map.next_value()?),
                "env" if env.is_none() => env = Some(map.next_value()?),
                "file" | "env" => return Err(de::Error::duplicate_field("file or env")),
                _ => {
                    return Err(de::Error::custom(format!(
                        "unknown key `{key}` in a secret; write {SECRET_SHAPE}"
                    )));
                }
            }
        }
        match (file, env) {
            (Some(path), None) => Ok(SecretSource::File(path)),
            (None, Some(name)) => Ok(SecretSource::Env(name)),
            _ => Err(de::Error::custom(format!(
                "a secret is {SECRET_SHAPE}, exactly one of them"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading secret file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set or not UTF-8")]
    Env(String),
    #[error("the secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// The value, with surrounding whitespace (a file's trailing newline)
    /// removed.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let (raw, origin) = match self {
            SecretSource::File(path) => (
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.display().to_string(),
                    source,
                })?,
                path.display().to_string(),
            ),
            SecretSource::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::Env(name.clone()))?,
                format!("${name}"),
            ),
        };
        let value = raw.trim();
        if value.is_empty() {
            return Err(SecretError::Empty(origin));
        }
        Ok(Secret(value.to_owned()))
    }
}

/// A string that may carry a credential (a webhook URL with a token in its
/// query, a header value): accepted as a string only, and a wrong shape is
/// reported without the value.
pub fn de_opaque_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(OpaqueString)
}

/// A map of strings to [`de_opaque_string`] values (request headers).
pub fn de_opaque_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Values;
    impl<'de> Visitor<'de> for Values {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of names to strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value::<Opaque>()?;
                out.insert(key, value.0);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Values)
}

struct Opaque(String);

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OpaqueString).map(Opaque)
    }
}

struct OpaqueString;

fn not_a_string(found: &str) -> String {
    format!("expected a string, found {found} (value not shown)")
}

impl<'de> Visitor<'de> for OpaqueString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Err(E::custom(not_a_string("a boolean")))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        Err(E::custom(not_a_string("a number")))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        Err(E::custom(not_a_string("a number")))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Err(E::custom(not_a_string("a number")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(E::custom(not_a_string("nothing")))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(de::Error::custom(not_a_string("a list")))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(de::Error::custom(not_a_string("a map")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Holder {
        secret: Option<SecretSource>,
        #[serde(default, deserialize_with = "de_opaque_string")]
        url: String,
        #[serde(default, deserialize_with = "de_opaque_string_map")]
        headers: BTreeMap<String, String>,
    }

    fn error(yaml: &str) -> String {
        serde_yaml_ng::from_str::<Holder>(yaml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn no_shape_of_bad_input_echoes_the_value() {
        for yaml in [
            "secret: hunter2-value",
            "secret: 424242424242",
            "secret: [hunter2-value]",
            "secret: {value: hunter2-value}",
            "url: 424242424242",
            "url: [hunter2-value]",
            "headers: {Authorization: 424242424242}",
            "headers: {Authorization: [hunter2-value]}",
        ] {
            let message = error(yaml);
            assert!(
                !message.contains("hunter2") && !message.contains("424242"),
                "{yaml}: {message}"
            );
            assert!(!message.contains("struct"), "{yaml}: {message}");
        }
        assert!(error("secret: hunter2-value").contains("inline secrets are not accepted"));
    }

    #[test]
    fn maps_load_and_display_is_redacted() {
        let h: Holder =
            serde_yaml_ng::from_str("secret: {env: TOKEN}\nurl: http://x/\nheaders: {A: b}")
                .unwrap();
        assert_eq!(h.secret, Some(SecretSource::Env("TOKEN".into())));
        assert_eq!(h.headers["A"], "b");
        assert!(error("secret: {file: /a, env: B}").contains("exactly one"));
        let secret = Secret("t0ken".into());
        assert_eq!(
            format!("{secret} {secret:?}"),
            "<redacted> Secret(<redacted>)"
        );
    }
}
