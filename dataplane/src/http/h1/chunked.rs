//! A streaming validator (and, when asked, decoder) for `Transfer-Encoding: chunked` bodies.
//!
//! The proxy forwards chunked bodies byte for byte, but it must know exactly where each body ends
//! to keep both connections in sync, so every byte passes through [`ChunkedDecoder::feed`]. The
//! grammar is enforced strictly (RFC 9112 §7.1): hex sizes without overflow, CRLF everywhere (a
//! bare LF in a chunk extension is a classic smuggling vector), bounded trailers.

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// The result of feeding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How many input bytes belong to this body (all of them unless it ended).
    pub consumed: usize,
    /// Whether the body ended within the input.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// After the size: optional whitespace and extensions, up to CR.
    Extension,
    /// LF ending the size line.
    SizeLf,
    /// Chunk payload.
    Data,
    /// CR after the payload.
    DataCr,
    /// LF after the payload.
    DataLf,
    /// Start of a trailer line, or CR of the final empty line.
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// LF ending a trailer line.
    TrailerLf,
    /// LF of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Most bytes of trailer fields accepted.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits in a chunk size (16 digits fit a u64).
const MAX_SIZE_DIGITS: u8 = 16;

/// Tracks one chunked body across reads.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    size_digits: u8,
    remaining: u64,
    trailer_bytes: usize,
    data_len: u64,
    /// When set, the raw trailer section (lines after the last chunk) is kept here.
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            size_digits: 0,
            remaining: 0,
            trailer_bytes: 0,
            data_len: 0,
            trailers: None,
        }
    }

    /// A decoder that also keeps the trailer section, for protocols that carry trailers on
    /// (HTTP/2, gRPC).
    pub fn keeping_trailers() -> Self {
        Self {
            trailers: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// The trailer fields seen, as `(name, value)` pairs (empty unless built with
    /// [`Self::keeping_trailers`]).
    pub fn trailer_fields(&self) -> Vec<(&[u8], &[u8])> {
        let Some(raw) = &self.trailers else {
            return Vec::new();
        };
        raw.split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
            })
            .collect()
    }

    /// Payload bytes seen so far (chunk framing excluded).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Validates the next bytes of the body. When `payload` is given, the chunk payload bytes are
    /// appended to it (decoding); otherwise the caller forwards `input[..consumed]` as is.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut payload: Option<&mut Vec<u8>>,
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let available = (input.len() - i) as u64;
                let take = available.min(self.remaining) as usize;
                if let Some(out) = payload.as_deref_mut() {
                    out.extend_from_slice(&input[i..i + take]);
                }
                i += take;
                self.remaining -= take as u64;
                self.data_len += take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let byte = input[i];
            i += 1;
            self.state = match self.state {
                State::Size => match hex_value(byte) {
                    Some(digit) => {
                        self.size_digits += 1;
                        if self.size_digits > MAX_SIZE_DIGITS {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = (self.size << 4) | u64::from(digit);
                        State::Size
                    }
                    None if self.size_digits == 0 => return Err(ChunkError("missing chunk size")),
                    None => match byte {
                        b'\r' => State::SizeLf,
                        b';' | b' ' | b'\t' => State::Extension,
                        _ => return Err(ChunkError("malformed chunk size")),
                    },
                },
                State::Extension => match byte {
                    b'\r' => State::SizeLf,
                    b'\t' => State::Extension,
                    b if b < 0x20 || b == 0x7f => {
                        return Err(ChunkError("control character in chunk extension"));
                    }
                    _ => State::Extension,
                },
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("bare CR in chunk size line"));
                    }
                    let size = std::mem::take(&mut self.size);
                    self.size_digits = 0;
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        self.remaining = size;
                        State::Data
                    }
                }
                State::DataCr if byte == b'\r' => State::DataLf,
                State::DataCr => return Err(ChunkError("chunk payload longer than its size")),
                State::DataLf if byte == b'\n' => State::Size,
                State::DataLf => return Err(ChunkError("bare CR after chunk payload")),
                State::TrailerStart if byte == b'\r' => State::FinalLf,
                State::TrailerStart | State::Trailer => {
                    self.trailer_bytes += 1;
                    if let Some(raw) = self.trailers.as_mut() {
                        raw.push(byte);
                    }
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    match byte {
                        b'\r' => State::TrailerLf,
                        // A trailer line may not start with whitespace, space or tab: that is
                        // obs-fold (RFC 9112 §5.2), which an upstream could read as a
                        // continuation of the line before.
                        b' ' | b'\t' if self.state == State::TrailerStart => {
                            return Err(ChunkError("folded trailer"));
                        }
                        b'\t' => State::Trailer,
                        b if b < 0x20 || b == 0x7f => {
                            return Err(ChunkError("control character in trailer"));
                        }
                        _ => State::Trailer,
                    }
                }
                State::TrailerLf if byte == b'\n' => {
                    if let Some(raw) = self.trailers.as_mut() {
                        raw.push(b'\n');
                    }
                    State::TrailerStart
                }
                State::TrailerLf => return Err(ChunkError("bare CR in trailer")),
                State::FinalLf if byte == b'\n' => {
                    self.state = State::Done;
                    return Ok(Progress {
                        consumed: i,
                        done: true,
                    });
                }
                State::FinalLf => return Err(ChunkError("bare CR at end of body")),
                State::Data => unreachable!("handled above"),
                State::Done => {
                    return Ok(Progress {
                        consumed: i - 1,
                        done: true,
                    });
                }
            };
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8]) -> Result<(Progress, Vec<u8>), ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        let mut payload = Vec::new();
        decoder
            .feed(input, Some(&mut payload))
            .map(|p| (p, payload))
    }

    #[test]
    fn decodes_a_simple_body() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        let (progress, payload) = feed_all(body).expect("valid");
        assert!(progress.done);
        assert_eq!(progress.consumed, body.len() - 4);
        assert_eq!(payload, b"hello world");
    }

    #[test]
    fn trailers_are_passed_over() {
        let body = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx: y\r\n\r\n";
        let (progress, payload) = feed_all(body).expect("valid");
        assert!(progress.done);
        assert_eq!(progress.consumed, body.len());
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let body: &[u8] =
            b"a\r\n0123456789\r\n1F\r\n0123456789012345678901234567890\r\n0\r\nt: v\r\n\r\n";
        for split in 0..body.len() {
            let mut decoder = ChunkedDecoder::new();
            let mut payload = Vec::new();
            let first = decoder
                .feed(&body[..split], Some(&mut payload))
                .expect("first part");
            assert_eq!(first.consumed, split);
            assert!(!first.done);
            let second = decoder
                .feed(&body[split..], Some(&mut payload))
                .expect("second part");
            assert!(second.done, "split at {split}");
            assert_eq!(second.consumed, body.len() - split);
            assert_eq!(payload.len(), 41);
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let cases: &[&[u8]] = &[
            b"\r\n",                          // no size
            b"g\r\n",                         // not hex
            b"5\nhello\r\n0\r\n\r\n",         // bare LF after size
            b"5;ext\nhello\r\n",              // bare LF in extension
            b"5\r\nhelloX\r\n",               // payload longer than size
            b"5\r\nhello\n0\r\n\r\n",         // bare LF after payload
            b"11111111111111111\r\n",         // 17 hex digits: overflow
            b"0\r\n\r\r",                     // bare CR at the end
            b"0\r\nbad\x00trailer\r\n\r\n",   // control character in trailer
            b"0\r\n folded\r\n\r\n",          // obs-fold in trailers
            b"0\r\nx: y\r\n\tfolded\r\n\r\n", // obs-fold with a tab
            b"-1\r\n",                        // sign
            b"0x5\r\nhello\r\n",              // 0x prefix
        ];
        for case in cases {
            assert!(
                feed_all(case).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn trailers_can_be_kept() {
        let mut decoder = ChunkedDecoder::keeping_trailers();
        let progress = decoder
            .feed(
                b"1\r\na\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n",
                None,
            )
            .expect("valid");
        assert!(progress.done);
        let fields = decoder.trailer_fields();
        assert_eq!(
            fields,
            vec![
                (&b"grpc-status"[..], &b"0"[..]),
                (&b"grpc-message"[..], &b"ok"[..])
            ]
        );
    }

    #[test]
    fn counts_payload_without_decoding() {
        let mut decoder = ChunkedDecoder::new();
        let progress = decoder
            .feed(b"4\r\nabcd\r\n0\r\n\r\n", None)
            .expect("valid");
        assert!(progress.done);
        assert_eq!(decoder.data_len(), 4);
    }
}
