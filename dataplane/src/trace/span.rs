//! Span records and the batches that carry them to the exporter.
//!
//! A [`SpanRecord`] is fixed-size: ids, times, small enums, addresses, and ranges into its
//! batch's text buffer for the strings (method, route, cluster, path, host, identities), which
//! are copied there (capped at [`TEXT_CAP`] bytes each). A worker collects them in its
//! `buffer::SpanBuffer`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::context::{SpanId, TraceId};
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
pub(super) fn unix_span(started: Instant) -> (u64, u64) {
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
    /// Copies `value` into the text (cut at [`TEXT_CAP`] bytes, on a character boundary) and
    /// returns where it is.
    pub fn text(&mut self, value: &str) -> Text {
        let mut end = value.len().min(TEXT_CAP);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let start = self.text.len();
        self.text.extend_from_slice(&value.as_bytes()[..end]);
        Text {
            start: start as u32,
            len: end as u32,
        }
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.text.clear();
    }
}
