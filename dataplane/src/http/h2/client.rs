//! Per-core HTTP/2 connections to upstreams.
//!
//! Each worker keeps its own connections per endpoint address and multiplexes requests over them
//! up to the cluster's `max_streams_per_connection`; when every connection is that busy, another is
//! opened (up to `max_connections_per_endpoint`). A connection that received GOAWAY or failed takes
//! no new streams; its driver task ends when its last stream does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tracing::debug;

use super::io::H2Io;

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
}

struct Connection {
    send: SendRequest<Bytes>,
    active: Cell<u32>,
    /// Set when the connection ended, received GOAWAY, or failed a request.
    retired: Rc<Cell<bool>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("active", &self.active.get())
            .field("retired", &self.retired.get())
            .finish()
    }
}

/// A worker's upstream HTTP/2 connections, by endpoint address.
#[derive(Debug, Default, Clone)]
pub struct H2Pool {
    endpoints: Rc<RefCell<HashMap<SocketAddr, Vec<Rc<Connection>>>>>,
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
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let active = &self.connection.active;
        active.set(active.get().saturating_sub(1));
    }
}

/// Why no stream could be had.
#[derive(Debug)]
pub enum H2CheckoutError {
    /// Every connection is full and no more may be opened.
    Exhausted,
    /// Connecting or the HTTP/2 handshake failed.
    Connect(io::Error),
}

impl H2Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream slot to `endpoint`: on a connection with spare streams, else on a new connection.
    pub async fn checkout(
        &self,
        endpoint: SocketAddr,
        limits: &H2ClientLimits,
    ) -> Result<H2Stream, H2CheckoutError> {
        {
            let mut endpoints = self.endpoints.borrow_mut();
            let connections = endpoints.entry(endpoint).or_default();
            connections.retain(|c| !c.retired.get() || c.active.get() > 0);
            if let Some(connection) = connections
                .iter()
                .filter(|c| !c.retired.get() && c.active.get() < limits.max_streams)
                .min_by_key(|c| c.active.get())
            {
                connection.active.set(connection.active.get() + 1);
                return Ok(H2Stream {
                    send: connection.send.clone(),
                    reused: true,
                    connection: Rc::clone(connection),
                });
            }
            if connections.len() >= limits.max_connections as usize {
                return Err(H2CheckoutError::Exhausted);
            }
        }
        let connection = Rc::new(
            self.connect(endpoint, limits)
                .await
                .map_err(H2CheckoutError::Connect)?,
        );
        connection.active.set(1);
        self.endpoints
            .borrow_mut()
            .entry(endpoint)
            .or_default()
            .push(Rc::clone(&connection));
        Ok(H2Stream {
            send: connection.send.clone(),
            reused: false,
            connection,
        })
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
        limits: &H2ClientLimits,
    ) -> io::Result<Connection> {
        let stream = crate::l4::connect_one(endpoint, limits.connect_timeout).await?;
        let io = H2Io::client(stream)?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .enable_push(false)
            .handshake::<_, Bytes>(io);
        let (send, connection) = monoio::time::timeout(limits.connect_timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "HTTP/2 handshake timed out"))?
            .map_err(io::Error::other)?;
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
            retired,
        })
    }

    /// Streams open to `endpoint` on this core (for tests and stats).
    pub fn active_streams(&self, endpoint: SocketAddr) -> u32 {
        self.endpoints
            .borrow()
            .get(&endpoint)
            .map_or(0, |cs| cs.iter().map(|c| c.active.get()).sum())
    }

    /// Connections open to `endpoint` on this core.
    pub fn connections(&self, endpoint: SocketAddr) -> usize {
        self.endpoints
            .borrow()
            .get(&endpoint)
            .map_or(0, |cs| cs.iter().filter(|c| !c.retired.get()).count())
    }
}
