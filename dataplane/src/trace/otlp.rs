//! The OTLP protobuf messages the exporter sends, encoded by hand: an
//! `ExportTraceServiceRequest` (opentelemetry-proto `collector/trace/v1`) with one
//! `ResourceSpans`, one `ScopeSpans` and the spans of a batch. A few varints and
//! length-delimited fields are less code than a protobuf build step; the integration test
//! decodes the output with the reference `opentelemetry-proto` package.
//!
//! Field numbers (opentelemetry-proto v1):
//! `ExportTraceServiceRequest { resource_spans = 1 }`,
//! `ResourceSpans { resource = 1, scope_spans = 2 }`, `Resource { attributes = 1 }`,
//! `ScopeSpans { scope = 1, spans = 2 }`, `InstrumentationScope { name = 1, version = 2 }`,
//! `Span { trace_id = 1, span_id = 2, parent_span_id = 4, name = 5, kind = 6,
//! start_time_unix_nano = 7 (fixed64), end_time_unix_nano = 8 (fixed64), attributes = 9,
//! status = 15 }`, `Status { message = 2, code = 3 }`, `KeyValue { key = 1, value = 2 }`,
//! `AnyValue { string_value = 1, bool_value = 2, int_value = 3 }`.

use std::fmt::Write as _;

use super::span::{Batch, Field, SpanKind, SpanRecord};

/// What the spans' resource says about the process.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `service.name`.
    pub service_name: String,
    /// `service.version`.
    pub service_version: &'static str,
    /// `host.name` and `service.instance.id`: the node.
    pub node: String,
}

/// A protobuf writer over a reused buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The encoded bytes.
    pub out: Vec<u8>,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

impl Writer {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.out.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.out.push(value as u8);
    }

    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn uint(&mut self, field: u32, value: u64) {
        self.tag(field, VARINT);
        self.varint(value);
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        self.tag(field, FIXED64);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        self.tag(field, LEN);
        self.varint(value.len() as u64);
        self.out.extend_from_slice(value);
    }

    /// A nested message: `body` writes its fields, then its length goes in front of them.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Self)) {
        self.tag(field, LEN);
        let start = self.out.len();
        body(self);
        let len = self.out.len() - start;
        let mut prefix = [0u8; 10];
        let mut n = 0;
        let mut value = len as u64;
        while value >= 0x80 {
            prefix[n] = (value as u8) | 0x80;
            value >>= 7;
            n += 1;
        }
        prefix[n] = value as u8;
        self.out.splice(start..start, prefix[..=n].iter().copied());
    }

    fn string_attribute(&mut self, key: &str, value: &str) {
        self.message(9, |w| {
            w.bytes(1, key.as_bytes());
            w.message(2, |w| w.bytes(1, value.as_bytes()));
        });
    }

    fn int_attribute(&mut self, key: &str, value: i64) {
        self.message(9, |w| {
            w.bytes(1, key.as_bytes());
            w.message(2, |w| w.uint(3, value as u64));
        });
    }

    fn bool_attribute(&mut self, key: &str, value: bool) {
        self.message(9, |w| {
            w.bytes(1, key.as_bytes());
            w.message(2, |w| w.uint(2, u64::from(value)));
        });
    }
}

/// Encodes an `ExportTraceServiceRequest` with `count` spans of `batches`, starting at span
/// `first` of the first batch, into `out` (cleared first). `scratch` is a reused string.
pub fn encode<'a>(
    resource: &Resource,
    batches: impl Iterator<Item = (&'a Batch, std::ops::Range<usize>)>,
    out: &mut Vec<u8>,
    scratch: &mut String,
) {
    let mut w = Writer {
        out: std::mem::take(out),
    };
    w.out.clear();
    w.message(1, |w| {
        // Resource: attributes are field 1 of Resource, not 9 as on a span.
        w.message(1, |w| {
            for (key, value) in [
                ("service.name", resource.service_name.as_str()),
                ("service.version", resource.service_version),
                ("service.instance.id", resource.node.as_str()),
                ("host.name", resource.node.as_str()),
                ("telemetry.sdk.name", "ringmesh"),
            ] {
                w.message(1, |w| {
                    w.bytes(1, key.as_bytes());
                    w.message(2, |w| w.bytes(1, value.as_bytes()));
                });
            }
        });
        w.message(2, |w| {
            w.message(1, |w| {
                w.bytes(1, b"ringmesh");
                w.bytes(2, resource.service_version.as_bytes());
            });
            for (batch, range) in batches {
                for span in batch.spans.get(range).unwrap_or_default() {
                    w.message(2, |w| span_message(w, span, &batch.text, scratch));
                }
            }
        });
    });
    *out = w.out;
}

/// One `Span`.
fn span_message(w: &mut Writer, span: &SpanRecord, text: &[u8], scratch: &mut String) {
    w.bytes(1, &span.trace_id.to_bytes());
    w.bytes(2, &span.span_id.to_bytes());
    if let Some(parent) = span.parent {
        w.bytes(4, &parent.to_bytes());
    }
    let method = span.field(Field::Method, text);
    let route = span.field(Field::Route, text);
    scratch.clear();
    match span.kind {
        SpanKind::Connection => {
            let _ = write!(scratch, "tcp {}", span.field(Field::Listener, text));
        }
        // OpenTelemetry's HTTP span name: `{method} {http.route}`, or the method alone.
        _ if method.is_empty() => scratch.push_str("HTTP"),
        SpanKind::Server if !route.is_empty() => {
            let _ = write!(scratch, "{method} {route}");
        }
        _ => scratch.push_str(method),
    }
    w.bytes(5, scratch.as_bytes());
    w.uint(
        6,
        match span.kind {
            SpanKind::Server | SpanKind::Connection => 2,
            SpanKind::Client => 3,
        },
    );
    w.fixed64(7, span.start);
    w.fixed64(8, span.end.max(span.start));
    if !method.is_empty() {
        w.string_attribute("http.request.method", method);
    }
    if span.kind == SpanKind::Server && !route.is_empty() {
        w.string_attribute("http.route", route);
    }
    if span.status != 0 {
        w.int_attribute("http.response.status_code", i64::from(span.status));
    }
    if let Some(grpc_status) = span.grpc_status {
        w.string_attribute("rpc.system", "grpc");
        w.int_attribute("rpc.grpc.status_code", i64::from(grpc_status));
    }
    for (field, key) in [
        (Field::Path, "url.path"),
        (Field::Host, "server.address"),
        (Field::Cluster, "ringmesh.upstream.cluster"),
        (Field::DownstreamPrincipal, "ringmesh.downstream.principal"),
        (Field::UpstreamPrincipal, "ringmesh.upstream.principal"),
        (Field::Listener, "ringmesh.listener"),
    ] {
        let value = span.field(field, text);
        if !value.is_empty() {
            w.string_attribute(key, value);
        }
    }
    if let Some(client) = span.client {
        scratch.clear();
        let _ = write!(scratch, "{client}");
        w.string_attribute("client.address", scratch);
    }
    if let Some(peer) = span.peer {
        scratch.clear();
        let _ = write!(scratch, "{}", peer.ip());
        w.string_attribute("network.peer.address", scratch);
        w.int_attribute("network.peer.port", i64::from(peer.port()));
    }
    if let Some(upstream) = span.upstream {
        scratch.clear();
        let _ = write!(scratch, "{upstream}");
        w.string_attribute("ringmesh.upstream.endpoint", scratch);
        if span.kind == SpanKind::Client {
            scratch.clear();
            let _ = write!(scratch, "{}", upstream.ip());
            w.string_attribute("server.address", scratch);
            w.int_attribute("server.port", i64::from(upstream.port()));
        }
    }
    if let Some(version) = span.protocol.version() {
        w.string_attribute("network.protocol.name", "http");
        w.string_attribute("network.protocol.version", version);
    } else {
        w.string_attribute("network.transport", "tcp");
    }
    if span.kind == SpanKind::Client {
        w.int_attribute("ringmesh.attempt", i64::from(span.attempt));
        // OpenTelemetry's count of resends: 0 for the first try.
        if span.attempt > 1 {
            w.int_attribute("http.request.resend_count", i64::from(span.attempt - 1));
        }
    }
    if !span.flags.is_empty() {
        scratch.clear();
        span.flags.write_to(scratch);
        w.string_attribute("ringmesh.response_flags", scratch);
    }
    if span.error {
        // `error.type`: the status code, or the response flags when no status arrived.
        scratch.clear();
        if span.status >= 500 {
            let _ = write!(scratch, "{}", span.status);
        } else if !span.flags.is_empty() {
            span.flags.write_to(scratch);
        } else {
            scratch.push_str("_OTHER");
        }
        w.string_attribute("error.type", scratch);
        w.bool_attribute("error", true);
    }
    // Status: ERROR (2) for failures; UNSET otherwise (OpenTelemetry leaves server 4xx unset).
    if span.error {
        w.message(15, |w| w.uint(3, 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_nested_lengths() {
        let mut w = Writer::default();
        w.varint(300);
        assert_eq!(w.out, [0xac, 0x02]);
        let mut w = Writer::default();
        // A nested message longer than 127 bytes gets a two-byte length.
        w.message(1, |w| w.bytes(2, &[7u8; 200]));
        assert_eq!(&w.out[..3], &[0x0a, 0xcb, 0x01]);
        assert_eq!(w.out.len(), 3 + 3 + 200);
    }
}
