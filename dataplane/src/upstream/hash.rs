//! Request hashing for consistent-hash load balancing: xxHash64 (seed 0, the hash Envoy uses for
//! ring hash and Maglev), stable across processes and machines, so every worker and every node
//! sends a key to the same endpoint.

use std::net::IpAddr;

use config_schema::HashPolicySpec;
use xxhash_rust::xxh64::xxh64;

use crate::routing::RequestView;

/// xxHash64 of `bytes` with seed 0.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

/// The hash of an IP address: of its 4 or 16 octets (an IPv4-mapped IPv6 address hashes as the
/// IPv4 address it carries).
#[inline]
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// The value of cookie `name` in one `Cookie` header value (`a=1; b="2"`), quotes removed.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii_start();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii_end() != name {
            return None;
        }
        let value = pair[eq + 1..].trim_ascii();
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

/// What a consistent-hash cluster hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's (first) value; the name is lower case.
    Header(Box<str>),
    /// A cookie's value, from any `Cookie` header.
    Cookie(Box<[u8]>),
    /// The client's IP address.
    SourceIp,
}

impl HashOn {
    /// From the config; `None` if it names nothing.
    pub fn from_spec(spec: &HashPolicySpec) -> Option<Self> {
        if let Some(header) = &spec.header {
            Some(Self::Header(header.to_ascii_lowercase().into()))
        } else if let Some(cookie) = &spec.cookie {
            Some(Self::Cookie(cookie.as_bytes().into()))
        } else if spec.source_ip == Some(true) {
            Some(Self::SourceIp)
        } else {
            None
        }
    }

    /// The request's hash, or `None` if the header or cookie is absent (the balancer then picks
    /// at random, as Envoy does).
    #[inline]
    pub fn hash<R: RequestView + ?Sized>(&self, req: &R, source: IpAddr) -> Option<u64> {
        match self {
            Self::Header(name) => req.header(name).map(hash_bytes),
            Self::Cookie(name) => req
                .header_values("cookie")
                .find_map(|h| cookie_value(h, name))
                .map(hash_bytes),
            Self::SourceIp => Some(hash_ip(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::H1Request;

    #[test]
    fn hashes_are_stable_across_processes() {
        // Published xxHash64 test vectors (seed 0).
        assert_eq!(hash_bytes(b""), 0xef46_db37_51d8_e999);
        assert_eq!(hash_bytes(b"a"), 0xd24e_c4f1_a98c_6e5b);
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(hash_ip(v4), hash_ip(mapped));
        assert_eq!(hash_ip(v4), hash_bytes(&[10, 1, 2, 3]));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let header = b"a=1; session=\"abc\" ;other=x; sess=no";
        assert_eq!(cookie_value(header, b"session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(header, b"a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(header, b"other"), Some(&b"x"[..]));
        assert_eq!(cookie_value(header, b"missing"), None);
        assert_eq!(cookie_value(b"novalue; k=v", b"novalue"), None);
    }

    #[test]
    fn request_hash_sources() {
        let headers = [
            httparse::Header {
                name: "X-User",
                value: b"alice",
            },
            httparse::Header {
                name: "Cookie",
                value: b"a=1",
            },
            httparse::Header {
                name: "cookie",
                value: b"sid=xyz",
            },
        ];
        let req = H1Request::new("GET", "/", &headers);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let header = HashOn::Header("x-user".into());
        assert_eq!(header.hash(&req, ip), Some(hash_bytes(b"alice")));
        let cookie = HashOn::Cookie((*b"sid").into());
        assert_eq!(cookie.hash(&req, ip), Some(hash_bytes(b"xyz")));
        assert_eq!(HashOn::Cookie((*b"none").into()).hash(&req, ip), None);
        assert_eq!(HashOn::Header("absent".into()).hash(&req, ip), None);
        assert_eq!(HashOn::SourceIp.hash(&req, ip), Some(hash_ip(ip)));
        let spec = HashPolicySpec {
            header: Some("X-User".into()),
            cookie: None,
            source_ip: None,
        };
        assert_eq!(HashOn::from_spec(&spec), Some(header));
    }
}
