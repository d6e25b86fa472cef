//! HTTP proxying: protocol detection on `auto` listeners, and the HTTP/1.1 request path.
//!
//! - [`proxy`]: the request path, stage by stage — start reading there.
//! - [`h1`]: strict HTTP/1.1 head parsing and framing; [`chunked`]: chunked bodies.
//! - [`head`]: writing the heads the proxy sends; [`io`]: owned-buffer socket plumbing.
//! - [`pool`]: per-core upstream connection pools; [`h1_upstream`]: checkout and response heads.
//! - [`h2`]: HTTP/2 server and client, and the HTTP/2 stream path; [`grpc`]: gRPC specifics.

pub mod bridge;
pub mod chunked;
pub mod grpc;
pub mod h1;
pub mod h1_upstream;
pub mod h2;
pub mod head;
pub mod io;
pub mod pool;
pub mod proxy;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use config_schema::ListenerProtocol;
use monoio::net::TcpStream;

use crate::core::Core;
use crate::routing::Route;
use crate::snapshot::{Cluster, Snapshot, SnapshotRef};

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token looked at when deciding whether bytes are HTTP/1.
const MAX_METHOD: usize = 24;
/// On `auto` listeners with an opaque fallback, how long to wait for a client to speak first
/// before treating the connection as opaque (server-first protocols never send anything).
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the first bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else.
    Opaque,
    /// Not enough bytes yet.
    NeedMore,
}

/// Stage 9's metrics, the same for HTTP/1.1 and HTTP/2: the route's status class and duration,
/// the cluster's duration, and the cluster's status count for answers the proxy made itself
/// (upstream answers are counted where they arrive). All per-core slots: no shared atomic.
pub(crate) fn record_metrics(
    core: &Core,
    snapshot: &Snapshot,
    route: Option<&Route>,
    cluster: Option<&Cluster>,
    status: u16,
    locally_answered: bool,
    duration: Duration,
) {
    if let Some(route) = route
        && let Some((_, stats)) = snapshot.route_stats.get(route.id)
    {
        stats.slot(core.id).record(status, duration);
    }
    if let Some(cluster) = cluster {
        let counters = cluster.stats.slot(core.id);
        counters.duration.observe(duration);
        if locally_answered {
            counters.response(status);
        }
    }
}

/// Classifies the first bytes of a connection.
pub fn detect(bytes: &[u8]) -> Detected {
    let preface_prefix = bytes.len().min(H2_PREFACE.len());
    if bytes[..preface_prefix] == H2_PREFACE[..preface_prefix] {
        return if bytes.len() >= H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    for (i, &b) in bytes.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b' ' if i > 0 => return Detected::Http1,
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'-'
            | b'_'
            | b'!'
            | b'#'
            | b'$'
            | b'%'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'.'
            | b'^'
            | b'`'
            | b'|'
            | b'~'
            | b'0'..=b'9' => {}
            _ => return Detected::Opaque,
        }
    }
    if bytes.len() > MAX_METHOD {
        Detected::Opaque
    } else {
        Detected::NeedMore
    }
}

/// Serves a connection accepted on an `http` or `auto` listener: detects the protocol from the
/// first bytes, then hands the connection to HTTP/1.1 or, on `auto` listeners with a cluster, to
/// the opaque L4 path.
pub async fn serve(
    core: Rc<Core>,
    snapshot: SnapshotRef,
    listener_name: Arc<str>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let Some(listener) = snapshot.listener(&listener_name) else {
        return;
    };
    let opaque_fallback = listener.protocol == ListenerProtocol::Auto && listener.cluster.is_some();
    let wait = match (&listener.http, opaque_fallback) {
        (_, true) => DETECT_TIMEOUT,
        (Some(http), false) => http.request_header_timeout,
        (None, false) => return,
    };
    let mut initial = Vec::with_capacity(4096);
    let detected = loop {
        match io::read_more_within(&mut stream, &mut initial, 1024, Some(wait)).await {
            Ok(0) => return,
            Ok(_) => match detect(&initial) {
                Detected::NeedMore => continue,
                found => break found,
            },
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && opaque_fallback => {
                break Detected::Opaque;
            }
            Err(_) => return,
        }
    };
    match detected {
        Detected::Http1 => {
            proxy::serve(core, snapshot.clone(), listener_name, stream, peer, initial).await;
        }
        Detected::Opaque if opaque_fallback => {
            crate::l4::proxy(&core, &snapshot, listener, stream, peer, initial).await;
        }
        Detected::Http2 => {
            h2::server::serve(core, snapshot.clone(), listener_name, stream, peer, initial).await
        }
        // Garbage on an http-only listener: close.
        Detected::Opaque | Detected::NeedMore => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_protocols_from_first_bytes() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(detect(b"M-SEARCH * HTTP/1.1"), Detected::Http1);
        assert_eq!(detect(b"GE"), Detected::NeedMore);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Detected::Http2);
        assert_eq!(detect(b"PRI * HTTP/2"), Detected::NeedMore);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00"), Detected::Opaque);
        assert_eq!(detect(b"SSH-2.0-OpenSSH_9.2\r\n"), Detected::Opaque);
        assert_eq!(detect(&[b'A'; 40]), Detected::Opaque);
    }
}
