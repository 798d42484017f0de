//! Reading UTMStack's YAML files: the merged pipeline configuration
//! (`{WORK_DIR}/pipeline/*.yaml`) and the o365 integration file
//! (`system_plugins_o365.yaml`) with its tenants and groups.
//!
//! Pipeline files are read in name order and merged: mappings merge key by key, any other
//! value of a later file replaces the earlier one. A pipeline file that cannot be parsed is
//! skipped with a warning (it belongs to another plugin). Keys of the `com.utmstack` plugin
//! are looked up as `plugins["com.utmstack"][name]` (how UTMStack's Go SDK reads them) or
//! nested as `plugins.com.utmstack.name`.
//!
//! Every YAML text is read through [`parse_yaml`], which refuses a document whose aliases
//! expand it far beyond its own size (the "billion laughs"): yaml_serde alone lets a few KiB
//! of nested aliases allocate gigabytes.

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, Visitor};
use yaml_serde::{Mapping, Value};

use super::UtmstackError;

/// The pipeline files merged into one document (an empty mapping without files).
pub fn merged_pipeline(pipeline_dir: &Path, warnings: &mut Vec<String>) -> Value {
    let mut merged = Value::Mapping(Mapping::new());
    let Ok(entries) = std::fs::read_dir(pipeline_dir) else {
        return merged;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml")
        })
        .collect();
    files.sort();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|error| error.to_string())
            .and_then(|text| parse_yaml(&text).map_err(|error| error.to_string()));
        match parsed {
            Ok(document) => merge(&mut merged, document),
            Err(error) => {
                warnings.push(format!("pipeline file {} skipped: {error}", file.display()))
            }
        }
    }
    merged
}

/// Merges `later` into `earlier`: mappings key by key, anything else replaced.
fn merge(earlier: &mut Value, later: Value) {
    match (earlier, later) {
        (Value::Mapping(into), Value::Mapping(from)) => {
            for (key, value) in from {
                match into.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        into.insert(key, value);
                    }
                }
            }
        }
        (slot, later) if !later.is_null() => *slot = later,
        _ => {}
    }
}

/// A key of the `com.utmstack` plugin in the merged pipeline, as a non-blank string.
pub fn utmstack_key(pipeline: &Value, name: &str) -> Option<String> {
    let plugins = pipeline.get("plugins")?;
    let value = plugins
        .get("com.utmstack")
        .and_then(|plugin| plugin.get(name))
        .or_else(|| plugins.get("com")?.get("utmstack")?.get(name))?;
    scalar_text(value).filter(|text| !is_blank(text))
}

/// A scalar as text (UTMStack types its values as strings; YAML may still read a number).
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Empty or only whitespace (UTMStack writes a single space for an unset value).
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// One group of the o365 file, as written.
#[derive(Debug, Clone)]
pub struct RawGroup {
    /// The UTMStack tenant id it belongs to (`plugins.o365.tenants[].id`), when set.
    pub utm_tenant_id: Option<String>,
    /// The group name (`Log.dataSource`); may be blank.
    pub name: String,
    /// Its `config` keys, each value as text (non-scalars are left out).
    pub keys: Vec<(String, String)>,
}

impl RawGroup {
    /// A key's value, unless absent or blank.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    }
}

/// Reads the o365 file's groups. `Ok(None)` when the file does not exist.
pub fn read_groups(path: &Path) -> Result<Option<Vec<RawGroup>>, UtmstackError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(UtmstackError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse_groups(path, &text).map(Some)
}

/// The groups of an o365 file's text; `path` only names the file in the error.
pub fn parse_groups(path: &Path, text: &str) -> Result<Vec<RawGroup>, UtmstackError> {
    let document = parse_yaml(text).map_err(|error| UtmstackError::Yaml {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    let tenants = document
        .get("plugins")
        .and_then(|plugins| plugins.get("o365"))
        .and_then(|o365| o365.get("tenants"))
        .and_then(Value::as_sequence);
    let mut groups = Vec::new();
    for tenant in tenants.into_iter().flatten() {
        let utm_tenant_id = tenant
            .get("id")
            .and_then(scalar_text)
            .filter(|id| !is_blank(id))
            .map(|id| id.trim().to_string());
        let tenant_groups = tenant.get("groups").and_then(Value::as_sequence);
        for group in tenant_groups.into_iter().flatten() {
            groups.push(RawGroup {
                utm_tenant_id: utm_tenant_id.clone(),
                name: group
                    .get("name")
                    .and_then(scalar_text)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                keys: config_keys(group.get("config")),
            });
        }
    }
    Ok(groups)
}

/// How far aliases may expand a YAML document: its nodes plus the bytes of its strings, each
/// alias counted as the copy it becomes, at most this many times the text's length (plus
/// [`YAML_EXPANSION_SLACK`]). A document without aliases stays under about twice its length.
const YAML_EXPANSION_FACTOR: usize = 4;
/// Expansion allowed on top of [`YAML_EXPANSION_FACTOR`], for short documents.
const YAML_EXPANSION_SLACK: usize = 4096;

/// Parses one YAML document, as `yaml_serde::from_str` does, after checking that its
/// aliases do not expand it past [`YAML_EXPANSION_FACTOR`] times its length. yaml_serde only
/// caps alias jumps at 100 per event, which still lets 6 KiB of nested aliases allocate
/// 370 MB; the check walks the document without building it and stops at the limit.
pub fn parse_yaml(text: &str) -> Result<Value, yaml_serde::Error> {
    let budget = Cell::new(
        text.len()
            .saturating_mul(YAML_EXPANSION_FACTOR)
            .saturating_add(YAML_EXPANSION_SLACK),
    );
    ExpansionBudget(&budget).deserialize(yaml_serde::Deserializer::from_str(text))?;
    yaml_serde::from_str(text)
}

/// Walks a document without keeping it, charging each node 1 and each string its length
/// against the budget; fails when the budget runs out.
#[derive(Clone, Copy)]
struct ExpansionBudget<'a>(&'a Cell<usize>);

impl ExpansionBudget<'_> {
    fn charge<E: de::Error>(self, cost: usize) -> Result<(), E> {
        let left = self.0.get().checked_sub(cost).ok_or_else(|| {
            E::custom(format!(
                "aliases expand the document past {YAML_EXPANSION_FACTOR} times its size"
            ))
        })?;
        self.0.set(left);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ExpansionBudget<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ExpansionBudget<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.charge(1 + text.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.charge(1)?;
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut sequence: A) -> Result<(), A::Error> {
        self.charge(1)?;
        while sequence.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.charge(1)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, tagged: A) -> Result<(), A::Error> {
        self.charge(1)?;
        let (IgnoredAny, contents) = tagged.variant::<IgnoredAny>()?;
        de::VariantAccess::newtype_variant_seed(contents, self)
    }
}

/// A group's `config` mapping as (key, text) pairs.
fn config_keys(config: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Mapping(mapping)) = config else {
        return Vec::new();
    };
    mapping
        .iter()
        .filter_map(|(key, value)| Some((scalar_text(key)?, scalar_text(value)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_file_overrides_scalars_and_keeps_other_keys() {
        let mut earlier: Value =
            yaml_serde::from_str("plugins: {com.utmstack: {a: one, b: two}}").unwrap();
        let later: Value = yaml_serde::from_str("plugins: {com.utmstack: {b: three}}").unwrap();
        merge(&mut earlier, later);
        assert_eq!(utmstack_key(&earlier, "a").as_deref(), Some("one"));
        assert_eq!(utmstack_key(&earlier, "b").as_deref(), Some("three"));
    }

    #[test]
    fn nested_aliases_are_refused_before_they_expand() {
        let mut text = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for level in b'b'..=b'i' {
            let (name, previous) = (level as char, (level - 1) as char);
            text.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{previous}"); 10].join(",")
            ));
        }
        let error = parse_yaml(&text).unwrap_err();
        assert!(error.to_string().contains("aliases expand"), "{error}");
        let modest = "base: &base {a: 1, b: two}\nfirst: *base\nsecond: *base\n";
        assert_eq!(
            parse_yaml(modest).unwrap(),
            yaml_serde::from_str::<Value>(modest).unwrap()
        );
    }

    #[test]
    fn nested_form_of_the_plugin_key_is_found() {
        let document: Value =
            yaml_serde::from_str("plugins: {com: {utmstack: {encryptionKey: k}}}").unwrap();
        assert_eq!(
            utmstack_key(&document, "encryptionKey").as_deref(),
            Some("k")
        );
    }
}
