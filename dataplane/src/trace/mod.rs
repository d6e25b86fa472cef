//! Distributed tracing: trace context in and out, spans, OTLP export.
//!
//! - [`context`]: W3C `traceparent`/`tracestate` and B3 (single and multi-header), parsed
//!   strictly and written back; which format wins and which go upstream.
//! - [`Tracer`] (in the snapshot, from `[telemetry.tracing]`): per request, continues the
//!   client's context or starts a new trace, and decides sampling ([`Tracer::begin`]).
//! - [`span`]: the fixed-size [`span::SpanRecord`] the request path fills — a server span per
//!   request (`http::account`), a client span per upstream attempt (`http::exchange`), an L4
//!   span per connection when enabled (`l4`, [`buffer::ConnectionSpan`]) — and [`buffer`]: the
//!   per-worker [`buffer::SpanBuffer`] that hands records to the exporter in batches, never blocking and never allocating per span
//!   (strings are copied into the batch's one text buffer; batches are recycled).
//! - [`export`]: the exporter thread (one per tracing config): a bounded queue, batches by
//!   size and time, OTLP/HTTP protobuf `POST /v1/traces`, retries with backoff; [`otlp`] is the
//!   hand-written protobuf encoding of the few OTLP messages it sends.
//!
//! Counters ([`TraceStats`], carried across reloads): spans started and sampled per worker,
//! spans dropped (by a worker when the exporter's queue is full, by the exporter when the
//! collector cannot take them), exported, export failures and retries.

pub mod buffer;
pub mod context;
pub mod export;
pub mod otlp;
pub mod span;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use config_schema::TracingSpec;

use crate::stats::{Counter, PerWorker};
pub use context::{Formats, Outgoing, SpanId, TraceId};

/// The tracing configuration in force, compiled from `[telemetry.tracing]`.
#[derive(Debug)]
pub struct Tracer {
    /// The section it was built from (a reload that leaves it unchanged keeps this tracer and
    /// its exporter thread).
    pub spec: TracingSpec,
    /// `sample_percent` in hundredths of a percent (0–10 000).
    threshold: u64,
    /// L4 connections are spans too.
    pub l4_spans: bool,
    /// Where sampled spans go; `None` without `otlp_endpoint` (propagate and sample only).
    pub sink: Option<export::TraceSink>,
}

impl Tracer {
    /// A tracer for `spec`; starts its exporter thread when the spec names an endpoint.
    pub fn new(
        spec: &TracingSpec,
        stats: &Arc<TraceStats>,
        node: &str,
    ) -> Result<Self, (&'static str, String)> {
        let sink = match &spec.otlp_endpoint {
            None => None,
            Some(endpoint) => {
                let endpoint: SocketAddr = endpoint
                    .parse()
                    .map_err(|_| ("otlp_endpoint", format!("invalid address {endpoint:?}")))?;
                let settings = export::ExportSettings {
                    endpoint,
                    batch_size: spec.batch_size,
                    batch_timeout: spec.batch_timeout.get(),
                    queue_size: spec.queue_size,
                    service_name: spec.service_name.clone(),
                    node: node.to_owned(),
                };
                Some(
                    export::TraceSink::start(settings, Arc::clone(stats)).map_err(|e| {
                        ("otlp_endpoint", format!("cannot start the exporter: {e}"))
                    })?,
                )
            }
        };
        Ok(Self {
            spec: spec.clone(),
            threshold: (spec.sample_percent * 100.0).round().clamp(0.0, 10_000.0) as u64,
            l4_spans: spec.l4_spans,
            sink,
        })
    }

    /// Starts the trace of a request with header `fields` and id `request_id`: the client's
    /// context continued, or a new trace. Sampling: the caller's decision when it made one (B3
    /// debug forces it), else `sample_percent`, drawn from the request id so that one request id
    /// always gets the same decision (Envoy's `use_request_id_for_trace_sampling`).
    pub fn begin<'a, 'b>(
        &self,
        fields: impl Iterator<Item = (&'a str, &'b [u8])>,
        request_id: &[u8],
        random: impl FnMut() -> u64,
    ) -> RequestTrace {
        let extracted = context::extract(fields);
        let mut random = random;
        let span_id = SpanId(nonzero(&mut random));
        let by_percent = || xxhash_rust::xxh3::xxh3_64(request_id) % 10_000 < self.threshold;
        match extracted.parent {
            Some(parent) => RequestTrace {
                trace_id: parent.trace_id,
                span_id,
                parent: Some(parent.span_id),
                sampled: parent.debug || parent.sampled.unwrap_or_else(by_percent),
                debug: parent.debug,
                narrow: parent.narrow,
                formats: extracted.formats,
                keep_tracestate: extracted.keep_tracestate,
                attempt: None,
                method: [0; 16],
                method_len: 0,
            },
            None => RequestTrace {
                trace_id: TraceId((u128::from(random()) << 64 | u128::from(random())).max(1)),
                span_id,
                parent: None,
                sampled: extracted.debug || extracted.sampled.unwrap_or_else(by_percent),
                debug: extracted.debug,
                narrow: false,
                formats: extracted.formats,
                keep_tracestate: false,
                attempt: None,
                method: [0; 16],
                method_len: 0,
            },
        }
    }

    /// A new span id (for an L4 connection's span).
    pub fn span_id(random: impl FnMut() -> u64) -> SpanId {
        let mut random = random;
        SpanId(nonzero(&mut random))
    }

    /// Whether a new trace with no incoming decision is sampled, by a fresh random draw (L4
    /// connections have no request id).
    pub fn sample_random(&self, random: u64) -> bool {
        random % 10_000 < self.threshold
    }
}

/// This node's name for the spans' resource (`host.name`): the kernel's host name.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A random value that is not zero (ids are never zero).
fn nonzero(random: &mut impl FnMut() -> u64) -> u64 {
    loop {
        let value = random();
        if value != 0 {
            return value;
        }
    }
}

/// One request's trace: its context and the proxy's spans in it. Fixed size, on the request's
/// `Record`.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace {
    /// The trace (the client's, or new).
    pub trace_id: TraceId,
    /// The proxy's server span.
    pub span_id: SpanId,
    /// The client's span, when the context was continued.
    pub parent: Option<SpanId>,
    /// Sampled: spans are recorded and exported, and upstreams are told so.
    pub sampled: bool,
    /// B3 debug, said again upstream.
    pub debug: bool,
    /// A 64-bit B3 trace id, written back in that width.
    pub narrow: bool,
    /// The formats that arrived (written upstream; W3C when none).
    pub formats: Formats,
    /// `tracestate` goes on (the context came from a valid `traceparent`).
    pub keep_tracestate: bool,
    /// The upstream attempt under way: its client span.
    pub attempt: Option<Attempt>,
    /// The request's method (for the client spans' names; cut at 16 bytes).
    method: [u8; 16],
    method_len: u8,
}

impl RequestTrace {
    /// Keeps `method` for the client spans.
    pub fn set_method(&mut self, method: &str) {
        let mut len = method.len().min(self.method.len());
        while !method.is_char_boundary(len) {
            len -= 1;
        }
        self.method[..len].copy_from_slice(&method.as_bytes()[..len]);
        self.method_len = len as u8;
    }

    /// The request's method.
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.method[..usize::from(self.method_len)]).unwrap_or_default()
    }

    /// The trace headers for the attempt under way (the server span's when none is).
    pub fn outgoing(&self) -> Outgoing {
        let span = self.attempt.map_or(self.span_id, |a| a.span_id);
        Outgoing::new(
            self.formats,
            self.trace_id,
            span,
            self.span_id,
            self.sampled,
            self.debug,
            self.narrow,
        )
    }
}

/// The client span of one upstream attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Its id: the parent the upstream sees.
    pub span_id: SpanId,
    /// When it started.
    pub started: Instant,
    /// 1 for the first try.
    pub number: u32,
    /// The endpoint it went to, once picked.
    pub endpoint: Option<SocketAddr>,
    /// The upstream's status (0: none arrived).
    pub status: u16,
    /// The attempt speaks HTTP/2 (else HTTP/1.1).
    pub http2: bool,
}

/// One worker's tracing counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct TraceCounters {
    /// Spans started (server, client, L4), sampled or not.
    pub started: Counter,
    /// Spans sampled (recorded for export).
    pub sampled: Counter,
    /// Sampled spans this worker dropped because the exporter's queue was full.
    pub dropped: Counter,
}

/// The process's tracing counters, carried across reloads.
#[derive(Debug)]
pub struct TraceStats {
    /// Per worker.
    pub workers: PerWorker<TraceCounters>,
    /// Spans a collector accepted.
    pub exported: AtomicU64,
    /// Spans the exporter dropped: its queue full, or given up on after retries or a refusal.
    pub export_dropped: AtomicU64,
    /// Export requests that failed (each try).
    pub export_failures: AtomicU64,
    /// Export requests sent again after a failure.
    pub export_retries: AtomicU64,
}

impl TraceStats {
    /// Counters for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: PerWorker::new(workers),
            exported: AtomicU64::new(0),
            export_dropped: AtomicU64::new(0),
            export_failures: AtomicU64::new(0),
            export_retries: AtomicU64::new(0),
        }
    }

    /// (started, sampled, exported, dropped, export failures, export retries).
    pub fn totals(&self) -> [u64; 6] {
        [
            self.workers.sum(|c| c.started.get()),
            self.workers.sum(|c| c.sampled.get()),
            self.exported.load(Ordering::Relaxed),
            self.workers.sum(|c| c.dropped.get()) + self.export_dropped.load(Ordering::Relaxed),
            self.export_failures.load(Ordering::Relaxed),
            self.export_retries.load(Ordering::Relaxed),
        ]
    }
}

/// The names of [`TraceStats::totals`], as `/stats` shows them (Prometheus adds
/// `ringmesh_tracing_` and `_total`).
pub const TOTAL_NAMES: [&str; 6] = [
    "spans_started",
    "spans_sampled",
    "spans_exported",
    "spans_dropped",
    "export_failures",
    "export_retries",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(percent: f64) -> Tracer {
        let spec = TracingSpec {
            sample_percent: percent,
            otlp_endpoint: None,
            service_name: "test".into(),
            batch_size: 16,
            batch_timeout: config_schema::Duration::from_secs(1),
            queue_size: 16,
            l4_spans: false,
        };
        Tracer::new(&spec, &Arc::new(TraceStats::new(1)), "node").expect("no exporter")
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n += 1;
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }
    }

    #[test]
    fn a_request_id_always_gets_the_same_decision() {
        let half = tracer(50.0);
        let mut decisions = Vec::new();
        for id in 0..200 {
            let id = format!("request-{id}");
            let first = half
                .begin(std::iter::empty(), id.as_bytes(), counter())
                .sampled;
            for _ in 0..3 {
                let again = half.begin(std::iter::empty(), id.as_bytes(), counter());
                assert_eq!(again.sampled, first, "{id}");
            }
            decisions.push(first);
        }
        assert!(decisions.contains(&true) && decisions.contains(&false));
        assert!(
            !tracer(0.0)
                .begin(std::iter::empty(), b"x", counter())
                .sampled
        );
        assert!(
            tracer(100.0)
                .begin(std::iter::empty(), b"x", counter())
                .sampled
        );
    }

    #[test]
    fn the_callers_decision_wins_over_the_percentage() {
        let sampled: [(&str, &[u8]); 1] = [(
            "traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )];
        let unsampled: [(&str, &[u8]); 1] = [("b3", b"0")];
        let debug: [(&str, &[u8]); 1] = [("x-b3-flags", b"1")];
        let trace = tracer(0.0).begin(sampled.iter().copied(), b"x", counter());
        assert!(trace.sampled);
        assert_eq!(trace.parent, Some(SpanId(0x00f0_67aa_0ba9_02b7)));
        assert_ne!(trace.span_id, SpanId(0x00f0_67aa_0ba9_02b7));
        assert!(
            !tracer(100.0)
                .begin(unsampled.iter().copied(), b"x", counter())
                .sampled
        );
        let forced = tracer(0.0).begin(debug.iter().copied(), b"x", counter());
        assert!(forced.sampled && forced.debug && forced.parent.is_none());
    }

    #[test]
    fn ids_are_never_zero() {
        let zero = || 0u64;
        let mut calls = 0u64;
        // The first draws are zero: they are drawn again.
        let trace = tracer(100.0).begin(std::iter::empty(), b"x", || {
            calls += 1;
            if calls < 4 { zero() } else { calls }
        });
        assert_ne!(trace.span_id.0, 0);
        assert_ne!(trace.trace_id.0, 0);
    }
}
