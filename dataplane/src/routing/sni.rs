//! The SNI routes of a TLS passthrough listener (the ClientHello is read by `l4::sni`).
//!
//! The matching rule is Envoy's and Istio's `server_names`: names compare case-insensitively; an
//! exact name wins; otherwise the wildcard with the longest suffix wins, `*.example.com`
//! standing for one or more whole labels (so it matches `a.example.com` and `a.b.example.com`,
//! and not `example.com`). A name no route takes goes to the listener's default cluster, if any.
//! A lookup is one ordered-map probe for the exact name and one per dot for wildcards, and
//! allocates nothing.

use std::collections::BTreeMap;

/// The SNI routes of a passthrough listener, compiled: names lowercased, wildcards kept by their
/// suffix. Ordered maps, so that a snapshot prints the same every time it is compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniRoutes {
    /// Exact host name to cluster index.
    exact: BTreeMap<Box<str>, usize>,
    /// `*.suffix` by `suffix` to cluster index.
    wildcard: BTreeMap<Box<str>, usize>,
}

impl SniRoutes {
    /// Compiles `(pattern, cluster index)` pairs; patterns are validated host names or
    /// `*.suffix` (config validation).
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut table = Self::default();
        for (pattern, cluster) in routes {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(suffix) => table.wildcard.insert(suffix.into(), cluster),
                None => table.exact.insert(pattern.into(), cluster),
            };
        }
        table
    }

    /// The cluster for `name` (lowercased, as `l4::sni::ServerName` is): the exact route, else the
    /// wildcard with the longest suffix that leaves at least one whole label in front.
    pub fn find(&self, name: &str) -> Option<usize> {
        if let Some(&cluster) = self.exact.get(name) {
            return Some(cluster);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Each dot that has a label before it starts a candidate suffix, longest first.
        name.char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .find_map(|(i, _)| self.wildcard.get(name.get(i + 1..)?).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exact_first_then_the_longest_wildcard() {
        let routes = SniRoutes::new([
            ("API.example", 0),
            ("*.internal.example", 1),
            ("*.deep.internal.example", 2),
            ("*.example", 3),
            ("exact.internal.example", 4),
        ]);
        let find = |name: &str| routes.find(name);
        assert_eq!(find("api.example"), Some(0));
        assert_eq!(find("x.internal.example"), Some(1));
        assert_eq!(find("a.b.internal.example"), Some(1));
        assert_eq!(find("x.deep.internal.example"), Some(2));
        assert_eq!(find("deep.internal.example"), Some(1));
        assert_eq!(find("exact.internal.example"), Some(4));
        // A wildcard needs a whole label in front: `*.internal.example` is not
        // `internal.example`.
        assert_eq!(find("internal.example"), Some(3));
        assert_eq!(find("example"), None);
        assert_eq!(find(".example"), None);
        assert_eq!(find("other.test"), None);
        assert_eq!(SniRoutes::default().find("api.example"), None);
    }
}
