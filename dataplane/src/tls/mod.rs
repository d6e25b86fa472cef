//! TLS: termination on listeners and origination to upstreams, with rustls (the `ring` provider,
//! one per process) over monoio.
//!
//! - [`stream`]: the adapter — a rustls session driven from poll functions over monoio's poll-io
//!   bridge, so it works on both drivers; `h2` uses it directly and the HTTP/1.1 and L4 code
//!   through the transport halves of `http::io`.
//! - [`config`]: building rustls configs from the `[listeners.tls]` and `[clusters.tls]` sections
//!   (PEM files, a certificate per SNI with a default, versions, ALPN, resumption), and the
//!   builders that take a verifier or certificate resolver from elsewhere (SPIFFE identities).
//! - [`accept`] and [`connect`]: one handshake each, bounded in time, giving a [`TlsStream`] and
//!   the [`TlsInfo`] the connection carries.
//!
//! Why not `monoio-rustls` (0.4, no commit since May 2024): it reads and writes through buffers of
//! its own over monoio's owned-buffer I/O (one more copy each way), its halves come from monoio's
//! generic `Split` over an `UnsafeCell`, and it offers no cancelable read: like any owned-buffer
//! read, one dropped mid-way under io_uring can lose what the kernel had already read (its
//! zero-copy mode says outright that its futures must not be dropped). The HTTP/1.1 path gives up
//! reads at deadlines and drains, so it needs reads that lose nothing when abandoned. The adapter
//! here is ~300 lines on rustls's `Connection` and the poll-io bridge that `h2` already uses.

pub mod config;
pub mod stream;
pub mod transport;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use rustls::crypto::CryptoProvider;

pub use config::{Carries, ClientAuth, ClientTls, Mesh, ServerTls};

use crate::identity::SpiffeId;
pub use stream::TlsStream;

/// The process's one crypto provider (`ring`).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// What a TLS connection negotiated, for routing, authorization, metrics and logs. Built once
/// per connection, after the handshake; per-request consumers borrow from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<Box<str>>,
    /// The protocol ALPN chose (`h2`, `http/1.1`), if the client offered ALPN.
    pub alpn: Option<Box<[u8]>>,
    /// Whether the session was resumed (ticket or cache) rather than fully negotiated.
    pub resumed: bool,
    /// The verified identity of the peer: the SPIFFE ID of the certificate it presented (a
    /// client certificate on a listener, the server's on an upstream connection). `None` when
    /// it presented none, or one without a single SPIFFE URI SAN. [`SpiffeId`] keeps the whole
    /// `spiffe://` form with the offset of its path, so the principal (`td/ns/x/sa/y`), trust
    /// domain and namespace are slices of it: nothing is allocated per request.
    pub peer_principal: Option<SpiffeId>,
    /// Whether the peer presented a certificate that the handshake verified (on a listener:
    /// mutual TLS, with or without a SPIFFE ID).
    pub peer_verified: bool,
}

/// How a connection was secured, in Istio's words (`connection_security_policy`, and Envoy's
/// access-log `security_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Plaintext.
    None,
    /// TLS, the peer not authenticated by a certificate.
    Tls,
    /// TLS with a certificate from the peer that the handshake verified.
    MutualTls,
}

impl SecurityPolicy {
    /// The policy of a connection with these TLS details (`None`: plaintext).
    pub fn of(info: Option<&TlsInfo>) -> Self {
        match info {
            None => SecurityPolicy::None,
            Some(info) if info.peer_verified => SecurityPolicy::MutualTls,
            Some(_) => SecurityPolicy::Tls,
        }
    }

    /// `none`, `tls` or `mutual_tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "none",
            SecurityPolicy::Tls => "tls",
            SecurityPolicy::MutualTls => "mutual_tls",
        }
    }
}

impl TlsInfo {
    /// The details of a connection whose handshake is complete. Once per connection: the
    /// peer's leaf certificate is parsed here (rustls has verified it already, with whatever
    /// verifier the config carries), never per request.
    pub(crate) fn of(conn: &rustls::Connection) -> Self {
        let sni = match conn {
            rustls::Connection::Server(server) => server.server_name().map(Into::into),
            rustls::Connection::Client(_) => None,
        };
        // A server connection has peer certificates only when a client certificate verifier
        // accepted them (rustls drops none it refused: the handshake fails instead).
        let peer_certificates = conn.peer_certificates().filter(|certs| !certs.is_empty());
        Self {
            sni,
            alpn: conn.alpn_protocol().map(Into::into),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            peer_principal: crate::identity::peer_spiffe_id(peer_certificates),
            peer_verified: peer_certificates.is_some(),
        }
    }

    /// The peer's SPIFFE ID, `spiffe://td/ns/x/sa/y`.
    pub fn peer_id(&self) -> Option<&str> {
        self.peer_principal.as_ref().map(SpiffeId::as_str)
    }

    /// Whether ALPN chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some(b"h2")
    }
}

impl HandshakeError {
    /// The kind of I/O error this is.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            HandshakeError::TimedOut(_) => io::ErrorKind::TimedOut,
            HandshakeError::Failed(e) => e.kind(),
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer sent nothing useful within the bound.
    #[error("TLS handshake timed out after {0:?}")]
    TimedOut(Duration),
    /// rustls refused the peer's messages (the reason is rustls's), or the socket failed.
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// Runs the server side of a handshake on an accepted connection, within `timeout`.
pub async fn accept(
    stream: TcpStream,
    tls: &ServerTls,
    timeout: Duration,
) -> Result<(TlsStream, TlsInfo), HandshakeError> {
    let conn = rustls::ServerConnection::new(Arc::clone(&tls.config))
        .map_err(|e| HandshakeError::Failed(io::Error::other(e)))?;
    handshake(stream, conn.into(), timeout).await
}

/// Runs the client side of a handshake on a new upstream connection to `address`, within
/// `timeout`.
pub async fn connect(
    stream: TcpStream,
    tls: &ClientTls,
    worker: usize,
    carries: Carries,
    address: SocketAddr,
    timeout: Duration,
) -> Result<(TlsStream, TlsInfo), HandshakeError> {
    let conn = rustls::ClientConnection::new(tls.config(worker, carries), tls.server_name(address))
        .map_err(|e| HandshakeError::Failed(io::Error::other(e)))?;
    handshake(stream, conn.into(), timeout).await
}

async fn handshake(
    stream: TcpStream,
    conn: rustls::Connection,
    timeout: Duration,
) -> Result<(TlsStream, TlsInfo), HandshakeError> {
    // Handshakes are small back-and-forth writes: without TCP_NODELAY each flight waits for a
    // delayed ACK (measured elsewhere: ~50 handshakes/s).
    let _ = stream.set_nodelay(true);
    let io = stream.into_poll_io().map_err(HandshakeError::Failed)?;
    let mut tls = TlsStream::new(io, conn);
    match monoio::time::timeout(timeout, tls.handshake()).await {
        Ok(Ok(())) => {
            let info = TlsInfo::of(tls.connection());
            Ok((tls, info))
        }
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::TimedOut(timeout)),
    }
}

#[cfg(test)]
mod peer_tests;
#[cfg(test)]
mod tests;
