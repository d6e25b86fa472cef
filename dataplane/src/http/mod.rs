//! HTTP proxying: protocol detection on `http` and `auto` listeners, then one exchange core for
//! every pair of client and cluster protocol.
//!
//! - [`detect`]: which protocol a connection speaks (HTTP/1, HTTP/2 preface, opaque bytes),
//!   without losing or letting pass a byte.
//! - [`exchange`]: **the request path** — `decide` (route, local action, cluster, the upstream
//!   request) and `run` (upstream, both bodies at once, retry, deadline, answers). Start there.
//! - [`request`]: the protocol-independent view of a request; [`headers`]: the header rules;
//!   [`body`]: moving bodies between any two protocols; [`reply`]: local replies in each
//!   protocol's form; [`error`]: the one failure type; [`account`]: metrics and the access log;
//!   [`mirror`]: shadow copies; [`retry`]: when an attempt is tried again.
//! - [`downstream`] and [`upstream`]: the client and upstream sides of an exchange.
//! - [`h1`]: HTTP/1.1 — strict parsing, the server ([`h1::server`]), the upstream client and
//!   pool; [`h2`]: HTTP/2 — the server, the per-stream adapter, the upstream client and pool,
//!   abuse limits; [`grpc`]: gRPC specifics; [`io`]: owned-buffer socket halves.
//!
//! Dependencies point one way: the codecs (`h1::server`, `h2::stream`) → `exchange` →
//! {`downstream`, `upstream`, `body`, `headers`, `reply`, `mirror`, `retry`, `account`} → {`h1`, `h2`
//! clients and pools, `io`}. Nothing below `exchange` decides how to answer a client.

pub mod account;
pub mod body;
pub mod detect;
pub mod downstream;
pub mod error;
pub mod exchange;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod io;
pub mod mirror;
pub mod normalize;
pub mod reply;
pub mod request;
pub mod retry;
pub mod upstream;

use std::net::SocketAddr;
use std::rc::Rc;

use config_schema::ListenerProtocol;
use monoio::net::TcpStream;

use crate::core::Core;
use crate::snapshot::SnapshotRef;
use detect::Verdict;
pub use detect::{Detected, detect};

/// Serves a connection accepted on an `http` or `auto` listener: detects the protocol from the
/// first bytes, then hands the connection to HTTP/1.1, HTTP/2 or, on `auto` listeners with a
/// cluster, to the opaque L4 path. Every byte read while detecting goes on with the connection.
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
    let header_timeout = match (&listener.http, opaque_fallback) {
        (Some(http), _) => http.request_header_timeout,
        (None, true) => detect::DETECT_WINDOW,
        (None, false) => return,
    };
    let policy = detect::Policy {
        opaque_fallback,
        header_timeout,
        window: detect::DETECT_WINDOW,
    };
    let detection = detect::detect_connection(&mut stream, &policy).await;
    let initial = detection.initial;
    match detection.verdict {
        Verdict::Http1 => {
            h1::server::serve(
                core,
                snapshot.clone(),
                listener_name,
                stream,
                peer,
                initial,
                detection.first_byte_at,
            )
            .await;
        }
        Verdict::Opaque if opaque_fallback => {
            crate::l4::proxy(
                &core,
                &snapshot,
                listener,
                &listener_name,
                stream,
                peer,
                initial,
            )
            .await;
        }
        Verdict::Http2 => {
            h2::server::serve(core, snapshot.clone(), listener_name, stream, peer, initial).await
        }
        // Garbage on an http-only listener, or nothing at all: close.
        Verdict::Opaque | Verdict::Close => {}
    }
}
