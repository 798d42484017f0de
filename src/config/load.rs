//! Reading the config file and applying the environment overrides, with errors that name
//! the file, line and key (or the environment variable that set the key).
//!
//! The file is parsed into a TOML table, every `O365_CONNECTOR__…` variable is written into
//! that table at its key (sorted by name, then the short forms), and the result is
//! deserialized with key paths tracked. No error message carries the text of the file or an
//! override's value, since either may hold a secret.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_path_to_error::Path as KeyPath;
use toml::{Table, Value};

use super::validate::ValidationError;
use super::{AppliedOverride, Config};

/// Prefix of the per-key environment overrides: `O365_CONNECTOR__SECTION__KEY`.
pub const ENV_PREFIX: &str = "O365_CONNECTOR__";
/// Short form of `O365_CONNECTOR__API__LOGIN_URL` (every tenant's login authority).
pub const ENV_LOGIN_URL: &str = "O365_CONNECTOR_LOGIN_URL";
/// Short form of `O365_CONNECTOR__API__API_URL` (every tenant's API base).
pub const ENV_API_URL: &str = "O365_CONNECTOR_API_URL";
/// Short form of `O365_CONNECTOR__API__GRAPH_URL` (every tenant's Microsoft Graph base).
pub const ENV_GRAPH_URL: &str = "O365_CONNECTOR_GRAPH_URL";

/// The configuration could not be loaded. Messages name the file, key and line, or the
/// variable; never a secret or a line of the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}{location}: invalid TOML: {message}")]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// Where in the file.
        location: Location,
        /// What the parser expected.
        message: String,
    },
    /// A key of the file is unknown, missing, or has a wrong type or value.
    #[error("{path}{location}: {key}: {message}")]
    Key {
        /// The config file.
        path: PathBuf,
        /// Where in the file, when known.
        location: Location,
        /// The key, e.g. `tenants[1].tenant_id`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override could not be applied or gave a wrong value.
    #[error("environment variable {variable} (key {key}): {message}")]
    EnvOverride {
        /// The variable, e.g. `O365_CONNECTOR__SERVER__LISTEN`.
        variable: String,
        /// The key it sets.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Secrets that cannot be read and rules that do not hold; every problem is listed.
    #[error("{path}: invalid configuration: {}", join_problems(.problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Each problem, naming its key.
        problems: Vec<ValidationError>,
    },
}

impl ConfigError {
    /// The keys this error is about (for tests and structured logs).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            ConfigError::Key { key, .. } | ConfigError::EnvOverride { key, .. } => vec![key],
            ConfigError::Invalid { problems, .. } => problems
                .iter()
                .map(|problem| problem.key.as_str())
                .collect(),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => Vec::new(),
        }
    }
}

fn join_problems(problems: &[ValidationError]) -> String {
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    listed.join("; ")
}

/// A position in the config file (1-based line and column); displays as `:line:column`,
/// or as nothing when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based line and column, when known.
    pub line_column: Option<(usize, usize)>,
}

impl Location {
    fn of_offset(text: &str, offset: usize) -> Self {
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        Self {
            line_column: Some((line, column)),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_column {
            Some((line, column)) => write!(formatter, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// One key segment of an override: a table key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// One environment variable to write into the table.
struct Override {
    variable: String,
    segments: Vec<Segment>,
    /// The key as `serde_path_to_error` prints it (`tenants[0].client_id`).
    key: String,
    raw: String,
    /// Set once the value is to be taken as a plain string.
    as_string: bool,
}

/// Reads the file, applies the overrides in `env` and deserializes. Secrets are not yet
/// resolved and cross-key rules not yet checked.
pub(super) fn parse_file(
    path: &Path,
    env: &HashMap<String, String>,
) -> Result<(Config, Vec<AppliedOverride>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_text(path, &text, env)
}

/// As [`parse_file`], with the text given; `path` names it in errors.
pub(super) fn parse_text(
    path: &Path,
    text: &str,
    env: &HashMap<String, String>,
) -> Result<(Config, Vec<AppliedOverride>), ConfigError> {
    let mut table: Table = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        path: path.to_path_buf(),
        location: error
            .span()
            .map(|span| Location::of_offset(text, span.start))
            .unwrap_or_default(),
        message: error.message().trim_end().to_string(),
    })?;
    let mut overrides = overrides_from(env)?;
    for one in &overrides {
        set_key(&mut table, one, override_value(one))?;
    }
    let config = deserialize(path, text, table, &mut overrides)?;
    let applied = overrides
        .into_iter()
        .map(|one| AppliedOverride {
            variable: one.variable,
            key: one.key,
        })
        .collect();
    Ok((config, applied))
}

/// The overrides present in `env`: per-key variables sorted by name, then the short forms.
fn overrides_from(env: &HashMap<String, String>) -> Result<Vec<Override>, ConfigError> {
    let mut names: Vec<&String> = env
        .keys()
        .filter(|name| name.starts_with(ENV_PREFIX))
        .collect();
    names.sort();
    let mut overrides = Vec::new();
    for name in names {
        let segments = segments_of(name)?;
        overrides.push(new_override(name, segments, &env[name], false));
    }
    for (name, field) in [
        (ENV_LOGIN_URL, "login_url"),
        (ENV_API_URL, "api_url"),
        (ENV_GRAPH_URL, "graph_url"),
    ] {
        if let Some(raw) = env.get(name) {
            let segments = vec![Segment::Key("api".into()), Segment::Key(field.into())];
            overrides.push(new_override(name, segments, raw, true));
        }
    }
    Ok(overrides)
}

fn new_override(variable: &str, segments: Vec<Segment>, raw: &str, as_string: bool) -> Override {
    Override {
        variable: variable.to_string(),
        key: key_of(&segments),
        segments,
        raw: raw.to_string(),
        as_string,
    }
}

/// `O365_CONNECTOR__TENANTS__0__CLIENT_ID` → `tenants`, `0`, `client_id`.
fn segments_of(variable: &str) -> Result<Vec<Segment>, ConfigError> {
    let rest = &variable[ENV_PREFIX.len()..];
    let parts: Vec<&str> = rest.split("__").collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(ConfigError::EnvOverride {
            variable: variable.to_string(),
            key: rest.to_ascii_lowercase(),
            message: "empty key segment: write O365_CONNECTOR__SECTION__KEY".into(),
        });
    }
    Ok(parts
        .into_iter()
        .map(|part| match part.parse::<usize>() {
            Ok(index) if part.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(index),
            _ => Segment::Key(part.to_ascii_lowercase()),
        })
        .collect())
}

/// The key as serde_path_to_error prints paths: `a.b[0].c`.
fn key_of(segments: &[Segment]) -> String {
    let mut key = String::new();
    for segment in segments {
        match segment {
            Segment::Key(name) if key.is_empty() => key.push_str(name),
            Segment::Key(name) => {
                key.push('.');
                key.push_str(name);
            }
            Segment::Index(index) => key.push_str(&format!("[{index}]")),
        }
    }
    key
}

/// The override's value: none for an empty variable (the key is removed, so its default
/// applies), else the TOML value it spells, else the string itself.
fn override_value(one: &Override) -> Option<Value> {
    if one.raw.is_empty() {
        return None;
    }
    if one.as_string {
        return Some(Value::String(one.raw.clone()));
    }
    let parsed = match format!("value = {}", one.raw).parse::<Table>() {
        Ok(mut parsed) if parsed.len() == 1 => parsed.remove("value"),
        _ => None,
    };
    Some(parsed.unwrap_or_else(|| Value::String(one.raw.clone())))
}

/// Writes `value` at the override's key (or removes the key when `None`), creating tables
/// on the way; list indexes must exist in the file.
fn set_key(table: &mut Table, one: &Override, value: Option<Value>) -> Result<(), ConfigError> {
    let error = |message: String| ConfigError::EnvOverride {
        variable: one.variable.clone(),
        key: one.key.clone(),
        message,
    };
    let Some((last, parents)) = one.segments.split_last() else {
        return Err(error("names no key".into()));
    };
    let mut root = Value::Table(std::mem::take(table));
    let mut node = &mut root;
    let mut walked = Vec::new();
    for segment in parents {
        walked.push(segment.clone());
        node = child(node, segment, true).ok_or_else(|| error(not_found(&walked)))?;
    }
    let outcome = match (node, last) {
        (Value::Table(parent), Segment::Key(name)) => {
            match value {
                Some(value) => parent.insert(name.clone(), value),
                None => parent.remove(name),
            };
            Ok(())
        }
        (node, segment) => match (child(node, segment, false), value) {
            (Some(slot), Some(value)) => {
                *slot = value;
                Ok(())
            }
            (Some(_), None) => Err(error("an empty value cannot remove a list entry".into())),
            (None, _) => Err(error(not_found(&one.segments))),
        },
    };
    if let Value::Table(back) = root {
        *table = back;
    }
    outcome
}

/// The child of `node` at `segment`; a missing table key is created when `create` is set.
fn child<'a>(node: &'a mut Value, segment: &Segment, create: bool) -> Option<&'a mut Value> {
    match (node, segment) {
        (Value::Table(table), Segment::Key(name)) => {
            if create {
                let fresh = || Value::Table(Table::new());
                Some(table.entry(name.clone()).or_insert_with(fresh))
            } else {
                table.get_mut(name)
            }
        }
        (Value::Array(list), Segment::Index(index)) => list.get_mut(*index),
        _ => None,
    }
}

fn not_found(segments: &[Segment]) -> String {
    let key = key_of(segments);
    match segments.last() {
        Some(Segment::Index(_)) => {
            format!(
                "{key} does not exist: an override can change a list entry the file defines, not add one"
            )
        }
        _ => format!("{key} is not a table in the configuration"),
    }
}

/// Deserializes the merged table. A value an override spelled as a number, boolean, list or
/// table where a string is wanted is retried as the string.
fn deserialize(
    path: &Path,
    text: &str,
    mut table: Table,
    overrides: &mut [Override],
) -> Result<Config, ConfigError> {
    loop {
        let error = match serde_path_to_error::deserialize::<_, Config>(table.clone()) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let key = key_text(error.path());
        let retry_as_string =
            |one: &&mut Override| one.key == key && !one.as_string && !one.raw.is_empty();
        if let Some(one) = overrides.iter_mut().find(retry_as_string) {
            one.as_string = true;
            set_key(&mut table, one, Some(Value::String(one.raw.clone())))?;
            continue;
        }
        let message = error.inner().message().trim_end().to_string();
        if let Some(one) = overrides
            .iter()
            .rev()
            .find(|one| keys_overlap(&one.key, &key))
        {
            return Err(ConfigError::EnvOverride {
                variable: one.variable.clone(),
                key,
                message,
            });
        }
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            location: location_in_file(text, &key),
            key,
            message,
        });
    }
}

fn key_text(path: &KeyPath) -> String {
    let key = path.to_string();
    if key == "." {
        "(top level)".to_string()
    } else {
        key
    }
}

/// True when one key is the other or lies inside it.
fn keys_overlap(override_key: &str, error_key: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner == outer
            || inner.starts_with(&format!("{outer}."))
            || inner.starts_with(&format!("{outer}["))
    };
    inside(error_key, override_key) || inside(override_key, error_key)
}

/// Where the file itself fails at `key`, found by deserializing the file alone with spans.
fn location_in_file(text: &str, key: &str) -> Location {
    let Ok(deserializer) = toml::de::Deserializer::parse(text) else {
        return Location::default();
    };
    match serde_path_to_error::deserialize::<_, Config>(deserializer) {
        Err(error) if key_text(error.path()) == key => error
            .inner()
            .span()
            .map(|span| Location::of_offset(text, span.start))
            .unwrap_or_default(),
        _ => Location::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_become_keys_with_list_indexes() {
        let segments = segments_of("O365_CONNECTOR__TENANTS__10__CLIENT_ID").unwrap();
        assert_eq!(key_of(&segments), "tenants[10].client_id");
        assert!(segments_of("O365_CONNECTOR__API____X").is_err());
    }

    #[test]
    fn override_values_are_toml_when_they_parse_and_strings_otherwise() {
        let value = |raw: &str| override_value(&new_override("V", Vec::new(), raw, false));
        assert_eq!(value(""), None);
        assert_eq!(value("2000"), Some(Value::Integer(2000)));
        let string = |text: &str| Some(Value::String(text.into()));
        assert_eq!(value("https://x.example"), string("https://x.example"));
        assert_eq!(value("1\nother = 2"), string("1\nother = 2"));
        assert!(value("{ env = \"X\" }").is_some_and(|value| value.is_table()));
    }

    #[test]
    fn location_counts_lines_and_columns_from_one() {
        let location = Location::of_offset("a\nbc = 1\n", 5);
        assert_eq!(location.line_column, Some((2, 4)));
    }
}
