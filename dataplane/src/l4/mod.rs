//! L4 (opaque TCP) proxying: pick an endpoint, connect, copy bytes both ways.
//!
//! The whole path for one connection is [`proxy`]: it keeps the snapshot the connection started
//! with, starts at the endpoint the cluster's load balancer picks and tries the next ones in turn
//! until one accepts within the cluster's connect timeout, and then hands both sockets to
//! [`copy::bidirectional`] (or [`splice::bidirectional`]). The connection counts as in flight on
//! its endpoint for its whole life, so `least_request` balances open connections.
//!
//! A cluster with a circuit breaker admits a connection only within `max_connections` (across
//! workers, for the connection's life); beyond it the client's connection is closed at once.
//!
//! A tcp listener with TLS passthrough goes through [`passthrough`] first: it reads the
//! ClientHello (without terminating TLS), picks the cluster by its SNI ([`sni`]), and hands the
//! connection to [`forward`] with the bytes it read, which go to the upstream first and untouched.
//!
//! When a connection ends, [`account::record`] writes its access-log line (the one call
//! `forward` makes); [`account::no_route`] writes the line of one no cluster takes.

pub mod account;
pub mod copy;
pub mod passthrough;
pub mod sni;
pub mod splice;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use config_schema::L4Copy;
use monoio::net::TcpStream;
use tracing::{debug, info};

use crate::access_log::ResponseFlags;
use crate::core::Core;
use crate::event::Signal;
use crate::identity::SpiffeId;
use crate::log_budget::LogBudget;
use crate::policy::authz::{self, Tracked};
use crate::snapshot::{Cluster, Listener, Snapshot};
use crate::stats::TcpMetrics;
use crate::tls::SecurityPolicy;
use crate::tls::transport::Transport;
use crate::upstream::breaker::{self, Resource};
use crate::upstream::outlier::Observation;
use crate::upstream::{InFlightGuard, Permit};
use crate::workload::Workload;

/// Proxies one downstream connection to the listener's cluster until both sides are done.
/// `name` is the listener's name as the worker holds it (the registry of open connections keeps
/// it without a copy).
pub async fn proxy(
    core: &Core,
    snapshot: &Snapshot,
    listener: &Listener,
    name: &Rc<str>,
    downstream: Transport,
    peer: SocketAddr,
    initial: Vec<u8>,
) {
    // A terminated TLS connection's SNI reaches `connection.sni` conditions, as a passthrough
    // connection's does.
    // The verified peer identity of a terminated mTLS connection is kept for the live re-check.
    let mut downstream = downstream;
    let info = downstream.take_tls_info();
    let security = SecurityPolicy::of(info.as_ref());
    let Some(cluster) = listener.cluster.map(|i| &snapshot.clusters[i]) else {
        debug!(listener = %listener.name, %peer, "no cluster for opaque traffic; closing");
        let sni = info.as_ref().and_then(|info| info.sni.as_deref());
        account::no_route(
            core,
            listener,
            peer,
            sni.unwrap_or_default(),
            security,
            initial.len() as u64,
        );
        return;
    };
    let (sni, principal) = match info {
        Some(info) => (info.sni, info.peer_principal),
        None => (None, None),
    };
    let inbound = Inbound {
        stream: downstream,
        peer,
        initial,
        sni,
        principal,
        security,
    };
    forward(core, snapshot, listener, name, cluster, inbound).await;
}

/// A downstream connection on its way to a cluster.
#[derive(Debug)]
pub struct Inbound {
    /// The client's connection (TLS when a tcp listener terminates it).
    pub stream: Transport,
    /// The client's address.
    pub peer: SocketAddr,
    /// Bytes already read from the client (while detecting the protocol or reading the
    /// ClientHello): they go upstream first, untouched.
    pub initial: Vec<u8>,
    /// The server name of a passthrough connection's ClientHello, or of a terminated TLS
    /// connection, for authorization.
    pub sni: Option<Box<str>>,
    /// The verified SPIFFE ID of a terminated mutual-TLS connection's client.
    pub principal: Option<SpiffeId>,
    /// How the client connection is secured (`none` for passthrough: the proxy terminates no
    /// TLS there).
    pub security: SecurityPolicy,
}

/// Checks the connection against the listener's authorization policies, connects to `cluster`,
/// writes the bytes already read to it first, then copies both ways until both sides are done;
/// then accounts it (its access-log line).
pub async fn forward(
    core: &Core,
    snapshot: &Snapshot,
    listener: &Listener,
    name: &Rc<str>,
    cluster: &Cluster,
    inbound: Inbound,
) {
    let Inbound {
        stream: downstream,
        peer,
        initial,
        sni,
        principal,
        security,
    } = inbound;
    // With `l4_spans`, the connection is a span, recorded however it ends.
    let span = core.connection_span(snapshot, name, &cluster.name, peer);
    // Authorization at connect, before anything goes upstream. The connection is registered
    // first, so that a reload between here and the end of the connection re-checks it.
    let registration = core.l4_connections.register(Tracked {
        listener: Rc::clone(name),
        peer,
        destination_port: listener.local_addr.port(),
        sni,
        principal,
        revoked: Signal::default(),
    });
    let mut connection = account::Connection::new(security);
    connection.trace_id = span.as_ref().map(|span| span.trace_id());
    relay(
        core,
        snapshot,
        listener,
        cluster,
        downstream,
        initial,
        &registration.tracked,
        &mut connection,
    )
    .await;
    account::record(core, listener, cluster, &registration.tracked, &connection);
}

/// The life of a registered connection: authorization, connect, then the copy until both sides
/// are done. What happens is noted in `connection` for its log line.
#[allow(clippy::too_many_arguments)]
async fn relay(
    core: &Core,
    snapshot: &Snapshot,
    listener: &Listener,
    cluster: &Cluster,
    downstream: Transport,
    mut initial: Vec<u8>,
    tracked: &Tracked,
    connection: &mut account::Connection,
) {
    let peer = tracked.peer;
    if !authorized(core, listener, tracked, connection) {
        return;
    }
    // `in_flight` is held until the connection ends: least-request counts open connections; so is
    // the breaker's permit.
    let (upstream, _in_flight, _permit) = match connect(
        core,
        snapshot,
        cluster,
        peer,
        &mut connection.tries,
    )
    .await
    {
        Ok(connected) => connected,
        Err(e) => {
            connection.flags.insert(match e {
                ConnectError::NoEndpoint => ResponseFlags::NO_HEALTHY_UPSTREAM,
                ConnectError::Overflow => ResponseFlags::UPSTREAM_OVERFLOW,
                ConnectError::AllFailed { .. } => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
            });
            if let ConnectError::AllFailed { .. } = e {
                // Every endpoint was tried: Envoy's TCP proxy says UF,URX.
                connection
                    .flags
                    .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
            }
            debug!(listener = %listener.name, cluster = %cluster.name, %peer, error = %e, "upstream connect failed");
            return;
        }
    };
    let counters = listener.stats.workers.slot(core.id);
    let endpoint = upstream.peer_addr().ok();
    let upstream = match &cluster.tls {
        None => Transport::Plain(upstream),
        Some(tls) => {
            // Originate TLS to the endpoint; the plaintext is copied in between.
            let address = upstream.peer_addr().unwrap_or(peer);
            match crate::tls::connect(
                upstream,
                tls,
                core.id,
                crate::tls::Carries::Opaque,
                address,
                cluster.connect_timeout,
            )
            .await
            {
                Ok((stream, info)) => {
                    connection.upstream_principal = info.peer_principal.clone();
                    Transport::Tls(Box::new(stream), Box::new(info))
                }
                Err(e) => {
                    cluster.stats.slot(core.id).tls_handshake_errors.inc();
                    connection
                        .flags
                        .insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
                    debug!(listener = %listener.name, cluster = %cluster.name, %peer, error = %e, "upstream TLS handshake failed");
                    return;
                }
            }
        }
    };
    let moved = &connection.moved;
    // The connection's Istio TCP series: opened now, closed when this function returns.
    let upstream_principal = match &upstream {
        Transport::Tls(_, info) if info.peer_verified => info.peer_principal.as_ref(),
        _ => None,
    };
    let series = tcp_series(
        core,
        snapshot,
        listener,
        cluster,
        peer,
        tracked.principal.as_ref(),
        endpoint,
        upstream_principal,
    );
    series.opened.inc();
    let _closed = CountClose(&series.closed);
    let series = Some(series);
    let (downstream, mut upstream) = match (downstream, upstream) {
        (Transport::Plain(down), Transport::Plain(up)) => (down, up),
        (downstream, upstream) => {
            // TLS on either side: the buffered copy through the TLS sessions (splice cannot
            // move decrypted bytes).
            let (up_read, mut up_write) = upstream.split();
            if !initial.is_empty() {
                copy::Tally::received(counters, moved, series).add(initial.len() as u64);
                if up_write.write_vec(&mut initial).await.is_err() {
                    return;
                }
            }
            let copy = copy::bidirectional_halves(
                downstream.split(),
                (up_read, up_write),
                listener.idle_timeout,
                counters,
                moved,
                series,
            );
            let ended = monoio::select! {
                outcome = copy => Ended::Copied(outcome),
                () = tracked.revoked.wait() => Ended::Revoked,
            };
            ended.note(listener, peer, connection);
            return;
        }
    };
    if !initial.is_empty() {
        // Bytes read while detecting the protocol or reading the ClientHello go first.
        copy::Tally::received(counters, moved, series).add(initial.len() as u64);
        let (result, _) =
            monoio::io::AsyncWriteRentExt::write_all(&mut upstream, std::mem::take(&mut initial))
                .await;
        if result.is_err() {
            return;
        }
    }
    let copy = async {
        match listener.l4_copy {
            L4Copy::Buffer => {
                copy::bidirectional(
                    downstream,
                    upstream,
                    listener.idle_timeout,
                    counters,
                    moved,
                    series,
                )
                .await
            }
            L4Copy::Splice => {
                splice::bidirectional(
                    downstream,
                    upstream,
                    listener.idle_timeout,
                    counters,
                    moved,
                    series,
                )
                .await
            }
        }
    };
    // A reload whose policies no longer let this connection through fires `revoked`: the copy
    // is dropped, which closes both sockets (bytes in flight are lost, as the policy wants).
    let ended = monoio::select! {
        outcome = copy => Ended::Copied(outcome),
        () = tracked.revoked.wait() => Ended::Revoked,
    };
    ended.note(listener, peer, connection);
}

/// How the copy of a connection ended.
enum Ended {
    /// Both sides are done, or one failed, or the idle timeout passed.
    Copied(Result<(), copy::CopyError>),
    /// A reload's policies deny the connection.
    Revoked,
}

impl Ended {
    /// Logs (at debug or info level) and notes in `connection` how the copy ended.
    fn note(self, listener: &Listener, peer: SocketAddr, connection: &mut account::Connection) {
        match self {
            Ended::Copied(Ok(())) => {}
            Ended::Copied(Err(e)) => {
                if let copy::CopyError::Idle(_) = e {
                    connection.flags.insert(ResponseFlags::STREAM_IDLE_TIMEOUT);
                }
                debug!(listener = %listener.name, %peer, error = %e, "connection ended with an error");
            }
            Ended::Revoked => {
                connection.revoked();
                info!(listener = %listener.name, %peer, "connection closed: a reloaded authorization policy denies it");
            }
        }
    }
}

/// Counts a connection's close in its Istio TCP series when dropped, whichever way
/// [`forward`] returns.
struct CountClose<'a>(&'a crate::stats::Counter);

impl Drop for CountClose<'_> {
    fn drop(&mut self) {
        self.0.inc();
    }
}

/// The Istio TCP series of a connection from `peer` (with the verified client `principal`) to
/// `endpoint` of `cluster` (which presented `upstream_principal`), in this worker's table of the
/// listener. Once per connection: a binary search of the workload table for the peer and one of
/// the cluster's endpoints (resolved at snapshot build); the principals' keys come with them.
#[allow(clippy::too_many_arguments)]
fn tcp_series<'a>(
    core: &Core,
    snapshot: &Snapshot,
    listener: &'a Listener,
    cluster: &Cluster,
    peer: SocketAddr,
    principal: Option<&SpiffeId>,
    endpoint: Option<SocketAddr>,
    upstream_principal: Option<&SpiffeId>,
) -> &'a TcpMetrics {
    let source = snapshot.workloads.get(peer.ip());
    let destination = endpoint.and_then(|e| cluster.endpoint_workloads.get(e));
    let mutual_tls = if listener.reporter_source {
        upstream_principal.is_some()
    } else {
        principal.is_some()
    };
    series_of(
        core,
        listener,
        (source, principal),
        (destination, upstream_principal),
        (&cluster.name, cluster.name_hash),
        mutual_tls,
    )
}

/// The Istio TCP series from `source` (workload, verified principal) to `destination` of
/// `service` (its name and the name's hash, never 0), in this worker's table of `listener`: for
/// the connections of tcp listeners and of node mode alike.
pub(crate) fn series_of<'a>(
    core: &Core,
    listener: &'a Listener,
    (source, source_principal): (Option<&Arc<Workload>>, Option<&SpiffeId>),
    (destination, destination_principal): (Option<&Arc<Workload>>, Option<&SpiffeId>),
    (service, service_hash): (&Arc<str>, u64),
    mutual_tls: bool,
) -> &'a TcpMetrics {
    use crate::stats::{NO_GRPC_STATUS, RequestProtocol, SeriesKey, SeriesLabels};
    let key = SeriesKey {
        source_workload: source.map_or(0, |w| w.id),
        source_principal: source_principal.map_or(0, SpiffeId::key),
        destination_workload: destination.map_or(0, |w| w.id),
        destination_principal: destination_principal.map_or(0, SpiffeId::key),
        service: service_hash,
        response_code: 0,
        grpc_status: NO_GRPC_STATUS,
        flags: Default::default(),
        protocol: RequestProtocol::Tcp,
        mutual_tls,
        reporter_source: listener.reporter_source,
    };
    listener
        .stats
        .workers
        .slot(core.id)
        .tcp_series
        .get(&key, || SeriesLabels {
            key,
            source_workload: source.cloned(),
            source_principal: source_principal.map(|id| id.as_str().into()),
            destination_workload: destination.cloned(),
            destination_principal: destination_principal.map(|id| id.as_str().into()),
            service: Some(Arc::clone(service)),
        })
}

/// Checks a new connection against the authorization policies of its listener in the snapshot
/// current now (the connection's own may be older). Counts and logs a denial, and notes it in
/// `connection`. Node mode's connections to local workloads are checked here too.
pub(crate) fn authorized(
    core: &Core,
    listener: &Listener,
    tracked: &Tracked,
    connection: &mut account::Connection,
) -> bool {
    let current = core.snapshot();
    let authz = match current.listener(&listener.name) {
        Some(now) => now.authz.as_ref(),
        None => listener.authz.as_ref(),
    };
    let Some(authz) = authz else {
        return true;
    };
    let verdict = authz.evaluate(&tracked.input(), core.id);
    if !verdict.allowed {
        connection.denied(verdict.policy);
    }
    // A denied client can reconnect in a loop: the counter counts each denial, the log a budget.
    if !verdict.allowed
        && let Some(suppressed) = DENIAL_LOG.with(LogBudget::admit)
    {
        info!(
            listener = %listener.name,
            peer = %tracked.peer,
            policy = verdict.policy.unwrap_or(authz::NO_ALLOW_MATCHED),
            suppressed,
            "connection denied by authorization policy"
        );
    }
    verdict.allowed
}

thread_local! {
    /// This worker's budget of connection-denial lines.
    static DENIAL_LOG: LogBudget = const { LogBudget::new() };
}

/// Why no upstream connection could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The cluster has no endpoints (or none usable: ejected or failing health checks).
    NoEndpoint,
    /// The cluster's circuit breaker allows no more connections.
    Overflow,
    /// Every endpoint refused, failed or timed out; the last error is kept.
    AllFailed {
        attempts: usize,
        last: std::io::Error,
    },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NoEndpoint => f.write_str("cluster has no endpoints"),
            ConnectError::Overflow => {
                f.write_str("circuit breaker: the cluster's max_connections is reached")
            }
            ConnectError::AllFailed { attempts, last } => {
                write!(f, "all {attempts} endpoints failed; last error: {last}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connects to the cluster, starting at the endpoint its load balancer picks and trying each
/// endpoint once, in order, until one accepts. The guard marks the connection as in flight on the
/// endpoint it reached (for least-request balancing) until it is dropped; it is counted from the
/// start of the attempt, so connections still being set up count too. The permit is the circuit
/// breaker's, when the cluster has one.
pub async fn connect(
    core: &Core,
    snapshot: &Snapshot,
    cluster: &Cluster,
    peer: SocketAddr,
    tries: &mut account::Tries,
) -> Result<(TcpStream, Option<InFlightGuard>, Option<Permit>), ConnectError> {
    let counters = cluster.stats.slot(core.id);
    let permit = breaker::admit(cluster.breaker.as_ref(), Resource::Connections)
        .map_err(|_| ConnectError::Overflow)?;
    let endpoints = &cluster.endpoints;
    let hash = cluster.balancer.connection_hash(peer.ip());
    let Some((start, skip_unusable)) = core.pick_usable(snapshot, cluster, hash) else {
        counters.no_endpoint.inc();
        return Err(ConnectError::NoEndpoint);
    };
    let health = cluster.health.as_ref();
    let mut last = std::io::Error::other("no usable endpoint");
    for attempt in 0..endpoints.len() {
        let index = (start + attempt) % endpoints.len();
        if skip_unusable && health.is_some_and(|h| !h.is_usable(index)) {
            continue;
        }
        let endpoint = endpoints[index];
        tries.count += 1;
        tries.last = Some(endpoint.address);
        let in_flight = core.start_request(snapshot, cluster, index);
        match crate::upstream::connect(endpoint.address, cluster.connect_timeout).await {
            Ok(stream) => {
                counters.connections.inc();
                if let Some(health) = health {
                    health.observe(index, Observation::Connected);
                }
                return Ok((stream, in_flight, permit));
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    counters.connect_timeouts.inc();
                } else {
                    counters.connect_failures.inc();
                }
                debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "connect attempt failed");
                if let Some(health) = health {
                    health.observe(index, Observation::LocalFailure);
                }
                last = e;
            }
        }
    }
    Err(ConnectError::AllFailed {
        attempts: endpoints.len(),
        last,
    })
}
