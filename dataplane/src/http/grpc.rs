//! gRPC awareness: recognising gRPC requests, their deadlines, and answering them in gRPC's own
//! terms when the proxy itself has to answer.
//!
//! A gRPC client reads the outcome of a call from the `grpc-status` trailer, not from the HTTP
//! status, so a bare `503` means nothing useful to it. Local replies to gRPC requests are
//! "trailers-only" responses: HTTP 200, `content-type: application/grpc`, and `grpc-status` /
//! `grpc-message` in the one HEADERS frame that ends the stream.

use std::time::Duration;

/// gRPC status codes the proxy produces.
pub mod code {
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// The proxy refused for lack of resources (body too large, rate limited).
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// No route: the method is not served here.
    pub const UNIMPLEMENTED: u32 = 12;
    /// Internal error.
    pub const INTERNAL: u32 = 13;
    /// The upstream could not be reached or failed.
    pub const UNAVAILABLE: u32 = 14;
    /// Denied by policy.
    pub const PERMISSION_DENIED: u32 = 7;
    /// Bad request.
    pub const INVALID_ARGUMENT: u32 = 3;
}

/// Whether a request with this `content-type` is a gRPC call.
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        ct.len() >= 16
            && ct[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+' | b';'))
    })
}

/// The deadline in a `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). `None` if absent or malformed (a malformed timeout is ignored, as gRPC servers do).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for an HTTP status the proxy would otherwise answer with (the mapping of the
/// gRPC HTTP-to-status spec, plus the proxy's own cases).
pub fn status_for_http(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => 16,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        413 | 429 => code::RESOURCE_EXHAUSTED,
        504 | 408 => code::DEADLINE_EXCEEDED,
        502 | 503 => code::UNAVAILABLE,
        _ => 2, // UNKNOWN
    }
}

/// Percent-encodes a `grpc-message` value as the gRPC spec asks (space and printable ASCII other
/// than `%` stay as they are).
pub fn encode_message(message: &str, out: &mut String) {
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(is_grpc(Some(b"Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(Some(b"application/grpc-web")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(None));
    }

    #[test]
    fn timeouts_parse_per_spec() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_timeout(b"123456789m"), None, "more than 8 digits");
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"-1S"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        let mut out = String::new();
        encode_message("no route: 100% — x", &mut out);
        assert_eq!(out, "no route: 100%25 %E2%80%94 x");
    }
}
