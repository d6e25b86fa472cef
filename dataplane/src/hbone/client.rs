//! The HBONE client: a per-worker pool of tunnel connections (HTTP/2 over mutual TLS) and
//! [`Tunnel`], one CONNECT stream on one of them.
//!
//! Connections are keyed by [`PoolKey`] (source identity, tunnel address, expected server
//! identity): a connection presents one workload's certificate and was verified against one
//! server identity, so it carries only streams with that same pair. A connection takes at most
//! [`CLIENT_MAX_STREAMS`](super::CLIENT_MAX_STREAMS) streams, and no more than the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS; when every connection of a key is full, another is opened.
//! Streams that find every connection full while one is being established claim a stream of
//! it and wait, so a burst of tunnels opens one connection per hundred, not one each. The pool
//! is `Rc` + `RefCell`: one per worker, no locks.

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
use monoio::net::TcpStream;
use rustls_pki_types::ServerName;
use tracing::debug;

use super::{
    CLIENT_IDLE_TIMEOUT, CLIENT_MAX_STREAMS, CONNECTION_WINDOW, ConnectRequest, HboneCounters,
    HboneError, MAX_FRAME_SIZE, Outcome, STREAM_WINDOW,
};
use crate::event::{Event, Signal};
use crate::http::h2::io::H2Io;
use crate::identity::SpiffeId;
use crate::tls::transport::Transport;

/// Which connections a tunnel may share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The SPIFFE ID whose certificate the client presents (the source workload's).
    pub source: Rc<str>,
    /// Where the tunnel goes: `<destination workload IP>:<hbone port>`.
    pub address: SocketAddr,
    /// The SPIFFE ID the server must present (the destination workload's).
    pub server: Rc<str>,
}

/// How to open a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// `SO_MARK` for the TCP socket (the node's capture rules let marked packets pass); `None`
    /// sets none (setting one needs CAP_NET_ADMIN).
    pub mark: Option<u32>,
    /// Bound on the TCP connect, the TLS handshake, the HTTP/2 handshake and the 200 answer
    /// together.
    pub connect_timeout: Duration,
}

/// What a connection shares with its driver task and its streams (not the request handle: the
/// connection closes once the pool and its streams let go of it).
#[derive(Debug)]
struct State {
    active: Cell<u32>,
    /// When the last stream ended (meaningful while `active` is 0).
    idle_since: Cell<Instant>,
    /// Set when the connection ended, received GOAWAY, failed, or went idle.
    retired: Cell<bool>,
}

struct Connection {
    send: SendRequest<Bytes>,
    state: Rc<State>,
    /// The server's verified SPIFFE ID.
    peer: SpiffeId,
}

impl Connection {
    /// Streams this connection may carry: ours, and never more than the server allows.
    fn capacity(&self) -> u32 {
        let server = u32::try_from(self.send.current_max_send_streams()).unwrap_or(u32::MAX);
        CLIENT_MAX_STREAMS.min(server)
    }

    /// Whether `h2` refuses new streams (the connection ended or received GOAWAY).
    fn refuses_streams(&self) -> bool {
        let mut send = self.send.clone();
        let mut cx = Context::from_waker(Waker::noop());
        matches!(send.poll_ready(&mut cx), Poll::Ready(Err(_)))
    }
}

/// A connection being established, with the streams claimed on it.
#[derive(Default)]
struct Connecting {
    claimed: Cell<u32>,
    done: Event,
    outcome: RefCell<Option<Result<Rc<Connection>, HboneError>>>,
}

/// One key's connections.
#[derive(Default)]
struct Entry {
    open: Vec<Rc<Connection>>,
    connecting: Vec<Rc<Connecting>>,
}

/// A worker's HBONE client connections.
#[derive(Clone)]
pub struct HbonePool {
    entries: Rc<RefCell<HashMap<PoolKey, Entry>>>,
    counters: Arc<HboneCounters>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for HbonePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbonePool")
            .field("keys", &self.entries.borrow().len())
            .finish()
    }
}

/// A stream's hold on its connection: counts against its streams until dropped.
#[derive(Debug)]
struct Lease {
    state: Rc<State>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let active = self.state.active.get().saturating_sub(1);
        self.state.active.set(active);
        if active == 0 {
            self.state.idle_since.set(Instant::now());
        }
    }
}

/// An open tunnel: the server answered 200. Dropped without [`Tunnel::copy`], the stream is
/// reset (CANCEL).
#[derive(Debug)]
pub struct Tunnel {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    peer: SpiffeId,
    reused: bool,
    counters: Arc<HboneCounters>,
    _lease: Lease,
}

impl Tunnel {
    /// The server's verified SPIFFE ID.
    pub fn peer(&self) -> &SpiffeId {
        &self.peer
    }

    /// Whether the tunnel went over a connection that was already open.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Copies between `downstream` and the tunnel until both directions end (half-close each
    /// way), either fails, or `close` fires (then the stream is reset with CANCEL).
    pub async fn copy(self, downstream: Transport, close: Option<&Signal>) -> Outcome {
        let Tunnel {
            send,
            recv,
            counters,
            _lease,
            ..
        } = self;
        counters.streams_opened.inc();
        let outcome = super::copy::run(send, recv, downstream, close).await;
        counters.streams_closed.inc();
        outcome
    }
}

impl HbonePool {
    /// An empty pool counting into `counters` (the worker's).
    pub fn new(counters: Arc<HboneCounters>) -> Self {
        Self::with_idle_timeout(counters, CLIENT_IDLE_TIMEOUT)
    }

    /// An empty pool whose connections close after `idle_timeout` without a stream (tests).
    pub fn with_idle_timeout(counters: Arc<HboneCounters>, idle_timeout: Duration) -> Self {
        Self {
            entries: Rc::default(),
            counters,
            idle_timeout,
        }
    }

    /// Connections open (or being opened) for `key`.
    pub fn connections(&self, key: &PoolKey) -> usize {
        self.entries
            .borrow()
            .get(key)
            .map_or(0, |entry| entry.open.len() + entry.connecting.len())
    }

    /// Streams open on each connection of `key` (admin and tests).
    pub fn streams(&self, key: &PoolKey) -> Vec<u32> {
        self.entries
            .borrow()
            .get(key)
            .map_or_else(Vec::new, |entry| {
                entry.open.iter().map(|c| c.state.active.get()).collect()
            })
    }

    /// Opens a tunnel to `request.target` through `key.address`, presenting `tls`'s client
    /// certificate, within `options.connect_timeout` (TCP, TLS, HTTP/2 and the answer).
    pub async fn connect(
        &self,
        key: &PoolKey,
        tls: &Arc<rustls::ClientConfig>,
        request: &ConnectRequest,
        options: ConnectOptions,
    ) -> Result<Tunnel, HboneError> {
        let attempt = self.open_stream(key, tls, request, options);
        let result = match monoio::time::timeout(options.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(HboneError::TimedOut(options.connect_timeout)),
        };
        match &result {
            Ok(_) => self.counters.outbound_opened.inc(),
            Err(HboneError::Status(status)) => self.counters.outbound_refused.count(*status),
            Err(_) => self.counters.outbound_failed.inc(),
        }
        result
    }

    async fn open_stream(
        &self,
        key: &PoolKey,
        tls: &Arc<rustls::ClientConfig>,
        request: &ConnectRequest,
        options: ConnectOptions,
    ) -> Result<Tunnel, HboneError> {
        let (connection, reused) = self.checkout(key, tls, options).await?;
        let lease = Lease {
            state: Rc::clone(&connection.state),
        };
        let retire = |e: h2::Error| {
            if e.is_go_away() || e.is_io() || e.reason().is_none() {
                connection.state.retired.set(true);
            }
            HboneError::Http2(e.to_string())
        };
        let mut send = connection.send.clone().ready().await.map_err(retire)?;
        let (response, stream) = send
            .send_request(connect_request(request)?, false)
            .map_err(retire)?;
        let response = response.await.map_err(retire)?;
        if response.status() != http::StatusCode::OK {
            return Err(HboneError::Status(response.status().as_u16()));
        }
        Ok(Tunnel {
            send: stream,
            recv: response.into_body(),
            peer: connection.peer.clone(),
            reused,
            counters: Arc::clone(&self.counters),
            _lease: lease,
        })
    }

    /// A stream slot (already counted in `active`) on a connection of `key`, and whether that
    /// connection was already open.
    async fn checkout(
        &self,
        key: &PoolKey,
        tls: &Arc<rustls::ClientConfig>,
        options: ConnectOptions,
    ) -> Result<(Rc<Connection>, bool), HboneError> {
        let connecting = {
            let mut entries = self.entries.borrow_mut();
            let entry = entries.entry(key.clone()).or_default();
            entry.open.retain(|c| !c.state.retired.get());
            while let Some(connection) = entry
                .open
                .iter()
                .filter(|c| !c.state.retired.get() && c.state.active.get() < c.capacity())
                .min_by_key(|c| c.state.active.get())
            {
                if connection.refuses_streams() {
                    connection.state.retired.set(true);
                    continue;
                }
                let state = &connection.state;
                state.active.set(state.active.get() + 1);
                self.counters.connections_reused.inc();
                return Ok((Rc::clone(connection), true));
            }
            match entry
                .connecting
                .iter()
                .find(|c| c.claimed.get() < CLIENT_MAX_STREAMS)
            {
                Some(connecting) => Rc::clone(connecting),
                None => {
                    let connecting = Rc::new(Connecting::default());
                    entry.connecting.push(Rc::clone(&connecting));
                    self.start_connect(key.clone(), Arc::clone(tls), options, &connecting);
                    connecting
                }
            }
        };
        // The claim is counted in the new connection's `active` from its start; a claimant that
        // gives up first (timeout) gives its slot back ([`Claim`]'s drop).
        connecting.claimed.set(connecting.claimed.get() + 1);
        let first = connecting.claimed.get() == 1;
        let mut claim = Claim {
            connecting: Rc::clone(&connecting),
            used: false,
        };
        connecting.done.wait().await;
        let outcome = connecting.outcome.borrow();
        match outcome.as_ref() {
            Some(Ok(connection)) => {
                claim.used = true;
                if !first {
                    self.counters.connections_reused.inc();
                }
                Ok((Rc::clone(connection), !first))
            }
            Some(Err(e)) => Err(e.duplicate()),
            None => Err(HboneError::Http2("connect ended without an outcome".into())),
        }
    }

    /// Establishes a connection on a task of its own, so that it completes for every stream
    /// waiting on it even if the one that started it gives up.
    fn start_connect(
        &self,
        key: PoolKey,
        tls: Arc<rustls::ClientConfig>,
        options: ConnectOptions,
        connecting: &Rc<Connecting>,
    ) {
        let pool = self.clone();
        let connecting = Rc::clone(connecting);
        monoio::spawn(crate::contain::contained("hbone connect", async move {
            let result =
                monoio::time::timeout(options.connect_timeout, establish(&key, &tls, options.mark))
                    .await
                    .unwrap_or(Err(HboneError::TimedOut(options.connect_timeout)));
            let outcome = match result {
                Ok((send, driver, peer)) => {
                    pool.counters.connections_opened.inc();
                    let state = Rc::new(State {
                        active: Cell::new(connecting.claimed.get()),
                        idle_since: Cell::new(Instant::now()),
                        retired: Cell::new(false),
                    });
                    let connection = Rc::new(Connection {
                        send,
                        state: Rc::clone(&state),
                        peer,
                    });
                    pool.spawn_driver(key.clone(), driver, state);
                    Ok(connection)
                }
                Err(e) => Err(e),
            };
            {
                let mut entries = pool.entries.borrow_mut();
                let entry = entries.entry(key).or_default();
                entry.connecting.retain(|c| !Rc::ptr_eq(c, &connecting));
                if let Ok(connection) = &outcome {
                    entry.open.push(Rc::clone(connection));
                }
            }
            *connecting.outcome.borrow_mut() = Some(outcome);
            connecting.done.fire();
        }));
    }

    /// Drives a connection until it ends; lets it go (GOAWAY, once its streams are done) when
    /// it has had no stream for the idle timeout.
    fn spawn_driver(
        &self,
        key: PoolKey,
        driver: h2::client::Connection<H2Io, Bytes>,
        state: Rc<State>,
    ) {
        let pool = self.clone();
        monoio::spawn(crate::contain::contained("hbone connection", async move {
            let mut driver = std::pin::pin!(driver);
            loop {
                let wait = if state.active.get() == 0 {
                    (state.idle_since.get() + pool.idle_timeout)
                        .saturating_duration_since(Instant::now())
                } else {
                    pool.idle_timeout
                };
                monoio::select! {
                    result = &mut driver => {
                        if let Err(e) = result {
                            debug!(address = %key.address, error = %e, "HBONE connection ended");
                        }
                        break;
                    }
                    () = monoio::time::sleep(wait) => {
                        let idle = state.active.get() == 0
                            && state.idle_since.get().elapsed() >= pool.idle_timeout;
                        if idle && !state.retired.get() {
                            // Dropping the pool's request handle lets h2 close the connection
                            // (GOAWAY) once no stream holds it.
                            state.retired.set(true);
                            pool.forget(&key, &state);
                        }
                    }
                }
            }
            state.retired.set(true);
            pool.forget(&key, &state);
            pool.counters.connections_closed.inc();
        }));
    }

    /// Removes the connection with `state` from `key`'s entry.
    fn forget(&self, key: &PoolKey, state: &Rc<State>) {
        let mut entries = self.entries.borrow_mut();
        if let Some(entry) = entries.get_mut(key) {
            entry.open.retain(|c| !Rc::ptr_eq(&c.state, state));
            if entry.open.is_empty() && entry.connecting.is_empty() {
                entries.remove(key);
            }
        }
    }
}

/// A stream claimed on a connection being established; given back if dropped unused.
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
                let active = &connection.state.active;
                active.set(active.get().saturating_sub(1));
            }
            Some(Err(_)) => {}
        }
    }
}

impl HboneError {
    /// A copy for another stream waiting on the same connection (`io::Error` is not `Clone`).
    fn duplicate(&self) -> Self {
        match self {
            HboneError::Connect(e) => HboneError::Connect(io::Error::new(e.kind(), e.to_string())),
            HboneError::Tls(e) => HboneError::Tls(e.clone()),
            HboneError::Http2(e) => HboneError::Http2(e.clone()),
            HboneError::Status(s) => HboneError::Status(*s),
            HboneError::TimedOut(d) => HboneError::TimedOut(*d),
        }
    }
}

/// The CONNECT request for `request`.
fn connect_request(request: &ConnectRequest) -> Result<http::Request<()>, HboneError> {
    let mut builder = http::Request::builder()
        .method(http::Method::CONNECT)
        // An authority-form URI: h2 sends `:authority` alone, no `:scheme` or `:path`.
        .uri(request.target.to_string());
    if let Some(source) = request.source {
        builder = builder.header("forwarded", super::forwarded_value(source));
    }
    if let Some(baggage) = &request.baggage {
        builder = builder.header("baggage", baggage.as_str());
    }
    if let Some(traceparent) = &request.traceparent {
        builder = builder.header("traceparent", traceparent.as_str());
    }
    builder
        .body(())
        .map_err(|e| HboneError::Http2(format!("bad CONNECT request: {e}")))
}

/// TCP (marked), TLS (ALPN h2, the server's ID checked against the key), HTTP/2 handshake.
pub(super) async fn establish(
    key: &PoolKey,
    tls: &Arc<rustls::ClientConfig>,
    mark: Option<u32>,
) -> Result<
    (
        SendRequest<Bytes>,
        h2::client::Connection<H2Io, Bytes>,
        SpiffeId,
    ),
    HboneError,
> {
    let stream = connect_marked(key.address, mark)
        .await
        .map_err(HboneError::Connect)?;
    let _ = stream.set_nodelay(true);
    let io = monoio::io::IntoPollIo::into_poll_io(stream).map_err(HboneError::Connect)?;
    let server_name = ServerName::IpAddress(key.address.ip().into());
    let conn = rustls::ClientConnection::new(Arc::clone(tls), server_name)
        .map_err(|e| HboneError::Tls(e.to_string()))?;
    let mut stream = crate::tls::TlsStream::new(io, conn);
    stream
        .handshake()
        .await
        .map_err(|e| HboneError::Tls(e.to_string()))?;
    let info = crate::tls::TlsInfo::of(stream.connection());
    if !info.is_h2() {
        return Err(HboneError::Tls("the server did not accept ALPN h2".into()));
    }
    let peer = match info.peer_principal.clone() {
        Some(peer) if peer.as_str() == &*key.server => peer,
        other => {
            return Err(HboneError::Tls(format!(
                "the server presented {}, not {}",
                other.as_ref().map_or("no SPIFFE ID", SpiffeId::as_str),
                key.server
            )));
        }
    };
    let io = H2Io::client(Transport::Tls(Box::new(stream), Box::new(info)))
        .map_err(HboneError::Connect)?;
    let (send, driver) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        // Until the server's SETTINGS arrive, assume our own limit.
        .initial_max_send_streams(CLIENT_MAX_STREAMS as usize)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| HboneError::Http2(e.to_string()))?;
    Ok((send, driver, peer))
}

/// A TCP connection to `address` whose socket carries `mark` from its first packet (the SYN):
/// the node's capture rules pass marked packets, so the tunnel is not captured again.
async fn connect_marked(address: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let Some(mark) = mark else {
        return TcpStream::connect_addr(address).await;
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_mark(mark)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&address.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // A second handle on the socket to read the connect's result once writable.
    let check = socket.try_clone()?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    stream.writable(true).await?;
    if let Some(e) = check.take_error()? {
        return Err(e);
    }
    Ok(stream)
}
