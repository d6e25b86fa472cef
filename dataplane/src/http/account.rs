//! Accounting, once per request for every protocol: route and cluster metrics, the access log.
//!
//! Everything lands in this worker's own counter slots (single writer, no shared atomic) and its
//! access-log buffer, which is handed to the writer thread off the request path.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::exchange::Record;
use super::request::ClientProtocol;
use crate::access_log::Entry;
use crate::core::Core;
use crate::identity::SpiffeId;
use crate::snapshot::{Cluster, Snapshot};
use crate::stats::{
    HttpMetrics, NO_GRPC_STATUS, RequestProtocol, SeriesKey, SeriesLabels, principal_hash,
};
use crate::tls::{SecurityPolicy, TlsInfo};

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
    let mut log = core.access_log.borrow_mut();
    if !log.enabled() {
        return;
    }
    let start = SystemTime::now()
        .checked_sub(duration)
        .unwrap_or_else(SystemTime::now);
    log.record(&Entry {
        start,
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
    });
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
