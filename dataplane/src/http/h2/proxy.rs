//! The HTTP/2 stream path: the stages of `http/proxy.rs`, for one stream of an HTTP/2 connection.
//!
//! `h2` has already read and validated the request head (pseudo-headers, connection-specific
//! headers, header list size), so a stream starts at routing:
//!
//! 3. **route** on the snapshot current now; 4. **local actions** (redirect, direct response, and
//!    errors — gRPC requests get trailers-only answers with a `grpc-status`, not bare 5xx);
//! 5. **cluster and endpoint** (weighted split, load balancer); the deadline is the route's
//!    timeout or the gRPC `grpc-timeout`, whichever is sooner;
//! 6. **upstream** — an HTTP/2 stream on a pooled multiplexed connection, or an HTTP/1.1
//!    connection, as the cluster's `protocol` says;
//!
//! 7–8. **request and response** streamed both ways at once (bidirectional gRPC), with
//!    flow-control backpressure and trailers preserved; a client reset (RST_STREAM) cancels the
//!    upstream stream; an upstream GOAWAY before the stream was processed retries it on a new
//!    connection when the request body is still at hand;
//! 9. **account** — route and cluster metrics, access log.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use config_schema::UpstreamProtocol;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tracing::debug;

use super::client::{H2CheckoutError, H2ClientLimits};
use crate::access_log::{Entry, ResponseFlags};
use crate::core::Core;
use crate::http::bridge::{self, PumpError};
use crate::http::h1::{self, BodyFraming};
use crate::http::h1_upstream::{self, ConnectFailure};
use crate::http::head::{self, Forwarding};
use crate::http::{grpc, io};
use crate::routing::{HeaderMutation, RequestView, Route, RouteAction, shadow_host};
use crate::snapshot::{Cluster, Snapshot, SnapshotRef};

/// Largest request body kept to replay a stream an upstream refused (GOAWAY, REFUSED_STREAM) and
/// to mirror; larger bodies are not replayed or mirrored.
const REPLAY_LIMIT: usize = 64 * 1024;

/// The request as routing sees it.
struct View<'a> {
    method: &'a [u8],
    host: &'a [u8],
    path: &'a [u8],
    query: &'a [u8],
    headers: &'a HeaderMap,
}

impl RequestView for View<'_> {
    fn method(&self) -> &[u8] {
        self.method
    }
    fn host(&self) -> &[u8] {
        self.host
    }
    fn path(&self) -> &[u8] {
        self.path
    }
    fn query(&self) -> &[u8] {
        self.query
    }
    fn header_values(&self, lower_name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers
            .get_all(lower_name)
            .iter()
            .map(HeaderValue::as_bytes)
    }
}

/// What happened to one stream, for metrics and the access log.
struct Outcome<'s> {
    status: u16,
    bytes_received: u64,
    bytes_sent: u64,
    upstream: Option<SocketAddr>,
    route: Option<&'s Route>,
    cluster: Option<&'s Cluster>,
    flags: ResponseFlags,
    locally_answered: bool,
}

/// Serves one HTTP/2 stream, start to end.
pub async fn serve_stream(
    core: Rc<Core>,
    listener_name: Arc<str>,
    peer: SocketAddr,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let started = Instant::now();
    let snapshot = core.snapshot();
    let Some(http) = snapshot
        .listener(&listener_name)
        .and_then(|l| l.http.as_ref())
    else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let (parts, mut body) = request.into_parts();
    let is_grpc = grpc::is_grpc(parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes));
    let request_id = match parts.headers.get("x-request-id") {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            id.clone()
        }
        _ => {
            let mut id = Vec::with_capacity(36);
            core.write_uuid(&mut id);
            HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
        }
    };
    let authority: String = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut outcome = Outcome {
        status: 0,
        bytes_received: 0,
        bytes_sent: 0,
        upstream: None,
        route: None,
        cluster: None,
        flags: ResponseFlags::default(),
        locally_answered: false,
    };
    let reply = Reply {
        grpc: is_grpc,
        request_id: &request_id,
    };

    // 3. Route.
    let view = View {
        method: parts.method.as_str().as_bytes(),
        host: authority.as_bytes(),
        path: parts.uri.path().as_bytes(),
        query: parts.uri.query().unwrap_or_default().as_bytes(),
        headers: &parts.headers,
    };
    let matched = match &http.routes {
        Some(table) => table
            .find(&view, &mut core.match_scratch.borrow_mut())
            .ok()
            .map(|m| m.route),
        None => None,
    };
    let Some(route) = matched else {
        outcome.flags.insert(ResponseFlags::NO_ROUTE);
        reply.error(&mut respond, &mut outcome, 404, "no route");
        record(
            &core,
            &snapshot,
            &parts,
            &authority,
            &request_id,
            peer,
            started,
            &outcome,
        );
        return;
    };
    outcome.route = Some(route);
    let limit = route.max_request_body.unwrap_or(http.max_request_body);
    let body_limit = (limit > 0).then_some(limit);
    let declared_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(n), Some(limit)) = (declared_length, body_limit)
        && n > limit
    {
        reply.error(&mut respond, &mut outcome, 413, "request body too large");
        record(
            &core,
            &snapshot,
            &parts,
            &authority,
            &request_id,
            peer,
            started,
            &outcome,
        );
        return;
    }

    // 4. Local actions.
    let cluster_index = match &route.action {
        RouteAction::Redirect(redirect) => {
            let mut location = Vec::new();
            redirect.write_location("http", view.host, view.path, view.query, &mut location);
            reply.local(
                &mut respond,
                &mut outcome,
                redirect.status,
                b"",
                "text/plain",
                Some(&location),
            );
            record(
                &core,
                &snapshot,
                &parts,
                &authority,
                &request_id,
                peer,
                started,
                &outcome,
            );
            return;
        }
        RouteAction::DirectResponse(direct) => {
            reply.local(
                &mut respond,
                &mut outcome,
                direct.status,
                &direct.body,
                &direct.content_type,
                None,
            );
            record(
                &core,
                &snapshot,
                &parts,
                &authority,
                &request_id,
                peer,
                started,
                &outcome,
            );
            return;
        }
        RouteAction::Cluster(_) | RouteAction::WeightedClusters(_) => {
            let random = core.random();
            let index = route.pick_cluster(random);
            let mirror = route
                .mirror
                .as_ref()
                .filter(|m| m.share.sample(random))
                .map(|m| m.cluster);
            index.map(|i| (i, mirror))
        }
    };
    let Some((cluster_index, mirror)) = cluster_index else {
        return;
    };
    let cluster = &snapshot.clusters[cluster_index];
    outcome.cluster = Some(cluster);
    let hash = cluster.balancer.request_hash(&view, peer.ip());

    // The deadline: the route's timeout, or the client's grpc-timeout, whichever comes first.
    let grpc_timeout = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| grpc::parse_timeout(v.as_bytes()));
    let deadline = [route.timeout, grpc_timeout]
        .into_iter()
        .flatten()
        .min()
        .map(|t| started + t);

    // The request as it goes upstream.
    let mut path_and_query = Vec::new();
    match &route.rewrite {
        Some(rewrite) => rewrite.write(view.path, view.query, &mut path_and_query),
        None => path_and_query.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        ),
    }
    let peer_ip = peer.ip().to_string();
    let forwarding = Forwarding {
        peer: peer_ip.as_bytes(),
        proto: "http",
        trust_proto: http.xff_trusted_hops > 0,
        request_id: request_id.as_bytes(),
    };
    let upstream_headers = upstream_headers(&parts.headers, &route.request_headers, &forwarding);
    let mirror_headers = mirror.map(|_| upstream_headers.clone());
    let mut mirror_body = mirror.map(|_| Vec::with_capacity(REPLAY_LIMIT));

    // 6–8. Upstream and both bodies.
    let protocol = match cluster.protocol {
        UpstreamProtocol::H1 => UpstreamProtocol::H1,
        UpstreamProtocol::H2 | UpstreamProtocol::Auto => UpstreamProtocol::H2,
    };
    let exchange = async {
        match protocol {
            UpstreamProtocol::H1 => {
                to_h1(
                    &core,
                    &snapshot,
                    cluster,
                    hash,
                    &parts,
                    &authority,
                    &path_and_query,
                    &upstream_headers,
                    route,
                    &mut body,
                    &mut respond,
                    &mut outcome,
                    body_limit,
                    mirror_body.as_mut(),
                )
                .await
            }
            _ => {
                to_h2(
                    &core,
                    &snapshot,
                    cluster,
                    hash,
                    &parts,
                    &authority,
                    &path_and_query,
                    upstream_headers,
                    route,
                    &mut body,
                    &mut respond,
                    &mut outcome,
                    body_limit,
                    mirror_body.as_mut(),
                )
                .await
            }
        }
    };
    let result = match deadline {
        Some(deadline) => match monoio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            exchange,
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        },
        None => exchange.await,
    };
    match result {
        Ok(()) => {}
        Err(Failure::Reply {
            status,
            reason,
            flag,
        }) => {
            outcome.flags.insert(flag);
            reply.error(&mut respond, &mut outcome, status, reason);
        }
        Err(Failure::Timeout) => {
            outcome.flags.insert(ResponseFlags::UPSTREAM_TIMEOUT);
            if let Some(counters) = outcome.cluster.map(|c| c.stats.slot(core.id)) {
                counters.timeouts.inc();
            }
            if outcome.status == 0 {
                reply.error(&mut respond, &mut outcome, 504, "upstream request timeout");
            } else {
                // The response had started: all that is left is to end the stream.
                respond.send_reset(Reason::CANCEL);
            }
        }
        Err(Failure::Reset(flag)) => {
            outcome.flags.insert(flag);
            respond.send_reset(Reason::CANCEL);
        }
    }
    if let (Some(mirror_cluster), Some(body), Some(headers)) = (mirror, mirror_body, mirror_headers)
    {
        let mut shadow = Vec::new();
        shadow_host(authority.as_bytes(), &mut shadow);
        send_mirror(
            &core,
            &snapshot,
            mirror_cluster,
            &parts,
            &shadow,
            &path_and_query,
            headers,
            body,
        );
    }
    record(
        &core,
        &snapshot,
        &parts,
        &authority,
        &request_id,
        peer,
        started,
        &outcome,
    );
}

/// Why a stream did not complete normally.
enum Failure {
    /// Answer with a local error (nothing was sent to the client yet).
    Reply {
        status: u16,
        reason: &'static str,
        flag: ResponseFlags,
    },
    /// The deadline passed.
    Timeout,
    /// The stream was cut after the response started, or the client reset it.
    Reset(ResponseFlags),
}

impl From<ConnectFailure> for Failure {
    fn from(failure: ConnectFailure) -> Self {
        Failure::Reply {
            status: failure.status(),
            reason: failure.reason(),
            flag: failure.flag(),
        }
    }
}

/// The request headers to send upstream: the client's, minus those the proxy owns, plus the
/// forwarding headers and the route's changes.
fn upstream_headers(
    client: &HeaderMap,
    mutation: &HeaderMutation,
    forwarding: &Forwarding<'_>,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client.len() + 4);
    let mut forwarded_for: Vec<u8> = Vec::new();
    for (name, value) in client {
        let lower = name.as_str();
        match lower {
            "host" | "x-request-id" | "content-length" => continue,
            "x-forwarded-for" => {
                forwarded_for.extend_from_slice(value.as_bytes());
                forwarded_for.extend_from_slice(b", ");
                continue;
            }
            "x-forwarded-proto" if !forwarding.trust_proto => continue,
            // Only `te: trailers` is legal in HTTP/2 (gRPC needs it).
            "te" if value.as_bytes() != b"trailers" => continue,
            _ => {}
        }
        if !mutation.is_empty() && mutation.drops(lower) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(length) = client.get(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, length.clone());
    }
    if !mutation.drops("x-forwarded-for") {
        forwarded_for.extend_from_slice(forwarding.peer);
        if let Ok(value) = HeaderValue::from_bytes(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Ok(id) = HeaderValue::from_bytes(forwarding.request_id) {
        headers.insert("x-request-id", id);
    }
    apply_additions(&mut headers, mutation);
    headers
}

/// Applies a mutation's `set` and `add` to a header map (its removals were applied while copying).
fn apply_additions(headers: &mut HeaderMap, mutation: &HeaderMutation) {
    for (name, value) in mutation.set.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in mutation.add.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) {
            headers.append(name, value);
        }
    }
}

/// Response headers toward the client: the upstream's, minus connection-specific ones, with the
/// route's changes.
fn downstream_headers(upstream: &mut HeaderMap, mutation: &HeaderMutation) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        upstream.remove(name);
    }
    if !mutation.is_empty() {
        for name in mutation
            .remove
            .iter()
            .chain(mutation.set.iter().map(|(n, _)| n))
        {
            upstream.remove(name.as_ref() as &str);
        }
        apply_additions(upstream, mutation);
    }
}

/// Stages 6–8 toward an HTTP/2 cluster.
#[allow(clippy::too_many_arguments)]
async fn to_h2<'s>(
    core: &Core,
    snapshot: &'s Snapshot,
    cluster: &'s Cluster,
    hash: Option<u64>,
    parts: &http::request::Parts,
    authority: &str,
    path_and_query: &[u8],
    headers: HeaderMap,
    route: &'s Route,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    outcome: &mut Outcome<'s>,
    body_limit: Option<u64>,
    mut mirror_body: Option<&mut Vec<u8>>,
) -> Result<(), Failure> {
    let counters = cluster.stats.slot(core.id);
    let limits = H2ClientLimits {
        max_streams: cluster.h2.max_streams,
        max_connections: cluster.pool.max_connections,
        connect_timeout: cluster.connect_timeout,
    };
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Failure::Reply {
            status: 400,
            reason: "invalid request target",
            flag: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        })?;
    let mut upstream_request = Request::new(());
    *upstream_request.method_mut() = parts.method.clone();
    *upstream_request.uri_mut() = uri;
    *upstream_request.headers_mut() = headers;
    let request_ends_here = body.is_end_stream();

    // Up to two tries: a stream the upstream refused unprocessed (GOAWAY, REFUSED_STREAM) is sent
    // again on a fresh connection, if its body can be replayed.
    let mut replay: Vec<Bytes> = Vec::new();
    let mut replay_size = 0usize;
    let mut replay_complete = request_ends_here;
    for attempt in 0..2 {
        let (endpoint, mut stream, _in_flight) =
            h2_checkout(core, snapshot, cluster, hash, &limits).await?;
        outcome.upstream = Some(cluster.endpoints[endpoint].address);
        counters.requests.inc();
        if stream.reused {
            counters.pool_reuse.inc();
        }
        let ready = poll_fn(|cx| stream.send.poll_ready(cx)).await;
        let sent = ready.and_then(|()| {
            stream
                .send
                .send_request(clone_request(&upstream_request), request_ends_here)
        });
        let (response_future, mut upstream_body) = match sent {
            Ok(pair) => pair,
            Err(e) => {
                stream.retire_connection();
                debug!(error = %e, "upstream HTTP/2 connection refused the stream");
                continue;
            }
        };

        // The request body goes up while the response comes down (bidirectional streaming). The
        // block ends both futures before their outcome is examined.
        let result = {
            let request_pipe = async {
                // A bodiless request ended with its HEADERS frame, on a retry too: there is
                // nothing left to send (ending the stream again would fail the retry).
                if request_ends_here {
                    return Ok(0);
                }
                if attempt > 0 {
                    for chunk in &replay {
                        bridge::send_data(&mut upstream_body, chunk.clone()).await?;
                    }
                    if replay_complete {
                        return bridge::finish(&mut upstream_body, None)
                            .map(|()| replay_size as u64);
                    }
                }
                let moved = pump_request_with_replay(
                    body,
                    &mut upstream_body,
                    body_limit,
                    &mut replay,
                    &mut replay_size,
                    &mut replay_complete,
                    mirror_body.as_deref_mut(),
                )
                .await?;
                Ok(moved)
            };
            let response_pipe = async {
                // Wait for the response head, watching for the client giving up.
                let mut response_future = pin!(response_future);
                let head = poll_fn(|cx| {
                    if respond.poll_reset(cx).is_ready() {
                        return Poll::Ready(Err(ResponseWait::ClientReset));
                    }
                    response_future
                        .as_mut()
                        .poll(cx)
                        .map_err(ResponseWait::Upstream)
                })
                .await?;
                let (mut head_parts, mut upstream_response) = head.into_parts();
                downstream_headers(&mut head_parts.headers, &route.response_headers);
                let status = head_parts.status.as_u16();
                outcome.status = status;
                counters.response(status);
                let ends_here = upstream_response.is_end_stream();
                let mut downstream = respond
                    .send_response(Response::from_parts(head_parts, ()), ends_here)
                    .map_err(|_| ResponseWait::ClientReset)?;
                if ends_here {
                    return Ok(0);
                }
                bridge::h2_to_h2(&mut upstream_response, &mut downstream, None, None)
                    .await
                    .map_err(ResponseWait::Body)
            };
            let mut request_pipe = pin!(request_pipe);
            let mut response_pipe = pin!(response_pipe);
            monoio::select! {
                sent = &mut request_pipe => match sent {
                    Ok(bytes) => {
                        outcome.bytes_received = bytes;
                        response_pipe.await
                    }
                    Err(PumpError::TooLarge) => return Err(Failure::Reply { status: 413, reason: "request body too large", flag: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR }),
                    Err(PumpError::Source(_)) => return Err(Failure::Reset(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION)),
                    // The upstream stream failed under the body: its response side says why
                    // (a GOAWAY that left it unprocessed is retried), or it may even have
                    // answered in full and stopped the upload (RFC 9113 §8.1).
                    Err(PumpError::Destination(_)) => response_pipe.await,
                    Err(_) => Err(ResponseWait::Upstream(h2::Error::from(Reason::CANCEL))),
                },
                received = &mut response_pipe => received,
            }
        };
        match result {
            Ok(bytes) => {
                outcome.bytes_sent = bytes;
                return Ok(());
            }
            Err(ResponseWait::ClientReset) => {
                return Err(Failure::Reset(
                    ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                ));
            }
            Err(ResponseWait::Body(PumpError::Destination(_))) => {
                return Err(Failure::Reset(
                    ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                ));
            }
            Err(ResponseWait::Body(_)) => {
                return Err(Failure::Reset(
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                ));
            }
            Err(ResponseWait::Upstream(e)) => {
                debug!(error = %e, "upstream stream failed");
                let unprocessed = e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM);
                if unprocessed || e.is_io() {
                    stream.retire_connection();
                }
                // A connection that died under an idempotent request before any answer is as good
                // as unprocessed: send it again.
                let retryable = unprocessed || (e.is_io() && parts.method.is_idempotent());
                if retryable && attempt == 0 && outcome.status == 0 && replay_size <= REPLAY_LIMIT {
                    debug!(error = %e, "upstream refused the stream unprocessed; retrying on a new connection");
                    continue;
                }
                if outcome.status != 0 {
                    return Err(Failure::Reset(
                        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                    ));
                }
                counters.protocol_errors.inc();
                return Err(Failure::Reply {
                    status: 502,
                    reason: "upstream reset the stream",
                    flag: ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                });
            }
        }
    }
    Err(Failure::Reply {
        status: 502,
        reason: "upstream refused the stream",
        flag: ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
    })
}

/// Why the wait for an upstream response ended badly.
enum ResponseWait {
    /// The client reset its stream.
    ClientReset,
    /// The upstream failed or reset the stream before answering.
    Upstream(h2::Error),
    /// A body broke off.
    Body(PumpError),
}

impl From<PumpError> for ResponseWait {
    fn from(e: PumpError) -> Self {
        ResponseWait::Body(e)
    }
}

/// A copy of the request head (the body type is `()`, so this only clones headers).
fn clone_request(request: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Pumps the request body upstream, keeping the first chunks for a possible replay.
#[allow(clippy::too_many_arguments)]
async fn pump_request_with_replay(
    from: &mut RecvStream,
    to: &mut h2::SendStream<Bytes>,
    limit: Option<u64>,
    replay: &mut Vec<Bytes>,
    replay_size: &mut usize,
    complete: &mut bool,
    mut tee: Option<&mut Vec<u8>>,
) -> Result<u64, PumpError> {
    let mut moved: u64 = 0;
    loop {
        match poll_fn(|cx| from.poll_data(cx)).await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                moved += n as u64;
                if limit.is_some_and(|limit| moved > limit) {
                    return Err(PumpError::TooLarge);
                }
                if replay_size.saturating_add(n) <= REPLAY_LIMIT {
                    replay.push(chunk.clone());
                    *replay_size += n;
                } else {
                    *replay_size = usize::MAX;
                    replay.clear();
                }
                if let Some(copy) = tee.as_deref_mut() {
                    if copy.len() + n <= copy.capacity() {
                        copy.extend_from_slice(&chunk);
                    } else {
                        tee = None;
                    }
                }
                bridge::send_data(to, chunk).await?;
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(e)) => return Err(PumpError::Source(e.reason())),
            None => {
                let trailers = poll_fn(|cx| from.poll_trailers(cx))
                    .await
                    .map_err(|e| PumpError::Source(e.reason()))?;
                *complete = trailers.is_none();
                bridge::finish(to, trailers)?;
                return Ok(moved);
            }
        }
    }
}

/// A stream slot to an endpoint of `cluster`: the load balancer's pick, then the next endpoints.
async fn h2_checkout(
    core: &Core,
    snapshot: &Snapshot,
    cluster: &Cluster,
    hash: Option<u64>,
    limits: &H2ClientLimits,
) -> Result<
    (
        usize,
        super::client::H2Stream,
        Option<crate::upstream::InFlightGuard>,
    ),
    ConnectFailure,
> {
    let counters = cluster.stats.slot(core.id);
    let endpoints = cluster.endpoints.len();
    let Some(first) = core.pick_endpoint(snapshot, cluster, hash) else {
        counters.no_endpoint.inc();
        return Err(ConnectFailure::NoEndpoint);
    };
    let mut overflow = false;
    for attempt in 0..endpoints {
        let endpoint = (first + attempt) % endpoints;
        match core
            .h2_pool
            .checkout(cluster.endpoints[endpoint].address, limits)
            .await
        {
            Ok(stream) => {
                if !stream.reused {
                    counters.connections.inc();
                }
                return Ok((
                    endpoint,
                    stream,
                    core.start_request(snapshot, cluster, endpoint),
                ));
            }
            Err(H2CheckoutError::Exhausted) => {
                counters.pool_overflow.inc();
                overflow = true;
            }
            Err(H2CheckoutError::Connect(e)) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    counters.connect_timeouts.inc();
                } else {
                    counters.connect_failures.inc();
                }
                debug!(cluster = %cluster.name, error = %e, "upstream HTTP/2 connect failed");
            }
        }
    }
    Err(if overflow {
        ConnectFailure::Overflow
    } else {
        ConnectFailure::Failed
    })
}

/// Stages 6–8 toward an HTTP/1.1 cluster: the request goes out as HTTP/1.1 (chunked when its
/// length is unknown), then the response comes back and is sent as HTTP/2.
#[allow(clippy::too_many_arguments)]
async fn to_h1<'s>(
    core: &Core,
    snapshot: &'s Snapshot,
    cluster: &'s Cluster,
    hash: Option<u64>,
    parts: &http::request::Parts,
    authority: &str,
    path_and_query: &[u8],
    headers: &HeaderMap,
    route: &'s Route,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    outcome: &mut Outcome<'s>,
    body_limit: Option<u64>,
    mirror_body: Option<&mut Vec<u8>>,
) -> Result<(), Failure> {
    let counters = cluster.stats.slot(core.id);
    let (mut upstream, _in_flight) =
        h1_upstream::checkout(core, snapshot, cluster, hash, &cluster.pool).await?;
    outcome.upstream = Some(upstream.endpoint());
    counters.requests.inc();
    if upstream.reuses > 0 {
        counters.pool_reuse.inc();
    }

    let framing = if body.is_end_stream() {
        BodyFraming::None
    } else {
        match headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Chunked,
        }
    };
    let mut head_bytes = Vec::with_capacity(512);
    write_h1_request_head(
        &mut head_bytes,
        parts.method.as_str(),
        path_and_query,
        authority.as_bytes(),
        headers,
        framing,
    );
    io::write_all(&mut upstream.stream, &mut head_bytes)
        .await
        .map_err(|_| Failure::from(ConnectFailure::Failed))?;
    if framing != BodyFraming::None {
        let chunked = framing == BodyFraming::Chunked;
        let mut scratch = Vec::with_capacity(io::BODY_CHUNK);
        match bridge::h2_to_h1(
            body,
            &mut upstream.stream,
            chunked,
            body_limit,
            &mut scratch,
            mirror_body,
        )
        .await
        {
            Ok(bytes) => outcome.bytes_received = bytes,
            Err(PumpError::TooLarge) => {
                return Err(Failure::Reply {
                    status: 413,
                    reason: "request body too large",
                    flag: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
                });
            }
            Err(PumpError::Source(_)) => {
                return Err(Failure::Reset(
                    ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                ));
            }
            Err(_) => {
                return Err(Failure::Reply {
                    status: 502,
                    reason: "upstream connection failed",
                    flag: ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                });
            }
        }
    }

    // The response head, while watching for the client giving up.
    let response_head = async {
        loop {
            let head_len = h1_upstream::read_response_head(&mut upstream, None).await?;
            let status = h1_upstream::peek_status(&upstream.buf[..head_len]);
            if (100..200).contains(&status) {
                upstream.buf.drain(..head_len);
                continue;
            }
            return Ok::<usize, h1_upstream::ResponseError>(head_len);
        }
    };
    let head_len = {
        let mut response_head = pin!(response_head);
        poll_fn(|cx| {
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(None));
            }
            response_head.as_mut().poll(cx).map_err(Some)
        })
        .await
    };
    let head_len = match head_len {
        Ok(n) => n,
        Err(None) => {
            return Err(Failure::Reset(
                ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            ));
        }
        Err(Some(error)) => {
            let (status, reason, flag) = error.reply();
            if flag == ResponseFlags::UPSTREAM_PROTOCOL_ERROR {
                counters.protocol_errors.inc();
            }
            return Err(Failure::Reply {
                status,
                reason,
                flag,
            });
        }
    };
    let (response, framing, keep_alive) = {
        let mut storage = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
        let is_head = parts.method == http::Method::HEAD;
        let parsed = match h1::parse_response(&upstream.buf, head_len, &mut storage, is_head, false)
        {
            Ok(parsed) => parsed,
            Err(h1::MalformedResponse(reason)) => {
                counters.protocol_errors.inc();
                return Err(Failure::Reply {
                    status: 502,
                    reason,
                    flag: ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                });
            }
        };
        let mut response = Response::new(());
        *response.status_mut() =
            StatusCode::from_u16(parsed.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers = response.headers_mut();
        for field in parsed.headers {
            if h1::is_connection_specific(field.name, parsed.connection_tokens)
                || field.name.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_bytes(field.value),
            ) {
                headers.append(name, value);
            }
        }
        (response, parsed.body, parsed.keep_alive)
    };
    upstream.buf.drain(..head_len);
    let (mut head_parts, ()) = response.into_parts();
    downstream_headers(&mut head_parts.headers, &route.response_headers);
    let status = head_parts.status.as_u16();
    outcome.status = status;
    counters.response(status);
    let ends_here = framing == BodyFraming::None;
    let mut downstream = respond
        .send_response(Response::from_parts(head_parts, ()), ends_here)
        .map_err(|_| Failure::Reset(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION))?;
    if !ends_here {
        match bridge::h1_to_h2(
            &mut upstream.stream,
            &mut upstream.buf,
            framing,
            &mut downstream,
            None,
        )
        .await
        {
            Ok(bytes) => outcome.bytes_sent = bytes,
            Err(PumpError::Destination(_)) => {
                return Err(Failure::Reset(
                    ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                ));
            }
            Err(_) => {
                return Err(Failure::Reset(
                    ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                ));
            }
        }
    }
    if keep_alive && upstream.buf.is_empty() {
        core.pool.release(upstream, &cluster.pool);
    }
    Ok(())
}

/// Writes an HTTP/1.1 request head for a request that arrived over HTTP/2. `headers` are the
/// upstream headers already computed (forwarding headers and route changes included).
fn write_h1_request_head(
    out: &mut Vec<u8>,
    method: &str,
    path_and_query: &[u8],
    host: &[u8],
    headers: &HeaderMap,
    framing: BodyFraming,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    head::push_header(out, b"host", host);
    for (name, value) in headers {
        if matches!(name.as_str(), "te" | "content-length" | "transfer-encoding") {
            continue;
        }
        head::push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            head::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How a stream is answered locally.
struct Reply<'a> {
    grpc: bool,
    request_id: &'a HeaderValue,
}

impl Reply<'_> {
    /// An error answer: for gRPC a trailers-only response with the matching `grpc-status`.
    fn error(
        &self,
        respond: &mut SendResponse<Bytes>,
        outcome: &mut Outcome<'_>,
        status: u16,
        reason: &str,
    ) {
        outcome.locally_answered = true;
        if self.grpc {
            outcome.status = 200;
            let mut response = Response::new(());
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(
                "grpc-status",
                HeaderValue::from(grpc::status_for_http(status)),
            );
            let mut message = String::new();
            grpc::encode_message(reason, &mut message);
            if let Ok(message) = HeaderValue::from_str(&message) {
                headers.insert("grpc-message", message);
            }
            headers.insert("x-request-id", self.request_id.clone());
            let _ = respond.send_response(response, true);
            return;
        }
        let mut body = Vec::with_capacity(reason.len() + 1);
        body.extend_from_slice(reason.as_bytes());
        body.push(b'\n');
        self.local(respond, outcome, status, &body, "text/plain", None);
    }

    /// A plain answer with a body.
    fn local(
        &self,
        respond: &mut SendResponse<Bytes>,
        outcome: &mut Outcome<'_>,
        status: u16,
        body: &[u8],
        content_type: &str,
        location: Option<&[u8]>,
    ) {
        outcome.locally_answered = true;
        outcome.status = status;
        let mut response = Response::new(());
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        if !body.is_empty()
            && let Ok(value) = HeaderValue::from_str(content_type)
        {
            headers.insert(CONTENT_TYPE, value);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(location) = location.and_then(|l| HeaderValue::from_bytes(l).ok()) {
            headers.insert(LOCATION, location);
        }
        headers.insert("x-request-id", self.request_id.clone());
        match respond.send_response(response, body.is_empty()) {
            Ok(mut stream) if !body.is_empty() => {
                outcome.bytes_sent = body.len() as u64;
                let _ = stream.send_data(Bytes::copy_from_slice(body), true);
            }
            _ => {}
        }
    }
}

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a copy of the request to the shadow cluster on its own task; its outcome never reaches
/// the client.
#[allow(clippy::too_many_arguments)]
fn send_mirror(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    cluster: usize,
    parts: &http::request::Parts,
    shadow_host: &[u8],
    path_and_query: &[u8],
    headers: HeaderMap,
    body: Vec<u8>,
) {
    let core = Rc::clone(core);
    let snapshot = snapshot.clone();
    let method = parts.method.clone();
    let (Ok(authority), Ok(path)) = (
        std::str::from_utf8(shadow_host),
        std::str::from_utf8(path_and_query),
    ) else {
        return;
    };
    let Ok(uri) = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    else {
        return;
    };
    monoio::spawn(crate::contain::contained("mirror", async move {
        let Some(cluster) = snapshot.clusters.get(cluster) else {
            return;
        };
        let limits = H2ClientLimits {
            max_streams: cluster.h2.max_streams,
            max_connections: cluster.pool.max_connections,
            connect_timeout: cluster.connect_timeout,
        };
        let exchange = async {
            let (_, mut stream, _in_flight) = h2_checkout(&core, &snapshot, cluster, None, &limits)
                .await
                .ok()?;
            cluster.stats.slot(core.id).requests.inc();
            poll_fn(|cx| stream.send.poll_ready(cx)).await.ok()?;
            let mut request = Request::new(());
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            request.headers_mut().remove(CONTENT_LENGTH);
            let (response, mut send) = stream.send.send_request(request, body.is_empty()).ok()?;
            if !body.is_empty() {
                bridge::send_data(&mut send, Bytes::from(body)).await.ok()?;
                bridge::finish(&mut send, None).ok()?;
            }
            let response = response.await.ok()?;
            cluster
                .stats
                .slot(core.id)
                .response(response.status().as_u16());
            let mut discard = response.into_body();
            while let Some(chunk) = discard.data().await {
                let n = chunk.ok()?.len();
                let _ = discard.flow_control().release_capacity(n);
            }
            Some(())
        };
        // HTTP/2 shadows only: an HTTP/1.1 shadow cluster is reached through the same pool path
        // as HTTP/1.1 requests would be, which this task does not duplicate.
        if cluster.protocol != UpstreamProtocol::H1 {
            let _ = monoio::time::timeout(MIRROR_TIMEOUT, exchange).await;
        }
    }));
}

/// Stage 9: metrics and the access log.
#[allow(clippy::too_many_arguments)]
fn record(
    core: &Core,
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    authority: &str,
    request_id: &HeaderValue,
    peer: SocketAddr,
    started: Instant,
    outcome: &Outcome<'_>,
) {
    let duration = started.elapsed();
    crate::http::record_metrics(
        core,
        snapshot,
        outcome.route,
        outcome.cluster,
        outcome.status,
        outcome.locally_answered,
        duration,
    );
    let mut log = core.access_log.borrow_mut();
    if !log.enabled() {
        return;
    }
    let wall_start = SystemTime::now()
        .checked_sub(duration)
        .unwrap_or_else(SystemTime::now);
    log.record(&Entry {
        start: wall_start,
        method: parts.method.as_str(),
        authority,
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        protocol: "HTTP/2",
        status: outcome.status,
        bytes_received: outcome.bytes_received,
        bytes_sent: outcome.bytes_sent,
        duration,
        upstream: outcome.upstream,
        route: outcome.route.map_or("", |r| &*r.name),
        cluster: outcome.cluster.map_or("", |c| &*c.name),
        flags: outcome.flags,
        request_id: request_id.to_str().unwrap_or_default(),
        downstream: peer,
    });
}
