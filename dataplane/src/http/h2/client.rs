//! Per-core HTTP/2 connections to upstreams.
//!
//! Each worker keeps its own connections per endpoint address and multiplexes requests over them
//! up to the cluster's `max_streams_per_connection`; when every connection is that busy, another is
//! opened (up to `max_connections_per_endpoint`), and requests arriving while it is being
//! established wait for it rather than open their own. A connection that received GOAWAY or
//! failed takes no new streams; its driver task ends when its last stream does. A connection with
//! no stream for the cluster's pool `idle_timeout`, or to an endpoint a reload removed, is let go:
//! the pool drops its handle, and `h2` closes the connection once no stream holds one.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tracing::debug;

use super::io::H2Io;
use crate::event::Event;
use crate::http::error::Unavailable;
use crate::identity::SpiffeId;
use crate::snapshot::Cluster;
use crate::tls::ClientTls;
use crate::tls::transport::Transport;
use crate::upstream::PoolKey;

/// Flow-control windows toward upstreams: large enough that one stream can fill a fast link
/// without waiting for WINDOW_UPDATEs, small enough to bound memory per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// Settings of one cluster's HTTP/2 connections.
#[derive(Debug, Clone, Copy)]
pub struct H2ClientLimits {
    /// Streams per connection before another connection is opened.
    pub max_streams: u32,
    /// Connections per endpoint on this core.
    pub max_connections: u32,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// A connection without streams for this long is closed.
    pub idle_timeout: Duration,
    /// The cluster's TLS fingerprint (0: plaintext), part of the pool key.
    pub tls_key: u64,
}

impl H2ClientLimits {
    /// The limits of `cluster`'s HTTP/2 connections.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            max_streams: cluster.h2.max_streams,
            max_connections: cluster.pool.max_connections,
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.pool.idle_timeout,
            tls_key: cluster.tls_key,
        }
    }
}

struct Connection {
    send: SendRequest<Bytes>,
    active: Cell<u32>,
    /// When the last stream ended (meaningful while `active` is 0).
    idle_since: Cell<Instant>,
    /// Set when the connection ended, received GOAWAY, or failed a request.
    retired: Rc<Cell<bool>>,
    /// The opening cluster's `max_connections` permit, when its breaker is set: held while the
    /// connection is in the pool.
    _breaker: Option<crate::upstream::Permit>,
    /// The upstream's verified SPIFFE ID (TLS clusters), read once at the handshake.
    peer: Option<Rc<SpiffeId>>,
}

impl Connection {
    /// Whether the connection has had no stream for at least `age`.
    fn idle_for(&self, now: Instant, age: Duration) -> bool {
        self.active.get() == 0 && now.duration_since(self.idle_since.get()) >= age
    }

    /// Whether `h2` has seen the connection end or received GOAWAY: it then refuses new streams,
    /// which its driver task only reports (by ending) once the streams in flight are done.
    fn refuses_streams(&self) -> bool {
        let mut send = self.send.clone();
        let mut cx = Context::from_waker(Waker::noop());
        matches!(send.poll_ready(&mut cx), Poll::Ready(Err(_)))
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("active", &self.active.get())
            .field("retired", &self.retired.get())
            .finish()
    }
}

/// What establishing a connection came to: the connection, or why it failed (`io::Error` is not
/// `Clone`, and every waiter needs its own).
/// A failed connect: the error's kind and message, and whether it was the TLS handshake.
type ConnectOutcome = Result<Rc<Connection>, (io::ErrorKind, String, bool)>;

/// A connection being established. Streams that find every open connection full claim one of
/// its streams and wait for it, rather than each opening a connection of its own: a burst of
/// requests would otherwise open one connection per request and never multiplex.
#[derive(Default)]
struct Connecting {
    /// Streams claimed on it so far (the connection starts with this many active).
    claimed: Cell<u32>,
    /// Whether a claimant has taken its stream yet (the first one counts as a new connection).
    taken: Cell<bool>,
    done: Event,
    /// Set when done: the connection, or why connecting failed.
    outcome: RefCell<Option<ConnectOutcome>>,
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting")
            .field("claimed", &self.claimed.get())
            .field("done", &self.done.is_fired())
            .finish()
    }
}

/// A stream claimed on a connection still being established. Dropped unused (the request gave
/// up while waiting), it gives the stream back.
struct Claim {
    connecting: Rc<Connecting>,
    used: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        match &*self.connecting.outcome.borrow() {
            None => {
                let claimed = &self.connecting.claimed;
                claimed.set(claimed.get().saturating_sub(1));
            }
            Some(Ok(connection)) => {
                connection
                    .active
                    .set(connection.active.get().saturating_sub(1));
            }
            Some(Err(_)) => {}
        }
    }
}

/// One endpoint's connections on this core.
#[derive(Debug, Default)]
struct Endpoint {
    open: Vec<Rc<Connection>>,
    connecting: Vec<Rc<Connecting>>,
}

/// A worker's upstream HTTP/2 connections, by endpoint address.
#[derive(Debug, Default, Clone)]
pub struct H2Pool {
    endpoints: Rc<RefCell<HashMap<PoolKey, Endpoint>>>,
}

/// A stream slot on a connection: holds the connection's handle and counts against its stream
/// limit until dropped.
#[derive(Debug)]
pub struct H2Stream {
    /// The handle to open the stream with (wait for `ready()` first).
    pub send: SendRequest<Bytes>,
    /// Whether the connection already carried streams before this one.
    pub reused: bool,
    connection: Rc<Connection>,
}

impl H2Stream {
    /// Marks the connection as taking no new streams (after GOAWAY or an error on it).
    pub fn retire_connection(&self) {
        self.connection.retired.set(true);
    }

    /// The upstream's verified SPIFFE ID, when the connection is TLS and the server's
    /// certificate carries one.
    pub fn peer(&self) -> Option<&Rc<SpiffeId>> {
        self.connection.peer.as_ref()
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let active = &self.connection.active;
        active.set(active.get().saturating_sub(1));
        if active.get() == 0 {
            self.connection.idle_since.set(Instant::now());
        }
    }
}

impl H2Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream slot to `endpoint`: on an open connection with spare streams, else on one being
    /// established with unclaimed streams, else on a new connection (which takes a permit of
    /// `breaker`, the cluster's circuit breaker, if it has one).
    pub async fn checkout(
        &self,
        endpoint: SocketAddr,
        limits: &H2ClientLimits,
        breaker: Option<&crate::upstream::Breaker>,
        tls: Option<(&Arc<ClientTls>, usize)>,
    ) -> Result<H2Stream, Unavailable> {
        let key = PoolKey {
            address: endpoint,
            tls: limits.tls_key,
        };
        let connecting = {
            let mut endpoints = self.endpoints.borrow_mut();
            let entry = endpoints.entry(key).or_default();
            let now = Instant::now();
            entry.open.retain(|c| {
                !(c.retired.get() || c.idle_for(now, limits.idle_timeout)) || c.active.get() > 0
            });
            while let Some(connection) = entry
                .open
                .iter()
                .filter(|c| !c.retired.get() && c.active.get() < limits.max_streams)
                .min_by_key(|c| c.active.get())
            {
                if connection.refuses_streams() {
                    connection.retired.set(true);
                    continue;
                }
                connection.active.set(connection.active.get() + 1);
                return Ok(H2Stream {
                    send: connection.send.clone(),
                    reused: true,
                    connection: Rc::clone(connection),
                });
            }
            match entry
                .connecting
                .iter()
                .find(|c| c.claimed.get() < limits.max_streams)
            {
                Some(connecting) => Rc::clone(connecting),
                None => {
                    if entry.open.len() + entry.connecting.len() >= limits.max_connections as usize
                    {
                        return Err(Unavailable::Exhausted);
                    }
                    let permit = crate::upstream::breaker::admit(
                        breaker,
                        crate::upstream::breaker::Resource::Connections,
                    )
                    .map_err(|_| Unavailable::CircuitOpen)?;
                    let connecting = Rc::new(Connecting::default());
                    entry.connecting.push(Rc::clone(&connecting));
                    let tls = tls.map(|(tls, worker)| (Arc::clone(tls), worker));
                    self.start_connect(key, *limits, tls, Rc::clone(&connecting), permit);
                    connecting
                }
            }
        };
        connecting.claimed.set(connecting.claimed.get() + 1);
        let mut claim = Claim {
            connecting,
            used: false,
        };
        claim.connecting.done.wait().await;
        let outcome = claim.connecting.outcome.borrow().clone();
        match outcome {
            Some(Ok(connection)) => {
                claim.used = true;
                let first = !claim.connecting.taken.replace(true);
                Ok(H2Stream {
                    send: connection.send.clone(),
                    reused: !first,
                    connection,
                })
            }
            Some(Err((kind, message, false))) => {
                Err(Unavailable::Connect(io::Error::new(kind, message)))
            }
            Some(Err((kind, message, true))) => {
                Err(Unavailable::Tls(io::Error::new(kind, message)))
            }
            None => Err(Unavailable::Connect(io::Error::other(
                "HTTP/2 connect ended without an outcome",
            ))),
        }
    }

    /// Establishes a connection on a task of its own, so that it completes for the streams
    /// waiting on it even if the request that started it gives up.
    fn start_connect(
        &self,
        key: PoolKey,
        limits: H2ClientLimits,
        tls: Option<(Arc<ClientTls>, usize)>,
        connecting: Rc<Connecting>,
        permit: Option<crate::upstream::Permit>,
    ) {
        let pool = self.clone();
        monoio::spawn(crate::contain::contained(
            "http2 upstream connect",
            async move {
                let result = pool
                    .connect(
                        key.address,
                        &limits,
                        tls.as_ref().map(|(tls, worker)| (&**tls, *worker)),
                        permit,
                    )
                    .await;
                let mut endpoints = pool.endpoints.borrow_mut();
                let entry = endpoints.entry(key).or_default();
                entry.connecting.retain(|c| !Rc::ptr_eq(c, &connecting));
                let outcome = match result {
                    Ok(connection) => {
                        // Every claimed stream is active from the start, so that no other checkout
                        // takes the slots of those still waking up.
                        connection.active.set(connecting.claimed.get());
                        let connection = Rc::new(connection);
                        entry.open.push(Rc::clone(&connection));
                        Ok(connection)
                    }
                    Err((e, tls)) => Err((e.kind(), e.to_string(), tls)),
                };
                drop(endpoints);
                *connecting.outcome.borrow_mut() = Some(outcome);
                connecting.done.fire();
            },
        ));
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
        limits: &H2ClientLimits,
        tls: Option<(&ClientTls, usize)>,
        permit: Option<crate::upstream::Permit>,
    ) -> Result<Connection, (io::Error, bool)> {
        let plain = |e| (e, false);
        let mut peer = None;
        let stream = crate::upstream::connect(endpoint, limits.connect_timeout)
            .await
            .map_err(plain)?;
        let stream = match tls {
            None => Transport::Plain(stream),
            Some((tls, worker)) => {
                let (stream, info) = crate::tls::connect(
                    stream,
                    tls,
                    worker,
                    crate::tls::Carries::Http2,
                    endpoint,
                    limits.connect_timeout,
                )
                .await
                .map_err(|e| (io::Error::new(e.kind(), e.to_string()), true))?;
                if info.alpn.is_some() && !info.is_h2() {
                    return Err((
                        io::Error::other("the upstream did not accept ALPN h2"),
                        true,
                    ));
                }
                peer = info.peer_principal.clone().map(Rc::new);
                Transport::Tls(Box::new(stream), Box::new(info))
            }
        };
        let io = H2Io::client(stream).map_err(plain)?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(io);
        let (send, connection) = monoio::time::timeout(limits.connect_timeout, handshake)
            .await
            .map_err(|_| {
                plain(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP/2 handshake timed out",
                ))
            })?
            .map_err(|e| plain(io::Error::other(e)))?;
        let retired = Rc::new(Cell::new(false));
        let driver_retired = Rc::clone(&retired);
        // The connection future does the I/O for every stream on it; it ends on GOAWAY or error.
        monoio::spawn(crate::contain::contained(
            "http2 upstream connection",
            async move {
                if let Err(e) = connection.await {
                    debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
                }
                driver_retired.set(true);
            },
        ));
        Ok(Connection {
            send,
            active: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            retired,
            _breaker: permit,
            peer,
        })
    }

    /// Lets go of connections that have had no stream for their endpoint's `max_idle_age`, and of
    /// retired ones whose streams have ended; run periodically by each worker.
    pub fn evict_idle(&self, max_idle_age: impl Fn(&SocketAddr) -> Duration) {
        let now = Instant::now();
        let mut endpoints = self.endpoints.borrow_mut();
        for (endpoint, entry) in endpoints.iter_mut() {
            let max_idle_age = max_idle_age(&endpoint.address);
            entry.open.retain(|c| {
                c.active.get() > 0 || !(c.retired.get() || c.idle_for(now, max_idle_age))
            });
        }
        endpoints.retain(|_, e| !e.open.is_empty() || !e.connecting.is_empty());
    }

    /// After a reload: connections to endpoints for which `live` is false take no new stream;
    /// idle ones close now, busy ones once their streams end.
    pub fn close_except(&self, live: impl Fn(&SocketAddr) -> bool) {
        let mut endpoints = self.endpoints.borrow_mut();
        for (endpoint, entry) in endpoints.iter_mut() {
            if !live(&endpoint.address) {
                for connection in &entry.open {
                    connection.retired.set(true);
                }
                entry.open.retain(|c| c.active.get() > 0);
            }
        }
    }

    /// Streams open to `endpoint` on this core (for tests and stats).
    pub fn active_streams(&self, endpoint: impl Into<PoolKey>) -> u32 {
        self.endpoints
            .borrow()
            .get(&endpoint.into())
            .map_or(0, |e| e.open.iter().map(|c| c.active.get()).sum())
    }

    /// Connections open to `endpoint` on this core.
    pub fn connections(&self, endpoint: impl Into<PoolKey>) -> usize {
        self.endpoints
            .borrow()
            .get(&endpoint.into())
            .map_or(0, |e| e.open.iter().filter(|c| !c.retired.get()).count())
    }
}

/// The upstream request as an HTTP/2 head. `None` when the target or authority cannot be an
/// HTTP/2 `:path`/`:authority`.
pub fn write_h2_request(
    head: &crate::http::request::RequestHead<'_>,
    target: &[u8],
    authority: &[u8],
    framing: crate::http::h1::BodyFraming,
    rules: &crate::http::headers::RequestRules<'_>,
    values: &mut Vec<u8>,
) -> Option<http::Request<()>> {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(target)
        .build()
        .ok()?;
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::from_bytes(head.method.as_bytes()).ok()?;
    *request.uri_mut() = uri;
    let fields = request.headers_mut();
    fields.reserve(head.fields.len() + 4);
    crate::http::headers::request_headers(
        head.fields,
        head.connection_tokens,
        rules,
        values,
        fields,
    );
    if let crate::http::h1::BodyFraming::Length(n) = framing {
        fields.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    Some(request)
}
