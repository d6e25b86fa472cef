//! Accounting, once per request for every protocol: route and cluster metrics, the access log.
//!
//! Everything lands in this worker's own counter slots (single writer, no shared atomic) and its
//! access-log buffer, which is handed to the writer thread off the request path.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::exchange::Record;
use super::headers::Fields;
use super::request::ClientProtocol;
use crate::access_log::{Entry, HeaderSource};
use crate::core::Core;
use crate::identity::SpiffeId;
use crate::snapshot::Snapshot;
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

/// Records one finished request: the route's status class and duration, the cluster's duration
/// and (for answers the proxy made itself; upstream answers are counted where they arrive) its
/// status count, and an access-log line when a log is configured.
pub fn record(core: &Core, snapshot: &Snapshot, record: &Record<'_>, fields: &LogFields<'_>) {
    let duration = record.started.elapsed();
    if let Some(route) = record.route
        && let Some((_, stats)) = snapshot.route_stats.get(route.id)
    {
        stats.slot(core.id).record(record.status, duration);
    }
    if let Some(cluster) = record.cluster {
        let counters = cluster.stats.slot(core.id);
        counters.duration.observe(duration);
        if record.locally_answered {
            counters.response(record.status);
        }
        // The mTLS part of those responses, by the client's identity (istio_requests_total's
        // source_principal); plaintext and one-way TLS cost this one branch.
        if let Some(tls) = fields.tls.filter(|tls| tls.peer_verified) {
            counters
                .peers
                .record(tls.peer_id().unwrap_or("unknown"), record.status);
        }
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
        // The exchange's trace id reaches the log once tracing records one on the `Record`.
        trace_id: None,
        headers: fields.headers,
        response_headers: fields.response_headers,
    });
}
