//! The per-worker buffer that collects span records, and the L4 connection span.
//!
//! Recording a span is a copy into two vectors that are reused: a worker's [`SpanBuffer`] hands
//! full ones (or whatever it holds at each housekeeping tick) to the exporter with one
//! non-blocking channel send per batch, and takes back emptied ones the exporter returns. When
//! the exporter's queue is full the batch is dropped and counted — a worker never waits for
//! export.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use super::context::{SpanId, TraceId};
use super::export::TraceSink;
use super::span::{Batch, FLUSH_SPANS, Field, Protocol, SpanKind, SpanRecord, Text, unix_span};

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

    /// Copies `value` into the batch's text ([`Batch::text`]) and returns where it is.
    pub fn text(&mut self, value: &str) -> Text {
        self.batch.text(value)
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

    /// A W3C `traceparent` naming this span as the parent, sampled (an HBONE tunnel's CONNECT
    /// carries it, so the destination node's span joins the trace).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-01",
            self.span.trace_id.0, self.span.span_id.0
        )
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
