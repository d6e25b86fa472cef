//! What this build's data plane acts on: the keys that the format describes but the data plane
//! does not act on yet, and that [`crate::parse`] therefore rejects.
//!
//! A config that asks for mTLS and gets plaintext has harmed its operator, so a key that would be
//! parsed, validated and then ignored is an error instead, at its TOML path and line, with a
//! message that starts `not supported yet` and says what would have gone wrong. The types in
//! [`crate::spec`] keep these keys (and so does the JSON Schema, whose descriptions are marked):
//! the change that makes the data plane act on one deletes its line from [`NOT_SUPPORTED`], and
//! from then on the key is deserialized and validated as before.
//!
//! A rejected key is taken out of the file before its section is deserialized, so a rejected
//! subtree gives one error at the subtree, not a pile of errors about its contents.
//!
//! Keys that work only in some places are not here but in [`crate::validate`] (for example a
//! header or cookie `hash_policy` on a cluster that a tcp listener uses: L4 connections have no
//! headers).

/// A key that the data plane does not act on yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported {
    /// TOML path of the key: section keys joined by `.`, with `[]` after a list of tables for
    /// every element (`clusters[].tls`).
    pub path: &'static str,
    /// What would have gone wrong had the key been accepted, and what to do; the error message is
    /// `not supported yet: ` followed by this.
    pub consequence: &'static str,
    /// A form of the key that the data plane does act on, accepted although the key is listed.
    pub except: Option<Accepted>,
}

/// The form of an otherwise unsupported subtree that the data plane acts on: the subtree is
/// accepted when its table sets `key` to the string `value`, and then only `keys` are acted on
/// (validation refuses the others in that form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The key (directly in the subtree's table) that selects the form.
    pub key: &'static str,
    /// Its value in the accepted form.
    pub value: &'static str,
    /// The keys of the subtree that the data plane acts on in that form.
    pub keys: &'static [&'static str],
}

impl Unsupported {
    /// The error message for this key.
    pub fn message(&self) -> String {
        format!("{NOT_SUPPORTED_YET}: {}", self.consequence)
    }

    /// Whether a subtree whose table gives `get(key)` for its string keys is the accepted form.
    pub fn accepts<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.except
            .is_some_and(|form| get(form.key) == Some(form.value))
    }

    /// Whether schema key `key` (`listeners[].tls.mode`) is acted on in the accepted form.
    pub fn acted_on_in_accepted_form(&self, key: &str) -> bool {
        self.except.is_some_and(|form| {
            key.strip_prefix(self.path)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| form.keys.contains(&rest))
        })
    }
}

/// How every message about an unsupported key starts.
pub const NOT_SUPPORTED_YET: &str = "not supported yet";

/// Every key that the data plane does not act on yet. Delete a line when the data plane starts
/// acting on its key.
#[rustfmt::skip]
pub const NOT_SUPPORTED: &[Unsupported] = &[
];

/// The entry for the key at `path` (a concrete path such as `clusters[2].tls`), if it is not
/// supported.
pub fn unsupported(path: &str) -> Option<&'static Unsupported> {
    NOT_SUPPORTED
        .iter()
        .find(|entry| matches_pattern(entry.path, path))
}

/// Whether concrete `path` (`clusters[2].tls`) is `pattern` (`clusters[].tls`).
fn matches_pattern(pattern: &str, path: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut path = path.split('.');
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(want), Some(have)) => {
                let matches = match want.strip_suffix("[]") {
                    Some(list) => have.strip_prefix(list).is_some_and(|index| {
                        index
                            .strip_prefix('[')
                            .and_then(|i| i.strip_suffix(']'))
                            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                    }),
                    None => want == have,
                };
                if !matches {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_every_list_element_and_nothing_else() {
        // Tracing is built.
        assert!(unsupported("telemetry.tracing").is_none());
        assert!(unsupported("telemetry.tracing.sample_percent").is_none());
        // mTLS and SPIFFE identities are built.
        assert!(unsupported("clusters[0].tls.expected_spiffe_ids").is_none());
        assert!(unsupported("listeners[3].tls.client_ca").is_none());
        assert!(unsupported("listeners[0].tls.require_client_cert").is_none());
        assert!(unsupported("listeners[0].tls.allowed_spiffe_ids").is_none());
        // SNI passthrough is built too.
        assert!(unsupported("listeners[7].tls.sni_routes").is_none());
        assert!(unsupported("listeners[7].tls.mode").is_none());
        assert!(unsupported("virtual_hosts[1].routes[3].fault").is_none());
        assert!(unsupported("clusters[3].outlier_detection").is_none());
        assert!(unsupported("identity").is_none());
        // TLS itself is built: the sections and their other keys pass.
        assert!(unsupported("clusters[0].tls").is_none());
        assert!(unsupported("listeners[0].tls").is_none());
        assert!(unsupported("clusters[0].tls.sni").is_none());
        assert!(unsupported("listeners[0].tls.certificates").is_none());
        assert!(unsupported("clusters[].tls.expected_spiffe_ids").is_none());
        assert!(unsupported("clusters[x].tls.expected_spiffe_ids").is_none());
        assert!(unsupported("clusters[0].pool").is_none());
        assert!(unsupported("listeners").is_none());
    }

    #[test]
    fn an_accepted_form_lets_its_keys_through() {
        // No entry uses a form today (TLS termination and passthrough are both built); the
        // mechanism is kept for the next feature that lands one form at a time.
        let entry = Unsupported {
            path: "listeners[].tls",
            consequence: "test",
            except: Some(Accepted {
                key: "mode",
                value: "passthrough",
                keys: &["mode", "sni_routes"],
            }),
        };
        assert!(entry.accepts(|key| (key == "mode").then_some("passthrough")));
        assert!(!entry.accepts(|key| (key == "mode").then_some("terminate")));
        assert!(!entry.accepts(|_| None));
        assert!(entry.acted_on_in_accepted_form("listeners[].tls.sni_routes"));
        assert!(entry.acted_on_in_accepted_form("listeners[].tls.mode"));
        assert!(!entry.acted_on_in_accepted_form("listeners[].tls.cert"));
        assert!(NOT_SUPPORTED.iter().all(|entry| entry.except.is_none()));
    }

    #[test]
    fn every_message_says_not_supported_yet_and_what_to_remove() {
        for entry in NOT_SUPPORTED {
            let message = entry.message();
            assert!(message.starts_with("not supported yet: "), "{message}");
            assert!(
                message.contains(" — "),
                "{message}: say what would go wrong"
            );
            assert!(
                message.contains("; remove "),
                "{message}: say what to remove"
            );
        }
    }
}
