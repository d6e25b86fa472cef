//! Getting an HTTP/1.1 upstream connection, and reading an upstream's response head.
//!
//! Shared by the HTTP/1.1 path (`proxy.rs`) and the HTTP/2 stream path (`h2/proxy.rs`) whenever
//! the cluster speaks HTTP/1.1.

use std::time::{Duration, Instant};

use tracing::debug;

use super::h1;
use super::io;
use super::pool::{Checkout, Connection};
use crate::access_log::ResponseFlags;
use crate::core::Core;
use crate::snapshot::{Cluster, PoolLimits, Snapshot};
use crate::upstream::InFlightGuard;

/// Why no upstream connection could be had.
pub(crate) enum ConnectFailure {
    /// The cluster has no endpoint.
    NoEndpoint,
    /// Every endpoint tried was at its connection cap.
    Overflow,
    /// Every endpoint tried refused, failed or timed out.
    Failed,
}

impl ConnectFailure {
    pub(crate) fn status(&self) -> u16 {
        match self {
            ConnectFailure::NoEndpoint | ConnectFailure::Overflow => 503,
            ConnectFailure::Failed => 502,
        }
    }

    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ConnectFailure::NoEndpoint => "no healthy upstream",
            ConnectFailure::Overflow => "upstream connection limit reached",
            ConnectFailure::Failed => "upstream connect error",
        }
    }

    pub(crate) fn flag(&self) -> ResponseFlags {
        match self {
            ConnectFailure::NoEndpoint => ResponseFlags::NO_HEALTHY_UPSTREAM,
            ConnectFailure::Overflow => ResponseFlags::UPSTREAM_OVERFLOW,
            ConnectFailure::Failed => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
        }
    }
}

/// Stage 6: an upstream connection to the endpoint the load balancer picks, or, if that one fails,
/// to the next endpoints in turn (nothing has been sent yet, so trying another is always safe).
pub(crate) async fn checkout(
    core: &Core,
    snapshot: &Snapshot,
    cluster: &Cluster,
    hash: Option<u64>,
    limits: &PoolLimits,
) -> Result<(Connection, Option<InFlightGuard>), ConnectFailure> {
    let counters = cluster.stats.slot(core.id);
    let endpoints = cluster.endpoints.len();
    let Some(first) = core.pick_endpoint(snapshot, cluster, hash) else {
        counters.no_endpoint.inc();
        return Err(ConnectFailure::NoEndpoint);
    };
    let mut overflow = false;
    for attempt in 0..endpoints {
        let endpoint = (first + attempt) % endpoints;
        let address = cluster.endpoints[endpoint].address;
        let in_flight = || core.start_request(snapshot, cluster, endpoint);
        match core.pool.checkout(address, limits) {
            Checkout::Reused(connection) => return Ok((connection, in_flight())),
            Checkout::Exhausted => {
                counters.pool_overflow.inc();
                overflow = true;
            }
            Checkout::New(reservation) => {
                match crate::upstream::connect(address, cluster.connect_timeout).await {
                    Ok(stream) => {
                        counters.connections.inc();
                        return Ok((core.pool.connect(reservation, stream), in_flight()));
                    }
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::TimedOut {
                            counters.connect_timeouts.inc();
                        } else {
                            counters.connect_failures.inc();
                        }
                        debug!(cluster = %cluster.name, endpoint = %address, error = %e, "upstream connect failed");
                    }
                }
            }
        }
    }
    Err(if overflow {
        ConnectFailure::Overflow
    } else {
        ConnectFailure::Failed
    })
}

/// Sends `head` again on a new connection after a pooled one turned out to be closed. `None`
/// when the request cannot be replayed or no connection can be made.
pub(crate) async fn retry_on_fresh_connection(
    core: &Core,
    snapshot: &Snapshot,
    cluster: &Cluster,
    hash: Option<u64>,
    limits: &PoolLimits,
    head: Option<&mut Vec<u8>>,
) -> Option<Connection> {
    let head = head?;
    // Pooled connections to this endpoint are likely stale too: open a new one.
    let fresh_only = PoolLimits {
        max_idle: 0,
        ..*limits
    };
    core.pool.evict_idle(Duration::ZERO);
    let (mut connection, _) = checkout(core, snapshot, cluster, hash, &fresh_only)
        .await
        .ok()?;
    io::write_all(&mut connection.stream, head).await.ok()?;
    Some(connection)
}

/// Why no usable response head arrived.
pub(crate) enum ResponseError {
    /// The upstream closed or reset before sending a byte.
    Closed,
    /// The route timeout passed.
    Timeout,
    /// The head was malformed, too large, or cut short.
    Malformed(&'static str),
}

impl ResponseError {
    pub(crate) fn reply(&self) -> (u16, &'static str, ResponseFlags) {
        match self {
            ResponseError::Closed => (
                502,
                "upstream closed the connection",
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            ),
            ResponseError::Timeout => (
                504,
                "upstream request timeout",
                ResponseFlags::UPSTREAM_TIMEOUT,
            ),
            ResponseError::Malformed(reason) => {
                (502, reason, ResponseFlags::UPSTREAM_PROTOCOL_ERROR)
            }
        }
    }
}

/// Reads until the upstream's response head is complete.
pub(crate) async fn read_response_head(
    upstream: &mut Connection,
    deadline: Option<Instant>,
) -> Result<usize, ResponseError> {
    // Each new byte is pre-scanned, as on the request side: a head with bare LF line endings
    // never holds the CRLF CRLF that ends a head, so without this the proxy would wait for it
    // until the route timeout (or forever) instead of answering 502 at once.
    let mut scanned = 0;
    loop {
        match h1::prescan(&upstream.buf, scanned) {
            Ok(h1::Scan::Complete(head)) => return Ok(head.len()),
            Ok(h1::Scan::Partial(at)) => scanned = at,
            Err(reject) => return Err(ResponseError::Malformed(reject.reason)),
        }
        if upstream.buf.len() >= h1::MAX_RESPONSE_HEAD {
            return Err(ResponseError::Malformed("upstream response head too large"));
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if timeout == Some(Duration::ZERO) {
            return Err(ResponseError::Timeout);
        }
        match io::read_more_within(
            &mut upstream.stream,
            &mut upstream.buf,
            io::BODY_CHUNK / 4,
            timeout,
        )
        .await
        {
            Ok(0) if upstream.buf.is_empty() => return Err(ResponseError::Closed),
            Ok(0) => return Err(ResponseError::Malformed("upstream response head cut short")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ResponseError::Timeout);
            }
            Err(_) if upstream.buf.is_empty() => return Err(ResponseError::Closed),
            Err(_) => {
                return Err(ResponseError::Malformed(
                    "upstream connection reset mid-head",
                ));
            }
        }
    }
}

/// The status code of a response head, or 0 if it does not look like one.
pub(crate) fn peek_status(head: &[u8]) -> u16 {
    match head.get(9..12) {
        Some(digits) if head.starts_with(b"HTTP/1.") && digits.iter().all(u8::is_ascii_digit) => {
            digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0'))
        }
        _ => 0,
    }
}
