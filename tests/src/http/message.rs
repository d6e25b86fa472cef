//! HTTP/1.1 messages on the wire: a buffered stream ([`Wire`]), heads, bodies (length, chunked
//! with trailers, until close), and the [`Request`] and [`Response`] types both ends of a test use.
//!
//! The parser is deliberately plain and lenient only where the tests need to observe what the
//! proxy sent: it records heads byte for byte and fails loudly on anything it cannot frame.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest head either end of a test accepts.
const MAX_HEAD: usize = 1 << 20;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Header fields as `(name, value)`, names as sent, values without surrounding whitespace.
pub type Fields = Vec<(String, String)>;

/// The first value of field `name` (case-insensitive).
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of field `name` (case-insensitive), in order.
pub fn fields_named<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether the comma-separated `list` holds `token` (case-insensitive).
pub fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked, with optional trailers.
    Chunked,
    /// Until the peer closes.
    UntilClose,
}

/// A TCP stream with a read buffer. Bytes read are optionally added to a shared counter, so an
/// upstream can prove it received nothing at all.
#[derive(Debug)]
pub struct Wire {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not yet consumed.
    pub buf: Vec<u8>,
    scratch: Vec<u8>,
    counter: Option<Arc<AtomicUsize>>,
}

impl Wire {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            counter: None,
        }
    }

    /// Wraps `stream`, adding every byte read to `counter`.
    pub fn counting(stream: TcpStream, counter: Arc<AtomicUsize>) -> Self {
        Self {
            counter: Some(counter),
            ..Self::new(stream)
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        let n = self.stream.read(&mut self.scratch)?;
        self.buf.extend_from_slice(&self.scratch[..n]);
        if let Some(counter) = &self.counter {
            counter.fetch_add(n, Ordering::AcqRel);
        }
        Ok(n)
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Removes and returns the first `n` buffered bytes.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Reads a head up to and including CRLF CRLF. `Ok(None)` when the stream ends before its
    /// first byte; an error when it ends in the middle.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.take(end + 4)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "stream ended inside a head: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ))
                };
            }
        }
    }

    /// Reads a line ending in CRLF; returns it without the CRLF.
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let mut line = self.take(end + 2);
                line.truncate(end);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a line",
                ));
            }
        }
    }

    /// Reads a body framed as `framing`, handing its payload to `sink` as it arrives; returns the
    /// trailers of a chunked body.
    pub fn read_body_with(
        &mut self,
        framing: Framing,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Fields> {
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) => {
                self.read_exact_with(n, sink)?;
                Ok(Vec::new())
            }
            Framing::UntilClose => loop {
                if !self.buf.is_empty() {
                    sink(&self.buf);
                    self.buf.clear();
                }
                if self.fill()? == 0 {
                    return Ok(Vec::new());
                }
            },
            Framing::Chunked => loop {
                let line = self.read_line()?;
                let line = String::from_utf8_lossy(&line).into_owned();
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size_text, 16)
                    .map_err(|_| invalid(&format!("bad chunk size line {line:?}")))?;
                if size == 0 {
                    let mut trailers = Vec::new();
                    loop {
                        let line = self.read_line()?;
                        if line.is_empty() {
                            return Ok(trailers);
                        }
                        trailers.push(parse_field(&line)?);
                    }
                }
                self.read_exact_with(size, sink)?;
                if !self.read_line()?.is_empty() {
                    return Err(invalid("chunk data longer than its size"));
                }
            },
        }
    }

    /// Reads a body into memory; returns it and its trailers.
    pub fn read_body(&mut self, framing: Framing) -> io::Result<(Vec<u8>, Fields)> {
        let mut body = Vec::new();
        let trailers = self.read_body_with(framing, &mut |data| body.extend_from_slice(data))?;
        Ok((body, trailers))
    }

    fn read_exact_with(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        loop {
            let take = n.min(self.buf.len() as u64) as usize;
            if take > 0 {
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                n -= take as u64;
            }
            if n == 0 {
                return Ok(());
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended {n} bytes before the end of a body"),
                ));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn parse_field(line: &[u8]) -> io::Result<(String, String)> {
    let line = String::from_utf8_lossy(line);
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| invalid(&format!("header line without a colon: {line:?}")))?;
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// A parsed head: its first line and its fields.
#[derive(Debug, Clone)]
pub struct Head {
    /// Request line or status line.
    pub first_line: String,
    /// Header fields.
    pub fields: Fields,
}

/// Parses a head (CRLF CRLF included).
pub fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let raw = raw.strip_suffix(b"\r\n\r\n").unwrap_or(raw);
    let mut lines = raw
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let fields = lines.map(parse_field).collect::<io::Result<_>>()?;
    Ok(Head { first_line, fields })
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Request target.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields, in order.
    pub headers: Fields,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Fields,
    /// The head exactly as received.
    pub raw_head: Vec<u8>,
    /// Which connection of the upstream it arrived on (0 = the first accepted).
    pub connection: usize,
    /// Its position on that connection (0 = the first request).
    pub sequence: usize,
}

impl Request {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        fields_named(&self.headers, name)
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The head as text.
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.raw_head).into_owned()
    }
}

/// How the body of a request with these fields is framed.
pub fn request_framing(fields: &[(String, String)]) -> io::Result<Framing> {
    if let Some(te) = field(fields, "transfer-encoding") {
        return if te
            .rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        {
            Ok(Framing::Chunked)
        } else {
            Err(invalid("request with a transfer coding other than chunked"))
        };
    }
    match field(fields, "content-length") {
        Some(n) => Ok(Framing::Length(
            n.parse().map_err(|_| invalid("bad content-length"))?,
        )),
        None => Ok(Framing::None),
    }
}

/// Reads one request (head and body). `Ok(None)` when the stream ends between requests.
pub fn read_request(
    wire: &mut Wire,
    connection: usize,
    sequence: usize,
) -> io::Result<Option<Request>> {
    let Some(raw_head) = wire.read_head()? else {
        return Ok(None);
    };
    let head = parse_head(&raw_head)?;
    let mut parts = head.first_line.splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default().to_owned();
    let framing = request_framing(&head.fields)?;
    let (body, trailers) = wire.read_body(framing)?;
    Ok(Some(Request {
        method,
        target,
        version,
        headers: head.fields,
        body,
        trailers,
        raw_head,
        connection,
        sequence,
    }))
}

/// A response: built by an upstream to send, or parsed by a client.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields, in order (framing fields included when parsed; added when sent).
    pub headers: Fields,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// Trailer fields (chunked bodies only).
    pub trailers: Fields,
    /// Whether the body is (or is to be) sent chunked.
    pub chunked: bool,
    /// The head exactly as received (empty for responses built to send).
    pub raw_head: Vec<u8>,
}

impl Response {
    /// A response with `status`, its standard reason, no fields and no body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            reason: reason(status).to_owned(),
            version: "HTTP/1.1".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            chunked: false,
            raw_head: Vec::new(),
        }
    }

    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::new(200).with_body(body)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the body chunked.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// Adds a trailer field (implies chunked).
    pub fn with_trailer(mut self, name: &str, value: &str) -> Self {
        self.chunked = true;
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        fields_named(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The head as text.
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.raw_head).into_owned()
    }

    /// The bytes to send; `head_only` leaves the body out (the answer to HEAD) but keeps the
    /// framing fields. A `content-length` is added unless the fields have one, the body is
    /// chunked, or the status has no body.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.version, self.status, self.reason).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        let bodiless =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        if self.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if !bodiless && self.header("content-length").is_none() {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if head_only || bodiless {
            return out;
        }
        if self.chunked {
            if !self.body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", self.body.len()).as_bytes());
                out.extend_from_slice(&self.body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (name, value) in &self.trailers {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Reads one response (an interim 1xx one included) to a request with `method`.
pub fn read_response(wire: &mut Wire, method: &str) -> io::Result<Response> {
    let raw_head = wire.read_head()?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before a response",
        )
    })?;
    let head = parse_head(&raw_head)?;
    let mut parts = head.first_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_owned();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(&format!("bad status line {:?}", head.first_line)))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let chunked =
        field(&head.fields, "transfer-encoding").is_some_and(|te| has_token(te, "chunked"));
    let framing = if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&status))
    {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = field(&head.fields, "content-length") {
        Framing::Length(n.parse().map_err(|_| invalid("bad content-length"))?)
    } else {
        Framing::UntilClose
    };
    let (body, trailers) = wire.read_body(framing)?;
    Ok(Response {
        status,
        reason,
        version,
        headers: head.fields,
        body,
        trailers,
        chunked,
        raw_head,
    })
}

/// The standard reason phrase of the statuses tests use.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// A request as raw bytes: the request line, `host` (unless empty), `fields`, a
/// `content-length` when `body` is not empty and the fields frame nothing, then the body.
pub fn request_bytes(
    method: &str,
    target: &str,
    host: &str,
    fields: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !host.is_empty() {
        out.extend_from_slice(format!("host: {host}\r\n").as_bytes());
    }
    let framed = fields.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    for (name, value) in fields {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() && !framed {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn responses_round_trip_with_trailers() {
        let (mut client, server) = pair();
        let sent = Response::ok("hello")
            .with_header("x-a", "1")
            .with_trailer("x-checksum", "abc");
        client.write_all(&sent.to_bytes(false)).expect("write");
        client
            .write_all(&Response::new(204).to_bytes(false))
            .expect("write");
        let mut wire = Wire::new(server);
        let got = read_response(&mut wire, "GET").expect("response");
        assert_eq!(got.status, 200);
        assert!(got.chunked);
        assert_eq!(got.body, b"hello");
        assert_eq!(got.header("X-A"), Some("1"));
        assert_eq!(got.trailers, vec![("x-checksum".into(), "abc".into())]);
        let empty = read_response(&mut wire, "GET").expect("204");
        assert_eq!(empty.status, 204);
        assert!(empty.body.is_empty());
    }

    #[test]
    fn requests_are_parsed_with_their_bodies() {
        let (mut client, server) = pair();
        let mut bytes = request_bytes("POST", "/a?b", "h", &[("x", "y")], b"body");
        bytes.extend_from_slice(
            b"PUT /c HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nt: v\r\n\r\n",
        );
        client.write_all(&bytes).expect("write");
        drop(client);
        let counter = Arc::new(AtomicUsize::new(0));
        let mut wire = Wire::counting(server, Arc::clone(&counter));
        let first = read_request(&mut wire, 0, 0).expect("read").expect("first");
        assert_eq!(first.method, "POST");
        assert_eq!(first.path(), "/a");
        assert_eq!(first.body, b"body");
        let second = read_request(&mut wire, 0, 1)
            .expect("read")
            .expect("second");
        assert_eq!(second.body, b"ab");
        assert_eq!(second.trailers, vec![("t".into(), "v".into())]);
        assert!(read_request(&mut wire, 0, 2).expect("end").is_none());
        assert_eq!(counter.load(Ordering::Acquire), bytes.len());
    }
}
