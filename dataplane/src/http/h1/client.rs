//! The upstream side of HTTP/1.1: getting a connection to an endpoint, writing the request head,
//! reading the response head.
//!
//! Nothing here answers a client: failures come back as [`Failure`]s for the exchange core.

use std::net::SocketAddr;

use super::pool::{Checkout, Connection};
use super::{BodyFraming, push_decimal};
use crate::core::Core;
use crate::http::error::{Failure, Retry, Unavailable};
use crate::http::headers::{self, RequestRules};
use crate::http::io::{BODY_CHUNK, Reader};
use crate::http::request::RequestHead;
use crate::snapshot::Cluster;
use crate::tls::transport::Transport;
use crate::upstream::PoolKey;

/// A connection to `address` of `cluster`: a pooled one if one is idle (and quiet), else a new
/// one within the pool's cap. With `fresh`, pooled connections are passed over: a retry after a
/// stale connection does not take another that may be just as stale.
pub async fn connection(
    core: &Core,
    cluster: &Cluster,
    address: SocketAddr,
    fresh: bool,
) -> Result<Connection, Unavailable> {
    let counters = cluster.stats.slot(core.id);
    let key = PoolKey {
        address,
        tls: cluster.tls_key,
    };
    let checkout = if fresh {
        core.pool.reserve(key, &cluster.pool)
    } else {
        core.pool.checkout(key, &cluster.pool)
    };
    match checkout {
        Checkout::Reused(connection) => {
            counters.pool_reuse.inc();
            Ok(connection)
        }
        Checkout::Exhausted => Err(Unavailable::Exhausted),
        Checkout::New(reservation) => {
            let permit = crate::upstream::breaker::admit(
                cluster.breaker.as_ref(),
                crate::upstream::breaker::Resource::Connections,
            )
            .map_err(|_| Unavailable::CircuitOpen)?;
            // Boxed: connecting is rare next to reuse, and its future (a connect under a timer)
            // would otherwise make every request's future larger.
            let stream = Box::pin(crate::upstream::connect(address, cluster.connect_timeout))
                .await
                .map_err(Unavailable::Connect)?;
            let stream = match &cluster.tls {
                None => Transport::Plain(stream),
                Some(tls) => {
                    let (stream, info) = Box::pin(crate::tls::connect(
                        stream,
                        tls,
                        core.id,
                        crate::tls::Carries::Http1,
                        address,
                        cluster.connect_timeout,
                    ))
                    .await
                    .map_err(|e| Unavailable::Tls(std::io::Error::new(e.kind(), e.to_string())))?;
                    Transport::Tls(Box::new(stream), Box::new(info))
                }
            };
            counters.connections.inc();
            Ok(core.pool.connect_with(reservation, stream, permit))
        }
    }
}

/// What the upstream request head carries besides the client's fields.
#[derive(Debug)]
pub struct RequestLine<'a> {
    /// Path and query to send (rewritten or as received), or the CONNECT authority.
    pub target: &'a [u8],
    /// `host` to send.
    pub host: &'a [u8],
    /// How the body is framed upstream.
    pub framing: BodyFraming,
    /// For upgrade requests, the `Upgrade` value to pass on.
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the upstream request head (always HTTP/1.1) into `out`, which is cleared first.
pub fn write_request_head(
    out: &mut Vec<u8>,
    request: &RequestHead<'_>,
    line: &RequestLine<'_>,
    rules: &RequestRules<'_>,
    values: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !rules.mutation.drops("host") {
        super::push_header(out, b"host", line.host);
    }
    headers::request_headers(
        request.fields,
        request.connection_tokens,
        rules,
        values,
        out,
    );
    match line.framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if let Some(upgrade) = line.upgrade {
        super::push_header(out, b"upgrade", upgrade);
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads until the upstream's final response head is complete (interim 1xx answers other than
/// 101 are read and dropped: the proxy answers `Expect` itself). Returns the head's length.
///
/// An upstream that closes or resets before sending a byte did not answer: on a connection that
/// already carried requests that is the classic stale keep-alive race, which a retry of an
/// idempotent request resolves.
pub async fn read_response_head(
    reader: &mut Reader,
    buf: &mut Vec<u8>,
    reused: bool,
) -> Result<usize, Failure> {
    let reset = Failure::UpstreamReset {
        retry: if reused {
            Retry::IfIdempotent
        } else {
            Retry::No
        },
    };
    loop {
        let head_len = read_head(reader, buf, reset).await?;
        let status = peek_status(&buf[..head_len]);
        if (100..200).contains(&status) && status != 101 {
            buf.drain(..head_len);
            continue;
        }
        return Ok(head_len);
    }
}

async fn read_head(
    reader: &mut Reader,
    buf: &mut Vec<u8>,
    reset: Failure,
) -> Result<usize, Failure> {
    // Each new byte is pre-scanned, as on the request side: a head with bare LF line endings
    // never holds the CRLF CRLF that ends a head, so without this the proxy would wait for it
    // until the deadline (or forever) instead of answering 502 at once.
    let mut scanned = 0;
    loop {
        match super::prescan(buf, scanned) {
            Ok(super::Scan::Complete(head)) => return Ok(head.len()),
            Ok(super::Scan::Partial(at)) => scanned = at,
            Err(reject) => return Err(Failure::UpstreamProtocol(reject.reason)),
        }
        if buf.len() >= super::MAX_RESPONSE_HEAD {
            return Err(Failure::UpstreamProtocol(
                "upstream response head too large",
            ));
        }
        match reader.read_more(buf, BODY_CHUNK / 4).await {
            Ok(0) | Err(_) if buf.is_empty() => return Err(reset),
            Ok(0) => {
                return Err(Failure::UpstreamProtocol(
                    "upstream response head cut short",
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Failure::UpstreamProtocol(
                    "upstream connection reset mid-head",
                ));
            }
        }
    }
}

/// The status code of a response head, or 0 if it does not look like one.
pub fn peek_status(head: &[u8]) -> u16 {
    match head.get(9..12) {
        Some(digits) if head.starts_with(b"HTTP/1.") && digits.iter().all(u8::is_ascii_digit) => {
            digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0'))
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_peeked_from_the_status_line() {
        assert_eq!(peek_status(b"HTTP/1.1 204 No Content\r\n\r\n"), 204);
        assert_eq!(peek_status(b"HTTP/1.0 100 Continue\r\n\r\n"), 100);
        assert_eq!(peek_status(b"SIP/2.0 200 OK\r\n\r\n"), 0);
        assert_eq!(peek_status(b"HTTP/1.1 2x0 OK\r\n\r\n"), 0);
    }
}
