//! The HTTP/1.1 framing shared by the generator (responses) and the upstream (requests).
//!
//! Heads are parsed with `httparse`; bodies are framed by `Content-Length` or chunked transfer
//! coding (nginx and HAProxy may re-chunk). Both sides of the harness talk to proxies that are
//! under test, so every length and every chunk size here is treated as untrusted: bounded,
//! checked for overflow, and turned into an error rather than a panic.

use thiserror::Error;

/// Headers parsed per message; more is an error.
pub const MAX_HEADERS: usize = 64;

/// A framing error, always the peer's fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FramingError {
    /// httparse rejected the head.
    #[error("malformed head: {0}")]
    Head(String),
    /// More than [`MAX_HEADERS`] headers.
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    /// A Content-Length that is not a number, or two that disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A chunk-size line that is not hex, or overflows.
    #[error("invalid chunk size")]
    ChunkSize,
    /// Missing CRLF after chunk data or in a chunk header.
    #[error("malformed chunk framing")]
    ChunkFraming,
    /// A response that can only end with the connection (no length, not chunked).
    #[error("response has no length and is not chunked (keep-alive impossible)")]
    UntilClose,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Reads a body from successive slices of input.
#[derive(Debug, Clone)]
pub struct BodyReader {
    state: BodyState,
}

#[derive(Debug, Clone)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex size; `ext` once a `;` extension started.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    TrailerLine,
    FinalLf,
}

impl Chunk {
    const START: Chunk = Chunk::Size {
        value: 0,
        digits: 0,
        ext: false,
    };
}

impl BodyReader {
    /// A reader for a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunk::START),
        };
        Self { state }
    }

    /// True once the whole body has been consumed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Consumes body bytes from the front of `input` and returns how many. Stops at the end of
    /// the body; the rest of `input` belongs to the next message.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        match &mut self.state {
            BodyState::Done => Ok(0),
            BodyState::Length(remaining) => {
                let take = (*remaining).min(input.len() as u64);
                *remaining -= take;
                if *remaining == 0 {
                    self.state = BodyState::Done;
                }
                Ok(take as usize)
            }
            BodyState::Chunked(chunk) => {
                let (used, done) = feed_chunked(chunk, input)?;
                if done {
                    self.state = BodyState::Done;
                }
                Ok(used)
            }
        }
    }
}

/// Runs the chunked decoder over `input`; returns bytes used and whether the body ended.
fn feed_chunked(state: &mut Chunk, input: &[u8]) -> Result<(usize, bool), FramingError> {
    let mut i = 0;
    while i < input.len() {
        if let Chunk::Data(remaining) = *state {
            let take = remaining.min((input.len() - i) as u64);
            i += take as usize;
            *state = if remaining == take {
                Chunk::DataCr
            } else {
                Chunk::Data(remaining - take)
            };
            continue;
        }
        let byte = input[i];
        i += 1;
        *state = match (*state, byte) {
            (Chunk::Size { value, digits, ext }, b) if !ext && b.is_ascii_hexdigit() => {
                let digit = u64::from(hex_value(b));
                if digits >= 15 {
                    return Err(FramingError::ChunkSize);
                }
                Chunk::Size {
                    value: value * 16 + digit,
                    digits: digits + 1,
                    ext,
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Err(FramingError::ChunkSize),
            (Chunk::Size { value, digits, .. }, b';') => Chunk::Size {
                value,
                digits,
                ext: true,
            },
            (Chunk::Size { value, .. }, b'\r') => Chunk::SizeLf { value },
            (Chunk::Size { ext: true, .. }, _) => *state,
            (Chunk::Size { value, digits, .. }, b' ' | b'\t') => Chunk::Size {
                value,
                digits,
                ext: true,
            },
            (Chunk::Size { .. }, _) => return Err(FramingError::ChunkSize),
            (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { value }, b'\n') => Chunk::Data(value),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::START,
            (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
            (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
            (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
            (Chunk::FinalLf, b'\n') => {
                *state = Chunk::START;
                return Ok((i, true));
            }
            _ => return Err(FramingError::ChunkFraming),
        };
    }
    Ok((i, false))
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head, CRLFCRLF included.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// Body framing.
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Parses a response head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
        Err(e) => return Err(FramingError::Head(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let info = header_info(response.headers)?;
    let close = info.close || response.version == Some(0) && !info.keep_alive;
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if info.chunked {
        Framing::Chunked
    } else if let Some(n) = info.content_length {
        Framing::Length(n)
    } else {
        return Err(FramingError::UntilClose);
    };
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        close,
    }))
}

/// A parsed request head (what the upstream needs of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head.
    pub len: usize,
    /// Body framing.
    pub framing: Framing,
    /// The client asked to close after this request (or spoke HTTP/1.0 without keep-alive).
    pub close: bool,
    /// Response body size asked for with a `/payload/N` path, if any.
    pub payload: Option<usize>,
}

/// Parses a request head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
        Err(e) => return Err(FramingError::Head(e.to_string())),
    };
    let info = header_info(request.headers)?;
    let close = info.close || request.version == Some(0) && !info.keep_alive;
    let framing = if info.chunked {
        Framing::Chunked
    } else {
        match info.content_length {
            Some(n) => Framing::Length(n),
            None => Framing::Empty,
        }
    };
    Ok(Some(RequestHead {
        len,
        framing,
        close,
        payload: request.path.and_then(payload_from_path),
    }))
}

/// The response size a path asks for: `/payload/1024` (a query string is ignored).
pub fn payload_from_path(path: &str) -> Option<usize> {
    let rest = path.strip_prefix("/payload/")?;
    let digits = rest.split(['?', '/']).next()?;
    digits.parse().ok()
}

struct HeaderInfo {
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

fn header_info(headers: &[httparse::Header<'_>]) -> Result<HeaderInfo, FramingError> {
    let mut info = HeaderInfo {
        content_length: None,
        chunked: false,
        close: false,
        keep_alive: false,
    };
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(FramingError::ContentLength)?;
            if info.content_length.is_some_and(|m| m != n) {
                return Err(FramingError::ContentLength);
            }
            info.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            info.chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                info.close |= token.eq_ignore_ascii_case(b"close");
                info.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    Ok(info)
}

/// The upstream's response head for a body of `size` bytes.
pub fn response_head(size: usize) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(usize, bool), FramingError> {
        let mut reader = BodyReader::new(framing);
        let mut used = 0;
        while used < input.len() && !reader.is_done() {
            let end = (used + step).min(input.len());
            used += reader.feed(&input[used..end])?;
        }
        Ok((used, reader.is_done()))
    }

    #[test]
    fn content_length_body_stops_at_its_end() {
        let input = b"hello worldNEXT";
        assert_eq!(feed_all(Framing::Length(11), input, 100), Ok((11, true)));
        assert_eq!(feed_all(Framing::Length(11), input, 3), Ok((11, true)));
        assert_eq!(feed_all(Framing::Length(20), input, 4), Ok((15, false)));
        assert!(BodyReader::new(Framing::Empty).is_done());
    }

    #[test]
    fn chunked_body_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(
                feed_all(Framing::Chunked, body, step),
                Ok((end, true)),
                "step {step}"
            );
        }
        let upper = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            feed_all(Framing::Chunked, upper, 5),
            Ok((upper.len(), true))
        );
    }

    #[test]
    fn chunked_errors_are_errors_not_panics() {
        assert_eq!(
            feed_all(Framing::Chunked, b"zz\r\n", 10),
            Err(FramingError::ChunkSize)
        );
        assert_eq!(
            feed_all(Framing::Chunked, b"ffffffffffffffffff\r\n", 10),
            Err(FramingError::ChunkSize)
        );
        assert_eq!(
            feed_all(Framing::Chunked, b"1\r\nabc", 10),
            Err(FramingError::ChunkFraming)
        );
        assert_eq!(
            feed_all(Framing::Chunked, b"\r\n", 10),
            Err(FramingError::ChunkSize)
        );
    }

    #[test]
    fn response_heads() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            r,
            ResponseHead {
                len: 38,
                status: 200,
                framing: Framing::Length(5),
                close: false
            }
        );
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.framing, Framing::Chunked);
        assert!(r.close);
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.framing, Framing::Empty);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(FramingError::UntilClose)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(FramingError::ContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(FramingError::ContentLength)
        );
    }

    #[test]
    fn request_heads() {
        let r = parse_request(b"GET /payload/1024 HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.payload, Some(1024));
        assert_eq!(r.framing, Framing::Empty);
        assert!(!r.close);
        let r = parse_request(b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.framing, Framing::Length(3));
        assert!(r.close, "HTTP/1.0 without keep-alive closes");
        assert_eq!(r.payload, None);
        let r = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!r.close);
    }

    #[test]
    fn payload_paths() {
        assert_eq!(payload_from_path("/payload/0"), Some(0));
        assert_eq!(payload_from_path("/payload/512?x=1"), Some(512));
        assert_eq!(payload_from_path("/payload/"), None);
        assert_eq!(payload_from_path("/other"), None);
        assert_eq!(payload_from_path("/payload/99999999999999999999999"), None);
    }
}
