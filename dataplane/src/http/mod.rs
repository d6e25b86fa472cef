//! HTTP proxying: protocol detection on `http` and `auto` listeners, then one exchange core for
//! every pair of client and cluster protocol.
//!
//! - [`exchange`]: **the request path** — `decide` (route, local action, cluster, the upstream
//!   request) and `run` (upstream, both bodies at once, retry, deadline, answers). Start there.
//! - [`request`]: the protocol-independent view of a request; [`headers`]: the header rules;
//!   [`body`]: moving bodies between any two protocols; [`reply`]: local replies in each
//!   protocol's form; [`error`]: the one failure type; [`account`]: metrics and the access log;
//!   [`mirror`]: shadow copies.
//! - [`downstream`] and [`upstream`]: the client and upstream sides of an exchange.
//! - [`h1`]: HTTP/1.1 — strict parsing, the server ([`h1::server`]), the upstream client and
//!   pool; [`h2`]: HTTP/2 — the server, the per-stream adapter, the upstream client and pool,
//!   abuse limits; [`grpc`]: gRPC specifics; [`io`]: owned-buffer socket halves.
//!
//! Dependencies point one way: the codecs (`h1::server`, `h2::stream`) → `exchange` →
//! {`downstream`, `upstream`, `body`, `headers`, `reply`, `mirror`, `account`} → {`h1`, `h2`
//! clients and pools, `io`}. Nothing below `exchange` decides how to answer a client.

pub mod account;
pub mod body;
pub mod downstream;
pub mod error;
pub mod exchange;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod io;
pub mod mirror;
pub mod reply;
pub mod request;
pub mod upstream;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use config_schema::ListenerProtocol;
use monoio::net::TcpStream;

use crate::core::Core;
use crate::snapshot::SnapshotRef;

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
/// first bytes, then hands the connection to HTTP/1.1, HTTP/2 or, on `auto` listeners with a
/// cluster, to the opaque L4 path. Every byte read here goes on with the connection.
pub async fn serve(
    core: Rc<Core>,
    snapshot: SnapshotRef,
    listener_name: Rc<str>,
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
    let mut first_byte = None;
    let detected = loop {
        match io::read_stream_within(&mut stream, &mut initial, 1024, wait).await {
            Ok(0) => return,
            Ok(_) => {
                first_byte.get_or_insert_with(Instant::now);
                match detect(&initial) {
                    Detected::NeedMore => continue,
                    found => break found,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && opaque_fallback => {
                break Detected::Opaque;
            }
            Err(_) => return,
        }
    };
    match detected {
        Detected::Http1 => {
            h1::server::serve(
                core,
                snapshot.clone(),
                listener_name,
                stream,
                peer,
                initial,
                first_byte,
            )
            .await;
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
