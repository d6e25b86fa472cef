//! Accounting of one L4 connection when it ends: its access-log line.
//!
//! [`Connection`] is filled in as the connection goes (connect attempts, the endpoint, the bytes
//! each way, why the proxy ended it) and [`record`] writes it once, the one call `forward` makes
//! at the end. Response flags follow Envoy's TCP proxy: `UH` no usable endpoint, `UO` the
//! circuit breaker is full, `UF` a connect (or the upstream TLS handshake) failed, with `URX`
//! once every endpoint was tried, `SI` the idle timeout closed it, `RBAC` an authorization
//! policy denied it (at connect, or on a reload's re-check), `NR` no cluster to send it to.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::copy::Moved;
use crate::access_log::{Entry, ResponseFlags};
use crate::core::Core;
use crate::identity::SpiffeId;
use crate::policy::authz::Tracked;
use crate::snapshot::{Cluster, Listener};
use crate::tls::SecurityPolicy;
use crate::trace::TraceId;

/// Connect attempts made for a connection.
#[derive(Debug, Default)]
pub struct Tries {
    /// How many endpoints were tried.
    pub count: u32,
    /// The last endpoint tried (the one connected to, when one was).
    pub last: Option<SocketAddr>,
}

/// What one L4 connection's log line says, filled in as it goes.
#[derive(Debug)]
pub struct Connection {
    start: SystemTime,
    started: Instant,
    /// How the client connection was secured.
    pub security: SecurityPolicy,
    /// Connect attempts.
    pub tries: Tries,
    /// Why it was not an ordinary proxied connection.
    pub flags: ResponseFlags,
    /// Bytes each way.
    pub moved: Moved,
    /// The upstream's verified SPIFFE ID (clusters with TLS).
    pub upstream_principal: Option<SpiffeId>,
    /// The policy that denied the connection (`-`: no allow policy matched).
    pub authz_policy: Option<Box<str>>,
    /// Why the proxy ended the connection (Envoy's connection termination details).
    pub details: String,
    /// The connection's trace, when it is a sampled span (`l4_spans`).
    pub trace_id: Option<TraceId>,
}

impl Connection {
    /// A connection starting now.
    pub fn new(security: SecurityPolicy) -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
            security,
            tries: Tries::default(),
            flags: ResponseFlags::default(),
            moved: Moved::default(),
            upstream_principal: None,
            authz_policy: None,
            details: String::new(),
            trace_id: None,
        }
    }

    /// An authorization policy denied the connection at connect (`policy`: the deny policy
    /// that matched; `None`: no allow policy did).
    pub fn denied(&mut self, policy: Option<&str>) {
        self.flags.insert(ResponseFlags::RBAC_DENIED);
        let name = policy.unwrap_or("none");
        // Envoy's network RBAC filter's words.
        self.details = format!("rbac_access_denied_matched_policy[{name}]");
        self.authz_policy = Some(
            policy
                .unwrap_or(crate::policy::authz::NO_ALLOW_MATCHED)
                .into(),
        );
    }

    /// A reload's policies closed the open connection.
    pub fn revoked(&mut self) {
        self.flags.insert(ResponseFlags::RBAC_DENIED);
        "rbac_access_denied_on_reload".clone_into(&mut self.details);
    }
}

/// Writes the line of a connection that reached a cluster (or was refused on its way there).
pub fn record(
    core: &Core,
    listener: &Listener,
    cluster: &Cluster,
    tracked: &Tracked,
    connection: &Connection,
) {
    record_node(
        core,
        listener,
        &cluster.name,
        tracked.peer,
        Some(tracked),
        connection,
    );
}

/// Writes the line of a connection whose upstream is named `cluster` (node mode: a service or
/// workload); `tracked` when it was registered for the live re-check (its SNI and principal).
pub fn record_node(
    core: &Core,
    listener: &Listener,
    cluster: &str,
    peer: SocketAddr,
    tracked: Option<&Tracked>,
    connection: &Connection,
) {
    let mut log = core.access_log.borrow_mut();
    if !log.tcp_enabled() {
        return;
    }
    log.record(&Entry {
        start: connection.start,
        duration: connection.started.elapsed(),
        listener: &listener.name,
        protocol: "",
        method: "",
        authority: "",
        path: "",
        status: 0,
        bytes_received: connection.moved.received.get(),
        bytes_sent: connection.moved.sent.get(),
        upstream: connection.tries.last,
        route: "",
        cluster,
        flags: connection.flags,
        request_id: "",
        downstream: peer,
        client: None,
        attempts: connection.tries.count,
        retry_stopped: "",
        authz_policy: connection.authz_policy.as_deref().unwrap_or_default(),
        authz_audit: "",
        sni: tracked.and_then(|t| t.sni.as_deref()).unwrap_or_default(),
        downstream_peer_principal: tracked
            .and_then(|t| t.principal.as_ref())
            .map_or("", SpiffeId::as_str),
        security_policy: connection.security.as_str(),
        upstream_peer_principal: connection
            .upstream_principal
            .as_ref()
            .map_or("", SpiffeId::as_str),
        termination_details: &connection.details,
        trace_id: connection.trace_id.map(|id| id.0),
        headers: None,
        response_headers: None,
    });
}

/// Writes the line of a connection closed because no cluster takes it (`NR`): a passthrough
/// listener without a route for its SNI or a default, an auto listener without a cluster for
/// non-HTTP bytes. `received`: the bytes read before deciding.
pub fn no_route(
    core: &Core,
    listener: &Listener,
    peer: SocketAddr,
    sni: &str,
    security: SecurityPolicy,
    received: u64,
) {
    let mut log = core.access_log.borrow_mut();
    if !log.tcp_enabled() {
        return;
    }
    let connection = Connection::new(security);
    log.record(&Entry {
        start: connection.start,
        duration: connection.started.elapsed(),
        listener: &listener.name,
        protocol: "",
        method: "",
        authority: "",
        path: "",
        status: 0,
        bytes_received: received,
        bytes_sent: 0,
        upstream: None,
        route: "",
        cluster: "",
        flags: ResponseFlags::NO_ROUTE,
        request_id: "",
        downstream: peer,
        client: None,
        attempts: 0,
        retry_stopped: "",
        authz_policy: "",
        authz_audit: "",
        sni,
        downstream_peer_principal: "",
        security_policy: security.as_str(),
        upstream_peer_principal: "",
        termination_details: "",
        trace_id: None,
        headers: None,
        response_headers: None,
    });
}
