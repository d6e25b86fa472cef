//! The ringmesh configuration format.
//!
//! A config file is TOML. [`parse`] turns its text into a [`Config`]: the deserialized
//! [`ConfigSpec`] plus a [`SourceMap`] that can name the line and column of any value. Parsing
//! reports **every** error it can find, each with its TOML path (`listeners[1].cluster`), line and
//! column, rather than stopping at the first:
//!
//! 1. syntax errors (the file cannot be read as TOML at all; reported alone);
//! 2. keys this build's data plane does not act on yet ([`support`]): `not supported yet`, one
//!    error per rejected subtree, rather than a config that is accepted and then ignored;
//! 3. shape errors: unknown keys, wrong types, missing keys, malformed durations or addresses —
//!    each section and each list element is deserialized on its own, so one bad listener does not
//!    hide a bad cluster, and within one every bad key is reported;
//! 4. meaning errors ([`validate`]): dangling cluster or virtual host references, duplicate
//!    names and listener addresses, regexes that do not compile, impossible values. They are
//!    checked even when some elements did not deserialize; references count the names written
//!    in those elements as defined.
//!
//! Later stages (the data plane's compiler, which reads certificate files) report their errors in
//! the same [`ConfigError`] form through [`Config::error_at`].
//!
//! This crate is pure: no I/O, no threads, no sockets. The JSON Schema of the format is generated
//! from the types by [`json_schema`] and committed at `config-schema/ringmesh.schema.json`.
//!
//! # Layout
//! - [`spec`]: the types, field by field, as written in TOML.
//! - [`access_log`]: the access log's text format (Envoy's operators) and status conditions.
//! - [`units`]: durations and byte sizes.
//! - `load`: sectioned deserialization and the source map.
//! - [`validate`]: cross-reference and value checks.
//! - [`support`]: the keys the data plane does not act on yet, rejected by [`parse`].

pub mod access_log;
pub mod spec;
pub mod support;
pub mod units;
pub mod validate;

mod load;

use std::fmt;

pub use load::SourceMap;
pub use spec::*;
pub use units::{ByteSize, Duration};

/// A configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// TOML path of the offending value, such as `virtual_hosts[0].routes[2].cluster`; empty for
    /// the whole file.
    pub path: String,
    /// 1-based line, 0 when the error has no position.
    pub line: usize,
    /// 1-based column (in characters), 0 when the error has no position.
    pub column: usize,
    /// What is wrong, and where useful, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (0, true) => write!(f, "{}", self.message),
            (0, false) => write!(f, "{}: {}", self.path, self.message),
            (_, true) => write!(f, "{}:{}: {}", self.line, self.column, self.message),
            (_, false) => {
                write!(
                    f,
                    "{}:{}: {}: {}",
                    self.line, self.column, self.path, self.message
                )
            }
        }
    }
}

/// A parsed and validated configuration, with the positions of its values.
#[derive(Debug, Clone)]
pub struct Config {
    /// The configuration.
    pub spec: ConfigSpec,
    /// Where each value stands in the source text.
    pub source: SourceMap,
}

impl Config {
    /// An error about the value at `path` (or, if that key is absent, its closest parent).
    pub fn error_at(&self, path: &str, message: impl Into<String>) -> ConfigError {
        self.source.error_at(path, message.into())
    }
}

/// Parses and validates a configuration file's text.
///
/// On failure the errors are sorted by line, and none is left out because another came first.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let load::Loaded {
        spec,
        source,
        mut errors,
        incomplete_sections,
        unparsed_names,
    } = load::deserialize(text)?;
    // Meaning checks run even when some elements did not deserialize, so that one pass reports
    // everything. References are checked against every name written, including the names of
    // elements that did not deserialize; only references into a section that lost an element
    // without a readable name are skipped, because that element may be the one they name.
    let issues = validate::validate_with(&spec, &unparsed_names)
        .into_iter()
        .filter(|issue| {
            issue
                .refers_to
                .is_none_or(|section| !incomplete_sections.contains(section))
        });
    errors.extend(issues.map(|issue| source.error_at(&issue.path, issue.message)));
    if errors.is_empty() {
        return Ok(Config { spec, source });
    }
    errors.sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
    errors.dedup();
    Err(errors)
}

/// The JSON Schema of the configuration format, generated from [`ConfigSpec`]. The description of
/// every key in [`support::NOT_SUPPORTED`] starts by saying that it is rejected.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(ConfigSpec);
    mark_unsupported(&mut schema);
    // `Schema` serializes its keywords in their conventional order ($schema, title, ...).
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Prefixes the description of each unsupported key in `schema` with its rejection. Returns the
/// paths that could not be found (none, unless the types and the list drifted apart).
fn mark_unsupported(schema: &mut schemars::Schema) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for entry in support::NOT_SUPPORTED {
        let Some(pointer) = schema_pointer(schema.as_value(), entry.path) else {
            missing.push(entry.path);
            continue;
        };
        let Some(property) = schema.pointer_mut(&pointer).and_then(|p| p.as_object_mut()) else {
            missing.push(entry.path);
            continue;
        };
        let original = property
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_owned();
        let marked = format!(
            "Not supported yet: rejected by this build ({}).\n\n{original}",
            entry.consequence
        );
        property.insert("description".to_owned(), marked.into());
    }
    missing
}

/// The JSON pointer of the property schema for `path` (`clusters[].tls`), following `$ref`s into
/// `$defs`.
fn schema_pointer(schema: &serde_json::Value, path: &str) -> Option<String> {
    let mut object = String::new();
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let key = segment.strip_suffix("[]").unwrap_or(segment);
        let property = format!("{object}/properties/{key}");
        if segments.peek().is_none() {
            return schema.pointer(&property).map(|_| property);
        }
        object = referenced_object(schema.pointer(&property)?)?;
    }
    None
}

/// The `$defs` pointer of the object a property schema stands for: through `$ref`, an optional's
/// `anyOf`, or a list's `items`.
fn referenced_object(property: &serde_json::Value) -> Option<String> {
    if let Some(reference) = property.get("$ref").and_then(|r| r.as_str()) {
        return reference.strip_prefix('#').map(str::to_owned);
    }
    if let Some(items) = property.get("items") {
        return referenced_object(items);
    }
    property
        .get("anyOf")?
        .as_array()?
        .iter()
        .find_map(referenced_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unsupported_key_is_marked_in_the_schema() {
        let mut schema = schemars::schema_for!(ConfigSpec);
        assert_eq!(mark_unsupported(&mut schema), Vec::<&str>::new());
        let text = json_schema();
        assert_eq!(
            text.matches("Not supported yet: rejected by this build")
                .count(),
            support::NOT_SUPPORTED.len()
        );
    }
}
