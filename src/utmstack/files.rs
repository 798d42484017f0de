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
//! of nested aliases allocate gigabytes. Before any parsing, a text is bounded in size
//! ([`MAX_YAML_BYTES`], files are read no further) and in nesting depth
//! ([`MAX_YAML_DEPTH`], by a linear scan): libyaml's scanner takes time quadratic in the
//! depth (a 400 KB file 200,000 levels deep took 192 s, signals unanswered meanwhile).

use std::cell::Cell;
use std::fmt;
use std::io::Read;
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
        let parsed = read_bounded(&file)
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
    let text = match read_bounded(path) {
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

/// Largest YAML file read, in bytes: 4 MiB, far above UTMStack's pipeline and o365 files
/// (a thousand tenant groups take about 1 MiB). Reading stops there.
pub const MAX_YAML_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of a YAML document, counting flow (`[`, `{`) and block (indentation,
/// `- `) levels: far above UTMStack's files (under 10), below yaml_serde's own limit (128).
pub const MAX_YAML_DEPTH: usize = 64;

/// The file's text, refused (as `InvalidData`) past [`MAX_YAML_BYTES`] or when not UTF-8.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_YAML_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_YAML_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_YAML_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
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
    use serde::de::Error as _;
    if text.len() > MAX_YAML_BYTES {
        return Err(yaml_serde::Error::custom(format!(
            "the document is larger than {MAX_YAML_BYTES} bytes"
        )));
    }
    if let Some(line) = line_past_depth(text, MAX_YAML_DEPTH) {
        return Err(yaml_serde::Error::custom(format!(
            "the document nests deeper than {MAX_YAML_DEPTH} levels (line {line})"
        )));
    }
    let budget = Cell::new(
        text.len()
            .saturating_mul(YAML_EXPANSION_FACTOR)
            .saturating_add(YAML_EXPANSION_SLACK),
    );
    ExpansionBudget(&budget).deserialize(yaml_serde::Deserializer::from_str(text))?;
    yaml_serde::from_str(text)
}

/// The first line (from 1) at which `text` nests deeper than `limit`, by a linear scan
/// that over-estimates rather than misses: each flow bracket (`[`, `{`) outside quotes and
/// comments opens a level, and a line's block depth is the number of smaller indentations
/// still open before it plus its leading `- ` markers. Lines inside a block scalar
/// (`|`, `>`) are text, not structure.
fn line_past_depth(text: &str, limit: usize) -> Option<usize> {
    let mut flow_depth = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    let mut block_scalar_indent: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        if let Some(parent) = block_scalar_indent {
            if content.is_empty() || indent > parent {
                continue;
            }
            block_scalar_indent = None;
        }
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut block_depth = 0;
        if flow_depth == 0 {
            while indents.last().is_some_and(|&open| open >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let mut rest = content;
            while let Some(after) = rest.strip_prefix("- ") {
                block_depth += 1;
                rest = after.trim_start_matches(' ');
            }
            block_depth += indents.len();
        }
        let (opened, ends_block_scalar) = scan_flow(content, &mut flow_depth, limit);
        if opened || block_depth + flow_depth > limit {
            return Some(index + 1);
        }
        if ends_block_scalar && flow_depth == 0 {
            block_scalar_indent = Some(indent);
        }
    }
    None
}

/// Updates `flow_depth` with the brackets of one line outside quotes and comments; returns
/// whether the depth went past `limit`, and whether the line ends with a block scalar
/// indicator (`|`, `>`, with optional chomping and indentation indicators).
fn scan_flow(line: &str, flow_depth: &mut usize, limit: usize) -> (bool, bool) {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    let mut code_end = line.len();
    let mut characters = line.char_indices().peekable();
    while let Some((position, character)) = characters.next() {
        match quote {
            Some('"') if character == '\\' => {
                characters.next();
            }
            Some(open) if character == open => quote = None,
            Some(_) => {}
            None => match character {
                '#' if previous == ' ' || previous == '\t' => {
                    code_end = position;
                    break;
                }
                '"' | '\'' if !previous.is_alphanumeric() => quote = Some(character),
                // In block context a bracket opens a collection only where a value
                // starts; elsewhere it is part of a plain scalar (`regex: a[b`).
                '[' | '{' if *flow_depth > 0 || value_starts(&line[..position]) => {
                    *flow_depth += 1;
                    if *flow_depth > limit {
                        return (true, false);
                    }
                }
                ']' | '}' => *flow_depth = flow_depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = character;
    }
    let code = line[..code_end].trim_end();
    let indicator = code.rsplit([' ', ':', '-']).next().unwrap_or_default();
    let block_scalar = quote.is_none()
        && (indicator.starts_with('|') || indicator.starts_with('>'))
        && indicator[1..]
            .chars()
            .all(|character| character == '+' || character == '-' || character.is_ascii_digit());
    (false, block_scalar)
}

/// True when what precedes a position on a line leaves it where a block value starts: at
/// the line's start, or after `: `, `- ` or `? `.
fn value_starts(before: &str) -> bool {
    let trimmed = before.trim_end();
    trimmed.is_empty() || (trimmed.len() < before.len() && trimmed.ends_with([':', '-', '?']))
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
    fn documents_past_the_depth_limit_are_refused_before_parsing_and_usual_ones_pass() {
        let deep_flow = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let started = std::time::Instant::now();
        let error = parse_yaml(&deep_flow).unwrap_err();
        assert!(
            error.to_string().contains("nests deeper than 64"),
            "{error}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let mut deep_block = String::new();
        for level in 0..100 {
            deep_block.push_str(&format!("{}k{level}:\n", "  ".repeat(level)));
        }
        assert!(parse_yaml(&deep_block).is_err());
        let compact = format!("{}x\n", "- ".repeat(100));
        assert!(parse_yaml(&compact).is_err());
        let usual = "plugins:\n  com.utmstack:\n    encryptionKey: 'a [b {c'   # [[[[\n    list: [1, [2, {a: b}]]\n    text: |\n      [[[[[[ free text\n      {{{{{{\n    regex: a[b\n    after: \"x[\"\n";
        let mut many_lines = String::from(usual);
        for index in 0..100 {
            many_lines.push_str(&format!("    pattern{index}: a[b\n"));
        }
        assert_eq!(
            parse_yaml(&many_lines).unwrap(),
            yaml_serde::from_str::<Value>(&many_lines).unwrap()
        );
    }

    #[test]
    fn a_file_past_the_size_limit_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, format!("a: {}\n", "x".repeat(MAX_YAML_BYTES))).unwrap();
        let error = read_bounded(&path).unwrap_err();
        assert!(error.to_string().contains("larger than"), "{error}");
        let mut warnings = Vec::new();
        merged_pipeline(dir.path(), &mut warnings);
        assert!(warnings[0].contains("larger than"), "{warnings:?}");
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
