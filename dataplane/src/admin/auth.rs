//! Who may talk to the admin API, and who may change things through it.
//!
//! - **Host** (every request): DNS-rebinding defence. A web page that tricks a browser into
//!   calling the admin API sends its own host name, never a loopback one; so a request is served
//!   only when its Host is a loopback name or address, or the IP literal of the address the
//!   connection came in on (an admin bound to a node address for remote control).
//! - **Bearer token** (mutating endpoints): `Authorization: Bearer TOKEN`, compared in constant
//!   time with the token of the config in force (`admin.token`, `admin.token_env` or
//!   `admin.token_file`, resolved at each reload). Without a configured token, mutating endpoints
//!   are disabled; SIGHUP still reloads.

use std::net::IpAddr;
use std::sync::Arc;

use config_schema::{Config, ConfigError};

/// Whether a request with this Host header may be served on a connection to `local`.
pub(super) fn host_allowed(host: Option<&str>, local: Option<IpAddr>) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 clients and unix-socket tools may omit Host; they are not browsers.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || Some(ip) == local,
        Err(_) => false,
    }
}

/// Why a mutating request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denied {
    /// No token is configured: mutations are disabled.
    NoTokenConfigured,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that does not match.
    Wrong,
}

/// Checks an `Authorization` header value against the configured token.
pub(super) fn check_bearer(
    configured: Option<&str>,
    authorization: Option<&str>,
) -> Result<(), Denied> {
    let Some(expected) = configured else {
        return Err(Denied::NoTokenConfigured);
    };
    let Some(given) = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }) else {
        return Err(Denied::Missing);
    };
    if constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        Ok(())
    } else {
        Err(Denied::Wrong)
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        difference |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    difference == 0
}

/// The admin token of `config`: inline, from an environment variable, or from a file (trailing
/// whitespace trimmed). An unset variable, an unreadable file or an empty token is an error at
/// the key that names it, so such a config is rejected rather than silently locking the admin
/// API (or leaving it open).
pub fn resolve_token(config: &Config) -> Result<Option<Arc<str>>, ConfigError> {
    let admin = &config.spec.admin;
    let (at, token) = if let Some(token) = &admin.token {
        ("admin.token", token.clone())
    } else if let Some(var) = &admin.token_env {
        match std::env::var(var) {
            Ok(token) => ("admin.token_env", token),
            Err(e) => {
                return Err(config.error_at(
                    "admin.token_env",
                    format!("environment variable {var}: {e}"),
                ));
            }
        }
    } else if let Some(file) = &admin.token_file {
        match std::fs::read_to_string(file) {
            Ok(text) => ("admin.token_file", text.trim_end().to_owned()),
            Err(e) => {
                return Err(
                    config.error_at("admin.token_file", format!("cannot read {file:?}: {e}"))
                );
            }
        }
    } else {
        return Ok(None);
    };
    if token.trim().is_empty() {
        return Err(config.error_at(at, "the admin token is empty"));
    }
    Ok(Some(token.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted_and_others_refused() {
        let local: Option<IpAddr> = Some("10.0.0.5".parse().expect("ip"));
        for ok in [
            None,
            Some("localhost"),
            Some("LOCALHOST:15000"),
            Some("127.0.0.1:15000"),
            Some("[::1]:15000"),
            Some("127.0.0.2"),
            Some("10.0.0.5:15000"),
        ] {
            assert!(host_allowed(ok, local), "{ok:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:15000"),
            Some("localhost.evil.example"),
            Some("10.0.0.1:15000"),
            Some("[2001:db8::1]:80"),
            Some(""),
        ] {
            assert!(!host_allowed(bad, local), "{bad:?}");
        }
    }

    #[test]
    fn bearer_tokens_are_checked() {
        assert_eq!(check_bearer(Some("s3cret"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            check_bearer(Some("s3cret"), Some("bearer  s3cret ")),
            Ok(())
        );
        assert_eq!(
            check_bearer(Some("s3cret"), Some("Bearer s3cre")),
            Err(Denied::Wrong)
        );
        assert_eq!(
            check_bearer(Some("s3cret"), Some("Bearer s3cretX")),
            Err(Denied::Wrong)
        );
        assert_eq!(
            check_bearer(Some("s3cret"), Some("Basic czNjcmV0")),
            Err(Denied::Missing)
        );
        assert_eq!(check_bearer(Some("s3cret"), None), Err(Denied::Missing));
        assert_eq!(
            check_bearer(None, Some("Bearer s3cret")),
            Err(Denied::NoTokenConfigured)
        );
    }

    #[test]
    fn tokens_resolve_from_each_source() {
        let parse = |text: &str| config_schema::parse(text).expect("valid");
        assert_eq!(
            resolve_token(&parse("[admin]\ntoken = \"t1\"\n")).expect("ok"),
            Some("t1".into())
        );
        assert_eq!(resolve_token(&parse("")).expect("ok"), None);
        let file = std::env::temp_dir().join(format!("ringmesh-token-{}", std::process::id()));
        std::fs::write(&file, "t2\n").expect("write");
        let text = format!("[admin]\ntoken_file = \"{}\"\n", file.display());
        assert_eq!(resolve_token(&parse(&text)).expect("ok"), Some("t2".into()));
        std::fs::write(&file, "  \n").expect("write");
        let error = resolve_token(&parse(&text)).expect_err("empty");
        assert_eq!(error.path, "admin.token_file");
        assert_eq!(error.line, 2);
        let _ = std::fs::remove_file(&file);
        let error = resolve_token(&parse(
            "[admin]\ntoken_env = \"RINGMESH_TEST_SURELY_UNSET_VARIABLE\"\n",
        ))
        .expect_err("unset");
        assert_eq!(error.path, "admin.token_env");
    }
}
