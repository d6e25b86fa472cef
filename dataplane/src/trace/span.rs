//! Span records and the per-worker buffer that collects them.
//!
//! A [`SpanRecord`] is fixed-size: ids, times, small enums, addresses, and ranges into its
//! batch's text buffer for the strings (method, route, cluster, path, host, identities), which
//! are copied there (capped at [`TEXT_CAP`] bytes each). Recording a span is a copy into two
//! vectors that are reused: a worker's [`SpanBuffer`] hands full ones (or whatever it holds at
//! each housekeeping tick) to the exporter with one non-blocking channel send per batch, and
//! takes back emptied ones the exporter returns. When the exporter's queue is full the batch is
//! dropped and counted — a worker never waits for export.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::context::{SpanId, TraceId};
use super::export::TraceSink;
use crate::access_log::ResponseFlags;

/// A worker hands its buffer over once it holds this many spans.
pub const FLUSH_SPANS: usize = 256;
/// The longest string a span keeps (longer ones are cut, at a character boundary).
pub const TEXT_CAP: usize = 256;

/// What a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy serving a request (OTLP `SPAN_KIND_SERVER`).
    Server,
    /// One upstream attempt (OTLP `SPAN_KIND_CLIENT`).
    Client,
    /// An L4 connection, from accept to close (OTLP `SPAN_KIND_SERVER`).
    Connection,
}

/// The protocol of the span's request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// `network.protocol.version` (`None` for TCP).
    pub fn version(self) -> Option<&'static str> {
        match self {
            Protocol::Http10 => Some("1.0"),
            Protocol::Http11 => Some("1.1"),
            Protocol::Http2 => Some("2"),
            Protocol::Tcp => None,
        }
    }
}

/// A string of a span: a range of its batch's text buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text {
    start: u32,
    len: u32,
}

impl Text {
    /// The string in `text` (empty if the range is out of it, which a batch never makes).
    pub fn get(self, text: &[u8]) -> &str {
        let start = self.start as usize;
        text.get(start..start + self.len as usize)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }

    /// Whether it is empty.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// The strings of a span, by their place in [`SpanRecord::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Field {
    /// `http.request.method`.
    Method,
    /// `http.route`: the route's name.
    Route,
    /// The upstream cluster.
    Cluster,
    /// `url.path`.
    Path,
    /// `server.address`: the request's host.
    Host,
    /// The client's verified SPIFFE ID.
    DownstreamPrincipal,
    /// The upstream's verified SPIFFE ID.
    UpstreamPrincipal,
    /// The listener (L4 spans).
    Listener,
}

/// How many [`Field`]s there are.
pub const FIELDS: usize = 8;

/// One finished span. Fixed size: no allocation of its own.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// Its parent.
    pub parent: Option<SpanId>,
    /// Server, client or connection.
    pub kind: SpanKind,
    /// Start, nanoseconds since the Unix epoch.
    pub start: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end: u64,
    /// The HTTP status (0: none).
    pub status: u16,
    /// The `grpc-status` the client got (server spans of gRPC requests; `None` otherwise).
    pub grpc_status: Option<u16>,
    /// The span failed (5xx, no response, a failed attempt).
    pub error: bool,
    /// Response flags (server spans) or the attempt's failure (client spans).
    pub flags: ResponseFlags,
    /// The attempt number (client spans; 0 otherwise).
    pub attempt: u32,
    /// The protocol.
    pub protocol: Protocol,
    /// `client.address`: the client (the peer, or the trusted `x-forwarded-for` entry).
    pub client: Option<IpAddr>,
    /// `network.peer.address`: the connection's peer (the client for server spans, the endpoint
    /// for client spans).
    pub peer: Option<SocketAddr>,
    /// The upstream endpoint.
    pub upstream: Option<SocketAddr>,
    /// The strings, by [`Field`].
    pub text: [Text; FIELDS],
}

impl SpanRecord {
    /// A span with ids and times and nothing else yet.
    pub fn new(
        trace_id: TraceId,
        span_id: SpanId,
        parent: Option<SpanId>,
        kind: SpanKind,
        started: Instant,
    ) -> Self {
        let (start, end) = unix_span(started);
        Self {
            trace_id,
            span_id,
            parent,
            kind,
            start,
            end,
            status: 0,
            grpc_status: None,
            error: false,
            flags: ResponseFlags::default(),
            attempt: 0,
            protocol: Protocol::Http11,
            client: None,
            peer: None,
            upstream: None,
            text: [Text::default(); FIELDS],
        }
    }

    /// The string `field` of this span, from its batch's `text`.
    pub fn field<'t>(&self, field: Field, text: &'t [u8]) -> &'t str {
        self.text[field as usize].get(text)
    }
}

/// `started` .. now, in nanoseconds since the Unix epoch.
fn unix_span(started: Instant) -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let elapsed = started.elapsed().as_nanos() as u64;
    (now.saturating_sub(elapsed), now)
}

/// Spans on their way to the exporter, with the text their strings point into.
#[derive(Debug, Default)]
pub struct Batch {
    /// The spans.
    pub spans: Vec<SpanRecord>,
    /// Their strings.
    pub text: Vec<u8>,
}

impl Batch {
    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.text.clear();
    }
}

/// A worker's spans waiting for the exporter.
#[derive(Debug)]
pub struct SpanBuffer {
    worker: usize,
    batch: Batch,
    sink: Option<TraceSink>,
}

impl SpanBuffer {
    /// The buffer of worker `worker`.
    pub fn new(worker: usize) -> Self {
        Self {
            worker,
            batch: Batch::default(),
            sink: None,
        }
    }

    /// Points the buffer at `sink` (the current snapshot's), handing what it holds to the
    /// previous one first.
    pub fn set_sink(&mut self, sink: Option<&TraceSink>) {
        let same = match (&self.sink, sink) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.flush();
            self.sink = sink.cloned();
        }
    }

    /// Whether spans are being collected (the snapshot's tracer exports).
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Copies `value` into the batch's text (cut at [`TEXT_CAP`] bytes, on a character
    /// boundary) and returns where it is.
    pub fn text(&mut self, value: &str) -> Text {
        let mut end = value.len().min(TEXT_CAP);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let start = self.batch.text.len();
        self.batch.text.extend_from_slice(&value.as_bytes()[..end]);
        Text {
            start: start as u32,
            len: end as u32,
        }
    }

    /// Adds a finished span; hands the batch over once it is full.
    pub fn push(&mut self, span: SpanRecord) {
        if self.sink.is_none() {
            return;
        }
        self.batch.spans.push(span);
        if self.batch.spans.len() >= FLUSH_SPANS {
            self.flush();
        }
    }

    /// Hands what is buffered to the exporter, never waiting: when its queue is full the spans
    /// are dropped and counted.
    pub fn flush(&mut self) {
        let Some(sink) = &self.sink else {
            self.batch.clear();
            return;
        };
        if self.batch.spans.is_empty() {
            self.batch.text.clear();
            return;
        }
        let empty = sink.recycled().unwrap_or_default();
        let batch = std::mem::replace(&mut self.batch, empty);
        sink.send(batch, self.worker);
    }
}

/// An L4 connection's span, recorded when it drops (however the connection ends).
#[derive(Debug)]
pub struct ConnectionSpan<'a> {
    buffer: &'a RefCell<SpanBuffer>,
    started: Instant,
    span: SpanRecord,
    listener: &'a str,
    cluster: &'a str,
}

impl<'a> ConnectionSpan<'a> {
    /// A sampled connection's span, starting now, from `peer` on `listener` to `cluster`.
    pub fn new(
        buffer: &'a RefCell<SpanBuffer>,
        trace_id: TraceId,
        span_id: SpanId,
        peer: SocketAddr,
        listener: &'a str,
        cluster: &'a str,
    ) -> Self {
        let started = Instant::now();
        let mut span = SpanRecord::new(trace_id, span_id, None, SpanKind::Connection, started);
        span.protocol = Protocol::Tcp;
        span.client = Some(peer.ip());
        span.peer = Some(peer);
        Self {
            buffer,
            started,
            span,
            listener,
            cluster,
        }
    }

    /// The connection's trace (its access-log line names it).
    pub fn trace_id(&self) -> TraceId {
        self.span.trace_id
    }
}

impl Drop for ConnectionSpan<'_> {
    fn drop(&mut self) {
        let Ok(mut buffer) = self.buffer.try_borrow_mut() else {
            return;
        };
        if !buffer.enabled() {
            return;
        }
        let mut span = self.span;
        let (start, end) = unix_span(self.started);
        span.start = start;
        span.end = end;
        span.text[Field::Listener as usize] = buffer.text(self.listener);
        span.text[Field::Cluster as usize] = buffer.text(self.cluster);
        buffer.push(span);
    }
}
