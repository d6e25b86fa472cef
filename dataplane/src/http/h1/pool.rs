//! Per-core HTTP/1.1 upstream connection pools.
//!
//! One [`Pool`] per worker, holding idle keep-alive connections per endpoint address. Keying by
//! address (not by cluster) means a reload that keeps an endpoint keeps its warm connections, and
//! a cluster that is removed simply stops checking out; its idle connections age out.
//!
//! A connection goes back to the pool only after a complete response to a fully sent request,
//! with nothing left over in its buffer; anything else is closed (`release` is the only way in).
//! It comes out again only if nothing arrived on it while it was idle (`checkout` peeks).
//! Every open connection, busy or idle, holds a [`Slot`] that counts against the endpoint's
//! `max_connections_per_endpoint`, so the cap holds however connections end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::http::io::{Reader, Writer, split_transport};
use crate::identity::SpiffeId;
use crate::snapshot::PoolLimits;
use crate::tls::transport::Transport;
use crate::upstream::PoolKey;

/// Initial read buffer of an upstream connection.
const READ_BUFFER: usize = 16 * 1024;

#[derive(Debug, Default)]
struct EndpointPool {
    idle: Vec<Connection>,
    open: u32,
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: HashMap<PoolKey, EndpointPool>,
}

/// A worker's upstream connections. Cheap to clone (one `Rc`).
#[derive(Debug, Clone, Default)]
pub struct Pool {
    inner: Rc<RefCell<Inner>>,
}

/// An upstream connection, split so a response can be read while the request is still being
/// sent, with its read buffer.
#[derive(Debug)]
pub struct Connection {
    /// The receiving half.
    pub reader: Reader,
    /// The sending half.
    pub writer: Writer,
    /// Bytes read from the upstream and not yet consumed.
    pub buf: Vec<u8>,
    /// Requests sent on this connection before the current one.
    pub reuses: u32,
    /// The upstream's verified SPIFFE ID (TLS clusters), read once at the handshake.
    pub peer: Option<Rc<SpiffeId>>,
    idle_since: Instant,
    _slot: Slot,
}

impl Connection {
    /// The endpoint this connection goes to.
    pub fn endpoint(&self) -> SocketAddr {
        self._slot.endpoint.address
    }

    /// Its key in the pool (endpoint and TLS).
    pub fn key(&self) -> PoolKey {
        self._slot.endpoint
    }

    /// Takes the connection apart to use it as a tunnel; it never returns to the pool, and it
    /// counts against the endpoint's cap until the returned reservation is dropped.
    pub fn into_parts(self) -> Option<(crate::tls::transport::Transport, Vec<u8>, Reservation)> {
        let stream = super::super::io::reunite(self.reader, self.writer)?;
        Some((stream, self.buf, Reservation(self._slot)))
    }
}

/// Counts one open connection against its endpoint's cap until dropped.
#[derive(Debug)]
struct Slot {
    pool: Rc<RefCell<Inner>>,
    endpoint: PoolKey,
    /// The opening cluster's `max_connections` permit, when its circuit breaker is set: held
    /// while the connection is open (pooled, in use, or a tunnel).
    breaker: Option<crate::upstream::Permit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(mut inner) = self.pool.try_borrow_mut() else {
            debug_assert!(
                false,
                "a pooled connection was dropped while the pool was borrowed"
            );
            return;
        };
        if let Some(endpoint) = inner.endpoints.get_mut(&self.endpoint) {
            endpoint.open = endpoint.open.saturating_sub(1);
        }
    }
}

/// What [`Pool::checkout`] found.
#[derive(Debug)]
pub enum Checkout {
    /// A warm idle connection.
    Reused(Connection),
    /// Room for a new connection: call [`Pool::connect`] with this.
    New(Reservation),
    /// The endpoint is at `max_connections`.
    Exhausted,
}

/// A reserved connection slot, turned into a connection by [`Pool::connect`].
#[derive(Debug)]
pub struct Reservation(Slot);

/// Whether an idle connection can carry a request: still open, and nothing arrived on it. An
/// upstream sends nothing on an idle connection unless it is closing it (FIN, RST) or
/// misbehaving, and bytes that arrived there would be read as the next request's response: a
/// response meant for nobody, or forged, handed to another client. One non-blocking peek per
/// reuse; the pool holds no task reading its idle connections.
fn is_quiet(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which lives on this stack frame, and the
    // descriptor belongs to a pooled connection the caller holds (so it is open) for the call. MSG_PEEK
    // consumes nothing; MSG_DONTWAIT makes the call non-blocking whatever the socket's mode.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // 0: the upstream closed; 1: unsolicited bytes; an error other than "nothing to read": reset.
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the most recently used idle connection to `endpoint` that has not timed out, or
    /// reserves room for a new one.
    pub fn checkout(&self, endpoint: impl Into<PoolKey>, limits: &PoolLimits) -> Checkout {
        let endpoint = endpoint.into();
        let now = Instant::now();
        // Connections too old to trust (the upstream may be closing them) are dropped after the
        // borrow ends, because dropping one frees its slot in this same pool.
        let mut stale = Vec::new();
        let checkout = {
            let mut inner = self.inner.borrow_mut();
            let entry = inner.endpoints.entry(endpoint).or_default();
            loop {
                match entry.idle.pop() {
                    Some(mut connection)
                        if now.duration_since(connection.idle_since) < limits.idle_timeout
                            && is_quiet(connection.reader.fd()) =>
                    {
                        connection.reuses += 1;
                        break Checkout::Reused(connection);
                    }
                    Some(old) => stale.push(old),
                    None if entry.open >= limits.max_connections + stale.len() as u32 => {
                        break Checkout::Exhausted;
                    }
                    None => {
                        entry.open += 1;
                        break Checkout::New(Reservation(Slot {
                            pool: Rc::clone(&self.inner),
                            endpoint,
                            breaker: None,
                        }));
                    }
                }
            }
        };
        drop(stale);
        checkout
    }

    /// Reserves room for a new connection to `endpoint`, passing over idle ones (a retry after a
    /// stale connection wants a fresh one). At the cap, the oldest idle connection is closed to
    /// make room.
    pub fn reserve(&self, endpoint: impl Into<PoolKey>, limits: &PoolLimits) -> Checkout {
        let endpoint = endpoint.into();
        let (checkout, closed) = {
            let mut inner = self.inner.borrow_mut();
            let entry = inner.endpoints.entry(endpoint).or_default();
            let closed = (entry.open >= limits.max_connections && !entry.idle.is_empty())
                .then(|| entry.idle.remove(0));
            // A closed connection frees its slot when dropped, after this borrow ends.
            let open = entry.open - u32::from(closed.is_some());
            if open >= limits.max_connections {
                (Checkout::Exhausted, closed)
            } else {
                entry.open += 1;
                let reservation = Reservation(Slot {
                    pool: Rc::clone(&self.inner),
                    endpoint,
                    breaker: None,
                });
                (Checkout::New(reservation), closed)
            }
        };
        drop(closed);
        checkout
    }

    /// Turns a reservation into a connection over `stream`, holding `breaker` (the cluster's
    /// `max_connections` permit, if it has a circuit breaker) for the connection's life.
    pub fn connect_with(
        &self,
        mut reservation: Reservation,
        stream: Transport,
        breaker: Option<crate::upstream::Permit>,
    ) -> Connection {
        reservation.0.breaker = breaker;
        self.connect_transport(reservation, stream)
    }

    /// Turns a reservation into a connection over plain `stream`.
    pub fn connect(&self, reservation: Reservation, stream: TcpStream) -> Connection {
        self.connect_transport(reservation, Transport::Plain(stream))
    }

    /// Turns a reservation into a connection over `stream`, plain or TLS.
    pub fn connect_transport(&self, reservation: Reservation, stream: Transport) -> Connection {
        let peer = stream
            .tls_info()
            .and_then(|info| info.peer_principal.clone())
            .map(Rc::new);
        let (reader, writer) = split_transport(stream);
        Connection {
            reader,
            writer,
            buf: Vec::with_capacity(READ_BUFFER),
            reuses: 0,
            peer,
            idle_since: Instant::now(),
            _slot: reservation.0,
        }
    }

    /// Returns a connection after a complete exchange. It is kept if the pool has room and
    /// nothing is left unread in its buffer; otherwise it is closed.
    pub fn release(&self, mut connection: Connection, limits: &PoolLimits) {
        if !connection.buf.is_empty() {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        let entry = inner.endpoints.entry(connection.key()).or_default();
        if entry.idle.len() < limits.max_idle as usize {
            connection.idle_since = Instant::now();
            entry.idle.push(connection);
        }
    }

    /// Closes idle connections older than their endpoint's `max_idle_age`; run periodically by
    /// each worker.
    pub fn evict_idle(&self, max_idle_age: impl Fn(&SocketAddr) -> Duration) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut inner = self.inner.borrow_mut();
            for (endpoint, entry) in inner.endpoints.iter_mut() {
                let max_idle_age = max_idle_age(&endpoint.address);
                let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(&mut entry.idle)
                    .into_iter()
                    .partition(|c| now.duration_since(c.idle_since) < max_idle_age);
                entry.idle = keep;
                expired.extend(old);
            }
            inner
                .endpoints
                .retain(|_, e| e.open > 0 || !e.idle.is_empty());
        }
        // Dropped outside the borrow: each drop updates the pool.
        drop(expired);
    }

    /// Closes the idle connections to endpoints for which `live` is false (after a reload removed
    /// them); busy ones finish their request and are closed by [`Pool::evict_idle`] later.
    pub fn close_idle_except(&self, live: impl Fn(&SocketAddr) -> bool) {
        let mut closed = Vec::new();
        {
            let mut inner = self.inner.borrow_mut();
            for (endpoint, entry) in inner.endpoints.iter_mut() {
                if !live(&endpoint.address) {
                    closed.append(&mut entry.idle);
                }
            }
        }
        // Dropped outside the borrow: each drop updates the pool.
        drop(closed);
    }

    /// Idle connections to `endpoint` (for stats and tests).
    pub fn idle_count(&self, endpoint: impl Into<PoolKey>) -> usize {
        self.inner
            .borrow()
            .endpoints
            .get(&endpoint.into())
            .map_or(0, |e| e.idle.len())
    }

    /// Open connections to `endpoint`, busy and idle.
    pub fn open_count(&self, endpoint: impl Into<PoolKey>) -> u32 {
        self.inner
            .borrow()
            .endpoints
            .get(&endpoint.into())
            .map_or(0, |e| e.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    const LIMITS: PoolLimits = PoolLimits {
        max_connections: 2,
        max_idle: 1,
        idle_timeout: Duration::from_secs(60),
    };

    #[monoio::test_all(timer_enabled = true)]
    async fn connections_are_capped_reused_and_released() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = listener.local_addr().expect("addr");
        let pool = Pool::new();

        let mut open = Vec::new();
        for _ in 0..2 {
            let Checkout::New(reservation) = pool.checkout(endpoint, &LIMITS) else {
                panic!("room expected")
            };
            let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
            open.push(pool.connect(reservation, stream));
        }
        assert!(matches!(
            pool.checkout(endpoint, &LIMITS),
            Checkout::Exhausted
        ));
        assert_eq!(pool.open_count(endpoint), 2);

        // Both come back; only one fits in the idle list, the other is closed and frees its slot.
        for connection in open.drain(..) {
            pool.release(connection, &LIMITS);
        }
        assert_eq!(pool.idle_count(endpoint), 1);
        assert_eq!(pool.open_count(endpoint), 1);

        let Checkout::Reused(connection) = pool.checkout(endpoint, &LIMITS) else {
            panic!("reuse expected")
        };
        assert_eq!(connection.reuses, 1);

        // A connection with unread bytes is never pooled.
        let mut dirty = connection;
        dirty.buf.extend_from_slice(b"leftover");
        pool.release(dirty, &LIMITS);
        assert_eq!(pool.idle_count(endpoint), 0);
        assert_eq!(pool.open_count(endpoint), 0);
    }

    /// Polls `is_quiet` until it turns false (the peer's bytes or FIN have arrived), at most 5 s.
    async fn wait_until_not_quiet(stream: &TcpStream) {
        for _ in 0..5000 {
            if !is_quiet(stream.as_raw_fd()) {
                return;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the peer's bytes or FIN never arrived");
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn idle_connections_that_received_bytes_or_closed_are_not_reused() {
        use std::io::Write as _;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = listener.local_addr().expect("addr");
        let pool = Pool::new();
        let reserve = |pool: &Pool| {
            let Checkout::New(reservation) = pool.checkout(endpoint, &LIMITS) else {
                panic!("room expected")
            };
            reservation
        };

        // Quiet: reused.
        let reservation = reserve(&pool);
        let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
        let (_quiet_peer, _) = listener.accept().expect("accept");
        assert!(is_quiet(stream.as_raw_fd()));
        pool.release(pool.connect(reservation, stream), &LIMITS);
        let Checkout::Reused(connection) = pool.checkout(endpoint, &LIMITS) else {
            panic!("a quiet idle connection is reused")
        };
        drop(connection);

        // Bytes arrived while idle: closed, and a new connection is offered instead.
        let reservation = reserve(&pool);
        let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
        let (mut chatty_peer, _) = listener.accept().expect("accept");
        chatty_peer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .expect("write");
        wait_until_not_quiet(&stream).await;
        pool.release(pool.connect(reservation, stream), &LIMITS);
        assert!(matches!(pool.checkout(endpoint, &LIMITS), Checkout::New(_)));
        assert_eq!(pool.idle_count(endpoint), 0);
        assert_eq!(pool.open_count(endpoint), 0);

        // The upstream closed while idle: not reused either.
        let reservation = reserve(&pool);
        let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
        let (closing_peer, _) = listener.accept().expect("accept");
        drop(closing_peer);
        wait_until_not_quiet(&stream).await;
        pool.release(pool.connect(reservation, stream), &LIMITS);
        assert!(matches!(pool.checkout(endpoint, &LIMITS), Checkout::New(_)));
        assert_eq!(pool.idle_count(endpoint), 0);
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn idle_connections_of_removed_endpoints_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = listener.local_addr().expect("addr");
        let pool = Pool::new();
        let Checkout::New(reservation) = pool.checkout(endpoint, &LIMITS) else {
            panic!("room expected")
        };
        let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
        pool.release(pool.connect(reservation, stream), &LIMITS);
        pool.close_idle_except(|e| *e == endpoint);
        assert_eq!(pool.idle_count(endpoint), 1, "still live");
        pool.close_idle_except(|_| false);
        assert_eq!(pool.idle_count(endpoint), 0);
        assert_eq!(pool.open_count(endpoint), 0);
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn idle_connections_age_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = listener.local_addr().expect("addr");
        let pool = Pool::new();
        let Checkout::New(reservation) = pool.checkout(endpoint, &LIMITS) else {
            panic!("room expected")
        };
        let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
        pool.release(pool.connect(reservation, stream), &LIMITS);
        assert_eq!(pool.idle_count(endpoint), 1);
        monoio::time::sleep(Duration::from_millis(20)).await;
        pool.evict_idle(|_| Duration::from_millis(10));
        assert_eq!(pool.idle_count(endpoint), 0);
        assert_eq!(pool.open_count(endpoint), 0);
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn connections_with_other_tls_settings_never_stand_in() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = listener.local_addr().expect("addr");
        let pool = Pool::new();
        let plain = PoolKey::from(endpoint);
        let tls = PoolKey {
            address: endpoint,
            tls: 7,
        };
        let Checkout::New(reservation) = pool.checkout(plain, &LIMITS) else {
            panic!("room expected")
        };
        let stream = TcpStream::connect_addr(endpoint).await.expect("connect");
        pool.release(pool.connect(reservation, stream), &LIMITS);
        assert_eq!(pool.idle_count(plain), 1);
        // The idle plaintext connection is not handed out for the TLS key, nor counted there.
        assert!(matches!(pool.checkout(tls, &LIMITS), Checkout::New(_)));
        assert_eq!(pool.idle_count(plain), 1);
        assert!(matches!(pool.checkout(plain, &LIMITS), Checkout::Reused(_)));
        // Removing the endpoint closes its idle connections of every kind.
        pool.close_idle_except(|_| false);
        assert_eq!(pool.idle_count(tls), 0);
    }
}
