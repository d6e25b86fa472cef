//! One HTTP/2 stream, as the exchange core sees it.
//!
//! `h2` has already read and validated the request head (pseudo-headers, connection-specific
//! fields, the header list size it advertised). This adapter applies the listener's own head
//! limits — the same `limits.max_headers` and `max_header_bytes` as HTTP/1.1, counted on the
//! head as HTTP/1.1 would carry it, answered with 431 — builds the [`RequestHead`], and hands the
//! stream to `exchange::decide` and `exchange::run`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;
use http::header::{CONTENT_LENGTH, HOST};

use crate::core::Core;
use crate::http::account::{self, LogFields};
use crate::http::downstream::{Downstream, H2Client};
use crate::http::error::Failure;
use crate::http::exchange::{self, Decision, Local, Record, Scratch};
use crate::http::headers::Fields;
use crate::http::request::{ClientProtocol, RequestBody, RequestHead};
use crate::snapshot::{HeadLimits, SnapshotRef};
use crate::tls::TlsInfo;

/// What the connection gives each of its streams: a handle that counts the stream as open until
/// dropped, and adds the connection's bytes to the listener's counters when asked. (A trait, so
/// that the stream adapter does not depend on the connection that serves it.)
pub trait StreamHandle {
    /// Adds what the connection moved so far to the listener's byte counters.
    fn count_bytes(&self, core: &Core, snapshot: &SnapshotRef, listener: &str);
}

/// Serves one HTTP/2 stream, start to end.
pub async fn serve(
    core: Rc<Core>,
    listener_name: Rc<str>,
    peer: SocketAddr,
    tls: Option<Rc<TlsInfo>>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    open: impl StreamHandle,
) {
    let started = Instant::now();
    let snapshot = core.snapshot();
    let Some(listener) = snapshot.listener(&listener_name) else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let Some(http) = listener.http.as_ref() else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let (parts, mut body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fields = Fields::H2(&parts.headers);
    let head = RequestHead {
        method: parts.method.as_str(),
        authority,
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        target,
        fields,
        connection_tokens: "",
        protocol: ClientProtocol::Http2,
        body: if body.is_end_stream() {
            RequestBody::None
        } else {
            match parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(n) => RequestBody::Length(n),
                None => RequestBody::Stream,
            }
        },
        expect_continue: fields
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")),
        upgrade: None,
        grpc: RequestHead::grpc_content_type(fields),
        tls: tls.as_deref(),
    };
    let mut record = Record::new(started, peer.ip());
    if let Some(client) = head.forwarded_client(http.xff_trusted_hops) {
        record.client_ip = client;
    }
    // Sized for a typical request up front: growing them piecemeal costs more than this.
    let mut scratch = Scratch {
        peer_ip: peer.ip().to_string().into_bytes(),
        upstream_head: Vec::with_capacity(1024),
        pending: Vec::with_capacity(1024),
        request_id: Vec::with_capacity(64),
        ..Scratch::default()
    };
    let mut decision = if over_limits(&head, &http.limits) {
        core.write_uuid(&mut scratch.request_id);
        Decision::Reply(Local::Failure(Failure::HeadTooLarge))
    } else {
        exchange::decide(
            &core,
            &snapshot,
            listener,
            http,
            &head,
            &mut scratch,
            &mut record,
        )
    };
    let mut client = Downstream::H2(H2Client {
        recv: &mut body,
        respond: &mut respond,
        send: None,
        grpc: head.grpc,
        head_request: head.is_head(),
        expect_continue: head.expect_continue,
    });
    // HTTP/2 streams never become tunnels: there is no connection to hand over.
    let _ = exchange::serve(
        &core,
        &snapshot,
        http,
        &mut decision,
        &mut client,
        &mut scratch,
        &mut record,
    )
    .await;
    account::record(
        &core,
        &snapshot,
        &record,
        &LogFields {
            method: head.method,
            authority: head.authority,
            target: head.target,
            protocol: ClientProtocol::Http2,
            request_id: &scratch.request_id,
            downstream: peer,
            tls: tls.as_deref(),
            listener: &listener_name,
            headers: Some(&head.fields),
            response_headers: Some(&scratch.response_log),
        },
    );
    open.count_bytes(&core, &snapshot, &listener_name);
}

/// Whether the head breaks the listener's limits on field count or head size, counting the size
/// as the same request would take in HTTP/1.1 (request line, `host`, and `name: value` lines),
/// so one limit means the same on both protocols.
fn over_limits(head: &RequestHead<'_>, limits: &HeadLimits) -> bool {
    if head.fields.len() > limits.max_headers {
        return true;
    }
    let line = head.method.len() + 1 + head.target.len() + " HTTP/1.1\r\n".len();
    let host = "host: \r\n".len() + head.authority.len();
    let mut size = line + host + 2;
    for (name, value) in head.fields.iter() {
        size += name.len() + value.len() + 4;
        if size > limits.max_head {
            return true;
        }
    }
    size > limits.max_head || line > limits.max_request_line
}
