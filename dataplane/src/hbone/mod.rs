//! HBONE: TCP connections carried as HTTP/2 CONNECT streams over mutual TLS, the tunnel protocol
//! of Istio's ambient mesh (ztunnel), so that a ringmesh node and a ztunnel node can talk.
//!
//! - [`client`]: a per-worker pool of tunnel connections and [`client::Tunnel`], one stream.
//! - [`server`]: one accepted tunnel connection: a task per CONNECT stream, answered by a
//!   [`server::ConnectHandler`] the caller supplies (authorization, the upstream connection).
//! - `copy`: bytes between an HTTP/2 stream and a TCP/TLS connection, both sides of the tunnel.
//!
//! # The wire protocol, as built
//!
//! - Transport: TLS 1.3 (the configs come from the caller), ALPN `h2`, then HTTP/2 with these
//!   settings on both sides (ztunnel's): initial stream window [`STREAM_WINDOW`] (4 MiB),
//!   connection window [`CONNECTION_WINDOW`] (16 MiB), max frame size [`MAX_FRAME_SIZE`]
//!   (1 MiB). The server allows [`SERVER_MAX_STREAMS`] (200) concurrent streams; the client
//!   opens at most [`CLIENT_MAX_STREAMS`] (100) per connection, never more than the server's
//!   SETTINGS_MAX_CONCURRENT_STREAMS, and opens another connection when all are taken. Client
//!   connections without a stream for [`CLIENT_IDLE_TIMEOUT`] (5 minutes) are closed; one that
//!   failed or received GOAWAY takes no new stream.
//! - The client dials `<destination workload IP>:<hbone port>` (15008), presents the source
//!   workload's certificate and accepts only the destination workload's SPIFFE ID (checked by
//!   the caller's verifier, and again here against the pool key).
//! - One stream per proxied TCP connection: `:method CONNECT`, `:authority` = the target
//!   `ip:port` (IPv6 in brackets), no `:scheme` or `:path` (RFC 9113 §8.5), and the headers
//!   `forwarded: for="<source ip:port>"` (quoted; IPv6 in brackets), `baggage` and
//!   `traceparent` when the caller has them.
//! - The server answers 400 when the method is not CONNECT, or `:authority` is not an `ip:port`
//!   whose IP is the workload the tunnel connection was captured for (`tunnel_for`); 401 when
//!   the handler's authorization denies; 503 when it cannot connect the workload; else 200 and
//!   the stream carries the bytes both ways. Refusals end the stream (END_STREAM on HEADERS).
//! - Half-close: END_STREAM from the peer becomes `shutdown(SHUT_WR)` (FIN) on the local
//!   connection; EOF on the local connection becomes an empty DATA frame with END_STREAM. A
//!   stream ends when both directions have. A local I/O error or a revocation (the live
//!   authorization re-check) resets the stream with CANCEL and closes the local connection; a
//!   stream reset by the peer closes the local connection.
//! - Flow control: received DATA is released (WINDOW_UPDATE) only once written to the local
//!   connection, and local bytes are sent only as the peer's window grants capacity, so neither
//!   side buffers more than a window.
//!
//! Compatibility notes: the request and answers follow the node-mode design (issue 13), which
//! follows ztunnel; the interop test drives the server with an independent HTTP/2 client
//! (Python `h2` over `ssl`), not with ztunnel itself. The server reads the first `for=` of
//! `forwarded` quoted or not; one that is not an `ip:port` is ignored (`source` is `None`), not
//! refused.

pub mod client;
mod copy;
pub mod server;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use copy::{Ended, Outcome};

use crate::identity::SpiffeId;
use crate::stats::Counter;

/// Initial stream flow-control window, both sides (ztunnel's).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Initial connection flow-control window, both sides (ztunnel's).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// SETTINGS_MAX_FRAME_SIZE, both sides (ztunnel's).
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// SETTINGS_MAX_CONCURRENT_STREAMS of the server.
pub const SERVER_MAX_STREAMS: u32 = 200;
/// Streams the client opens on one connection at most.
pub const CLIENT_MAX_STREAMS: u32 = 100;
/// A client connection without a stream for this long is closed.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One CONNECT request: what the client sends, and what the server hands its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The target, `:authority` on the wire.
    pub target: SocketAddr,
    /// The original source of the proxied connection, `forwarded: for="ip:port"`.
    pub source: Option<SocketAddr>,
    /// The `baggage` header (W3C), as sent.
    pub baggage: Option<String>,
    /// The `traceparent` header (W3C), as sent.
    pub traceparent: Option<String>,
    /// Server side only: the client's verified SPIFFE ID, from the TLS handshake (ignored by
    /// the client).
    pub peer: Option<SpiffeId>,
}

impl ConnectRequest {
    /// A request for `target` from `source`, without baggage or trace context.
    pub fn new(target: SocketAddr, source: Option<SocketAddr>) -> Self {
        Self {
            target,
            source,
            baggage: None,
            traceparent: None,
            peer: None,
        }
    }
}

/// The `forwarded` header value for `source`: `for="ip:port"`, IPv6 in brackets.
pub fn forwarded_value(source: SocketAddr) -> String {
    // SocketAddr's Display puts IPv6 addresses in brackets.
    format!("for=\"{source}\"")
}

/// The target of a CONNECT `:authority`: an `ip:port` (IPv6 in brackets), nothing else — no
/// host names, no userinfo, no missing port.
pub fn parse_target(authority: &str) -> Option<SocketAddr> {
    authority.parse().ok()
}

/// The source address of a `forwarded` header: the first `for=` parameter of its first
/// element, quoted or not. `None` when absent or not an `ip:port`.
pub fn parse_forwarded(value: &str) -> Option<SocketAddr> {
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        value.parse().ok()
    })
}

/// Answers by status, for the counters.
#[derive(Debug, Default)]
pub struct ByStatus {
    /// 400: not CONNECT, or a target outside the tunnel's workload.
    pub bad_request: Counter,
    /// 401: authorization denied.
    pub unauthorized: Counter,
    /// 503: the workload could not be connected.
    pub unavailable: Counter,
    /// Any other non-200 status (client side: what the server answered).
    pub other: Counter,
}

impl ByStatus {
    fn count(&self, status: u16) {
        match status {
            400 => self.bad_request.inc(),
            401 => self.unauthorized.inc(),
            503 => self.unavailable.inc(),
            _ => self.other.inc(),
        }
    }
}

/// HBONE counters of one worker (single writer: the worker; readers anywhere: the admin thread
/// sums them into `ringmesh_hbone_*`), shared by the worker's pool and tunnel servers.
#[derive(Debug, Default)]
pub struct HboneCounters {
    /// Server: CONNECT streams answered 200.
    pub inbound_opened: Counter,
    /// Server: CONNECT streams refused, by status.
    pub inbound_refused: ByStatus,
    /// Client: tunnels the server answered 200.
    pub outbound_opened: Counter,
    /// Client: tunnels the server refused, by the status it answered.
    pub outbound_refused: ByStatus,
    /// Client: tunnels that failed before an answer (connect, TLS, HTTP/2, timeout).
    pub outbound_failed: Counter,
    /// Tunnel streams started carrying bytes (both sides).
    pub streams_opened: Counter,
    /// Tunnel streams that ended (both sides).
    pub streams_closed: Counter,
    /// Client: connections opened.
    pub connections_opened: Counter,
    /// Client: streams placed on a connection that was already open.
    pub connections_reused: Counter,
    /// Client: connections that ended.
    pub connections_closed: Counter,
}

impl HboneCounters {
    /// Streams carrying bytes now.
    pub fn streams_active(&self) -> u64 {
        self.streams_opened
            .get()
            .saturating_sub(self.streams_closed.get())
    }

    /// Client connections open now.
    pub fn connections_active(&self) -> u64 {
        self.connections_opened
            .get()
            .saturating_sub(self.connections_closed.get())
    }
}

/// Why a tunnel could not be opened, by step, for the caller's counters and logs.
#[derive(Debug)]
pub enum HboneError {
    /// The TCP connection to the tunnel address failed.
    Connect(std::io::Error),
    /// The TLS handshake failed (the reason is rustls's or the verifier's), or the server's
    /// SPIFFE ID is not the one expected.
    Tls(String),
    /// HTTP/2 failed: the handshake, the connection, or the stream.
    Http2(String),
    /// The server answered this status instead of 200.
    Status(u16),
    /// TCP, TLS and the answer did not complete within the connect timeout.
    TimedOut(Duration),
}

impl fmt::Display for HboneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HboneError::Connect(e) => write!(f, "HBONE connect failed: {e}"),
            HboneError::Tls(e) => write!(f, "HBONE TLS handshake failed: {e}"),
            HboneError::Http2(e) => write!(f, "HBONE HTTP/2 failed: {e}"),
            HboneError::Status(status) => write!(f, "HBONE CONNECT answered {status}"),
            HboneError::TimedOut(d) => write!(f, "HBONE connect timed out after {d:?}"),
        }
    }
}

impl std::error::Error for HboneError {}
