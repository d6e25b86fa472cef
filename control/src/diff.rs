//! What changes between two configs, for people: listeners, virtual hosts, routes, clusters and
//! policies added, removed or changed, and for a changed one, which values changed.
//!
//! Items are matched by their stable name (the same key the proxy carries state by). Routes are
//! matched within their virtual host by `name` when they have one, else by what they match
//! (`prefix /api`), so reordering unnamed routes with distinct matches reads as what it is. A
//! changed item lists each changed value as `path: old -> new`, found by comparing the items'
//! JSON forms leaf by leaf.

use std::collections::BTreeMap;
use std::fmt;

use config_schema::{ConfigSpec, RouteSpec};
use serde::Serialize;
use serde_json::Value;

/// Longest rendering of one value before it is cut short.
const MAX_VALUE: usize = 120;

/// The differences between two configs, by section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Sections with at least one change, in config order.
    pub sections: Vec<SectionDiff>,
}

/// The changes in one section (`listeners`, `routes`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionDiff {
    /// Section name.
    pub section: &'static str,
    /// Changes, in the order the items appear (removed ones where they stood in the old config).
    pub changes: Vec<Change>,
}

/// One item added, removed or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// In the new config only.
    Added {
        /// The item's key.
        name: String,
        /// A few defining values.
        summary: String,
    },
    /// In the old config only.
    Removed {
        /// The item's key.
        name: String,
    },
    /// In both, with different values.
    Changed {
        /// The item's key.
        name: String,
        /// `(path, old, new)` per changed value; `None` means absent.
        fields: Vec<(String, Option<String>, Option<String>)>,
    },
}

impl Diff {
    /// True when the configs are the same.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// How many items were added, removed and changed in `section`.
    pub fn counts(&self, section: &str) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for s in self.sections.iter().filter(|s| s.section == section) {
            for change in &s.changes {
                match change {
                    Change::Added { .. } => counts.0 += 1,
                    Change::Removed { .. } => counts.1 += 1,
                    Change::Changed { .. } => counts.2 += 1,
                }
            }
        }
        counts
    }
}

/// Compares `old` with `new`.
pub fn diff(old: &ConfigSpec, new: &ConfigSpec) -> Diff {
    let mut sections = Vec::new();
    let mut push = |section: &'static str, changes: Vec<Change>| {
        if !changes.is_empty() {
            sections.push(SectionDiff { section, changes });
        }
    };
    for (section, old_value, new_value) in [
        ("admin", json(&old.admin), json(&new.admin)),
        ("runtime", json(&old.runtime), json(&new.runtime)),
        ("identity", json(&old.identity), json(&new.identity)),
        ("telemetry", json(&old.telemetry), json(&new.telemetry)),
    ] {
        let fields = changed_fields(&old_value, &new_value);
        push(
            section,
            if fields.is_empty() {
                Vec::new()
            } else {
                vec![Change::Changed {
                    name: section.to_owned(),
                    fields,
                }]
            },
        );
    }
    push(
        "listeners",
        compare(
            keyed(&old.listeners, |l| l.name.clone()),
            keyed(&new.listeners, |l| l.name.clone()),
            |v| summary(v, &["address", "protocol", "cluster"]),
        ),
    );
    let without_routes = |spec: &ConfigSpec| {
        keyed(&spec.virtual_hosts, |v| v.name.clone())
            .into_iter()
            .map(|(name, mut value)| {
                if let Value::Object(map) = &mut value {
                    map.remove("routes");
                }
                (name, value)
            })
            .collect::<Vec<_>>()
    };
    push(
        "virtual_hosts",
        compare(without_routes(old), without_routes(new), |v| {
            summary(v, &["domains"])
        }),
    );
    push(
        "routes",
        compare(routes(old), routes(new), |v| {
            summary(
                v,
                &[
                    "cluster",
                    "weighted_clusters",
                    "redirect",
                    "direct_response",
                ],
            )
        }),
    );
    push(
        "clusters",
        compare(
            keyed(&old.clusters, |c| c.name.clone()),
            keyed(&new.clusters, |c| c.name.clone()),
            |v| summary(v, &["endpoints", "lb_policy"]),
        ),
    );
    push(
        "authorization_policies",
        compare(
            keyed(&old.authorization_policies, |p| p.name.clone()),
            keyed(&new.authorization_policies, |p| p.name.clone()),
            |v| summary(v, &["action"]),
        ),
    );
    Diff { sections }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn keyed<T: Serialize>(items: &[T], key: impl Fn(&T) -> String) -> Vec<(String, Value)> {
    items.iter().map(|item| (key(item), json(item))).collect()
}

/// Every route as `vhost/key`, keyed by name, else by its match (numbered when repeated).
fn routes(spec: &ConfigSpec) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for vhost in &spec.virtual_hosts {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for route in &vhost.routes {
            let base = route.name.clone().unwrap_or_else(|| match_label(route));
            let n = seen.entry(base.clone()).or_default();
            *n += 1;
            let key = if *n == 1 {
                format!("{}/{base}", vhost.name)
            } else {
                format!("{}/{base} #{n}", vhost.name)
            };
            out.push((key, json(route)));
        }
    }
    out
}

fn match_label(route: &RouteSpec) -> String {
    let m = &route.matcher;
    let mut label = if let Some(p) = &m.path_exact {
        format!("exact {p}")
    } else if let Some(p) = &m.path_regex {
        format!("regex {p}")
    } else if let Some(p) = &m.path_prefix {
        format!("prefix {p}")
    } else {
        "prefix /".to_owned()
    };
    if !m.methods.is_empty() {
        label.push_str(&format!(" [{}]", m.methods.join(",")));
    }
    if !m.headers.is_empty() || !m.query.is_empty() {
        label.push_str(" (+conditions)");
    }
    label
}

/// Added, removed and changed items between two keyed lists, in new-config order with removed
/// items after.
fn compare(
    old: Vec<(String, Value)>,
    new: Vec<(String, Value)>,
    summarize: impl Fn(&Value) -> String,
) -> Vec<Change> {
    let old_by_name: BTreeMap<&str, &Value> = old.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let new_names: std::collections::BTreeSet<&str> = new.iter().map(|(k, _)| k.as_str()).collect();
    let mut changes = Vec::new();
    for (name, value) in &new {
        match old_by_name.get(name.as_str()) {
            None => changes.push(Change::Added {
                name: name.clone(),
                summary: summarize(value),
            }),
            Some(old_value) => {
                let fields = changed_fields(old_value, value);
                if !fields.is_empty() {
                    changes.push(Change::Changed {
                        name: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for (name, _) in &old {
        if !new_names.contains(name.as_str()) {
            changes.push(Change::Removed { name: name.clone() });
        }
    }
    changes
}

type FieldChange = (String, Option<String>, Option<String>);

fn changed_fields(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    flatten(old, String::new(), &mut a);
    flatten(new, String::new(), &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).cloned(), b.get(k).cloned()))
        .collect()
}

/// Leaves of `value` by dotted path; arrays are leaves (shown whole), so a changed endpoint list
/// reads as one line.
fn flatten(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, p, out);
            }
        }
        Value::Null => {}
        other => {
            out.insert(path, render(other));
        }
    }
}

fn render(value: &Value) -> String {
    let mut text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn summary(value: &Value, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| value.get(*k).filter(|v| !v.is_null()).map(|v| (k, v)))
        .map(|(k, v)| format!("{k}={}", render(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sections.is_empty() {
            return writeln!(f, "no changes");
        }
        for section in &self.sections {
            let (added, removed, changed) = self.counts(section.section);
            writeln!(
                f,
                "{}: {added} added, {removed} removed, {changed} changed",
                section.section
            )?;
            for change in &section.changes {
                match change {
                    Change::Added { name, summary } if summary.is_empty() => {
                        writeln!(f, "  + {name}")?
                    }
                    Change::Added { name, summary } => writeln!(f, "  + {name}  {summary}")?,
                    Change::Removed { name } => writeln!(f, "  - {name}")?,
                    Change::Changed { name, fields } => {
                        writeln!(f, "  ~ {name}")?;
                        for (path, old, new) in fields {
                            let old = old.as_deref().unwrap_or("(unset)");
                            let new = new.as_deref().unwrap_or("(unset)");
                            writeln!(f, "      {path}: {old} -> {new}")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ConfigSpec {
        config_schema::parse(text).expect("valid config").spec
    }

    const OLD: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:15080"
protocol = "http"

[[listeners]]
name = "legacy"
address = "127.0.0.1:15082"
protocol = "tcp"
cluster = "a"

[[clusters]]
name = "a"
endpoints = ["127.0.0.1:8001"]

[[clusters]]
name = "b"
endpoints = ["127.0.0.1:8002"]

[[virtual_hosts]]
name = "default"
domains = ["*"]

[[virtual_hosts.routes]]
match.path_prefix = "/api"
cluster = "a"

[[virtual_hosts.routes]]
match.path_prefix = "/"
cluster = "b"
"#;

    #[test]
    fn identical_configs_have_no_diff() {
        let d = diff(&spec(OLD), &spec(OLD));
        assert!(d.is_empty());
        assert_eq!(d.to_string(), "no changes\n");
    }

    #[test]
    fn added_removed_and_changed_items_are_listed_by_section() {
        let new = OLD
            .replace("127.0.0.1:15080", "127.0.0.1:15081")
            .replace(
                "[[listeners]]\nname = \"legacy\"\naddress = \"127.0.0.1:15082\"\nprotocol = \"tcp\"\ncluster = \"a\"\n",
                "",
            )
            .replace("endpoints = [\"127.0.0.1:8002\"]", "endpoints = [\"127.0.0.1:8002\", \"127.0.0.1:8003\"]")
            .replace(
                "match.path_prefix = \"/api\"\ncluster = \"a\"",
                "match.path_prefix = \"/api\"\nweighted_clusters = [{ cluster = \"a\", weight = 90 }, { cluster = \"b\", weight = 10 }]",
            )
            + "\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:8004\"]\n";
        let d = diff(&spec(OLD), &spec(&new));
        assert_eq!(d.counts("listeners"), (0, 1, 1));
        assert_eq!(d.counts("clusters"), (1, 0, 1));
        assert_eq!(d.counts("routes"), (0, 0, 1));
        assert_eq!(d.counts("virtual_hosts"), (0, 0, 0));
        let text = d.to_string();
        assert!(text.contains("  - legacy\n"), "{text}");
        assert!(
            text.contains("      address: 127.0.0.1:15080 -> 127.0.0.1:15081\n"),
            "{text}"
        );
        assert!(
            text.contains("  + c  endpoints=[{\"address\":\"127.0.0.1:8004\""),
            "{text}"
        );
        assert!(text.contains("  ~ default/prefix /api\n"), "{text}");
        assert!(text.contains("      cluster: a -> (unset)\n"), "{text}");
        assert!(text.contains("weighted_clusters: (unset) -> [{"), "{text}");
    }

    #[test]
    fn named_routes_keep_their_identity_when_their_match_changes() {
        let old = OLD.replace(
            "match.path_prefix = \"/api\"",
            "name = \"api\"\nmatch.path_prefix = \"/api\"",
        );
        let new = old.replace("\"/api\"", "\"/v2/api\"");
        let d = diff(&spec(&old), &spec(&new));
        assert_eq!(d.counts("routes"), (0, 0, 1));
        assert!(d.to_string().contains("  ~ default/api\n"));
    }
}
