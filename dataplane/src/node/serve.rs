//! The node-mode connection path: what happens to a connection accepted on a `[node]`
//! listener, from its original destination to the copy and its accounting. One function per
//! listener role, read top to bottom:
//!
//! - [`outbound`]: a local workload's captured connection. The node table resolves the
//!   original destination (service VIP → balanced endpoint, workload, or passthrough); a
//!   destination on this node is served here with the inbound policy checks (the source's
//!   identity is known to this node), a remote HBONE workload is reached through a tunnel that
//!   presents the source workload's certificate, anything else by a direct connection.
//! - [`inbound`]: captured plaintext to a local workload: refused for STRICT workloads, else
//!   authorized without an identity and connected.
//! - [`hbone`]: a tunnel connection from another node, captured for one local workload: mutual
//!   TLS with that workload's certificate, then one CONNECT stream per proxied connection
//!   ([`crate::hbone::server`]), each authorized with the client's verified identity.
//!
//! Every connection to a workload keeps the original source address (`IP_TRANSPARENT`, see
//! [`crate::capture::connect_from`]) and carries `[node] mark`, so the capture rules never take
//! ringmesh's own traffic. Connections to local workloads are registered for the live
//! authorization re-check: a reload whose policies deny one closes it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;
use tracing::debug;

use super::{Destination, NodeTable, Role};
use crate::access_log::ResponseFlags;
use crate::capture;
use crate::core::Core;
use crate::event::Signal;
use crate::hbone::client::{ConnectOptions, PoolKey};
use crate::hbone::server::{ConnectHandler, Opened, Refusal, ServerOptions};
use crate::hbone::{ConnectRequest, Outcome};
use crate::identity::SpiffeId;
use crate::l4::account;
use crate::l4::{authorized, copy};
use crate::policy::authz::Tracked;
use crate::snapshot::{Listener, Snapshot, SnapshotRef};
use crate::stats::TcpMetrics;
use crate::tls::SecurityPolicy;
use crate::tls::transport::Transport;
use crate::workload::Workload;

/// Bound on the TLS handshake of an incoming tunnel connection.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one connection accepted on the `[node]` listener `listener` (whose role is `role`).
pub async fn serve(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    listener: &Listener,
    name: &Rc<str>,
    role: Role,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some(table) = snapshot.node.clone() else {
        return;
    };
    let refused = snapshot.node_stats.refused.slot(core.id);
    let original = match capture::original_destination(&stream, table.capture) {
        Ok(original) => original,
        Err(e) => {
            refused.no_original_destination.inc();
            debug!(listener = %listener.name, %peer, error = %e, "no original destination; closing");
            return;
        }
    };
    match role {
        Role::Outbound => {
            outbound(
                core, snapshot, listener, name, &table, stream, peer, original,
            )
            .await;
        }
        Role::Inbound => {
            inbound(
                core, snapshot, listener, name, &table, stream, peer, original,
            )
            .await;
        }
        // Boxed: the TLS handshake and the HTTP/2 server would make every connection task as
        // big as this branch.
        Role::Hbone => {
            Box::pin(hbone(
                core, snapshot, listener, name, &table, stream, peer, original,
            ))
            .await;
        }
    }
}

/// A local workload's captured connection to `original`.
#[allow(clippy::too_many_arguments)]
async fn outbound(
    core: &Rc<Core>,
    snapshot: &Snapshot,
    listener: &Listener,
    name: &Rc<str>,
    table: &NodeTable,
    stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) {
    let refused = snapshot.node_stats.refused.slot(core.id);
    // Only local workloads' connections are captured here; anything else reached the port by
    // mistake (or spoofs an address) and is not proxied as anyone.
    let Some(source) = table.workload(peer.ip()).filter(|w| w.node_local).cloned() else {
        refused.unknown_source.inc();
        debug!(%peer, %original, "outbound connection from no local workload; closing");
        return;
    };
    let destination = core.resolve_node_destination(snapshot, table, original);
    let (workload, target, service, _in_flight) = match destination {
        Destination::Service {
            service,
            endpoint,
            target,
            in_flight,
        } => (Some(endpoint), target, Some(service), Some(in_flight)),
        Destination::Workload { workload, target } => (Some(workload), target, None, None),
        Destination::Passthrough(target) => (None, target, None, None),
        Destination::NoEndpoint { service } => {
            refused.no_endpoint.inc();
            debug!(%peer, %original, service = %service.name, "service has no endpoints; closing");
            let mut connection = account::Connection::new(SecurityPolicy::None);
            connection.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
            let name = service_label(Some(&service.name), None);
            record(core, listener, &name, peer, None, &connection);
            return;
        }
    };
    let route = Route {
        listener: name,
        source: &source,
        destination: workload.as_ref(),
        service: service_label(service.as_ref().map(|s| &*s.name), workload.as_deref()),
        target,
    };
    match &workload {
        Some(workload) if workload.node_local => {
            same_node(core, snapshot, listener, table, stream, peer, &route).await;
        }
        Some(workload) if workload.protocol == config_schema::WorkloadProtocol::Hbone => {
            tunnel(core, snapshot, listener, table, stream, peer, &route).await;
        }
        _ => direct(core, snapshot, listener, table, stream, peer, &route).await,
    }
}

/// Where an outbound connection goes.
struct Route<'a> {
    /// The listener's name, as the worker holds it.
    listener: &'a Rc<str>,
    /// The local workload that opened it.
    source: &'a Arc<Workload>,
    /// The workload it goes to (none for passthrough).
    destination: Option<&'a Arc<Workload>>,
    /// `destination_service` / the access log's cluster: the service's name, else the
    /// workload's, else `passthrough`.
    service: Arc<str>,
    /// The address connected to.
    target: SocketAddr,
}

fn service_label(service: Option<&str>, workload: Option<&Workload>) -> Arc<str> {
    match (service, workload) {
        (Some(service), _) => Arc::from(service),
        (None, Some(workload)) => Arc::from(&*workload.name),
        (None, None) => Arc::from("passthrough"),
    }
}

/// A destination on this node: the inbound checks (mode needs nothing more — the source is a
/// mesh workload whose identity this node holds), then a connection from the source's address.
async fn same_node(
    core: &Rc<Core>,
    snapshot: &Snapshot,
    listener: &Listener,
    table: &NodeTable,
    stream: TcpStream,
    peer: SocketAddr,
    route: &Route<'_>,
) {
    let principal = route.source.spiffe_id.as_deref().cloned();
    let registration = core.l4_connections.register(Tracked {
        listener: Rc::clone(route.listener),
        peer,
        destination_port: route.target.port(),
        sni: None,
        principal,
        revoked: Signal::default(),
    });
    let tracked = &registration.tracked;
    // Same node: the node itself vouches for the source's identity, as ztunnel's local path.
    let mut connection = account::Connection::new(SecurityPolicy::MutualTls);
    let span = core.connection_span(snapshot, &listener.name, &route.service, peer);
    connection.trace_id = span.as_ref().map(|span| span.trace_id());
    if authorized(core, listener, tracked, &mut connection) {
        let upstream = connect(table, Some(peer), route.target, &mut connection).await;
        if let Some(upstream) = upstream {
            let series = series(
                core,
                listener,
                Some(route.source),
                tracked.principal.as_ref(),
                route.destination,
                route.destination.and_then(|w| w.spiffe_id.as_deref()),
                &route.service,
                true,
            );
            copy_plain(
                core,
                listener,
                stream,
                upstream,
                series,
                Some(&tracked.revoked),
                &mut connection,
            )
            .await;
        }
    }
    record(
        core,
        listener,
        &route.service,
        peer,
        Some(tracked),
        &connection,
    );
}

/// A workload outside the mesh, or passthrough: a plain connection from the source's address.
async fn direct(
    core: &Rc<Core>,
    snapshot: &Snapshot,
    listener: &Listener,
    table: &NodeTable,
    stream: TcpStream,
    peer: SocketAddr,
    route: &Route<'_>,
) {
    let mut connection = account::Connection::new(SecurityPolicy::None);
    let span = core.connection_span(snapshot, &listener.name, &route.service, peer);
    connection.trace_id = span.as_ref().map(|span| span.trace_id());
    if let Some(upstream) = connect(table, Some(peer), route.target, &mut connection).await {
        let principal = route.source.spiffe_id.as_deref();
        let series = series(
            core,
            listener,
            Some(route.source),
            principal,
            route.destination,
            None,
            &route.service,
            false,
        );
        copy_plain(
            core,
            listener,
            stream,
            upstream,
            series,
            None,
            &mut connection,
        )
        .await;
    }
    record(core, listener, &route.service, peer, None, &connection);
}

/// A workload on another node: an HBONE tunnel presenting the source workload's certificate to
/// the destination workload's address, which its node captures.
async fn tunnel(
    core: &Rc<Core>,
    snapshot: &Snapshot,
    listener: &Listener,
    table: &NodeTable,
    stream: TcpStream,
    peer: SocketAddr,
    route: &Route<'_>,
) {
    let refused = snapshot.node_stats.refused.slot(core.id);
    let mut connection = account::Connection::new(SecurityPolicy::MutualTls);
    let source_id = route.source.spiffe_id.as_deref();
    let destination_id = route.destination.and_then(|w| w.spiffe_id.as_deref());
    let tls = match (source_id, destination_id, table.tls.as_ref()) {
        (Some(source), Some(destination), Some(tls)) => tls
            .client(source, destination)
            .map(|config| (source, destination, config)),
        _ => None,
    };
    let Some((source_id, destination_id, tls)) = tls else {
        refused.no_certificate.inc();
        debug!(%peer, target = %route.target, "no certificate for the tunnel's identities; closing");
        connection
            .flags
            .insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
        record(core, listener, &route.service, peer, None, &connection);
        return;
    };
    let key = PoolKey {
        source: Rc::from(source_id.as_str()),
        address: SocketAddr::new(route.target.ip(), table.hbone_port),
        server: Rc::from(destination_id.as_str()),
    };
    // With `l4_spans`, the connection is a span, and the tunnel carries it as the parent.
    let span = core.connection_span(snapshot, &listener.name, &route.service, peer);
    let mut request = ConnectRequest::new(route.target, Some(peer));
    request.baggage = Some(baggage(route.source));
    request.traceparent = span.as_ref().map(|span| span.traceparent());
    connection.trace_id = span.as_ref().map(|span| span.trace_id());
    let options = ConnectOptions {
        mark: Some(table.mark),
        connect_timeout: table.connect_timeout,
    };
    connection.tries.count = 1;
    connection.tries.last = Some(route.target);
    let pool = core.hbone_pool(snapshot);
    let tunnel = match pool.connect(&key, &tls, &request, options).await {
        Ok(tunnel) => tunnel,
        Err(e) => {
            connection
                .flags
                .insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
            debug!(%peer, target = %route.target, error = %e, "HBONE tunnel failed");
            record(core, listener, &route.service, peer, None, &connection);
            return;
        }
    };
    connection.upstream_principal = Some(tunnel.peer().clone());
    let series = series(
        core,
        listener,
        Some(route.source),
        Some(source_id),
        route.destination,
        Some(tunnel.peer()),
        &route.service,
        true,
    );
    series.opened.inc();
    let outcome = tunnel.copy(Transport::Plain(stream), None).await;
    note_outcome(&outcome, series, &mut connection, false);
    series.closed.inc();
    debug!(%peer, target = %route.target, ended = ?outcome.ended, "HBONE tunnel closed");
    record(core, listener, &route.service, peer, None, &connection);
}

/// Captured plaintext to a local workload from outside the mesh.
#[allow(clippy::too_many_arguments)]
async fn inbound(
    core: &Rc<Core>,
    snapshot: &Snapshot,
    listener: &Listener,
    name: &Rc<str>,
    table: &NodeTable,
    stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) {
    let refused = snapshot.node_stats.refused.slot(core.id);
    let Some(workload) = table
        .workload(original.ip())
        .filter(|w| w.node_local)
        .cloned()
    else {
        refused.not_local.inc();
        debug!(%peer, %original, "plaintext inbound to no local workload; closing");
        return;
    };
    let service = Arc::<str>::from(&*workload.name);
    let mut connection = account::Connection::new(SecurityPolicy::None);
    if workload.mode == Some(config_schema::PeerAuthenticationMode::Strict) {
        refused.strict.inc();
        debug!(%peer, %original, workload = %workload.name, "plaintext to a STRICT workload; closing");
        connection.flags.insert(ResponseFlags::RBAC_DENIED);
        "strict_mode_plaintext_refused".clone_into(&mut connection.details);
        record(core, listener, &service, peer, None, &connection);
        return;
    }
    let span = core.connection_span(snapshot, &listener.name, &service, peer);
    connection.trace_id = span.as_ref().map(|span| span.trace_id());
    let registration = core.l4_connections.register(Tracked {
        listener: Rc::clone(name),
        peer,
        destination_port: original.port(),
        sni: None,
        principal: None,
        revoked: Signal::default(),
    });
    let tracked = &registration.tracked;
    if authorized(core, listener, tracked, &mut connection)
        && let Some(upstream) = connect(table, Some(peer), original, &mut connection).await
    {
        let series = series(
            core,
            listener,
            table.workload(peer.ip()),
            None,
            Some(&workload),
            None,
            &service,
            false,
        );
        copy_plain(
            core,
            listener,
            stream,
            upstream,
            series,
            Some(&tracked.revoked),
            &mut connection,
        )
        .await;
    }
    record(core, listener, &service, peer, Some(tracked), &connection);
}

/// A tunnel connection from another node for the local workload at `original`'s address.
#[allow(clippy::too_many_arguments)]
async fn hbone(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    listener: &Listener,
    name: &Rc<str>,
    table: &Arc<NodeTable>,
    stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) {
    let refused = snapshot.node_stats.refused.slot(core.id);
    let Some(workload) = table
        .workload(original.ip())
        .filter(|w| w.node_local)
        .cloned()
    else {
        refused.not_local.inc();
        debug!(%peer, %original, "tunnel to no local workload; closing");
        return;
    };
    let server_tls = workload
        .spiffe_id
        .as_deref()
        .and_then(|id| table.tls.as_ref()?.server_tls(id));
    let Some(server_tls) = server_tls else {
        refused.no_certificate.inc();
        debug!(%peer, workload = %workload.name, "no certificate for the workload; closing");
        return;
    };
    let counters = listener.stats.workers.slot(core.id);
    let (stream, info) = match crate::tls::accept(stream, server_tls, HANDSHAKE_TIMEOUT).await {
        Ok(accepted) => accepted,
        Err(e) => {
            counters.tls_handshake_errors.inc();
            debug!(%peer, workload = %workload.name, error = %e, "tunnel handshake refused");
            return;
        }
    };
    counters.tls_handshakes.inc();
    let handler = Rc::new(Inbound {
        core: Rc::clone(core),
        snapshot: snapshot.clone(),
        listener: Rc::clone(name),
        table: Arc::clone(table),
        workload,
        node: peer,
    });
    let options =
        ServerOptions::from_http2(&config_schema::Http2Spec::default(), HANDSHAKE_TIMEOUT);
    let counters = snapshot
        .node_stats
        .hbone
        .get(core.id)
        .cloned()
        .unwrap_or_default();
    crate::hbone::server::serve(
        Transport::Tls(Box::new(stream), Box::new(info)),
        original.ip(),
        handler,
        &options,
        counters,
        &core.draining,
    )
    .await;
}

/// Answers the CONNECT streams of one tunnel connection to a local workload.
struct Inbound {
    core: Rc<Core>,
    snapshot: SnapshotRef,
    listener: Rc<str>,
    table: Arc<NodeTable>,
    workload: Arc<Workload>,
    /// The peer node's address (the source when a stream has no `forwarded`).
    node: SocketAddr,
}

/// One open CONNECT stream: its place in the live re-check registry and its accounting.
struct Stream {
    core: Rc<Core>,
    slot: usize,
    tracked: Rc<Tracked>,
    connection: account::Connection,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.core.l4_connections.forget(self.slot);
    }
}

impl Inbound {
    fn listener(&self) -> Option<&Listener> {
        self.snapshot.listener(&self.listener)
    }
}

impl ConnectHandler for Inbound {
    type Session = Stream;

    async fn open(&self, request: &ConnectRequest) -> Result<Opened<Stream>, Refusal> {
        let Some(listener) = self.listener() else {
            return Err(Refusal::Unavailable);
        };
        let source = request.source.unwrap_or(self.node);
        let (slot, tracked) = self.core.l4_connections.track(Tracked {
            listener: Rc::clone(&self.listener),
            peer: source,
            destination_port: request.target.port(),
            sni: None,
            principal: request.peer.clone(),
            revoked: Signal::default(),
        });
        let mut stream = Stream {
            core: Rc::clone(&self.core),
            slot,
            tracked,
            connection: account::Connection::new(SecurityPolicy::MutualTls),
        };
        let service = Arc::<str>::from(&*self.workload.name);
        if !authorized(
            &self.core,
            listener,
            &stream.tracked,
            &mut stream.connection,
        ) {
            record(
                &self.core,
                listener,
                &service,
                source,
                Some(&stream.tracked),
                &stream.connection,
            );
            return Err(Refusal::Unauthorized);
        }
        match connect(
            &self.table,
            Some(source),
            request.target,
            &mut stream.connection,
        )
        .await
        {
            Some(upstream) => Ok(Opened {
                upstream,
                session: stream,
            }),
            None => {
                record(
                    &self.core,
                    listener,
                    &service,
                    source,
                    Some(&stream.tracked),
                    &stream.connection,
                );
                Err(Refusal::Unavailable)
            }
        }
    }

    fn close_signal<'s>(&self, session: &'s Stream) -> Option<&'s Signal> {
        Some(&session.tracked.revoked)
    }

    fn ended(&self, _request: &ConnectRequest, mut session: Stream, outcome: &Outcome) {
        let Some(listener) = self.listener() else {
            return;
        };
        let service = Arc::<str>::from(&*self.workload.name);
        let source = self.table.workload(session.tracked.peer.ip());
        let series = series(
            &self.core,
            listener,
            source,
            session.tracked.principal.as_ref(),
            Some(&self.workload),
            self.workload.spiffe_id.as_deref(),
            &service,
            true,
        );
        // Opened and closed together: the stream's series is known only once it is accounted.
        series.opened.inc();
        note_outcome(outcome, series, &mut session.connection, true);
        series.closed.inc();
        record(
            &self.core,
            listener,
            &service,
            session.tracked.peer,
            Some(&session.tracked),
            &session.connection,
        );
    }
}

/// Notes how a tunnel stream ended: its bytes (from the client's side: into the tunnel is
/// received on the outbound side, from the tunnel on the inbound side) and why.
fn note_outcome(
    outcome: &Outcome,
    series: &TcpMetrics,
    connection: &mut account::Connection,
    inbound: bool,
) {
    let (received, sent) = if inbound {
        (outcome.from_tunnel, outcome.into_tunnel)
    } else {
        (outcome.into_tunnel, outcome.from_tunnel)
    };
    connection.moved.received.set(received);
    connection.moved.sent.set(sent);
    series.received.add(received);
    series.sent.add(sent);
    if let crate::hbone::Ended::Revoked = outcome.ended {
        connection.revoked();
    }
}

/// Connects to `target` from `source`'s address with the node's mark; notes the attempt (and a
/// failure: `UF`) in `connection`.
async fn connect(
    table: &NodeTable,
    source: Option<SocketAddr>,
    target: SocketAddr,
    connection: &mut account::Connection,
) -> Option<TcpStream> {
    connection.tries.count += 1;
    connection.tries.last = Some(target);
    match capture::connect_from(
        source.map(|s| s.ip()),
        target,
        table.mark,
        table.connect_timeout,
    )
    .await
    {
        Ok(stream) => Some(stream),
        Err(e) => {
            connection
                .flags
                .insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
            debug!(?source, %target, error = %e, "connect to workload failed");
            None
        }
    }
}

/// Copies both ways until both sides are done (or `revoked` fires); counts the series' open
/// and close around it.
async fn copy_plain(
    core: &Core,
    listener: &Listener,
    downstream: TcpStream,
    upstream: TcpStream,
    series: &TcpMetrics,
    revoked: Option<&Signal>,
    connection: &mut account::Connection,
) {
    let counters = listener.stats.workers.slot(core.id);
    series.opened.inc();
    let copy = copy::bidirectional(
        downstream,
        upstream,
        listener.idle_timeout,
        counters,
        &connection.moved,
        Some(series),
    );
    let revoked = async {
        match revoked {
            Some(signal) => signal.wait().await,
            None => std::future::pending().await,
        }
    };
    let ended = monoio::select! {
        outcome = copy => Some(outcome),
        () = revoked => None,
    };
    series.closed.inc();
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            if let copy::CopyError::Idle(_) = e {
                connection.flags.insert(ResponseFlags::STREAM_IDLE_TIMEOUT);
            }
            debug!(listener = %listener.name, error = %e, "connection ended with an error");
        }
        None => {
            connection.revoked();
            tracing::info!(listener = %listener.name, "connection closed: a reloaded authorization policy denies it");
        }
    }
}

/// The Istio TCP series of a node-mode connection, in this worker's table of `listener`.
#[allow(clippy::too_many_arguments)]
fn series<'a>(
    core: &Core,
    listener: &'a Listener,
    source: Option<&Arc<Workload>>,
    source_principal: Option<&SpiffeId>,
    destination: Option<&Arc<Workload>>,
    destination_principal: Option<&SpiffeId>,
    service: &Arc<str>,
    mutual_tls: bool,
) -> &'a TcpMetrics {
    // Once per connection: node-mode services are named per connection, so the key's hash is
    // made here.
    let hash = xxhash_rust::xxh3::xxh3_64(service.as_bytes()).max(1);
    crate::l4::series_of(
        core,
        listener,
        (source, source_principal),
        (destination, destination_principal),
        (service, hash),
        mutual_tls,
    )
}

/// The `baggage` of a tunnel from `source` (ztunnel's keys).
fn baggage(source: &Workload) -> String {
    let mut baggage = format!(
        "k8s.namespace.name={},k8s.deployment.name={},service.name={}",
        source.namespace,
        source.name,
        source.app.as_deref().unwrap_or(&source.name)
    );
    if let Some(version) = &source.version {
        baggage.push_str(",service.version=");
        baggage.push_str(version);
    }
    baggage
}

/// Writes a node-mode connection's access-log line.
fn record(
    core: &Core,
    listener: &Listener,
    service: &str,
    peer: SocketAddr,
    tracked: Option<&Tracked>,
    connection: &account::Connection,
) {
    account::record_node(core, listener, service, peer, tracked, connection);
}
