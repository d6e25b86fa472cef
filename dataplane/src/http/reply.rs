//! Answers the proxy makes itself — errors, redirects, direct responses — in one model,
//! encoded in each client protocol's form: HTTP/1.1 bytes, an HTTP/2 response, or, for a gRPC
//! client and an error, a gRPC "trailers-only" response (HTTP 200, `content-type:
//! application/grpc`, and `grpc-status`/`grpc-message` in the one HEADERS frame that ends the
//! stream), because a gRPC client reads a call's outcome from `grpc-status`, not from the HTTP
//! status.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};

use super::error::Failure;
use super::grpc;
use super::h1::{push_decimal, push_header};
use crate::policy::Limited;

/// The body of a local reply.
#[derive(Debug, Clone, Copy)]
pub enum ReplyBody<'a> {
    /// A short reason, sent as `text/plain` with a trailing newline.
    Reason(&'a str),
    /// Bytes as configured (a direct response), with their content type.
    Bytes(&'a [u8], &'a str),
}

impl ReplyBody<'_> {
    /// Bytes on the wire.
    pub fn len(self) -> usize {
        match self {
            ReplyBody::Reason(reason) => reason.len() + 1,
            ReplyBody::Bytes(bytes, _) => bytes.len(),
        }
    }

    /// Whether there is nothing to send.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    fn content_type(self) -> &'static str {
        "text/plain"
    }

    fn write(self, out: &mut Vec<u8>) {
        match self {
            ReplyBody::Reason(reason) => {
                out.extend_from_slice(reason.as_bytes());
                out.push(b'\n');
            }
            ReplyBody::Bytes(bytes, _) => out.extend_from_slice(bytes),
        }
    }
}

/// A response the proxy makes itself.
#[derive(Debug, Clone, Copy)]
pub struct LocalReply<'a> {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: ReplyBody<'a>,
    /// A `location` header (redirects).
    pub location: Option<&'a [u8]>,
    /// For errors: the gRPC status a gRPC client gets instead (`None` for redirects and direct
    /// responses, which go out as they are configured).
    pub grpc_status: Option<u32>,
    /// `x-envoy-overloaded: true` (the proxy shed the request).
    pub overloaded: bool,
    /// `x-ratelimit-*` headers (a local rate limit refused the request).
    pub rate_limit: Option<Limited>,
}

impl<'a> LocalReply<'a> {
    /// The answer to a failure.
    pub fn failure(failure: Failure) -> Self {
        Self {
            status: failure.status(),
            body: ReplyBody::Reason(failure.reason()),
            location: None,
            grpc_status: Some(failure.grpc_status()),
            overloaded: failure.overloaded(),
            rate_limit: match failure {
                Failure::RateLimited(limited) => Some(limited),
                _ => None,
            },
        }
    }

    /// A configured direct response.
    pub fn direct(status: u16, body: &'a [u8], content_type: &'a str) -> Self {
        Self {
            status,
            body: ReplyBody::Bytes(body, content_type),
            location: None,
            grpc_status: None,
            overloaded: false,
            rate_limit: None,
        }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &'a [u8]) -> Self {
        Self {
            status,
            body: ReplyBody::Bytes(b"", ""),
            location: Some(location),
            grpc_status: None,
            overloaded: false,
            rate_limit: None,
        }
    }

    /// Bytes of body a client receives for this reply (the access log's `bytes_sent`).
    pub fn body_len(&self, head_only: bool, grpc_client: bool) -> u64 {
        if head_only || (grpc_client && self.grpc_status.is_some()) {
            0
        } else {
            self.body.len() as u64
        }
    }

    /// Writes the reply as a complete HTTP/1.1 message into `out` (cleared first).
    pub fn write_h1(&self, out: &mut Vec<u8>, request_id: &[u8], close: bool, head_only: bool) {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(super::h1::reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(location) = self.location {
            push_header(out, b"location", location);
        }
        if !self.body.is_empty() {
            let content_type = match self.body {
                ReplyBody::Reason(_) => self.body.content_type(),
                ReplyBody::Bytes(_, content_type) => content_type,
            };
            push_header(out, b"content-type", content_type.as_bytes());
        }
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n");
        if !request_id.is_empty() {
            push_header(out, b"x-request-id", request_id);
        }
        if self.overloaded {
            out.extend_from_slice(b"x-envoy-overloaded: true\r\n");
        }
        if let Some(limited) = self.rate_limit {
            out.extend_from_slice(b"x-ratelimit-limit: ");
            limit_value(limited, out);
            out.extend_from_slice(b"\r\nx-ratelimit-remaining: 0\r\n");
            out.extend_from_slice(b"x-ratelimit-reset: ");
            push_decimal(out, u64::from(limited.reset_seconds));
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            self.body.write(out);
        }
    }

    /// The reply as an HTTP/2 response head and body (`None`: the head ends the stream). A gRPC
    /// client gets errors as a trailers-only response.
    pub fn h2_response(
        &self,
        request_id: &[u8],
        grpc_client: bool,
    ) -> (Response<()>, Option<Bytes>) {
        let mut response = Response::new(());
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_bytes(request_id) {
            headers.insert("x-request-id", id);
        }
        if self.overloaded {
            headers.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        if let Some(limited) = self.rate_limit {
            let mut value = Vec::with_capacity(48);
            limit_value(limited, &mut value);
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert("x-ratelimit-limit", value);
            }
            headers.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
            headers.insert(
                "x-ratelimit-reset",
                HeaderValue::from(limited.reset_seconds),
            );
        }
        if let (true, Some(code)) = (grpc_client, self.grpc_status) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(code));
            let reason = match self.body {
                ReplyBody::Reason(reason) => reason,
                ReplyBody::Bytes(..) => "",
            };
            let mut message = String::new();
            grpc::encode_message(reason, &mut message);
            if let Ok(message) = HeaderValue::from_str(&message) {
                headers.insert("grpc-message", message);
            }
            return (response, None);
        }
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_bytes(l).ok()) {
            headers.insert(LOCATION, location);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        if self.body.is_empty() {
            return (response, None);
        }
        let content_type = match self.body {
            ReplyBody::Reason(_) => self.body.content_type(),
            ReplyBody::Bytes(_, content_type) => content_type,
        };
        if let Ok(value) = HeaderValue::from_str(content_type) {
            headers.insert(CONTENT_TYPE, value);
        }
        let mut body = Vec::with_capacity(self.body.len());
        self.body.write(&mut body);
        (response, Some(Bytes::from(body)))
    }
}

/// The `x-ratelimit-limit` value (draft-ietf-httpapi-ratelimit-headers-03): the quota, then
/// the policy — that quota per 1-second window, with the bucket size as the `burst` extension
/// parameter: `100, 100;w=1;burst=120`.
fn limit_value(limited: Limited, out: &mut Vec<u8>) {
    let rps = u64::from(limited.requests_per_second);
    push_decimal(out, rps);
    out.extend_from_slice(b", ");
    push_decimal(out, rps);
    out.extend_from_slice(b";w=1;burst=");
    push_decimal(out, u64::from(limited.burst));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_a_complete_http1_message() {
        let mut out = Vec::new();
        LocalReply::failure(Failure::Overflow).write_h1(&mut out, b"id-1", true, false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("content-type: text/plain\r\n"));
        assert!(text.contains("x-request-id: id-1\r\n"));
        assert!(text.contains("x-envoy-overloaded: true\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(
            text.ends_with("\r\n\r\nupstream connection limit reached\n"),
            "{text}"
        );
        let len = "upstream connection limit reached\n".len();
        assert!(text.contains(&format!("content-length: {len}\r\n")));
    }

    #[test]
    fn head_requests_get_the_head_only() {
        let mut out = Vec::new();
        LocalReply::direct(200, b"hello", "text/html").write_h1(&mut out, b"", false, true);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("content-length: 5\r\n"));
        assert!(text.contains("content-type: text/html\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn grpc_clients_get_errors_trailers_only() {
        let (response, body) = LocalReply::failure(Failure::Timeout).h2_response(b"r", true);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "4");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(
            response.headers()["grpc-message"],
            "upstream request timeout"
        );
        assert!(body.is_none());
        // A direct response goes out as configured, even to a gRPC client.
        let (response, body) = LocalReply::direct(200, b"ok", "text/plain").h2_response(b"r", true);
        assert!(response.headers().get("grpc-status").is_none());
        assert_eq!(body.as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn rate_limited_replies_carry_the_ratelimit_headers() {
        let limited = Limited {
            requests_per_second: 100,
            burst: 120,
            reset_seconds: 1,
        };
        let mut out = Vec::new();
        LocalReply::failure(Failure::RateLimited(limited)).write_h1(&mut out, b"", false, false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        assert!(
            text.contains("\r\nx-ratelimit-limit: 100, 100;w=1;burst=120\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nx-ratelimit-remaining: 0\r\n"), "{text}");
        assert!(text.contains("\r\nx-ratelimit-reset: 1\r\n"), "{text}");
        let (response, _) =
            LocalReply::failure(Failure::RateLimited(limited)).h2_response(b"r", true);
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(
            response.headers()["x-ratelimit-limit"],
            "100, 100;w=1;burst=120"
        );
    }

    #[test]
    fn redirects_carry_their_location() {
        let (response, body) = LocalReply::redirect(301, b"https://x/").h2_response(b"r", false);
        assert_eq!(response.status(), 301);
        assert_eq!(response.headers()["location"], "https://x/");
        assert_eq!(response.headers()["content-length"], "0");
        assert!(body.is_none());
    }
}
