//! Sectioned deserialization and the source map.
//!
//! serde stops at the first error, so the file is first parsed into a spanned TOML tree, and then
//! each top-level section and each element of each list is deserialized on its own. That way a
//! file with a bad listener and a bad cluster reports both. The same tree gives every value's
//! position, which turns a TOML path into a line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::ConfigError;
use crate::spec::ConfigSpec;
use crate::support;

/// Positions of the values in a config file, keyed by TOML path.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// Byte span of every key's value (and of every list element), by path.
    spans: BTreeMap<String, Range<usize>>,
    /// Byte span of every key, with the path it names: errors about a key (unknown field) point
    /// at the key rather than at its value.
    key_spans: Vec<(Range<usize>, String)>,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
    /// The text, to count columns in characters.
    text: String,
}

impl SourceMap {
    fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            spans: BTreeMap::new(),
            key_spans: Vec::new(),
            line_starts,
            text: text.to_owned(),
        }
    }

    /// Line and column (both 1-based) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = self
            .text
            .get(line_start..offset)
            .map_or(0, |s| s.chars().count());
        (line_index + 1, column + 1)
    }

    /// The span of the value at `path`, or of its closest recorded parent.
    pub fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut candidate = path;
        loop {
            if let Some(span) = self.spans.get(candidate) {
                return Some(span.clone());
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }

    /// An error about the key at `path` (where the key is written, rather than its value), or,
    /// if no key has that path, about the value at `path`.
    pub fn key_error_at(&self, path: &str, message: String) -> ConfigError {
        match self.key_spans.iter().find(|(_, p)| p == path) {
            Some((span, _)) => {
                let (line, column) = self.line_column(span.start);
                ConfigError {
                    path: path.to_owned(),
                    line,
                    column,
                    message,
                }
            }
            None => self.error_at(path, message),
        }
    }

    /// An error about the value at `path`.
    pub fn error_at(&self, path: &str, message: String) -> ConfigError {
        let (line, column) = self
            .span_of(path)
            .map_or((0, 0), |span| self.line_column(span.start));
        ConfigError {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    }

    /// The deepest path whose value contains `span`: where a deserialization error happened.
    fn path_containing(&self, span: &Range<usize>) -> Option<&str> {
        let values = self.spans.iter().map(|(path, s)| (s, path));
        let keys = self.key_spans.iter().map(|(s, path)| (s, path));
        values
            .chain(keys)
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end)
            .min_by_key(|(s, _)| s.end - s.start)
            .map(|(_, path)| path.as_str())
    }

    fn record(&mut self, path: &str, value: &Spanned<DeValue<'_>>) {
        self.spans.insert(path.to_owned(), value.span());
        match value.get_ref() {
            DeValue::Table(table) => {
                for (key, child) in table.iter() {
                    let child_path = join_key(path, key.get_ref());
                    self.key_spans.push((key.span(), child_path.clone()));
                    self.record(&child_path, child);
                }
            }
            DeValue::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    self.record(&format!("{path}[{index}]"), child);
                }
            }
            _ => {}
        }
    }
}

/// Appends a key to a TOML path, quoting keys that are not bare.
fn join_key(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The sections a config file may have, as (name, is a list of tables).
const SECTIONS: &[(&str, bool)] = &[
    ("admin", false),
    ("runtime", false),
    ("identity", false),
    ("telemetry", false),
    ("listeners", true),
    ("virtual_hosts", true),
    ("clusters", true),
    ("authorization_policies", true),
];

/// What deserialization produced: a spec (elements that did not fit are left out), the shape
/// errors, and which sections lost elements — references into those cannot be checked.
pub(crate) struct Loaded {
    pub(crate) spec: ConfigSpec,
    pub(crate) source: SourceMap,
    pub(crate) errors: Vec<ConfigError>,
    pub(crate) incomplete_sections: BTreeSet<&'static str>,
}

/// Deserializes `text` section by section, collecting every shape error. Only a syntax error (the
/// text is not TOML) fails outright.
pub(crate) fn deserialize(text: &str) -> Result<Loaded, Vec<ConfigError>> {
    let mut source = SourceMap::new(text);
    let (mut root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        return Err(syntax_errors
            .iter()
            .map(|e| toml_error(&source, "", e))
            .collect());
    }
    for (key, value) in root.get_ref().iter() {
        let path = join_key("", key.get_ref());
        source.key_spans.push((key.span(), path.clone()));
        source.record(&path, value);
    }

    let mut errors = Vec::new();
    reject_unsupported(root.get_mut(), "", &source, &mut errors);

    let mut loader = Loader {
        source: &source,
        errors,
        incomplete: BTreeSet::new(),
    };
    let mut spec = ConfigSpec::default();
    for (key, value) in root.get_ref().iter() {
        let name = key.get_ref().as_ref();
        match name {
            "admin" => loader.section(name, value, &mut spec.admin),
            "runtime" => loader.section(name, value, &mut spec.runtime),
            "identity" => {
                let mut identity = None;
                loader.section(name, value, &mut identity);
                spec.identity = identity;
            }
            "telemetry" => loader.section(name, value, &mut spec.telemetry),
            "listeners" => loader.list("listeners", value, &mut spec.listeners),
            "virtual_hosts" => loader.list("virtual_hosts", value, &mut spec.virtual_hosts),
            "clusters" => loader.list("clusters", value, &mut spec.clusters),
            "authorization_policies" => {
                loader.list(
                    "authorization_policies",
                    value,
                    &mut spec.authorization_policies,
                );
            }
            _ => {
                let known: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
                let message = format!(
                    "unknown section `{name}`, expected one of: {}",
                    known.join(", ")
                );
                let (line, column) = source.line_column(key.span().start);
                loader.errors.push(ConfigError {
                    path: name.to_owned(),
                    line,
                    column,
                    message,
                });
            }
        }
    }
    let Loader {
        errors, incomplete, ..
    } = loader;
    Ok(Loaded {
        spec,
        source,
        errors,
        incomplete_sections: incomplete,
    })
}

/// Takes every key that the data plane does not act on yet ([`support::NOT_SUPPORTED`]) out of
/// `table`, the table at `path`, with one error at each. What is taken out is not deserialized, so
/// a rejected subtree gives that one error and no errors about its contents.
fn reject_unsupported(
    table: &mut DeTable<'_>,
    path: &str,
    source: &SourceMap,
    errors: &mut Vec<ConfigError>,
) {
    let mut rejected = Vec::new();
    for (key, value) in table.iter_mut() {
        let child = join_key(path, key.get_ref());
        match support::unsupported(&child) {
            Some(entry) => {
                errors.push(source.key_error_at(&child, entry.message()));
                rejected.push(key.get_ref().clone().into_owned());
            }
            None => reject_unsupported_in(value.get_mut(), &child, source, errors),
        }
    }
    for key in rejected {
        table.remove(key.as_str());
    }
}

fn reject_unsupported_in(
    value: &mut DeValue<'_>,
    path: &str,
    source: &SourceMap,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        DeValue::Table(table) => reject_unsupported(table, path, source, errors),
        DeValue::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                reject_unsupported_in(item.get_mut(), &format!("{path}[{index}]"), source, errors);
            }
        }
        _ => {}
    }
}

struct Loader<'a> {
    source: &'a SourceMap,
    errors: Vec<ConfigError>,
    incomplete: BTreeSet<&'static str>,
}

impl Loader<'_> {
    /// Deserializes one section into `slot`, recording the error if it does not fit.
    fn section<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
        slot: &mut T,
    ) {
        if !value.get_ref().is_table() {
            let found = value.get_ref().type_str();
            self.errors.push(
                self.source
                    .error_at(path, format!("expected a table, found {found}")),
            );
            return;
        }
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(parsed) => *slot = parsed,
            Err(e) => {
                let error = toml_error(self.source, path, &e);
                self.errors.push(error);
            }
        }
    }

    /// Deserializes each element of a list of tables on its own.
    fn list<T: DeserializeOwned>(
        &mut self,
        path: &'static str,
        value: &Spanned<DeValue<'_>>,
        slot: &mut Vec<T>,
    ) {
        let Some(items) = value.get_ref().as_array() else {
            self.incomplete.insert(path);
            let found = value.get_ref().type_str();
            let message = format!("expected a list of tables ([[{path}]]), found {found}");
            self.errors.push(self.source.error_at(path, message));
            return;
        };
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            match T::deserialize(ValueDeserializer::from(item.clone())) {
                Ok(parsed) => slot.push(parsed),
                Err(e) => {
                    let error = toml_error(self.source, &item_path, &e);
                    self.errors.push(error);
                    self.incomplete.insert(path);
                }
            }
        }
    }
}

/// Converts a toml error into a [`ConfigError`], naming the deepest path that contains it.
fn toml_error(source: &SourceMap, fallback_path: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().to_owned();
    match error.span() {
        Some(span) => {
            let path = source
                .path_containing(&span)
                .filter(|p| p.starts_with(fallback_path))
                .unwrap_or(fallback_path)
                .to_owned();
            let (line, column) = source.line_column(span.start);
            ConfigError {
                path,
                line,
                column,
                message,
            }
        }
        None => source.error_at(fallback_path, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let map = SourceMap::new("a = 1\nbé = \"x\"\n");
        assert_eq!(map.line_column(0), (1, 1));
        assert_eq!(map.line_column(6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(map.line_column(12), (2, 6));
    }

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join_key("", "admin"), "admin");
        assert_eq!(join_key("a.set", "x-foo"), "a.set.x-foo");
        assert_eq!(join_key("a.set", "x.foo"), "a.set.\"x.foo\"");
    }
}
