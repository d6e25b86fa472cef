//! Writing the heads the proxy sends: the request head for the upstream and the response head for
//! the client, straight into a reused buffer.
//!
//! Both follow the same rules: connection-specific headers (hop-by-hop ones and every name listed
//! in `Connection`) are dropped, framing headers are dropped and re-emitted by the proxy in
//! canonical form (so the next hop never sees framing the proxy did not validate), and the route's
//! header mutations are applied in the order remove, set, add.

use super::h1::{self, BodyFraming};
use crate::routing::HeaderMutation;

/// Appends `name: value\r\n`.
#[inline]
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number.
#[inline]
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(n).as_bytes());
}

/// The forwarding headers the proxy adds to every request it sends upstream.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The client's address as text, appended to `X-Forwarded-For` (rendered once per
    /// connection, not per request).
    pub peer: &'a [u8],
    /// `X-Forwarded-Proto` to send when the client's value is not trusted.
    pub proto: &'a str,
    /// Whether the client's own `X-Forwarded-Proto` is trusted (`xff_trusted_hops > 0`).
    pub trust_proto: bool,
    /// `X-Request-Id` to send (the client's, or a generated one).
    pub request_id: &'a [u8],
}

/// Everything needed to write the upstream request head.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query to send (rewritten or as received).
    pub path_and_query: &'a [u8],
    /// Host to send.
    pub host: &'a [u8],
    /// The client's header fields.
    pub headers: &'a [httparse::Header<'a>],
    /// The client's `Connection` tokens.
    pub connection_tokens: &'a str,
    /// How the body will be framed upstream.
    pub body: BodyFraming,
    /// For upgrade requests, the `Upgrade` value to pass on.
    pub upgrade: Option<&'a [u8]>,
    /// The route's request header changes.
    pub mutation: &'a HeaderMutation,
    /// Forwarding headers.
    pub forwarding: Forwarding<'a>,
}

/// Writes the upstream request head (always HTTP/1.1) into `out`, which is cleared first.
pub fn write_request_head(out: &mut Vec<u8>, head: &RequestHead<'_>) {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path_and_query);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !head.mutation.drops("host") {
        push_header(out, b"host", head.host);
    }

    let mutate = !head.mutation.is_empty();
    for header in head.headers {
        let name = header.name;
        if skip_request_header(name, head.connection_tokens)
            || (mutate && head.mutation.drops(name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Several X-Forwarded-For fields form one list; the proxy appends the peer to it once,
            // after the last of them.
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-proto") && !head.forwarding.trust_proto {
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            continue;
        }
        push_header(out, name.as_bytes(), header.value);
    }
    if !head.mutation.drops("x-forwarded-for") {
        out.extend_from_slice(b"x-forwarded-for: ");
        let previous = head
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
        for header in previous {
            out.extend_from_slice(header.value);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(head.forwarding.peer);
        out.extend_from_slice(b"\r\n");
    }
    let client_proto_present = head.forwarding.trust_proto
        && head
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("x-forwarded-proto"));
    if !client_proto_present {
        push_header(out, b"x-forwarded-proto", head.forwarding.proto.as_bytes());
    }
    push_header(out, b"x-request-id", head.forwarding.request_id);
    apply_additions(out, head.mutation);

    match head.body {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if let Some(upgrade) = head.upgrade {
        push_header(out, b"upgrade", upgrade);
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Headers of the client's request that the proxy never copies as they are.
fn skip_request_header(name: &str, connection_tokens: &str) -> bool {
    name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("expect")
        || h1::is_connection_specific(name, connection_tokens)
}

fn apply_additions(out: &mut Vec<u8>, mutation: &HeaderMutation) {
    for (name, value) in mutation.set.iter().chain(mutation.add.iter()) {
        push_header(out, name.as_bytes(), value);
    }
}

/// How the response body is framed toward the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: copy any `Content-Length` as received (HEAD and 304 carry the GET's).
    NoBody,
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// No framing header; the body ends when the connection closes.
    UntilClose,
}

/// Everything needed to write the response head for the client.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'a str,
    /// The upstream's header fields.
    pub headers: &'a [httparse::Header<'a>],
    /// The upstream's `Connection` tokens.
    pub connection_tokens: &'a str,
    /// Body framing toward the client.
    pub framing: ResponseFraming,
    /// The route's response header changes.
    pub mutation: &'a HeaderMutation,
    /// What `connection` header to send: `close`, `keep-alive` (HTTP/1.0 clients), or none.
    pub connection: Option<&'static str>,
    /// For a 101 answer to an upgrade, the `Upgrade` value to pass on.
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the client's response head (always HTTP/1.1) into `out`, which is cleared first.
pub fn write_response_head(out: &mut Vec<u8>, head: &ResponseHead<'_>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mutate = !head.mutation.is_empty();
    for header in head.headers {
        let name = header.name;
        let framing = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if framing
            && head.framing == ResponseFraming::NoBody
            && name.eq_ignore_ascii_case("content-length")
        {
            push_header(out, name.as_bytes(), header.value);
            continue;
        }
        if framing
            || h1::is_connection_specific(name, head.connection_tokens)
            || (mutate && head.mutation.drops(name))
        {
            continue;
        }
        push_header(out, name.as_bytes(), header.value);
    }
    apply_additions(out, head.mutation);
    match head.framing {
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::NoBody | ResponseFraming::UntilClose => {}
    }
    if let Some(upgrade) = head.upgrade {
        push_header(out, b"upgrade", upgrade);
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if let Some(connection) = head.connection {
        push_header(out, b"connection", connection.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase of `status`, for local replies.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A response the proxy makes itself (errors, redirects, direct responses).
#[derive(Debug)]
pub struct LocalReply<'a> {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: &'a [u8],
    /// Content-Type of the body.
    pub content_type: &'a str,
    /// A `location` header (redirects).
    pub location: Option<&'a [u8]>,
    /// Close the connection after this reply.
    pub close: bool,
    /// Omit the body (the request was HEAD).
    pub head_only: bool,
    /// The request id to echo back.
    pub request_id: &'a [u8],
}

/// Writes a complete local reply into `out`, which is cleared first.
pub fn write_local_reply(out: &mut Vec<u8>, reply: &LocalReply<'_>) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(reply.status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(reply.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(location) = reply.location {
        push_header(out, b"location", location);
    }
    if !reply.body.is_empty() {
        push_header(out, b"content-type", reply.content_type.as_bytes());
    }
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, reply.body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !reply.request_id.is_empty() {
        push_header(out, b"x-request-id", reply.request_id);
    }
    if reply.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !reply.head_only {
        out.extend_from_slice(reply.body);
    }
}

#[cfg(test)]
mod tests;
