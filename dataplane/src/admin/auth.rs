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
}
