//! Accounting, once per request for every protocol: route and cluster metrics, the access log,
//! and the request's spans (the server span here; each attempt's client span from the
//! exchange, [`attempt_span`]).
//!
//! Everything lands in this worker's own counter slots (single writer, no shared atomic), its
//! access-log buffer and its span buffer, which are handed to the writer and exporter threads
//! off the request path.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::error::Failure;
use super::exchange::Record;
use super::headers::Fields;
use super::request::ClientProtocol;
use crate::access_log::{Entry, HeaderSource};
use crate::core::Core;
use crate::identity::SpiffeId;
use crate::snapshot::{Cluster, Snapshot};
use crate::stats::{
    HttpMetrics, NO_GRPC_STATUS, RequestProtocol, SeriesKey, SeriesLabels, principal_hash,
};
use crate::tls::{SecurityPolicy, TlsInfo};
use crate::trace::span::{Field, Protocol, SpanKind, SpanRecord};

/// The request's own fields for the access log, borrowed from wherever the codec keeps them.
#[derive(Debug, Clone, Copy)]
pub struct LogFields<'a> {
    /// Method (empty when the head could not be parsed).
    pub method: &'a str,
    /// Host or `:authority`.
    pub authority: &'a str,
    /// Path and query as received.
    pub target: &'a str,
    /// The client's protocol.
    pub protocol: ClientProtocol,
    /// `x-request-id`.
    pub request_id: &'a [u8],
    /// The client connection's address.
    pub downstream: SocketAddr,
    /// The client connection's TLS details (`None`: plaintext).
    pub tls: Option<&'a TlsInfo>,
    /// The listener's name.
    pub listener: &'a str,
    /// The request's headers for the text format's `%REQ(...)%` (`None`: the head was not
    /// parsed).
    pub headers: Option<&'a dyn HeaderSource>,
    /// The upstream response's headers for `%RESP(...)%` (`None`: no exchange ran).
    pub response_headers: Option<&'a dyn HeaderSource>,
}

/// An HTTP/2 request's own fields, read by `%REQ(...)%` when the line is written.
impl HeaderSource for Fields<'_> {
    fn header(&self, _index: usize, lower_name: &str) -> Option<&[u8]> {
        self.get(lower_name)
    }
}

/// Records one finished request: the route's status class and duration, the cluster's Istio
/// series (`istio_requests_total` and the duration and size histograms), and an access-log line
/// when a log is configured.
pub fn record(core: &Core, snapshot: &Snapshot, record: &Record<'_>, fields: &LogFields<'_>) {
    let duration = record.started.elapsed();
    if let Some(route) = record.route
        && let Some((_, stats)) = snapshot.route_stats.get(route.id)
    {
        stats.slot(core.id).record(record.status, duration);
    }
    if let Some(cluster) = record.cluster {
        let series = istio_series(core, snapshot, cluster, record, fields);
        series.requests.inc();
        series.duration.observe(duration);
        series.request_bytes.observe_bytes(record.bytes_received);
        series.response_bytes.observe_bytes(record.bytes_sent);
    }
    if let Some(trace) = &record.trace {
        server_span(core, snapshot, record, trace, fields);
    }
    let mut log = core.access_log.borrow_mut();
    if !log.enabled() {
        return;
    }
    let start = SystemTime::now()
        .checked_sub(duration)
        .unwrap_or_else(SystemTime::now);
    log.record(&Entry {
        start,
        listener: fields.listener,
        method: fields.method,
        authority: fields.authority,
        path: fields.target,
        protocol: fields.protocol.as_str(),
        status: record.status,
        bytes_received: record.bytes_received,
        bytes_sent: record.bytes_sent,
        duration,
        upstream: record.upstream,
        route: record.route.map_or("", |r| &*r.name),
        cluster: record.cluster.map_or("", |c| &*c.name),
        flags: record.flags,
        request_id: std::str::from_utf8(fields.request_id).unwrap_or_default(),
        downstream: fields.downstream,
        client: Some(record.client_ip),
        attempts: record.attempts,
        retry_stopped: record.retry_stopped.map_or("", |stopped| stopped.as_str()),
        authz_policy: record.authz_policy.unwrap_or_default(),
        authz_audit: record.authz_audit.unwrap_or_default(),
        sni: fields
            .tls
            .and_then(|tls| tls.sni.as_deref())
            .unwrap_or_default(),
        downstream_peer_principal: fields.tls.and_then(TlsInfo::peer_id).unwrap_or_default(),
        security_policy: SecurityPolicy::of(fields.tls).as_str(),
        upstream_peer_principal: record
            .upstream_principal
            .as_deref()
            .map_or("", SpiffeId::as_str),
        termination_details: "",
        trace_id: record.trace_id().map(|id| id.0),
        headers: fields.headers,
        response_headers: fields.response_headers,
    });
}

/// The request's server span: counted, and recorded when sampled.
fn server_span(
    core: &Core,
    snapshot: &Snapshot,
    record: &Record<'_>,
    trace: &crate::trace::RequestTrace,
    fields: &LogFields<'_>,
) {
    let counters = snapshot.trace_stats.workers.slot(core.id);
    counters.started.inc();
    if !trace.sampled {
        return;
    }
    counters.sampled.inc();
    let mut spans = core.spans.borrow_mut();
    if !spans.enabled() {
        return;
    }
    let mut span = SpanRecord::new(
        trace.trace_id,
        trace.span_id,
        trace.parent,
        SpanKind::Server,
        record.started,
    );
    span.status = record.status;
    span.grpc_status = record.grpc_status.filter(|_| record.grpc);
    span.error = record.status == 0 || record.status >= 500;
    span.flags = record.flags;
    span.protocol = match fields.protocol {
        ClientProtocol::Http10 => Protocol::Http10,
        ClientProtocol::Http11 => Protocol::Http11,
        ClientProtocol::Http2 => Protocol::Http2,
    };
    span.client = Some(record.client_ip);
    span.peer = Some(fields.downstream);
    span.upstream = record.upstream;
    let path = fields.target.split('?').next().unwrap_or_default();
    for (field, value) in [
        (Field::Method, fields.method),
        (Field::Route, record.route.map_or("", |r| &*r.name)),
        (Field::Cluster, record.cluster.map_or("", |c| &*c.name)),
        (Field::Path, path),
        (Field::Host, fields.authority),
        (
            Field::DownstreamPrincipal,
            fields.tls.and_then(TlsInfo::peer_id).unwrap_or_default(),
        ),
    ] {
        span.text[field as usize] = spans.text(value);
    }
    spans.push(span);
}

/// Ends the client span of the attempt under way (`record.trace`'s), which `failure` ended, or
/// which answered with its status: counted, and recorded when sampled.
pub fn attempt_span(
    core: &Core,
    snapshot: &Snapshot,
    record: &mut Record<'_>,
    failure: Option<Failure>,
) {
    let Some(trace) = record.trace.as_mut() else {
        return;
    };
    let Some(attempt) = trace.attempt.take() else {
        return;
    };
    let counters = snapshot.trace_stats.workers.slot(core.id);
    counters.started.inc();
    if !trace.sampled {
        return;
    }
    counters.sampled.inc();
    let mut spans = core.spans.borrow_mut();
    if !spans.enabled() {
        return;
    }
    let mut span = SpanRecord::new(
        trace.trace_id,
        attempt.span_id,
        Some(trace.span_id),
        SpanKind::Client,
        attempt.started,
    );
    span.attempt = attempt.number;
    span.status = attempt.status;
    span.error = failure.is_some() || attempt.status >= 500 || attempt.status == 0;
    if let Some(failure) = failure {
        span.flags = failure.flag();
    }
    span.protocol = if attempt.http2 {
        Protocol::Http2
    } else {
        Protocol::Http11
    };
    span.peer = attempt.endpoint;
    span.upstream = attempt.endpoint;
    let principal = attempt
        .endpoint
        .and(record.upstream_principal.as_deref())
        .map_or("", SpiffeId::as_str);
    for (field, value) in [
        (Field::Method, trace.method()),
        (Field::Cluster, record.cluster.map_or("", |c| &*c.name)),
        (Field::UpstreamPrincipal, principal),
    ] {
        span.text[field as usize] = spans.text(value);
    }
    spans.push(span);
}

/// The request's Istio series in this worker's table of `cluster`: found by numbers only (the
/// workloads' ids, the principals' hashes, code, gRPC status, flags, protocol, policy, reporter),
/// so a request whose series exists allocates nothing and hashes no string. The source workload
/// is a binary search of the workload table for the peer address (one length check without
/// `[[workloads]]`); the destination's was resolved with the snapshot; a principal's key was
/// computed when its connection's certificate was read (`SpiffeId::key`).
fn istio_series<'c>(
    core: &Core,
    snapshot: &Snapshot,
    cluster: &'c Cluster,
    record: &Record<'_>,
    fields: &LogFields<'_>,
) -> &'c HttpMetrics {
    let source = snapshot.workloads.get(record.peer_ip);
    // A verified client certificate without a SPIFFE ID is principal "" (key 1).
    let source_tls = fields.tls.filter(|tls| tls.peer_verified);
    let source_principal = source_tls.map(|tls| tls.peer_id().unwrap_or_default());
    let destination = record
        .upstream
        .and_then(|endpoint| cluster.endpoint_workloads.get(endpoint));
    let upstream_principal = record.upstream_principal.as_deref();
    let destination_principal = upstream_principal.map(SpiffeId::as_str);
    let key = SeriesKey {
        source_workload: source.map_or(0, |w| w.id),
        // The IDs' keys were computed once, when each connection's certificate was read.
        source_principal: source_tls.map_or(0, |tls| {
            tls.peer_principal
                .as_ref()
                .map_or_else(|| principal_hash(""), SpiffeId::key)
        }),
        destination_workload: destination.map_or(0, |w| w.id),
        destination_principal: upstream_principal.map_or(0, SpiffeId::key),
        service: 0,
        response_code: record.status,
        grpc_status: record.grpc_status.unwrap_or(NO_GRPC_STATUS),
        flags: record.flags,
        protocol: if record.grpc {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        },
        // The reporter's own side of the call: the client's connection (destination), or
        // the connection to the upstream (source).
        mutual_tls: if record.reporter_source {
            destination_principal.is_some()
        } else {
            source_principal.is_some()
        },
        reporter_source: record.reporter_source,
    };
    cluster
        .stats
        .slot(core.id)
        .series
        .get(&key, || SeriesLabels {
            key,
            source_workload: source.cloned(),
            source_principal: source_principal.map(Into::into),
            destination_workload: destination.cloned(),
            destination_principal: destination_principal.map(Into::into),
            service: None,
        })
}
