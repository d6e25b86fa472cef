//! SPIFFE IDs: parsing, validation and matching.
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>`, validated as the SPIFFE ID specification
//! ("SPIFFE Identity and Verifiable Identity Document", sections 2.1 *Trust Domain* and 2.2
//! *Path*) and go-spiffe's `spiffeid.FromString` do:
//!
//! - the scheme is exactly `spiffe` in lower case (an upper-case `SPIFFE://` is refused, as
//!   go-spiffe refuses it: an ID is compared byte for byte, so a second spelling would be a second
//!   identity);
//! - the trust domain is non-empty and only `[a-z0-9.-_]` — which also excludes userinfo (`@`), a
//!   port (`:`) and percent-encoding;
//! - the path is empty or a sequence of `/segment`, each non-empty, not `.` or `..`, and only
//!   `[A-Za-z0-9.-_]`, with no trailing `/`; a query (`?`) or fragment (`#`) is outside the
//!   character set and so refused;
//! - the whole ID is at most 2048 bytes (section 2.3 *Maximum SPIFFE ID Length*).
//!
//! An ID is kept as its one string, so the comparisons that authorization makes are byte
//! comparisons without allocation. Istio names a peer by its *principal*, the ID without
//! `spiffe://` (`cluster.local/ns/default/sa/web`), and derives the namespace and service account
//! from the path `/ns/<ns>/sa/<sa>`: both forms are offered ([`SpiffeId::principal`],
//! [`SpiffeId::namespace`], [`SpiffeId::service_account`]).
//!
//! Matching comes in two kinds: [`SpiffeIdPattern`], the form of `allowed_spiffe_ids` and
//! `expected_spiffe_ids` in the config (exact, or `spiffe://td/prefix/*`), and
//! [`PrincipalPattern`], Istio's `principals` semantics (exact, `prefix*`, `*suffix`, `*`).

use std::fmt;

/// The scheme and separator every SPIFFE ID starts with.
const PREFIX: &str = "spiffe://";
/// Section 2.3: "URIs with a total length longer than 2048 bytes SHOULD NOT be considered valid".
pub const MAX_ID_LEN: usize = 2048;
/// A trust domain is a DNS-like name; 255 bytes is what go-spiffe allows.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Empty input.
    #[error("empty SPIFFE ID")]
    Empty,
    /// Longer than [`MAX_ID_LEN`] bytes.
    #[error("SPIFFE ID longer than 2048 bytes")]
    TooLong,
    /// The scheme is not `spiffe` (upper case included).
    #[error("scheme is not \"spiffe://\" (lower case)")]
    WrongScheme,
    /// `spiffe://` with no trust domain.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// A trust domain longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain longer than 255 bytes")]
    TrustDomainTooLong,
    /// A trust-domain character outside `[a-z0-9.-_]` (this includes `@`, `:` and `%`).
    #[error("trust domain characters must be a-z 0-9 . - _ (no userinfo, port or upper case)")]
    BadTrustDomainChar,
    /// `//` inside the path.
    #[error("path has an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path has a dot segment")]
    DotSegment,
    /// A path character outside `[A-Za-z0-9.-_]` (this includes `?`, `#` and `%`).
    #[error("path characters must be A-Z a-z 0-9 . - _ (no query, fragment or percent-encoding)")]
    BadPathChar,
    /// A path that ends in `/`.
    #[error("path ends in \"/\"")]
    TrailingSlash,
}

/// A valid SPIFFE ID.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The whole ID, `spiffe://td/path`.
    id: Box<str>,
    /// Where the path starts in `id` (`id.len()` when it is empty).
    path_at: usize,
    /// A hash of `id`, computed once at parse (once per connection for a peer's ID): the
    /// principal's number in Istio metric series keys (`stats::principal_hash`), so a request
    /// never hashes the string.
    key: u64,
}

impl SpiffeId {
    /// Parses and validates `text` as a SPIFFE ID.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if text.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (domain, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        validate_trust_domain(domain)?;
        validate_path(path)?;
        Ok(Self {
            id: text.into(),
            path_at: PREFIX.len() + domain.len(),
            key: crate::stats::principal_hash(text),
        })
    }

    /// The ID of trust domain `domain` itself plus `path` (`""` or `/a/b`).
    pub fn new(domain: &str, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{PREFIX}{domain}{path}"))
    }

    /// The ID's number in Istio metric series keys: `stats::principal_hash` of the ID,
    /// computed when it was parsed.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The whole ID, `spiffe://td/path`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, `td`.
    pub fn trust_domain(&self) -> &str {
        &self.id[PREFIX.len()..self.path_at]
    }

    /// The path, `/path` (empty for the ID of a trust domain itself).
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }

    /// Istio's principal: the ID without `spiffe://`, `td/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> &str {
        &self.id[PREFIX.len()..]
    }

    /// The namespace of an Istio-shaped ID (`/ns/<ns>/sa/<sa>`), else `None`.
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-shaped ID (`/ns/<ns>/sa/<sa>`), else `None`.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    /// `(ns, sa)` when the path is exactly `/ns/<ns>/sa/<sa>` (Istio's `ParseIdentity` accepts
    /// nothing longer or shorter).
    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a trust domain name (section 2.1).
pub fn validate_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    Ok(())
}

/// Checks a path (section 2.2): empty, or `/segment` repeated.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    // `path` starts with '/', so the first item of the split is the empty string before it.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(SpiffeIdError::BadPathChar);
        }
    }
    Ok(())
}

/// A pattern of the config's `allowed_spiffe_ids` / `expected_spiffe_ids`: an exact ID, or
/// `spiffe://td/prefix/*` (any ID whose path lies under `/prefix`, not `/prefix` itself), or
/// `spiffe://td/pre*` (any ID whose string starts with `spiffe://td/pre`, in the same trust
/// domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeIdPattern {
    /// This ID exactly.
    Exact(SpiffeId),
    /// IDs whose whole string starts with this (it always includes `spiffe://td/`, so a pattern
    /// never crosses trust domains).
    Prefix(Box<str>),
}

impl SpiffeIdPattern {
    /// Parses a pattern. The part before `*` must itself be a valid ID (or one ending in `/`).
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        let Some(head) = text.strip_suffix('*') else {
            return SpiffeId::parse(text).map(Self::Exact);
        };
        // `spiffe://td/ns/a/*`: the head without its `/` must be an ID; `spiffe://td/ns/a*`: the
        // head must be an ID, or the trust domain's ID plus `/` (`spiffe://td/*`).
        let base = head.strip_suffix('/').unwrap_or(head);
        let id = SpiffeId::parse(base)?;
        if base.len() == head.len() && id.path().is_empty() {
            // `spiffe://td*` would match `spiffe://td2/...`: another trust domain.
            return Err(SpiffeIdError::BadTrustDomainChar);
        }
        Ok(Self::Prefix(head.into()))
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::Prefix(prefix) => {
                id.as_str().len() > prefix.len() && id.as_str().starts_with(&**prefix)
            }
        }
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Parses a config list (`allowed_spiffe_ids`, `expected_spiffe_ids`); the first invalid entry
/// is the error, with its text.
pub fn parse_patterns(texts: &[String]) -> Result<Vec<SpiffeIdPattern>, (String, SpiffeIdError)> {
    texts
        .iter()
        .map(|text| SpiffeIdPattern::parse(text).map_err(|e| (text.clone(), e)))
        .collect()
}

/// Whether `id` matches one of `patterns`; an empty list matches every ID.
pub fn any_matches(patterns: &[SpiffeIdPattern], id: &SpiffeId) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(id))
}

/// An Istio `principals` entry: matched against [`SpiffeId::principal`] (`td/ns/x/sa/y`), exact,
/// `prefix*`, `*suffix`, or `*` (any authenticated peer). A pattern written with `spiffe://` is
/// taken as the same pattern without it, so both forms work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalPattern {
    /// Any peer with an identity.
    Any,
    /// The principal exactly.
    Exact(Box<str>),
    /// Principals starting with this.
    Prefix(Box<str>),
    /// Principals ending with this.
    Suffix(Box<str>),
}

impl PrincipalPattern {
    /// Reads a principal pattern (Istio's string-match rules: one `*`, at either end).
    pub fn parse(text: &str) -> Self {
        let text = text.strip_prefix(PREFIX).unwrap_or(text);
        if text == "*" {
            Self::Any
        } else if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.into())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.into())
        } else {
            Self::Exact(text.into())
        }
    }

    /// Whether the principal `principal` (`td/ns/x/sa/y`, no scheme) matches.
    pub fn matches_principal(&self, principal: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(want) => principal == &**want,
            Self::Prefix(prefix) => principal.starts_with(&**prefix),
            Self::Suffix(suffix) => principal.ends_with(&**suffix),
        }
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.matches_principal(id.principal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SpiffeId {
        SpiffeId::parse(text).expect("valid test ID")
    }

    #[test]
    fn valid_ids_and_their_parts() {
        let web = id("spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(web.trust_domain(), "cluster.local");
        assert_eq!(web.path(), "/ns/default/sa/web");
        assert_eq!(web.principal(), "cluster.local/ns/default/sa/web");
        assert_eq!(web.namespace(), Some("default"));
        assert_eq!(web.service_account(), Some("web"));
        assert_eq!(web.to_string(), "spiffe://cluster.local/ns/default/sa/web");

        let domain = id("spiffe://example.org");
        assert_eq!(domain.trust_domain(), "example.org");
        assert_eq!(domain.path(), "");
        assert_eq!(domain.namespace(), None);

        let other = id("spiffe://td_1-x.y/A.b-c_d/e");
        assert_eq!(other.path(), "/A.b-c_d/e");
        assert_eq!(other.namespace(), None, "not /ns/<ns>/sa/<sa>");
        assert_eq!(id("spiffe://td/ns/a/sa/b/c").service_account(), None);
        assert_eq!(
            SpiffeId::new("td", "/x").expect("valid").as_str(),
            "spiffe://td/x"
        );
    }

    #[test]
    fn invalid_ids_are_refused_with_their_reason() {
        use SpiffeIdError::*;
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        let long_domain = format!("spiffe://{}/a", "a".repeat(256));
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            (&long, TooLong),
            ("SPIFFE://cluster.local/ns/a/sa/b", WrongScheme),
            ("Spiffe://cluster.local/a", WrongScheme),
            ("https://cluster.local/a", WrongScheme),
            ("spiffe:/cluster.local/a", WrongScheme),
            ("cluster.local/ns/a/sa/b", WrongScheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///a", EmptyTrustDomain),
            (&long_domain, TrustDomainTooLong),
            ("spiffe://Cluster.local/a", BadTrustDomainChar),
            ("spiffe://user@cluster.local/a", BadTrustDomainChar),
            ("spiffe://cluster.local:8443/a", BadTrustDomainChar),
            ("spiffe://clu%73ter.local/a", BadTrustDomainChar),
            ("spiffe://cluster.local?x=1", BadTrustDomainChar),
            ("spiffe://cluster.local/", TrailingSlash),
            ("spiffe://cluster.local/ns/a/sa/b/", TrailingSlash),
            ("spiffe://cluster.local/ns//sa/b", EmptySegment),
            ("spiffe://cluster.local/ns/./sa/b", DotSegment),
            ("spiffe://cluster.local/ns/../sa/b", DotSegment),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", BadPathChar),
            ("spiffe://cluster.local/ns/a/sa/b#frag", BadPathChar),
            ("spiffe://cluster.local/ns/a%2Fb", BadPathChar),
            ("spiffe://cluster.local/ns/a b", BadPathChar),
            ("spiffe://cluster.local/ns/é", BadPathChar),
        ];
        for (text, why) in cases {
            assert_eq!(SpiffeId::parse(text), Err(*why), "{text:?}");
        }
        let longest = format!(
            "spiffe://td/{}",
            "a".repeat(MAX_ID_LEN - "spiffe://td/".len())
        );
        assert!(SpiffeId::parse(&longest).is_ok());
    }

    #[test]
    fn config_patterns_match_exactly_or_under_a_prefix() {
        let exact = SpiffeIdPattern::parse("spiffe://td/ns/a/sa/b").expect("valid");
        assert!(exact.matches(&id("spiffe://td/ns/a/sa/b")));
        assert!(!exact.matches(&id("spiffe://td/ns/a/sa/bb")));

        let under = SpiffeIdPattern::parse("spiffe://td/ns/a/*").expect("valid");
        assert!(under.matches(&id("spiffe://td/ns/a/sa/b")));
        assert!(
            !under.matches(&id("spiffe://td/ns/a")),
            "the prefix itself is not under it"
        );
        assert!(!under.matches(&id("spiffe://td/ns/ab/sa/b")));
        assert!(!under.matches(&id("spiffe://other/ns/a/sa/b")));

        let starts = SpiffeIdPattern::parse("spiffe://td/ns/a*").expect("valid");
        assert!(starts.matches(&id("spiffe://td/ns/ab/sa/c")));
        assert!(!starts.matches(&id("spiffe://td/ns/b")));

        let domain = SpiffeIdPattern::parse("spiffe://td/*").expect("valid");
        assert!(domain.matches(&id("spiffe://td/x")));
        assert!(!domain.matches(&id("spiffe://td2/x")));
        assert!(
            SpiffeIdPattern::parse("spiffe://td*").is_err(),
            "would cross trust domains"
        );
        assert!(SpiffeIdPattern::parse("spiffe://td/a//*").is_err());
        assert!(SpiffeIdPattern::parse("SPIFFE://td/*").is_err());
        assert_eq!(under.to_string(), "spiffe://td/ns/a/*");

        let list = parse_patterns(&["spiffe://td/a".into(), "spiffe://td/b/*".into()]);
        assert_eq!(list.map(|l| l.len()), Ok(2));
        let bad = parse_patterns(&["spiffe://td/a".into(), "spiffe://td/b/".into()]);
        assert_eq!(
            bad,
            Err(("spiffe://td/b/".into(), SpiffeIdError::TrailingSlash))
        );

        assert!(any_matches(&[], &id("spiffe://td/x")), "empty = any");
        assert!(!any_matches(
            std::slice::from_ref(&exact),
            &id("spiffe://td/x")
        ));
    }

    #[test]
    fn istio_principals_match_exact_prefix_suffix_and_any() {
        let web = id("spiffe://cluster.local/ns/default/sa/web");
        for (pattern, want) in [
            ("cluster.local/ns/default/sa/web", true),
            ("spiffe://cluster.local/ns/default/sa/web", true),
            ("cluster.local/ns/default/sa/api", false),
            ("cluster.local/ns/default/*", true),
            ("cluster.local/ns/other/*", false),
            ("*/sa/web", true),
            ("*/sa/api", false),
            ("*", true),
        ] {
            assert_eq!(
                PrincipalPattern::parse(pattern).matches(&web),
                want,
                "{pattern}"
            );
        }
    }
}
