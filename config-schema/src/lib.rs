//! The ringmesh configuration format.
//!
//! A config file is TOML. [`parse`] turns its text into a [`Config`]: the deserialized
//! [`ConfigSpec`] plus a [`SourceMap`] that can name the line and column of any value. Parsing
//! reports **every** error it can find, each with its TOML path (`listeners[1].cluster`), line and
//! column, rather than stopping at the first:
//!
//! 1. syntax errors (the file cannot be read as TOML at all; reported alone);
//! 2. shape errors: unknown keys, wrong types, missing keys, malformed durations or addresses —
//!    each section and each list element is deserialized on its own, so one bad listener does not
//!    hide a bad cluster;
//! 3. meaning errors ([`validate`]): dangling cluster or virtual host references, duplicate
//!    names and listener addresses, regexes that do not compile, impossible values.
//!
//! Later stages (the data plane's compiler, which reads certificate files) report their errors in
//! the same [`ConfigError`] form through [`Config::error_at`].
//!
//! This crate is pure: no I/O, no threads, no sockets. The JSON Schema of the format is generated
//! from the types by [`json_schema`] and committed at `config-schema/ringmesh.schema.json`.
//!
//! # Layout
//! - [`spec`]: the types, field by field, as written in TOML.
//! - [`units`]: durations and byte sizes.
//! - `load`: sectioned deserialization and the source map.
//! - [`validate`]: cross-reference and value checks.

pub mod spec;
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
    } = load::deserialize(text)?;
    // Meaning checks run even when some elements did not deserialize, so that one pass reports
    // everything; only references into a section that lost elements are skipped, because the
    // missing element may be the one they name.
    let issues = validate::validate(&spec).into_iter().filter(|issue| {
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

/// The JSON Schema of the configuration format, generated from [`ConfigSpec`].
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ConfigSpec);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
