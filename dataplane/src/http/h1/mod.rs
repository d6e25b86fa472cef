//! HTTP/1.1 message heads: strict parsing and framing decisions.
//!
//! `httparse` does the tokenizing; this module adds the framing policy that keeps a proxy from
//! being the weak link in a request-smuggling chain (RFC 9112 §6, and the cases in
//! `reliability-plan.md` §3.2 where HAProxy and nginx differ). Anything ambiguous is rejected
//! before a single byte goes upstream:
//!
//! - bare CR, bare LF, NUL and other control characters anywhere in the head; obs-fold;
//! - `Content-Length` together with `Transfer-Encoding`; duplicate or malformed `Content-Length`;
//! - `Transfer-Encoding` that is not exactly `chunked` (non-final or repeated `chunked`: 400;
//!   other codings: 501); any `Transfer-Encoding` on HTTP/1.0;
//! - missing or duplicate `Host` on HTTP/1.1;
//! - request lines over the limit (414), heads over the size or count limit (431).
//!
//! Parsed heads borrow the connection's buffer; the proxy uses them synchronously to build the
//! outgoing head and lets them go before its next `await`.

pub mod chunked;
pub mod client;
pub mod pool;
pub mod server;

use crate::snapshot::HeadLimits;

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

/// Why a request was refused, as the status to answer with. The connection is always closed
/// after a rejection: once framing is in doubt, nothing more on it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// 400, 413, 414, 417, 431 or 501.
    pub status: u16,
    /// A short reason for the local reply body and the access log.
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the peer closes (responses only).
    UntilClose,
}

/// A validated request head, borrowing the connection's read buffer.
#[derive(Debug)]
pub struct Request<'b> {
    /// Request method, as sent.
    pub method: &'b str,
    /// Request target, as sent (origin, absolute, authority or asterisk form).
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields, in order.
    pub headers: &'b [httparse::Header<'b>],
    /// Bytes of the head, final CRLF included.
    pub head_len: usize,
    /// The request's authority: the `Host` header, or the authority of an absolute-form target.
    pub authority: &'b str,
    /// Path, without the query.
    pub path: &'b str,
    /// Query string, without the `?`.
    pub query: Option<&'b str>,
    /// How the request body is delimited.
    pub body: BodyFraming,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// An upgrade request (`Connection: upgrade` with an `Upgrade` header), or CONNECT.
    pub upgrade: bool,
    /// Header names listed in `Connection`, which are hop-by-hop and must not be forwarded.
    pub connection_tokens: &'b str,
}

impl Request<'_> {
    /// True for `CONNECT`.
    pub fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }

    /// True for `HEAD`.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The first value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(self.headers, name)
    }
}

/// The first value of header `name` (given in lower case) in `headers`.
pub fn find_header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// How far [`prescan`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The head is complete and clean.
    Complete(Head),
    /// Clean so far, up to here; the head is not complete yet.
    Partial(usize),
}

/// A request or response head that [`prescan`] found complete and free of framing violations
/// (bare CR/LF, NUL and control characters, obs-fold). Only `prescan` makes one, so the parsers
/// that take it never scan the bytes a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    len: usize,
}

impl Head {
    /// Bytes of the head, final CRLF CRLF included.
    pub fn len(self) -> usize {
        self.len
    }

    /// Always false: a head has at least its CRLF CRLF.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// Scans a growing head for framing violations that must be caught before the head is complete
/// (bare LF, for instance, would otherwise leave the parser waiting for a CRLF CRLF that never
/// comes), and finds where it ends. `scanned` is how far earlier calls got. Bytes after the head
/// (a body arriving in the same read) are not looked at.
///
/// Ordinary bytes are skipped eight at a time; only control characters are looked at one by one.
pub fn prescan(buf: &[u8], scanned: usize) -> Result<Scan, Reject> {
    let mut i = scanned;
    while i < buf.len() {
        match next_control(&buf[i..]) {
            Some(offset) => i += offset,
            None => return Ok(Scan::Partial(buf.len())),
        }
        match buf[i] {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(reject(400, "bare LF in head"));
                }
                if i >= 3 && &buf[i - 3..i] == b"\r\n\r" {
                    return Ok(Scan::Complete(Head { len: i + 1 }));
                }
                match buf.get(i + 1) {
                    // A line starting with whitespace continues the previous one: obs-fold.
                    Some(b' ' | b'\t') => return Err(reject(400, "obsolete line folding")),
                    // Judge this line break again once the next byte is here.
                    None => return Ok(Scan::Partial(i)),
                    Some(_) => {}
                }
            }
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => {}
                Some(_) => return Err(reject(400, "bare CR in head")),
                None => return Ok(Scan::Partial(i)),
            },
            b'\t' => {}
            0 => return Err(reject(400, "NUL in head")),
            _ => return Err(reject(400, "control character in head")),
        }
        i += 1;
    }
    Ok(Scan::Partial(i))
}

/// The offset of the first byte below 0x20 or equal to 0x7f, checking eight bytes per step.
#[inline]
fn next_control(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte below 0x20 (the classic "has less than" test; it may flag false positives,
        // which the byte loop below sorts out, never false negatives), or a 0x7f byte.
        let below = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
        let del = x ^ (0x7f * ONES);
        let is_del = del.wrapping_sub(ONES) & !del & HIGH;
        if below | is_del != 0
            && let Some(p) = chunk.iter().position(|&b| b < 0x20 || b == 0x7f)
        {
            return Some(offset + p);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b < 0x20 || b == 0x7f)
        .map(|p| offset + p)
}

/// Where the head ends (just past CRLF CRLF) in `buf`, if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Checks the limits on an incomplete head: an over-long request line is a 414 as soon as it is
/// seen, an over-large head a 431.
pub fn check_incomplete(buf: &[u8], limits: &HeadLimits) -> Result<(), Reject> {
    let line_end = memchr::memchr(b'\n', buf);
    let line_len = line_end.map_or(buf.len(), |i| i + 1);
    if line_len > limits.max_request_line {
        return Err(reject(414, "request line too long"));
    }
    if buf.len() >= limits.max_head {
        return Err(reject(431, "request head too large"));
    }
    Ok(())
}

/// Parses and validates the request head `head` that [`prescan`] found at the start of `buf`.
pub fn parse_request<'b>(
    buf: &'b [u8],
    head: Head,
    storage: &'b mut [httparse::Header<'b>],
    limits: &HeadLimits,
) -> Result<Request<'b>, Reject> {
    let head_len = head.len;
    let head = &buf[..head_len];
    let line_len = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    if line_len > limits.max_request_line {
        return Err(reject(414, "request line too long"));
    }
    if head_len > limits.max_head {
        return Err(reject(431, "request head too large"));
    }
    let max_headers = limits.max_headers.min(storage.len());
    let mut parsed = httparse::Request::new(&mut storage[..max_headers]);
    let status = parsed.parse(head).map_err(|e| match e {
        httparse::Error::TooManyHeaders => reject(431, "too many header fields"),
        httparse::Error::Version => reject(505, "HTTP version not supported"),
        _ => reject(400, "malformed request head"),
    })?;
    if !matches!(status, httparse::Status::Complete(n) if n == head_len) {
        return Err(reject(400, "malformed request head"));
    }
    let method = parsed.method.unwrap_or_default();
    let target = parsed.path.unwrap_or_default();
    let minor_version = parsed.version.unwrap_or(1);
    let headers: &'b [httparse::Header<'b>] = parsed.headers;

    let mut host: Option<&'b [u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = TransferEncoding::default();
    let mut connection_tokens: &'b str = "";
    let mut has_upgrade_header = false;
    let mut expect_continue = false;
    for header in headers {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(reject(400, "duplicate Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(reject(400, "duplicate Content-Length"));
            }
            content_length =
                Some(parse_content_length(value).ok_or(reject(400, "malformed Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding.add(value);
        } else if name.eq_ignore_ascii_case("connection") {
            if !connection_tokens.is_empty() {
                return Err(reject(400, "duplicate Connection"));
            }
            connection_tokens =
                std::str::from_utf8(value).map_err(|_| reject(400, "malformed Connection"))?;
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade_header = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(reject(417, "unsupported Expect"));
            }
        }
    }

    let body = match (transfer_encoding.seen, content_length) {
        (true, Some(_)) => return Err(reject(400, "both Content-Length and Transfer-Encoding")),
        (true, None) if minor_version == 0 => {
            return Err(reject(400, "Transfer-Encoding in HTTP/1.0"));
        }
        (true, None) => transfer_encoding.framing()?,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };

    let target_form = parse_target(method, target)?;
    let authority: &'b str = match (target_form.authority, host) {
        // An absolute-form target overrides Host (RFC 9112 §3.2.2), but Host must still be sent.
        (Some(authority), Some(_)) => authority,
        (Some(authority), None) if minor_version == 0 => authority,
        (_, None) if minor_version == 1 => return Err(reject(400, "missing Host")),
        (None, None) => "",
        (None, Some(value)) => {
            std::str::from_utf8(value).map_err(|_| reject(400, "malformed Host"))?
        }
        (Some(_), None) => return Err(reject(400, "missing Host")),
    };
    if !authority.is_empty() && !is_valid_authority(authority) {
        return Err(reject(400, "malformed Host"));
    }

    let close = has_token(connection_tokens, "close");
    let keep_alive = match minor_version {
        0 => has_token(connection_tokens, "keep-alive") && !close,
        _ => !close,
    };
    let upgrade =
        method == "CONNECT" || (has_upgrade_header && has_token(connection_tokens, "upgrade"));

    Ok(Request {
        method,
        target,
        minor_version,
        headers,
        head_len,
        authority,
        path: target_form.path,
        query: target_form.query,
        body,
        keep_alive,
        expect_continue,
        upgrade,
        connection_tokens,
    })
}

/// `Content-Length` must be plain digits: no sign, no spaces, no list.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The transfer codings of a message, across all its `Transfer-Encoding` fields.
#[derive(Debug, Default)]
struct TransferEncoding {
    seen: bool,
    codings: u32,
    chunked_count: u32,
    last_is_chunked: bool,
    other: bool,
    malformed: bool,
}

impl TransferEncoding {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                self.malformed = true;
                continue;
            }
            self.codings += 1;
            let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if is_chunked {
                self.chunked_count += 1;
            } else if !coding
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            {
                self.malformed = true;
            } else {
                self.other = true;
            }
            self.last_is_chunked = is_chunked;
        }
    }

    fn framing(&self) -> Result<BodyFraming, Reject> {
        if self.malformed || self.codings == 0 {
            return Err(reject(400, "malformed Transfer-Encoding"));
        }
        if !self.last_is_chunked || self.chunked_count > 1 {
            return Err(reject(400, "chunked is not the final transfer coding"));
        }
        if self.other {
            return Err(reject(501, "unsupported transfer coding"));
        }
        Ok(BodyFraming::Chunked)
    }
}

struct TargetForm<'b> {
    authority: Option<&'b str>,
    path: &'b str,
    query: Option<&'b str>,
}

/// Splits a request target into authority (absolute and authority forms), path and query.
fn parse_target<'b>(method: &str, target: &'b str) -> Result<TargetForm<'b>, Reject> {
    if target.contains('#') {
        return Err(reject(400, "fragment in request target"));
    }
    if method == "CONNECT" {
        // authority-form: host:port, and nothing else.
        if target.starts_with('/') || !target.contains(':') || !is_valid_authority(target) {
            return Err(reject(400, "CONNECT needs host:port"));
        }
        return Ok(TargetForm {
            authority: Some(target),
            path: "/",
            query: None,
        });
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(TargetForm {
                authority: None,
                path: "*",
                query: None,
            })
        } else {
            Err(reject(400, "asterisk target outside OPTIONS"))
        };
    }
    let (authority, path_and_query) = if target.starts_with('/') {
        (None, target)
    } else {
        let rest = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))
            .ok_or(reject(400, "malformed request target"))?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(reject(400, "malformed request target"));
        }
        (Some(authority), if path.is_empty() { "/" } else { path })
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    // "http://host?q" has an empty path: treat it as "/".
    let path = if path.is_empty() { "/" } else { path };
    Ok(TargetForm {
        authority,
        path,
        query,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `host[:port]` where host is a reg-name, an IPv4 address or a bracketed IPv6 literal.
fn is_valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", Some(port)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = host.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok && (!host.is_empty() || authority.starts_with('['))
}

/// Whether the comma-separated `list` contains `token`, ignoring case and whitespace.
pub fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A validated response head, borrowing the upstream connection's read buffer.
#[derive(Debug)]
pub struct Response<'b> {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields, in order.
    pub headers: &'b [httparse::Header<'b>],
    /// Bytes of the head.
    pub head_len: usize,
    /// How the body is delimited, given the request it answers.
    pub body: BodyFraming,
    /// Whether the upstream will keep the connection open afterwards.
    pub keep_alive: bool,
    /// Header names listed in `Connection`.
    pub connection_tokens: &'b str,
}

/// Why an upstream response head is unusable: the answer is a 502 and the connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedResponse(pub &'static str);

/// Upper bound on a response head from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header fields accepted in a response.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// Parses the complete response head `buf[..head_len]` answering a request with `request_method`.
pub fn parse_response<'b>(
    buf: &'b [u8],
    head_len: usize,
    storage: &'b mut [httparse::Header<'b>],
    request_is_head: bool,
    request_is_connect: bool,
) -> Result<Response<'b>, MalformedResponse> {
    let head = &buf[..head_len];
    if prescan(head, 0).map_err(|r| MalformedResponse(r.reason))?
        != Scan::Complete(Head { len: head_len })
    {
        return Err(MalformedResponse("malformed response head"));
    }
    let mut parsed = httparse::Response::new(storage);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(MalformedResponse("too many response headers"));
        }
        _ => return Err(MalformedResponse("malformed response head")),
    }
    let status = parsed.code.unwrap_or_default();
    if !(100..=599).contains(&status) {
        return Err(MalformedResponse("invalid status code"));
    }
    let minor_version = parsed.version.unwrap_or(1);
    let reason = parsed.reason.unwrap_or_default();
    let headers: &'b [httparse::Header<'b>] = parsed.headers;

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = TransferEncoding::default();
    let mut connection_tokens: &'b str = "";
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(header.value)
                .ok_or(MalformedResponse("malformed Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(MalformedResponse("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding.add(header.value);
        } else if header.name.eq_ignore_ascii_case("connection") {
            connection_tokens = std::str::from_utf8(header.value)
                .map_err(|_| MalformedResponse("malformed Connection"))?;
        }
    }

    let no_body = request_is_head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (request_is_connect && (200..300).contains(&status));
    let body = if no_body {
        BodyFraming::None
    } else {
        match (transfer_encoding.seen, content_length) {
            (true, Some(_)) => {
                return Err(MalformedResponse(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            (true, None) => transfer_encoding
                .framing()
                .map_err(|r| MalformedResponse(r.reason))?,
            (false, Some(0)) => BodyFraming::None,
            (false, Some(n)) => BodyFraming::Length(n),
            (false, None) => BodyFraming::UntilClose,
        }
    };
    let close = has_token(connection_tokens, "close");
    let keep_alive = match minor_version {
        0 => has_token(connection_tokens, "keep-alive") && !close,
        _ => !close,
    } && body != BodyFraming::UntilClose;
    Ok(Response {
        status,
        reason,
        minor_version,
        headers,
        head_len,
        body,
        keep_alive,
        connection_tokens,
    })
}

/// Headers that describe one connection and are never forwarded (RFC 9110 §7.6.1), beyond those
/// named in `Connection`. Framing headers (`Content-Length`, `Transfer-Encoding`) are not listed:
/// the proxy drops and re-emits them itself, in canonical form.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ];
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether header `name` must be dropped when forwarding: hop-by-hop, or listed in `Connection`.
pub fn is_connection_specific(name: &str, connection_tokens: &str) -> bool {
    is_hop_by_hop(name)
        || (!connection_tokens.is_empty()
            && connection_tokens
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests;
