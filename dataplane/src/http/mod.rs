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
use crate::tls::transport::Transport;
use crate::tls::{TlsInfo, TlsStream};
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
                Transport::Plain(stream),
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
                Transport::Plain(stream),
                peer,
                initial,
            )
            .await;
        }
        Verdict::Http2 => {
            let stream = Transport::Plain(stream);
            h2::server::serve(core, snapshot.clone(), listener_name, stream, peer, initial).await
        }
        // Garbage on an http-only listener, or nothing at all: close.
        Verdict::Opaque | Verdict::Close => {}
    }
}

/// The HTTP/2 connection preface, which a TLS client without ALPN that speaks HTTP/2 starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a TLS connection accepted (and shaken hands with) on an `http` or `auto` listener: ALPN
/// decides between HTTP/2 and HTTP/1.1; without ALPN the first decrypted bytes do (the HTTP/2
/// preface, or else HTTP/1.1, whose parser answers anything that is not HTTP). Opaque fallback
/// to a cluster applies to plaintext only.
pub async fn serve_tls(
    core: Rc<Core>,
    snapshot: SnapshotRef,
    listener_name: Rc<str>,
    mut stream: TlsStream,
    info: TlsInfo,
    peer: SocketAddr,
) {
    let Some(listener) = snapshot.listener(&listener_name) else {
        return;
    };
    let Some(http) = &listener.http else {
        return;
    };
    let (h2, initial, first_byte_at) = match info.alpn.as_deref() {
        Some(b"h2") => (true, Vec::new(), None),
        Some(_) => (false, Vec::new(), None),
        None => {
            let mut initial = Vec::with_capacity(64);
            let mut first_byte_at = None;
            let sniffed = monoio::time::timeout(
                http.request_header_timeout,
                sniff_preface(&mut stream, &mut initial, &mut first_byte_at),
            )
            .await;
            match sniffed {
                Ok(Ok(h2)) => (h2, initial, first_byte_at),
                // Silence for the whole header timeout, a close or an error: nothing to serve.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    };
    let stream = Transport::Tls(Box::new(stream), Box::new(info));
    if h2 {
        h2::server::serve(core, snapshot.clone(), listener_name, stream, peer, initial).await;
    } else {
        h1::server::serve(
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
}

/// Reads decrypted bytes until they are the whole HTTP/2 preface (`true`) or stop being a prefix
/// of it (`false`). Everything read stays in `initial` for the protocol that follows.
async fn sniff_preface(
    stream: &mut TlsStream,
    initial: &mut Vec<u8>,
    first_byte_at: &mut Option<std::time::Instant>,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64];
    loop {
        let n = std::future::poll_fn(|cx| stream.poll_read_plain(cx, &mut chunk)).await?;
        let Some(read) = chunk.get(..n).filter(|read| !read.is_empty()) else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        first_byte_at.get_or_insert_with(std::time::Instant::now);
        initial.extend_from_slice(read);
        let common = initial.len().min(H2_PREFACE.len());
        if initial[..common] != H2_PREFACE[..common] {
            return Ok(false);
        }
        if initial.len() >= H2_PREFACE.len() {
            return Ok(true);
        }
    }
}
