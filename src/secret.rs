//! Secrets in configuration: where a secret comes from, and its value once read.
//!
//! A secret is written in the config file as a reference or, discouraged, inline:
//!
//! ```toml
//! client_secret = { env = "CONTOSO_SECRET" }          # read from an environment variable
//! client_secret = { file = "/run/secrets/contoso" }   # read from a file (one trailing newline trimmed)
//! client_secret = "literal value"                     # allowed; start-up warns (it sits in the file)
//! ```
//!
//! Guarantees: a [`Secret`]'s `Debug` and `Display` show only where it comes from (`env
//! CONTOSO_SECRET`, `file /run/secrets/contoso`, `literal`), never the value; a
//! [`SecretError`] names the config key and the variable or file, never the value. The value
//! is held in a [`SecretString`] (zeroed on drop) and read only through
//! [`ExposeSecret::expose_secret`]. A `{ file = … }` secret is at most
//! [`MAX_SECRET_FILE_BYTES`] (64 KiB): reading stops there, so a reference to a device or
//! a huge file (`/dev/zero`) fails at once instead of filling memory.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use secrecy::{ExposeSecret, SecretString};

/// The largest `{ file = … }` secret read: 64 KiB, far above any client secret, key or
/// token (a PEM private key is under 4 KiB).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where a secret's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The named environment variable.
    Env(String),
    /// The file at this path (relative paths are relative to the working directory).
    File(PathBuf),
    /// Written inline in the configuration.
    Literal,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(formatter, "env {name}"),
            SecretSource::File(path) => write!(formatter, "file {}", path.display()),
            SecretSource::Literal => formatter.write_str("literal"),
        }
    }
}

/// A secret from configuration: its source and, once resolved, its value.
///
/// A [`Secret`] deserialized from a file holds its value only after [`Secret::resolve`]
/// (which `Config::load` does for every secret); before that, a reference's value is empty.
#[derive(Clone)]
pub struct Secret {
    source: SecretSource,
    value: SecretString,
}

impl Secret {
    /// A secret given directly (tests, and secrets generated at run time).
    pub fn new(value: SecretString) -> Self {
        Self {
            source: SecretSource::Literal,
            value,
        }
    }

    /// Where the value comes from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The value (empty for an env or file reference not yet resolved).
    pub fn value(&self) -> &SecretString {
        &self.value
    }

    /// Reads the value of an env or file reference. `key` is the config key, for errors;
    /// `env` is the environment to read variables from.
    pub fn resolve(&mut self, key: &str, env: &HashMap<String, String>) -> Result<(), SecretError> {
        let value = match &self.source {
            SecretSource::Literal => return non_empty(key, self.value.expose_secret()).map(drop),
            SecretSource::Env(variable) => read_env(key, variable, env)?,
            SecretSource::File(path) => read_file(key, path)?,
        };
        self.value = SecretString::from(value);
        Ok(())
    }
}

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Secret({:?}, ***)", self.source)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

/// A secret that could not be read. Names the key and the variable or file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("{key}: environment variable {variable} is not set (set it, or change the reference)")]
    EnvMissing {
        /// The config key (e.g. `tenants[0].client_secret`).
        key: String,
        /// The variable named by `{ env = "…" }`.
        variable: String,
    },
    /// The file could not be read.
    #[error("{key}: cannot read secret file {path}: {reason}")]
    FileUnreadable {
        /// The config key.
        key: String,
        /// The file named by `{ file = "…" }`.
        path: PathBuf,
        /// Why reading failed (the I/O error, or "not UTF-8").
        reason: String,
    },
    /// The file holds more than [`MAX_SECRET_FILE_BYTES`].
    #[error(
        "{key}: secret file {path} is larger than {limit} bytes: a secret file holds the secret alone"
    )]
    FileTooLarge {
        /// The config key.
        key: String,
        /// The file named by `{ file = "…" }`.
        path: PathBuf,
        /// [`MAX_SECRET_FILE_BYTES`].
        limit: u64,
    },
    /// The value is empty (after trimming one trailing newline).
    #[error("{key}: the secret is empty ({origin:?})")]
    Empty {
        /// The config key.
        key: String,
        /// Where the empty value came from.
        origin: SecretSource,
    },
}

fn read_env(
    key: &str,
    variable: &str,
    env: &HashMap<String, String>,
) -> Result<String, SecretError> {
    let value = env.get(variable).ok_or_else(|| SecretError::EnvMissing {
        key: key.to_string(),
        variable: variable.to_string(),
    })?;
    if value.is_empty() {
        return Err(SecretError::Empty {
            key: key.to_string(),
            origin: SecretSource::Env(variable.to_string()),
        });
    }
    Ok(value.clone())
}

fn read_file(key: &str, path: &Path) -> Result<String, SecretError> {
    let unreadable = |reason: String| SecretError::FileUnreadable {
        key: key.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| unreadable(error.to_string()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::FileTooLarge {
            key: key.to_string(),
            path: path.to_path_buf(),
            limit: MAX_SECRET_FILE_BYTES,
        });
    }
    let mut text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8".into()))?;
    trim_one_trailing_newline(&mut text);
    if text.is_empty() {
        return Err(SecretError::Empty {
            key: key.to_string(),
            origin: SecretSource::File(path.to_path_buf()),
        });
    }
    Ok(text)
}

fn non_empty<'a>(key: &str, value: &'a str) -> Result<&'a str, SecretError> {
    if value.is_empty() {
        return Err(SecretError::Empty {
            key: key.to_string(),
            origin: SecretSource::Literal,
        });
    }
    Ok(value)
}

/// Removes one trailing `\n` or `\r\n`, as editors and `echo` add one.
fn trim_one_trailing_newline(text: &mut String) {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

const NOT_A_SECRET: &str =
    r#"expected { env = "VARIABLE" }, { file = "path" } or a string (value not shown)"#;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(r#"{ env = "VARIABLE" }, { file = "path" } or a string"#)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(SecretString::from(value)))
    }

    // The default `visit_*` errors quote the value; a secret's must not appear.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom(NOT_A_SECRET))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_SECRET))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_SECRET))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom(NOT_A_SECRET))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(de::Error::custom(NOT_A_SECRET))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        let mut source = None;
        while let Some(name) = map.next_key::<String>()? {
            let next = match name.as_str() {
                "env" => SecretSource::Env(map.next_value::<String>()?),
                "file" => SecretSource::File(map.next_value::<PathBuf>()?),
                _ => return Err(de::Error::unknown_field(&name, &["env", "file"])),
            };
            if source.replace(next).is_some() {
                return Err(de::Error::custom("give exactly one of `env` and `file`"));
            }
        }
        let source = source.ok_or_else(|| de::Error::custom("give one of `env` or `file`"))?;
        if matches!(&source, SecretSource::Env(name) if name.is_empty()) {
            return Err(de::Error::custom("`env` names no variable"));
        }
        Ok(Secret {
            source,
            value: SecretString::from(String::new()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_trimmed_and_no_more() {
        let mut text = String::from("abc\n\n");
        trim_one_trailing_newline(&mut text);
        assert_eq!(text, "abc\n");
        let mut text = String::from("abc\r\n");
        trim_one_trailing_newline(&mut text);
        assert_eq!(text, "abc");
    }

    #[test]
    fn debug_and_display_show_the_source_but_not_the_value() {
        let secret = Secret::new(SecretString::from("hunter2"));
        assert!(!format!("{secret:?}{secret}").contains("hunter2"));
    }
}
