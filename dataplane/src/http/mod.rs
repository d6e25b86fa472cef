//! HTTP proxying: protocol detection on `auto` listeners, and the HTTP/1.1 request path.
//!
//! - [`detect`]: which protocol a connection speaks (HTTP/1, HTTP/2 preface, opaque bytes).
//! - [`proxy`]: the request path, stage by stage — start reading there.
//! - [`h1`]: strict HTTP/1.1 head parsing and framing; [`chunked`]: chunked bodies.
//! - [`head`]: writing the heads the proxy sends; [`io`]: owned-buffer socket plumbing.
//! - [`pool`]: per-core upstream connection pools; [`h1_upstream`]: checkout and response heads.
//! - [`h2`]: HTTP/2 server and client, and the HTTP/2 stream path; [`grpc`]: gRPC specifics.

pub mod bridge;
pub mod chunked;
pub mod detect;
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

use crate::routing::Route;
use crate::snapshot::{Cluster, Snapshot, SnapshotRef};
use crate::worker::Core;
use detect::Verdict;
pub use detect::{Detected, detect};

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
            let first_byte_at = detection.first_byte_at;
            proxy::serve(
                core,
                snapshot.clone(),
                listener_name,
                stream,
                peer,
                initial,
                first_byte_at,
            )
            .await;
        }
        Verdict::Opaque if opaque_fallback => {
            crate::l4::proxy(&core, &snapshot, listener, stream, peer, initial).await;
        }
        Verdict::Http2 => {
            h2::server::serve(core, snapshot.clone(), listener_name, stream, peer, initial).await
        }
        // Garbage on an http-only listener, or nothing at all: close.
        Verdict::Opaque | Verdict::Close => {}
    }
}
