//! The header rules of the proxy, written once for every protocol pair.
//!
//! A message's fields come from whichever codec parsed them ([`Fields`]: `httparse` fields over
//! an HTTP/1.1 connection's buffer, or an HTTP/2 `HeaderMap`) and go to whichever codec sends
//! them ([`HeaderSink`]: HTTP/1.1 head bytes, or a `HeaderMap`). In between, the same rules:
//!
//! - connection-specific fields (RFC 9110 §7.6.1: `connection`, `keep-alive`,
//!   `proxy-connection`, `te`, `upgrade`, and every name `Connection` lists) never cross the
//!   proxy; HTTP/2 keeps only `te: trailers`, which gRPC needs;
//! - framing fields (`content-length`, `transfer-encoding`) and `host` are the sending codec's
//!   to write, in canonical form, so the next hop never sees framing the proxy did not validate;
//! - `expect` is answered by the proxy and not forwarded;
//! - the proxy owns `x-forwarded-for` (the client's list, then the peer), `x-forwarded-proto`
//!   (the client's only when `xff_trusted_hops > 0`), `x-request-id` and, for gRPC, the
//!   remaining `grpc-timeout`;
//! - toward HTTP/1.1, several `cookie` fields become one, joined with `"; "` (RFC 9113 §8.2.3:
//!   HTTP/2 clients split cookies, and HTTP/1.1 frameworks read only the first field);
//! - with tracing on, the client's trace headers (`traceparent`, `b3`, `x-b3-*`; `tracestate`
//!   unless its W3C context is continued) are dropped: each attempt writes its own (`trace`);
//! - the route's mutations apply last: remove, set, add.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::routing::HeaderMutation;

/// The header fields of a message, whichever codec parsed them.
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// HTTP/1.1 fields, names as sent (any case).
    H1(&'a [httparse::Header<'a>]),
    /// HTTP/2 fields (lower-case names; pseudo-headers are not fields).
    H2(&'a HeaderMap),
}

impl<'a> Fields<'a> {
    /// Every field in order, as (name, value).
    pub fn iter(self) -> FieldsIter<'a> {
        match self {
            Fields::H1(fields) => FieldsIter::H1(fields.iter()),
            Fields::H2(map) => FieldsIter::H2(map.iter()),
        }
    }

    /// Every value of the field `lower_name` (given in lower case).
    pub fn get_all(self, lower_name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(lower_name))
            .map(|(_, value)| value)
    }

    /// The first value of the field `lower_name`.
    pub fn get(self, lower_name: &str) -> Option<&'a [u8]> {
        match self {
            Fields::H1(fields) => fields
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(lower_name))
                .map(|h| h.value),
            Fields::H2(map) => map.get(lower_name).map(HeaderValue::as_bytes),
        }
    }

    /// How many fields there are.
    pub fn len(self) -> usize {
        match self {
            Fields::H1(fields) => fields.len(),
            Fields::H2(map) => map.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Iterator over [`Fields`].
#[derive(Debug)]
pub enum FieldsIter<'a> {
    /// Over HTTP/1.1 fields.
    H1(std::slice::Iter<'a, httparse::Header<'a>>),
    /// Over an HTTP/2 map.
    H2(http::header::Iter<'a, HeaderValue>),
}

impl<'a> Iterator for FieldsIter<'a> {
    type Item = (&'a str, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FieldsIter::H1(iter) => iter.next().map(|h| (h.name, h.value)),
            FieldsIter::H2(iter) => iter.next().map(|(n, v)| (n.as_str(), v.as_bytes())),
        }
    }
}

/// Where header fields go: the sending codec's representation.
pub trait HeaderSink {
    /// Appends a field. Names are valid tokens; values never hold CR, LF or NUL (the parsers and
    /// the config validation guarantee it).
    fn push(&mut self, name: &str, value: &[u8]);
}

/// HTTP/1.1 head bytes: `name: value\r\n`.
impl HeaderSink for Vec<u8> {
    #[inline]
    fn push(&mut self, name: &str, value: &[u8]) {
        super::h1::push_header(self, name.as_bytes(), value);
    }
}

/// An HTTP/2 field map (`HeaderName::from_bytes` lower-cases; an invalid field is dropped, as
/// HTTP/2 could not carry it).
impl HeaderSink for HeaderMap {
    #[inline]
    fn push(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            self.append(name, value);
        }
    }
}

/// The forwarding fields the proxy adds to every request it sends upstream.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The peer's address as text, appended to `x-forwarded-for`.
    pub peer: &'a [u8],
    /// `x-forwarded-proto` to send when the client's value is not trusted.
    pub proto: &'a str,
    /// Whether the client's own `x-forwarded-proto` is trusted (`xff_trusted_hops > 0`).
    pub trust_proto: bool,
    /// `x-request-id` to send.
    pub request_id: &'a [u8],
}

/// How a request's fields are rewritten for the upstream.
#[derive(Debug)]
pub struct RequestRules<'a> {
    /// The route's request mutations.
    pub mutation: &'a HeaderMutation,
    /// Forwarding fields.
    pub forwarding: Forwarding<'a>,
    /// The upstream speaks HTTP/1.1: join `cookie` fields.
    pub join_cookies: bool,
    /// The upstream speaks HTTP/2: keep `te: trailers`.
    pub keep_te_trailers: bool,
    /// The `grpc-timeout` to send in place of the client's (the time left of the deadline).
    pub grpc_timeout: Option<&'a [u8]>,
    /// Each attempt adds its own `x-envoy-attempt-count` and `grpc-timeout` (a route that
    /// retries): the client's are dropped and [`Self::grpc_timeout`] is not written.
    pub per_attempt: bool,
    /// With tracing on, each attempt writes its own trace headers: the client's `traceparent`,
    /// `b3` and `x-b3-*` are dropped here (a malformed one is never forwarded), `tracestate`
    /// too unless the client's W3C context is continued. `None`: trace headers pass through.
    pub trace: Option<TraceHeaders>,
}

/// See [`RequestRules::trace`].
#[derive(Debug, Clone, Copy)]
pub struct TraceHeaders {
    /// `tracestate` goes on with the continued `traceparent`.
    pub keep_tracestate: bool,
}

/// The attempt number a route that retries sends upstream (Envoy's name): 1 for the first try.
pub const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// Whether `name` is connection-specific: hop-by-hop, or listed in `Connection`.
pub fn is_connection_specific(name: &str, connection_tokens: &str) -> bool {
    super::h1::is_connection_specific(name, connection_tokens)
}

/// Writes the request fields for the upstream into `out`. `scratch` is a reused buffer for the
/// values the proxy assembles (`x-forwarded-for`, the joined cookie).
pub fn request_headers(
    fields: Fields<'_>,
    connection_tokens: &str,
    rules: &RequestRules<'_>,
    scratch: &mut Vec<u8>,
    out: &mut impl HeaderSink,
) {
    let mutate = !rules.mutation.is_empty();
    let mut forwarded_for = 0usize;
    let mut cookies = 0usize;
    let mut client_proto = false;
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("x-request-id")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("te") {
            if rules.keep_te_trailers && value.eq_ignore_ascii_case(b"trailers") {
                out.push("te", b"trailers");
            }
            continue;
        }
        if is_connection_specific(name, connection_tokens) || (mutate && rules.mutation.drops(name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for += 1;
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-proto") {
            if rules.forwarding.trust_proto {
                client_proto = true;
                out.push(name, value);
            }
            continue;
        }
        if (rules.grpc_timeout.is_some() || rules.per_attempt)
            && name.eq_ignore_ascii_case("grpc-timeout")
        {
            continue;
        }
        if rules.per_attempt && name.eq_ignore_ascii_case(ATTEMPT_COUNT) {
            continue;
        }
        if let Some(trace) = rules.trace
            && (crate::trace::context::is_rewritten(name)
                || (!trace.keep_tracestate && name.eq_ignore_ascii_case("tracestate")))
        {
            continue;
        }
        if rules.join_cookies && name.eq_ignore_ascii_case("cookie") {
            cookies += 1;
            continue;
        }
        out.push(name, value);
    }
    if !rules.mutation.drops("x-forwarded-for") {
        if forwarded_for == 0 {
            out.push("x-forwarded-for", rules.forwarding.peer);
        } else {
            // Several X-Forwarded-For fields form one list; the peer goes after the last.
            scratch.clear();
            for value in fields.get_all("x-forwarded-for") {
                scratch.extend_from_slice(value);
                scratch.extend_from_slice(b", ");
            }
            scratch.extend_from_slice(rules.forwarding.peer);
            out.push("x-forwarded-for", scratch);
        }
    }
    if !client_proto {
        out.push("x-forwarded-proto", rules.forwarding.proto.as_bytes());
    }
    out.push("x-request-id", rules.forwarding.request_id);
    if let Some(timeout) = rules.grpc_timeout.filter(|_| !rules.per_attempt) {
        out.push("grpc-timeout", timeout);
    }
    if cookies == 1 {
        if let Some(cookie) = fields.get("cookie") {
            out.push("cookie", cookie);
        }
    } else if cookies > 1 {
        scratch.clear();
        for value in fields.get_all("cookie") {
            if !scratch.is_empty() {
                scratch.extend_from_slice(b"; ");
            }
            scratch.extend_from_slice(value);
        }
        out.push("cookie", scratch);
    }
    apply_additions(rules.mutation, out);
}

/// Writes the response fields for the client into `out`: the upstream's, minus
/// connection-specific and framing fields (`content-length` is kept when `keep_length`: a
/// bodiless answer to HEAD or a 304 carries the length of the resource), with the route's
/// changes. The sending codec adds its own framing.
pub fn response_headers(
    fields: Fields<'_>,
    connection_tokens: &str,
    mutation: &HeaderMutation,
    keep_length: bool,
    out: &mut impl HeaderSink,
) {
    let mutate = !mutation.is_empty();
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case("content-length") {
            if keep_length {
                out.push(name, value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding")
            || is_connection_specific(name, connection_tokens)
            || (mutate && mutation.drops(name))
        {
            continue;
        }
        out.push(name, value);
    }
    apply_additions(mutation, out);
}

fn apply_additions(mutation: &HeaderMutation, out: &mut impl HeaderSink) {
    for (name, value) in mutation.set.iter().chain(mutation.add.iter()) {
        out.push(name, value);
    }
}

#[cfg(test)]
mod tests;
