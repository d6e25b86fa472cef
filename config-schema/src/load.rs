//! Sectioned deserialization and the source map.
//!
//! serde stops at the first error, so the file is first parsed into a spanned TOML tree, and then
//! each top-level section and each element of each list is deserialized on its own. That way a
//! file with a bad listener and a bad cluster reports both. Within one element, after an error
//! the offending key is taken out and the element is tried again, so a cluster with a bad policy
//! and a bad timeout reports both too. The same tree gives every value's position, which turns a
//! TOML path into a line and column.
//!
//! Before that, the keys the data plane does not act on yet ([`crate::support`]) are taken out of
//! the tree, each with one error.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

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
pub(crate) fn join_key(path: &str, key: &str) -> String {
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
    ("workloads", true),
    ("node", false),
    ("services", true),
];

/// What deserialization produced: a spec (elements that did not fit are left out), the shape
/// errors, the names written in the elements left out (references to them are not dangling), and
/// the sections that lost an element whose name could not be read — references into those
/// cannot be checked.
pub(crate) struct Loaded {
    pub(crate) spec: ConfigSpec,
    pub(crate) source: SourceMap,
    pub(crate) errors: Vec<ConfigError>,
    pub(crate) incomplete_sections: BTreeSet<&'static str>,
    pub(crate) unparsed_names: WrittenNames,
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
        unparsed_names: WrittenNames::new(),
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
            "workloads" => loader.list("workloads", value, &mut spec.workloads),
            "services" => loader.list("services", value, &mut spec.services),
            "node" => {
                let mut node = None;
                loader.section(name, value, &mut node);
                spec.node = node;
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
        errors,
        incomplete,
        unparsed_names,
        ..
    } = loader;
    Ok(Loaded {
        spec,
        source,
        errors,
        incomplete_sections: incomplete,
        unparsed_names,
    })
}

/// Takes every key that the data plane does not act on yet ([`support::NOT_SUPPORTED`]) out of
/// `table`, the table at `path`, with one error at each (a subtree in the form an entry accepts,
/// [`support::Accepted`], stays). What is taken out is not deserialized, so
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
        let accepted_form = |entry: &support::Unsupported| match value.get_ref() {
            DeValue::Table(sub) => entry.accepts(|key| sub.get(key)?.get_ref().as_str()),
            _ => false,
        };
        match support::unsupported(&child) {
            Some(entry) if !accepted_form(entry) => {
                errors.push(source.key_error_at(&child, entry.message()));
                rejected.push(key.get_ref().clone().into_owned());
            }
            _ => reject_unsupported_in(value.get_mut(), &child, source, errors),
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
    unparsed_names: WrittenNames,
}

impl Loader<'_> {
    /// Deserializes one section into `slot`, recording every error if it does not fit.
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
        if let Some(parsed) = self.deserialize(path, value) {
            *slot = parsed;
        }
    }

    /// Deserializes each element of a list of tables on its own. An element that does not fit is
    /// left out, but the name written in it is kept, so that references to it are not reported
    /// as dangling; without a readable name, references into the whole section go unchecked.
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
            match self.deserialize(&item_path, item) {
                Some(parsed) => slot.push(parsed),
                None => match written_name(item.get_ref()) {
                    Some(name) => {
                        self.unparsed_names.entry(path).or_default().insert(name);
                    }
                    None => {
                        self.incomplete.insert(path);
                    }
                },
            }
        }
    }

    /// Deserializes `value` (at `path`), recording every shape error in it rather than the first:
    /// after an error, the key or list element it is about is taken out and the rest is tried
    /// again, until the rest fits or an error is about `value` as a whole. `None` if there was
    /// any error: a value with parts taken out is not what the file says, so it is not used.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut failed = false;
        // Keys taken out, as (span of the table they were in, key): a "missing field" error about
        // one of them is a consequence of an error already reported, not an error of its own.
        let mut taken_out: Vec<(Range<usize>, String)> = Vec::new();
        // Each round takes out one part of a finite tree; the bound is only a safety net.
        for _ in 0..MAX_REPAIRS {
            let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(parsed) => return (!failed).then_some(parsed),
                Err(error) => error,
            };
            let consequence = error.span().is_some_and(|span| {
                missing_field(error.message())
                    .is_some_and(|key| taken_out.iter().any(|(s, k)| *s == span && k == key))
            });
            if !consequence {
                self.errors.push(toml_error(self.source, path, &error));
            }
            failed = true;
            // No position, or one that is about the whole value: nothing to take out.
            let span = error.span()?;
            let trail = locate(&value, &span)?;
            if let Some(removed) = take_out(&mut value, &trail)? {
                taken_out.push(removed);
            }
        }
        None
    }
}

/// Names written in list elements that did not deserialize, by section.
pub(crate) type WrittenNames = BTreeMap<&'static str, BTreeSet<String>>;

/// Most parts taken out of one section or list element while collecting its errors.
const MAX_REPAIRS: usize = 1000;

/// The `name` written in a list element, if it is a string.
fn written_name(item: &DeValue<'_>) -> Option<String> {
    item.as_table()?
        .get("name")?
        .get_ref()
        .as_str()
        .map(str::to_owned)
}

/// The key of serde's "missing field `key`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .trim()
        .strip_prefix("missing field `")?
        .strip_suffix('`')
}

/// One step into a TOML value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The steps from `root` to the smallest key or list element (strictly inside `root`) whose key
/// or value contains `span`: what an error at `span` is about. The values of tables written as
/// `[header]` or dotted keys do not span their contents, so every node is looked at.
fn locate(root: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<Vec<Step>> {
    fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
        outer.start <= inner.start && inner.end <= outer.end
    }
    fn consider(
        candidate: &Range<usize>,
        span: &Range<usize>,
        trail: &[Step],
        best: &mut Option<(usize, Vec<Step>)>,
    ) {
        // On a tie the later (deeper) node wins: a dotted key's table spans only its key.
        if contains(candidate, span)
            && best
                .as_ref()
                .is_none_or(|(size, _)| candidate.len() <= *size)
        {
            *best = Some((candidate.len(), trail.to_vec()));
        }
    }
    fn walk(
        value: &DeValue<'_>,
        span: &Range<usize>,
        trail: &mut Vec<Step>,
        best: &mut Option<(usize, Vec<Step>)>,
    ) {
        match value {
            DeValue::Table(table) => {
                for (key, child) in table.iter() {
                    trail.push(Step::Key(key.get_ref().to_string()));
                    consider(&key.span(), span, trail, best);
                    consider(&child.span(), span, trail, best);
                    walk(child.get_ref(), span, trail, best);
                    trail.pop();
                }
            }
            DeValue::Array(items) => {
                for (index, child) in items.iter().enumerate() {
                    trail.push(Step::Index(index));
                    consider(&child.span(), span, trail, best);
                    walk(child.get_ref(), span, trail, best);
                    trail.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    walk(root.get_ref(), span, &mut Vec::new(), &mut best);
    best.map(|(_, trail)| trail)
}

/// Takes the key or element at `trail` out of `root`. Returns `None` if there is none, else, for
/// a key, the span of the table it was in and the key.
fn take_out(
    root: &mut Spanned<DeValue<'_>>,
    trail: &[Step],
) -> Option<Option<(Range<usize>, String)>> {
    let (last, parents) = trail.split_last()?;
    let mut node = root;
    for step in parents {
        node = match (node.get_mut(), step) {
            (DeValue::Table(table), Step::Key(key)) => table.get_mut(key.as_str())?,
            (DeValue::Array(items), Step::Index(index)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    let parent_span = node.span();
    match (node.get_mut(), last) {
        (DeValue::Table(table), Step::Key(key)) => {
            table.remove(key.as_str())?;
            Some(Some((parent_span, key.clone())))
        }
        (DeValue::Array(items), Step::Index(index)) => {
            if *index >= items.len() {
                return None;
            }
            let mut kept = DeArray::new();
            for (i, item) in items.iter().enumerate() {
                if i != *index {
                    kept.push(item.clone());
                }
            }
            *items = kept;
            Some(None)
        }
        _ => None,
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
