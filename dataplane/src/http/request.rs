//! One view of a request for routing, policy and logging, whatever protocol it came in.
//!
//! The HTTP/1.1 server fills a [`RequestHead`] from the parsed head (borrowing the connection's
//! buffer), the HTTP/2 stream adapter from the stream's `http::request::Parts`; the exchange core
//! reads only this.

use std::net::IpAddr;

use super::grpc;
use super::headers::Fields;
use crate::identity::SpiffeId;
use crate::policy::authz::HeaderSource;
use crate::routing::RequestView;
use crate::tls::TlsInfo;

/// The protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
}

impl ClientProtocol {
    /// As the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientProtocol::Http10 => "HTTP/1.0",
            ClientProtocol::Http11 => "HTTP/1.1",
            ClientProtocol::Http2 => "HTTP/2",
        }
    }
}

/// An upgrade to another protocol on the same connection (HTTP/1.1 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade<'a> {
    /// `Connection: upgrade` with this `Upgrade` value (WebSocket, h2c, ...).
    Protocol(&'a [u8]),
    /// A `CONNECT` tunnel.
    Connect,
}

/// How the request body is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// No body.
    None,
    /// Exactly this many bytes (`content-length`).
    Length(u64),
    /// A body of unknown length (HTTP/1.1 chunked, HTTP/2 DATA without `content-length`).
    Stream,
}

/// A request head, as every stage after the codec sees it.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// Method, as sent.
    pub method: &'a str,
    /// `Host` or `:authority`, port included if sent; empty when an HTTP/1.0 client sent none.
    pub authority: &'a str,
    /// Path, without the query.
    pub path: &'a str,
    /// Query, without the `?`; empty if none.
    pub query: &'a str,
    /// The request target as received (the access log's path).
    pub target: &'a str,
    /// Header fields.
    pub fields: Fields<'a>,
    /// Names listed in HTTP/1.1 `Connection` (empty for HTTP/2).
    pub connection_tokens: &'a str,
    /// Which protocol the client speaks.
    pub protocol: ClientProtocol,
    /// The body, as announced.
    pub body: RequestBody,
    /// The client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// An upgrade or CONNECT (HTTP/1.1).
    pub upgrade: Option<Upgrade<'a>>,
    /// A gRPC call (`content-type: application/grpc...`).
    pub grpc: bool,
    /// The client connection's TLS details (SNI, verified peer identity); `None` on plaintext.
    /// Borrowed from the connection, which computed them once at the handshake.
    pub tls: Option<&'a TlsInfo>,
}

impl<'a> RequestHead<'a> {
    /// `HEAD`: the answer has no body.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Whether sending it twice means the same as sending it once (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }

    /// Whether `content-type` says gRPC.
    pub fn grpc_content_type(fields: Fields<'a>) -> bool {
        grpc::is_grpc(fields.get("content-type"))
    }

    /// The client's `x-request-id` if it is sane (printable, at most 128 bytes), else `None`.
    pub fn request_id(&self) -> Option<&'a [u8]> {
        self.fields
            .get("x-request-id")
            .filter(|id| !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic))
    }

    /// The client's address `hops` entries from the right of `x-forwarded-for` (Envoy's
    /// `xff_num_trusted_hops`: with one trusted proxy in front, the last entry, which that proxy
    /// wrote), or `None` when there are fewer entries or the entry is not an IP address.
    pub fn forwarded_client(&self, hops: u32) -> Option<IpAddr> {
        if hops == 0 {
            return None;
        }
        let mut seen = 0u32;
        // The list may span several fields; walk them from the last.
        let values: Vec<&[u8]> = self.fields.get_all("x-forwarded-for").collect();
        for value in values.iter().rev() {
            for entry in value.rsplit(|&b| b == b',') {
                seen += 1;
                if seen == hops {
                    return std::str::from_utf8(entry.trim_ascii()).ok()?.parse().ok();
                }
            }
        }
        None
    }
}

impl HeaderSource for RequestHead<'_> {
    #[inline]
    fn header_value(&self, lower_name: &str) -> Option<&[u8]> {
        RequestView::header(self, lower_name)
    }
}

impl RequestView for RequestHead<'_> {
    #[inline]
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    #[inline]
    fn host(&self) -> &[u8] {
        self.authority.as_bytes()
    }
    #[inline]
    fn path(&self) -> &[u8] {
        self.path.as_bytes()
    }
    #[inline]
    fn query(&self) -> &[u8] {
        self.query.as_bytes()
    }
    #[inline]
    fn header_values(&self, lower_name: &str) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(lower_name))
            .map(|(_, value)| value)
    }
    #[inline]
    fn source_principal(&self) -> Option<&str> {
        self.tls?.peer_principal.as_ref().map(SpiffeId::principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(fields: &'a [httparse::Header<'a>]) -> RequestHead<'a> {
        RequestHead {
            method: "GET",
            authority: "a",
            path: "/",
            query: "",
            target: "/",
            fields: Fields::H1(fields),
            connection_tokens: "",
            protocol: ClientProtocol::Http11,
            body: RequestBody::None,
            expect_continue: false,
            upgrade: None,
            grpc: false,
            tls: None,
        }
    }

    #[test]
    fn the_client_address_is_counted_from_the_right() {
        let fields = [
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"198.51.100.7, 10.0.0.1",
            },
            httparse::Header {
                name: "x-forwarded-for",
                value: b"10.0.0.2",
            },
        ];
        let request = head(&fields);
        assert_eq!(request.forwarded_client(0), None);
        assert_eq!(request.forwarded_client(1), "10.0.0.2".parse().ok());
        assert_eq!(request.forwarded_client(2), "10.0.0.1".parse().ok());
        assert_eq!(request.forwarded_client(3), "198.51.100.7".parse().ok());
        assert_eq!(request.forwarded_client(4), None, "fewer entries than hops");
        let junk = [httparse::Header {
            name: "x-forwarded-for",
            value: b"unknown",
        }];
        assert_eq!(head(&junk).forwarded_client(1), None);
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let good = [httparse::Header {
            name: "x-request-id",
            value: b"abc-123",
        }];
        assert_eq!(head(&good).request_id(), Some(&b"abc-123"[..]));
        let bad = [httparse::Header {
            name: "x-request-id",
            value: b"has space",
        }];
        assert_eq!(head(&bad).request_id(), None);
    }
}
