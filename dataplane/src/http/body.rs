//! Moving a message body from where it arrives ([`Source`]) to where it goes ([`Sink`]),
//! whichever protocol each side speaks.
//!
//! One [`pump`] serves requests and responses alike. It translates framing where the protocols
//! differ (HTTP/1.1 `Content-Length`/chunked and HTTP/2 DATA frames; chunked trailers and HTTP/2
//! trailers), forwards HTTP/1.1 bytes untouched where they do not (a chunked body is validated
//! by [`ChunkedDecoder`] and passed on as it is, straight from the read buffer), and applies
//! backpressure end to end: an HTTP/2 stream's window is released only after its bytes were
//! handed to the next hop, and an HTTP/2 send waits for window before it writes, so a slow reader
//! on one side slows the writer on the other instead of growing a buffer in the proxy.
//!
//! Every pump also feeds three things the exchange core needs: the body limit, the activity
//! counter behind the stream idle timeout, and an optional [`Recording`] of the payload — the
//! bytes a retry replays and a mirror sends.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::h1::BodyFraming;
use super::h1::chunked::{ChunkError, ChunkedDecoder};
use super::io::{BODY_CHUNK, Reader, Writer};
use crate::event::Signal;

/// Why a body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpError {
    /// The source failed, closed early or was reset (for HTTP/2: the peer's reason, if any).
    Source(Option<Reason>),
    /// The sink failed or was reset.
    Sink(Option<Reason>),
    /// The source broke HTTP/1.1 chunked framing.
    Malformed(&'static str),
    /// The body outgrew its limit.
    TooLarge,
}

impl From<ChunkError> for PumpError {
    fn from(e: ChunkError) -> Self {
        PumpError::Malformed(e.0)
    }
}

/// Where an HTTP/1.1 body stands: how it is framed and how much of it is left. Kept by the
/// exchange across attempts, so a retry continues reading the client's body where the first
/// attempt stopped.
#[derive(Debug)]
pub struct H1Body {
    framing: BodyFraming,
    remaining: u64,
    decoder: ChunkedDecoder,
    done: bool,
}

impl H1Body {
    /// A body framed by `framing`.
    pub fn new(framing: BodyFraming) -> Self {
        Self {
            framing,
            remaining: match framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::keeping_trailers(),
            done: framing == BodyFraming::None,
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// How the body is framed.
    pub fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// How many of `buf`'s bytes belong to the body, and whether it ends within them. With
    /// `payload`, the payload of a chunked body is decoded into it.
    fn advance(
        &mut self,
        buf: &[u8],
        payload: Option<&mut Vec<u8>>,
    ) -> Result<(usize, bool), ChunkError> {
        let (take, done) = match self.framing {
            BodyFraming::None => (0, true),
            BodyFraming::Length(_) => {
                let take = self.remaining.min(buf.len() as u64) as usize;
                self.remaining -= take as u64;
                (take, self.remaining == 0)
            }
            BodyFraming::Chunked => {
                let progress = self.decoder.feed(buf, payload)?;
                (progress.consumed, progress.done)
            }
            BodyFraming::UntilClose => (buf.len(), false),
        };
        self.done |= done;
        Ok((take, done))
    }

    /// The chunked trailers as HTTP/2 trailers (fields HTTP/2 cannot carry are dropped).
    fn h2_trailers(&self) -> Option<HeaderMap> {
        let fields = self.decoder.trailer_fields();
        if fields.is_empty() {
            return None;
        }
        let mut map = HeaderMap::with_capacity(fields.len());
        for (name, value) in fields {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        }
        Some(map)
    }
}

/// Where a body comes from.
#[derive(Debug)]
pub enum Source<'a> {
    /// An HTTP/1.1 connection; bytes already read are in `buf`, which holds whatever followed
    /// the body (a pipelined request) when the body ends.
    H1 {
        /// The connection.
        reader: &'a mut Reader,
        /// Bytes read and not yet consumed.
        buf: &'a mut Vec<u8>,
        /// The body's framing and progress.
        body: &'a mut H1Body,
    },
    /// An HTTP/2 stream.
    H2(&'a mut RecvStream),
}

/// How an HTTP/1.1 sink frames what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFraming {
    /// `content-length` was sent: the payload goes out as it is.
    Length,
    /// `transfer-encoding: chunked`.
    Chunked,
    /// No framing: the body ends when the connection closes (HTTP/1.0 clients).
    UntilClose,
}

/// Where a body goes.
#[derive(Debug)]
pub enum Sink<'a> {
    /// An HTTP/1.1 connection.
    H1 {
        /// The connection.
        writer: &'a mut Writer,
        /// Bytes waiting to go out with the first body bytes (the message head), and the buffer
        /// chunk framing is written in.
        pending: &'a mut Vec<u8>,
        /// How the body is framed on the wire.
        framing: SinkFraming,
        /// Something other than raw bytes of this body was written already (a replay): a
        /// chunked body is then re-encoded chunk by chunk rather than passed through.
        reframe: bool,
    },
    /// An HTTP/2 stream.
    H2(&'a mut SendStream<Bytes>),
}

/// A body's payload, kept while it is small enough to replay on a retry or to mirror.
#[derive(Debug, Default, Clone)]
pub struct Recording {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
    complete: bool,
    trailers: Option<HeaderMap>,
}

impl Recording {
    /// A recording of up to `limit` payload bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// The most payload bytes kept.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether everything read so far is kept (a retry can replay it).
    pub fn is_whole(&self) -> bool {
        !self.overflowed
    }

    /// Whether the body ended and all of it is kept.
    pub fn is_complete(&self) -> bool {
        self.complete && !self.overflowed
    }

    /// Payload bytes kept.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload, in the chunks it arrived in.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The trailers that ended the body, if any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    fn push(&mut self, chunk: impl FnOnce() -> Bytes, n: usize) {
        if self.overflowed || n == 0 {
            return;
        }
        if self.len + n > self.limit {
            self.overflowed = true;
            self.chunks = Vec::new();
            self.len = 0;
            return;
        }
        self.len += n;
        self.chunks.push(chunk());
    }

    fn end(&mut self, trailers: Option<HeaderMap>) {
        self.complete = true;
        if !self.overflowed {
            self.trailers = trailers;
        }
    }
}

/// What a pump reports to the exchange as it goes.
#[derive(Debug)]
pub struct Hooks<'a> {
    /// Largest payload allowed; `None` = unlimited.
    pub limit: Option<u64>,
    /// Payload bytes of this body moved so far (carried across attempts).
    pub total: &'a Cell<u64>,
    /// Bytes moved in either direction of the exchange: the stream idle timeout watches it.
    pub activity: &'a Cell<u64>,
    /// Where the payload is kept, when it may be replayed or mirrored.
    pub record: Option<&'a mut Recording>,
    /// Set as soon as the source's whole body has been read (before its last bytes are
    /// written).
    pub read_done: Option<&'a Cell<bool>>,
    /// Fired once bytes (the message head first of all) have been written to the sink.
    pub wrote: Option<&'a Signal>,
    /// Where the trailers' `grpc-status` goes, for the metrics (response bodies).
    pub grpc_status: Option<&'a Cell<Option<u16>>>,
}

impl Hooks<'_> {
    fn moved(&mut self, n: usize) -> Result<(), PumpError> {
        let total = self.total.get() + n as u64;
        self.total.set(total);
        self.activity
            .set(self.activity.get().wrapping_add(n as u64 + 1));
        if self.limit.is_some_and(|limit| total > limit) {
            return Err(PumpError::TooLarge);
        }
        Ok(())
    }

    fn wrote(&self) {
        if let Some(wrote) = self.wrote {
            wrote.fire();
        }
    }

    /// Notes the `grpc-status` of `trailers`, when asked to.
    fn trailers(&self, trailers: Option<&HeaderMap>) {
        if let (Some(cell), Some(trailers)) = (self.grpc_status, trailers)
            && let Some(status) = trailers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        {
            cell.set(Some(status));
        }
    }

    fn source_done(&self) {
        if let Some(done) = self.read_done {
            done.set(true);
        }
    }

    fn recording(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.is_whole())
    }
}

/// Moves the rest of a body from `source` to `sink`, trailers included, and ends the sink's
/// message. Returns the payload bytes moved by this call.
pub async fn pump(
    source: &mut Source<'_>,
    sink: &mut Sink<'_>,
    hooks: &mut Hooks<'_>,
) -> Result<u64, PumpError> {
    let before = hooks.total.get();
    match (source, sink) {
        (
            Source::H1 { reader, buf, body },
            Sink::H1 {
                writer,
                pending,
                framing,
                reframe,
            },
        ) => {
            h1_to_h1(
                reader, buf, body, writer, pending, *framing, *reframe, hooks,
            )
            .await?
        }
        (Source::H1 { reader, buf, body }, Sink::H2(to)) => {
            h1_to_h2(reader, buf, body, to, hooks).await?;
        }
        (Source::H2(from), sink) => from_h2(from, sink, hooks).await?,
    }
    Ok(hooks.total.get() - before)
}

/// Sends what `recording` holds to `sink` (a retry's replay), ending the message if the body
/// was complete. The live source then continues where it stopped.
pub async fn replay(recording: &Recording, sink: &mut Sink<'_>) -> Result<(), PumpError> {
    if let Sink::H1 { reframe, .. } = sink {
        *reframe = true;
    }
    for chunk in recording.chunks() {
        write_payload(sink, chunk.clone()).await?;
    }
    if recording.is_complete() {
        finish(sink, recording.trailers().cloned()).await?;
    } else {
        flush(sink).await?;
    }
    Ok(())
}

/// Sends what is pending on an HTTP/1.1 sink (a head with no body bytes yet).
pub async fn flush(sink: &mut Sink<'_>) -> Result<(), PumpError> {
    if let Sink::H1 {
        writer, pending, ..
    } = sink
        && !pending.is_empty()
    {
        writer
            .write_all(pending)
            .await
            .map_err(|_| PumpError::Sink(None))?;
        pending.clear();
    }
    Ok(())
}

/// Writes one piece of payload, framed as the sink needs.
async fn write_payload(sink: &mut Sink<'_>, data: Bytes) -> Result<(), PumpError> {
    match sink {
        Sink::H1 {
            writer,
            pending,
            framing,
            ..
        } => {
            if *framing == SinkFraming::Chunked {
                if data.is_empty() {
                    return Ok(());
                }
                push_chunk_size(pending, data.len());
                pending.extend_from_slice(&data);
                pending.extend_from_slice(b"\r\n");
            } else if pending.is_empty() {
                return writer
                    .write_bytes(data)
                    .await
                    .map_err(|_| PumpError::Sink(None));
            } else {
                pending.extend_from_slice(&data);
            }
            let written = writer.write_all(pending).await;
            pending.clear();
            written.map_err(|_| PumpError::Sink(None))
        }
        Sink::H2(to) => send_data(to, data).await,
    }
}

/// Ends the sink's message: the last chunk and trailers, HTTP/2 trailers or END_STREAM.
async fn finish(sink: &mut Sink<'_>, trailers: Option<HeaderMap>) -> Result<(), PumpError> {
    match sink {
        Sink::H1 {
            writer,
            pending,
            framing,
            ..
        } => {
            if *framing == SinkFraming::Chunked {
                pending.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    super::h1::push_header(pending, name.as_str().as_bytes(), value.as_bytes());
                }
                pending.extend_from_slice(b"\r\n");
            }
            if pending.is_empty() {
                return Ok(());
            }
            let written = writer.write_all(pending).await;
            pending.clear();
            written.map_err(|_| PumpError::Sink(None))
        }
        Sink::H2(to) => end_h2(to, trailers),
    }
}

fn push_chunk_size(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// HTTP/1.1 → HTTP/1.1. A chunked body goes to a chunked sink byte for byte (validated on the
/// way); otherwise the payload is written, decoded when the source is chunked and the sink is
/// not (an HTTP/1.0 client).
#[allow(clippy::too_many_arguments)]
async fn h1_to_h1(
    reader: &mut Reader,
    buf: &mut Vec<u8>,
    body: &mut H1Body,
    writer: &mut Writer,
    pending: &mut Vec<u8>,
    framing: SinkFraming,
    reframe: bool,
    hooks: &mut Hooks<'_>,
) -> Result<(), PumpError> {
    let chunked = body.framing == BodyFraming::Chunked;
    let passthrough = !chunked || (framing == SinkFraming::Chunked && !reframe);
    let mut decoded = Vec::new();
    loop {
        decoded.clear();
        let decode = chunked && (!passthrough || hooks.recording());
        let before = body.decoder.data_len();
        let (take, done) = body.advance(buf, decode.then_some(&mut decoded))?;
        if done {
            hooks.source_done();
        }
        let payload = if chunked {
            (body.decoder.data_len() - before) as usize
        } else {
            take
        };
        hooks.moved(payload)?;
        if let Some(record) = hooks.record.as_deref_mut() {
            let data: &[u8] = if chunked { &decoded } else { &buf[..take] };
            record.push(|| Bytes::copy_from_slice(data), data.len());
        }
        if passthrough {
            if !pending.is_empty() {
                pending.extend_from_slice(&buf[..take]);
                let written = writer.write_all(pending).await;
                pending.clear();
                written.map_err(|_| PumpError::Sink(None))?;
            } else if take > 0 {
                writer
                    .write_prefix(buf, take)
                    .await
                    .map_err(|_| PumpError::Sink(None))?;
            }
        } else {
            if framing == SinkFraming::Chunked && !decoded.is_empty() {
                push_chunk_size(pending, decoded.len());
                pending.extend_from_slice(&decoded);
                pending.extend_from_slice(b"\r\n");
            } else {
                pending.extend_from_slice(&decoded);
            }
            if !pending.is_empty() {
                let written = writer.write_all(pending).await;
                pending.clear();
                written.map_err(|_| PumpError::Sink(None))?;
            }
        }
        hooks.wrote();
        buf.drain(..take);
        if done {
            if let Some(record) = hooks.record.as_deref_mut() {
                record.end(body.h2_trailers());
            }
            if chunked && !passthrough && framing == SinkFraming::Chunked {
                // Re-encoded: the last chunk and the trailers are this side's to write.
                pending.extend_from_slice(b"0\r\n");
                for (name, value) in body.decoder.trailer_fields() {
                    super::h1::push_header(pending, name, value);
                }
                pending.extend_from_slice(b"\r\n");
                let written = writer.write_all(pending).await;
                pending.clear();
                written.map_err(|_| PumpError::Sink(None))?;
            }
            return Ok(());
        }
        match reader.read_more(buf, BODY_CHUNK).await {
            Ok(0) if body.framing == BodyFraming::UntilClose => {
                body.done = true;
                hooks.source_done();
                if let Some(record) = hooks.record.as_deref_mut() {
                    record.end(None);
                }
                return Ok(());
            }
            Ok(0) | Err(_) => return Err(PumpError::Source(None)),
            Ok(_) => {}
        }
    }
}

/// HTTP/1.1 → HTTP/2: the payload as DATA frames, chunked trailers as HTTP/2 trailers. A reset
/// of the HTTP/2 stream ends the wait for the next bytes.
async fn h1_to_h2(
    reader: &mut Reader,
    buf: &mut Vec<u8>,
    body: &mut H1Body,
    to: &mut SendStream<Bytes>,
    hooks: &mut Hooks<'_>,
) -> Result<(), PumpError> {
    let chunked = body.framing == BodyFraming::Chunked;
    let mut decoded = Vec::new();
    loop {
        decoded.clear();
        let (take, done) = body.advance(buf, chunked.then_some(&mut decoded))?;
        if done {
            hooks.source_done();
        }
        let data = if chunked {
            Bytes::copy_from_slice(&decoded)
        } else {
            Bytes::copy_from_slice(&buf[..take])
        };
        buf.drain(..take);
        hooks.moved(data.len())?;
        if let Some(record) = hooks.record.as_deref_mut() {
            record.push(|| data.clone(), data.len());
        }
        if !data.is_empty() {
            send_data(to, data).await?;
        }
        if done {
            let trailers = body.h2_trailers();
            hooks.trailers(trailers.as_ref());
            if let Some(record) = hooks.record.as_deref_mut() {
                record.end(trailers.clone());
            }
            return end_h2(to, trailers);
        }
        let read = monoio::select! {
            biased;
            read = reader.read_more(buf, BODY_CHUNK) => read,
            reset = poll_fn(|cx| to.poll_reset(cx)) => return Err(reset_error(reset)),
        };
        match read {
            Ok(0) if body.framing == BodyFraming::UntilClose => {
                body.done = true;
                hooks.source_done();
                if let Some(record) = hooks.record.as_deref_mut() {
                    record.end(None);
                }
                return end_h2(to, None);
            }
            Ok(0) | Err(_) => return Err(PumpError::Source(None)),
            Ok(_) => {}
        }
    }
}

/// HTTP/2 → anything: each DATA frame written as the sink frames payload (raw after
/// `content-length`, a chunk, a DATA frame), the trailers as chunked or HTTP/2 trailers. Window
/// is released on `from` only once the sink took the bytes. Toward an HTTP/2 sink, a reset of
/// its stream ends the wait for the source's next frame, so a cancellation reaches a quiet
/// sender at once.
async fn from_h2(
    from: &mut RecvStream,
    sink: &mut Sink<'_>,
    hooks: &mut Hooks<'_>,
) -> Result<(), PumpError> {
    // The head goes out now, not with the first DATA frame: the next hop should see the request
    // even if its body is slow to come.
    flush(sink).await?;
    hooks.wrote();
    loop {
        let next = match sink {
            Sink::H2(to) => {
                poll_fn(|cx| {
                    if let Poll::Ready(reset) = to.poll_reset(cx) {
                        return Poll::Ready(Err(reset_error(reset)));
                    }
                    from.poll_data(cx).map(Ok)
                })
                .await?
            }
            Sink::H1 { .. } => poll_fn(|cx| from.poll_data(cx)).await,
        };
        match next {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                hooks.moved(n)?;
                if let Some(record) = hooks.record.as_deref_mut() {
                    record.push(|| chunk.clone(), n);
                }
                write_payload(sink, chunk).await?;
                hooks.wrote();
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(e)) => return Err(PumpError::Source(e.reason())),
            None => {
                let trailers = poll_fn(|cx| from.poll_trailers(cx))
                    .await
                    .map_err(|e| PumpError::Source(e.reason()))?;
                hooks.source_done();
                hooks.trailers(trailers.as_ref());
                if let Some(record) = hooks.record.as_deref_mut() {
                    record.end(trailers.clone());
                }
                return finish(sink, trailers).await;
            }
        }
    }
}

/// Reads a body to its end and drops it (a mirrored request's response).
pub async fn discard(source: &mut Source<'_>) -> Result<(), PumpError> {
    match source {
        Source::H1 { reader, buf, body } => loop {
            let (take, done) = body.advance(buf, None)?;
            buf.drain(..take);
            if done {
                return Ok(());
            }
            match reader.read_more(buf, BODY_CHUNK).await {
                Ok(0) if body.framing == BodyFraming::UntilClose => {
                    body.done = true;
                    return Ok(());
                }
                Ok(0) | Err(_) => return Err(PumpError::Source(None)),
                Ok(_) => {}
            }
        },
        Source::H2(recv) => {
            while let Some(chunk) = poll_fn(|cx| recv.poll_data(cx)).await {
                let n = chunk.map_err(|e| PumpError::Source(e.reason()))?.len();
                let _ = recv.flow_control().release_capacity(n);
            }
            Ok(())
        }
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
                Some(Err(e)) => return Err(PumpError::Sink(e.reason())),
                None => return Err(PumpError::Sink(None)),
            };
        }
        let chunk = data.split_to(available.min(data.len()));
        to.send_data(chunk, false)
            .map_err(|e| PumpError::Sink(e.reason()))?;
    }
    Ok(())
}

/// Ends `to` with `trailers` if there are any, else with an empty DATA frame.
fn end_h2(to: &mut SendStream<Bytes>, trailers: Option<HeaderMap>) -> Result<(), PumpError> {
    match trailers {
        Some(trailers) if !trailers.is_empty() => to.send_trailers(trailers),
        _ => to.send_data(Bytes::new(), true),
    }
    .map_err(|e| PumpError::Sink(e.reason()))
}

/// The error for a sink stream that its peer reset.
fn reset_error(reset: Result<Reason, h2::Error>) -> PumpError {
    match reset {
        Ok(reason) => PumpError::Sink(Some(reason)),
        Err(e) => PumpError::Sink(e.reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        for (n, text) in [
            (1usize, "1"),
            (15, "f"),
            (16, "10"),
            (65536, "10000"),
            (0, "0"),
        ] {
            let mut out = Vec::new();
            push_chunk_size(&mut out, n);
            assert_eq!(out, format!("{text}\r\n").as_bytes());
        }
    }

    #[test]
    fn recordings_keep_a_bounded_payload() {
        let mut recording = Recording::new(8);
        recording.push(|| Bytes::from_static(b"abcd"), 4);
        recording.push(|| Bytes::from_static(b"efgh"), 4);
        assert!(recording.is_whole());
        assert_eq!(recording.len(), 8);
        recording.end(None);
        assert!(recording.is_complete());

        let mut big = Recording::new(8);
        big.push(|| Bytes::from_static(b"abcdef"), 6);
        big.push(|| Bytes::from_static(b"ghi"), 3);
        assert!(!big.is_whole(), "past the limit nothing is kept");
        assert!(big.is_empty());
        big.end(None);
        assert!(!big.is_complete());
    }

    #[test]
    fn h1_bodies_advance_by_their_framing() {
        let mut body = H1Body::new(BodyFraming::Length(5));
        assert_eq!(body.advance(b"abc", None), Ok((3, false)));
        assert_eq!(body.advance(b"defgh", None), Ok((2, true)));
        assert!(body.is_done());

        let mut chunked = H1Body::new(BodyFraming::Chunked);
        let mut payload = Vec::new();
        let input = b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let (take, done) = chunked.advance(input, Some(&mut payload)).expect("valid");
        assert!(done);
        assert_eq!(&input[take..], b"NEXT");
        assert_eq!(payload, b"abc");
        let trailers = chunked.h2_trailers().expect("trailers");
        assert_eq!(trailers["x-t"], "1");
        assert!(H1Body::new(BodyFraming::None).is_done());
    }
}
