//! Reading UTMStack's YAML files: the merged pipeline configuration
//! (`{WORK_DIR}/pipeline/*.yaml`) and the o365 integration file
//! (`system_plugins_o365.yaml`) with its tenants and groups.
//!
//! Pipeline files are read in name order and merged: mappings merge key by key, any other
//! value of a later file replaces the earlier one. A pipeline file that cannot be parsed is
//! skipped with a warning (it belongs to another plugin). Keys of the `com.utmstack` plugin
//! are looked up as `plugins["com.utmstack"][name]` (how UTMStack's Go SDK reads them) or
//! nested as `plugins.com.utmstack.name`.

use std::path::{Path, PathBuf};

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
            .and_then(|text| {
                yaml_serde::from_str::<Value>(&text).map_err(|error| error.to_string())
            });
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
    let document: Value = yaml_serde::from_str(&text).map_err(|error| UtmstackError::Yaml {
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
    Ok(Some(groups))
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
    fn nested_form_of_the_plugin_key_is_found() {
        let document: Value =
            yaml_serde::from_str("plugins: {com: {utmstack: {encryptionKey: k}}}").unwrap();
        assert_eq!(
            utmstack_key(&document, "encryptionKey").as_deref(),
            Some("k")
        );
    }
}
