//! Moving message bodies between HTTP/2 streams and HTTP/1.1 connections, with trailers.
//!
//! Every pump applies backpressure end to end: a DATA frame's flow-control window is released to
//! the sender only after its bytes were handed to the next hop, and an HTTP/2 send waits for
//! window before it writes, so a slow reader on one side slows the writer on the other instead of
//! growing a buffer in the proxy. What sits in the proxy per stream is bounded by the HTTP/2
//! windows and one read buffer.

use std::future::poll_fn;
use std::io::Write as _;
use std::task::Poll;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue};
use monoio::net::TcpStream;

use super::chunked::ChunkedDecoder;
use super::h1::BodyFraming;
use super::io;

/// Why a body stopped.
#[derive(Debug)]
pub enum PumpError {
    /// The source failed or was reset (for HTTP/2: the peer's reset reason, if any).
    Source(Option<Reason>),
    /// The destination failed or was reset.
    Destination(Option<Reason>),
    /// The source broke HTTP/1.1 framing.
    Malformed(&'static str),
    /// The body outgrew its limit.
    TooLarge,
}

impl PumpError {
    fn from_h2_source(e: &h2::Error) -> Self {
        PumpError::Source(e.reason())
    }

    fn from_h2_destination(e: &h2::Error) -> Self {
        PumpError::Destination(e.reason())
    }
}

/// Sends `data` on `to` (without ending the stream), waiting for flow-control window as needed.
///
/// `poll_capacity` only reports capacity that *increased* since it was last polled, so the
/// capacity already assigned is checked first; polling alone would wait forever for an increase
/// that never comes when the window was already open.
pub async fn send_data(to: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), PumpError> {
    while !data.is_empty() {
        to.reserve_capacity(data.len());
        let mut available = to.capacity();
        while available == 0 {
            available = match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(e)) => return Err(PumpError::from_h2_destination(&e)),
                None => return Err(PumpError::Destination(None)),
            };
        }
        let chunk = data.split_to(available.min(data.len()));
        to.send_data(chunk, false)
            .map_err(|e| PumpError::from_h2_destination(&e))?;
    }
    Ok(())
}

/// Ends `to` with `trailers` if there are any, else with an empty DATA frame.
pub fn finish(to: &mut SendStream<Bytes>, trailers: Option<HeaderMap>) -> Result<(), PumpError> {
    match trailers {
        Some(trailers) if !trailers.is_empty() => to.send_trailers(trailers),
        _ => to.send_data(Bytes::new(), true),
    }
    .map_err(|e| PumpError::from_h2_destination(&e))
}

/// HTTP/2 → HTTP/2: DATA frames and trailers from `from` to `to`. Window is released on `from`
/// only once the bytes were passed to `to`. Returns the payload bytes moved; `tee` receives a copy
/// of them while it has room (mirroring).
pub async fn h2_to_h2(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    limit: Option<u64>,
    mut tee: Option<&mut Vec<u8>>,
) -> Result<u64, PumpError> {
    let mut moved: u64 = 0;
    loop {
        match next_data(from, to).await? {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                moved += n as u64;
                if limit.is_some_and(|limit| moved > limit) {
                    return Err(PumpError::TooLarge);
                }
                if let Some(copy) = tee.as_deref_mut() {
                    if copy.len() + n <= copy.capacity() {
                        copy.extend_from_slice(&chunk);
                    } else {
                        tee = None;
                    }
                }
                send_data(to, chunk).await?;
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(e)) => return Err(PumpError::from_h2_source(&e)),
            None => {
                let trailers = poll_fn(|cx| from.poll_trailers(cx))
                    .await
                    .map_err(|e| PumpError::from_h2_source(&e))?;
                finish(to, trailers)?;
                return Ok(moved);
            }
        }
    }
}

/// The next DATA chunk of `from`, unless `to`'s peer resets its stream first: a client that
/// cancels while the sender is quiet (a server stream waiting for its next message) must be
/// noticed at once, so that the cancellation reaches the sender, not at the sender's next byte.
async fn next_data(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
) -> Result<Option<Result<Bytes, h2::Error>>, PumpError> {
    poll_fn(|cx| {
        if let Poll::Ready(reset) = to.poll_reset(cx) {
            return Poll::Ready(Err(reset_error(reset)));
        }
        from.poll_data(cx).map(Ok)
    })
    .await
}

/// The error for a destination stream that its peer reset.
fn reset_error(reset: Result<Reason, h2::Error>) -> PumpError {
    match reset {
        Ok(reason) => PumpError::Destination(Some(reason)),
        Err(e) => PumpError::from_h2_destination(&e),
    }
}

/// HTTP/2 → HTTP/1.1: DATA frames from `from` written to `to`, chunked (with the HTTP/2 trailers
/// as chunked trailers) or raw when the length was announced. `scratch` is reused for writes.
pub async fn h2_to_h1(
    from: &mut RecvStream,
    to: &mut TcpStream,
    chunked: bool,
    limit: Option<u64>,
    scratch: &mut Vec<u8>,
    mut tee: Option<&mut Vec<u8>>,
) -> Result<u64, PumpError> {
    let mut moved: u64 = 0;
    loop {
        match poll_fn(|cx| from.poll_data(cx)).await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                moved += n as u64;
                if limit.is_some_and(|limit| moved > limit) {
                    return Err(PumpError::TooLarge);
                }
                if n == 0 {
                    continue;
                }
                if let Some(copy) = tee.as_deref_mut() {
                    if copy.len() + n <= copy.capacity() {
                        copy.extend_from_slice(&chunk);
                    } else {
                        tee = None;
                    }
                }
                scratch.clear();
                if chunked {
                    let _ = write!(scratch, "{n:x}\r\n");
                    scratch.extend_from_slice(&chunk);
                    scratch.extend_from_slice(b"\r\n");
                } else {
                    scratch.extend_from_slice(&chunk);
                }
                io::write_all(to, scratch)
                    .await
                    .map_err(|_| PumpError::Destination(None))?;
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(e)) => return Err(PumpError::from_h2_source(&e)),
            None => {
                let trailers = poll_fn(|cx| from.poll_trailers(cx))
                    .await
                    .map_err(|e| PumpError::from_h2_source(&e))?;
                if chunked {
                    scratch.clear();
                    scratch.extend_from_slice(b"0\r\n");
                    for (name, value) in trailers.iter().flatten() {
                        super::head::push_header(
                            scratch,
                            name.as_str().as_bytes(),
                            value.as_bytes(),
                        );
                    }
                    scratch.extend_from_slice(b"\r\n");
                    io::write_all(to, scratch)
                        .await
                        .map_err(|_| PumpError::Destination(None))?;
                }
                return Ok(moved);
            }
        }
    }
}

/// HTTP/1.1 → HTTP/2: a body framed by `framing` read from `from` (bytes already read are in
/// `buf`) and sent as DATA frames on `to`, chunked trailers becoming HTTP/2 trailers. On return
/// `buf` holds whatever followed the body.
pub async fn h1_to_h2(
    from: &mut TcpStream,
    buf: &mut Vec<u8>,
    framing: BodyFraming,
    to: &mut SendStream<Bytes>,
    limit: Option<u64>,
) -> Result<u64, PumpError> {
    let mut remaining = match framing {
        BodyFraming::None => {
            finish(to, None)?;
            return Ok(0);
        }
        BodyFraming::Length(n) => n,
        BodyFraming::Chunked | BodyFraming::UntilClose => u64::MAX,
    };
    let mut decoder = ChunkedDecoder::keeping_trailers();
    let mut decoded = Vec::new();
    let mut moved: u64 = 0;
    loop {
        let (take, done) = match framing {
            BodyFraming::Chunked => {
                decoded.clear();
                let progress = decoder
                    .feed(buf, Some(&mut decoded))
                    .map_err(|e| PumpError::Malformed(e.0))?;
                (progress.consumed, progress.done)
            }
            _ => {
                let take = remaining.min(buf.len() as u64) as usize;
                remaining -= take as u64;
                (take, remaining == 0)
            }
        };
        let data = if framing == BodyFraming::Chunked {
            Bytes::copy_from_slice(&decoded)
        } else {
            Bytes::copy_from_slice(&buf[..take])
        };
        buf.drain(..take);
        moved += data.len() as u64;
        if limit.is_some_and(|limit| moved > limit) {
            return Err(PumpError::TooLarge);
        }
        if !data.is_empty() {
            send_data(to, data).await?;
        }
        if done {
            finish(to, h2_trailers(&decoder))?;
            return Ok(moved);
        }
        // Reading waits for the upstream; a client reset ends the wait (and the exchange).
        let read = monoio::select! {
            read = io::read_more(from, buf, io::BODY_CHUNK) => read,
            reset = poll_fn(|cx| to.poll_reset(cx)) => return Err(reset_error(reset)),
        };
        match read {
            Ok(0) if framing == BodyFraming::UntilClose => {
                finish(to, None)?;
                return Ok(moved);
            }
            Ok(0) | Err(_) => return Err(PumpError::Source(None)),
            Ok(_) => {}
        }
    }
}

/// The chunked trailers as an HTTP/2 header map (fields that are not valid HTTP/2 are dropped).
fn h2_trailers(decoder: &ChunkedDecoder) -> Option<HeaderMap> {
    let fields = decoder.trailer_fields();
    if fields.is_empty() {
        return None;
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name.to_ascii_lowercase()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    Some(map)
}
