//! The HTTP request path, once for every pair of client and cluster protocol. Start reading here.
//!
//! A codec — the HTTP/1.1 server (`h1/server.rs`) or the HTTP/2 stream adapter
//! (`h2/stream.rs`) — reads a request head, turns it into a [`RequestHead`], and calls two
//! functions:
//!
//! **[`decide`]** (synchronous, over the head the codec still holds):
//! - the request id and, with tracing on, the **trace** (`trace::Tracer::begin`: the client's
//!   context continued or a new one, and the sampling decision), on [`Record::trace`];
//! 0. **path normalization** (`normalize.rs`) — what routing matches, authorization sees and the
//!    upstream receives; a path that cannot be normalized is a 400;
//! 1. **route** — virtual host by Host, then the route by path/method/headers/query, on the
//!    snapshot current *now* (keep-alive and HTTP/2 connections see reloads at once); then
//!    **authorization** (`policy::authz`; 403, flag `RBAC`), answered before a missing route's
//!    404 and before any admission policy, as Envoy's RBAC filter runs before its router;
//! 2. **admission** — the local rate limits of the listener, the virtual host and the route
//!    (429, flag `RL`), then the route's fault injection: an abort is answered here (flag `FI`), a
//!    delay is carried in the plan (flag `DI`; see `policy`);
//!    then the **body limit** — a declared length over the route's (or listener's) limit is a 413
//!    before anything goes upstream;
//! 3. **local actions** — redirects and direct responses are answered here;
//! 4. **cluster** — the weighted split's pick; the mirror sample; the hash for consistent-hash
//!    balancing; the deadline (the route's timeout or the client's `grpc-timeout`, whichever is
//!    sooner);
//! 5. **the upstream request** — built once, in the cluster's protocol: HTTP/1.1 head bytes or an
//!    HTTP/2 request, with the header rules of `headers.rs`.
//!
//! **[`run`]** (the exchange, under the deadline and the stream idle timeout):
//! - an injected fault delay is slept first, outside the deadline and the idle timeout;
//! 6. **upstream** — a pooled or new HTTP/1.1 connection, or a stream on a pooled HTTP/2
//!    connection (`upstream.rs`), from the load balancer's pick; with tracing on, each attempt
//!    is a client span and writes its own trace headers (its span as the parent) next to
//!    `x-envoy-attempt-count`;
//! 7. **`100 Continue`** — sent by the proxy once an upstream is at hand (never forwarded);
//! 8. **both directions at once** — the request body goes up while the response comes down
//!    (full duplex: an upstream may answer before the upload ends); an early complete response
//!    stops the upload; a client that goes away ends the exchange and closes the upstream;
//! 9. **retry** — the rule of `retry.rs`, the same for all four protocol pairs: once on a fresh
//!    connection when the upstream provably did not process the request (or, idempotent, a
//!    reused connection failed before any response byte); and as the route's policy says, on
//!    failures and on retriable response heads, within the cluster's retry budget, after a
//!    backoff, on another endpoint, each try under the per-try timeout;
//! 10. **answer failures** — [`Failure`] → a local reply in the client's protocol while no
//!     response byte was sent, an abort after;
//! 11. **mirror** — a complete copy to the shadow cluster, once the request body is whole
//!     (`mirror.rs`);
//! 12. **account** — the codec calls `account::record` with the [`Record`].

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use config_schema::UpstreamProtocol;

use super::body::{self, Hooks, Recording};
use super::downstream::{DownOut, Downstream};
use super::error::{Failure, Fault, Retry, grpc_timeout_value};
use super::h1::BodyFraming;
use super::h1::client::{RequestLine, write_request_head};
use super::h1::pool::Connection;
use super::h2::client::write_h2_request;
use super::headers::ATTEMPT_COUNT;
use super::headers::{Forwarding, RequestRules, TraceHeaders};
use super::mirror;
use super::normalize;
use super::reply::LocalReply;
use super::request::{ClientProtocol, RequestBody, RequestHead, Upgrade};
use super::retry::{Retries, Stopped, Verdict};
use super::upstream::{UpIn, Upstream, UpstreamRequest, Wire};
use crate::access_log::{Captured, ResponseFlags};
use crate::core::Core;
use crate::event::Signal;
use crate::identity::SpiffeId;
use crate::policy::authz::{self, AuthzInput, HttpAttributes, ListenerAuthz};
use crate::routing::{
    DirectResponse, RateLimitKey, RequestView, Route, RouteAction, RouteMatch, RouteTable,
    shadow_host,
};
use crate::snapshot::{Cluster, HttpSettings, Listener, Snapshot, SnapshotRef};
use crate::tls::TlsInfo;
use crate::trace::{Attempt, RequestTrace, TraceId, Tracer};
use crate::upstream::outlier::Observation;

/// The largest request body kept for a retry; bigger bodies are not retried.
const REPLAY_LIMIT: usize = 64 * 1024;

/// Buffers an exchange writes into, reused by every request on an HTTP/1.1 connection.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The HTTP/1.1 upstream request head.
    pub upstream_head: Vec<u8>,
    /// Bytes waiting to go upstream with the first body bytes.
    pub pending: Vec<u8>,
    /// A rewritten or origin-form request target.
    pub target: Vec<u8>,
    /// A redirect's `location`.
    pub location: Vec<u8>,
    /// Header values the proxy assembles (`x-forwarded-for`, joined cookies, `grpc-timeout`).
    pub values: Vec<u8>,
    /// The propagated `grpc-timeout`.
    pub grpc_timeout: Vec<u8>,
    /// The attempt's trace headers, as HTTP/1.1 field lines (tracing on).
    pub trace_fields: Vec<u8>,
    /// This request's id: the client's, or a generated UUID.
    pub request_id: Vec<u8>,
    /// The client's address as text (`x-forwarded-for`); rendered once per connection.
    pub peer_ip: Vec<u8>,
    /// The normalized request target (path, then `?` and the query), when normalization
    /// changed the path.
    pub path: Vec<u8>,
    /// The exchange's timer (see [`watchdog`]), kept for the next request on the connection:
    /// resetting a timer costs less than making one.
    pub timer: Option<Timer>,
    /// The response headers the access log's text format reads (`%RESP(...)%`), copied from the
    /// upstream response the client got.
    pub response_log: Captured,
}

/// A timer on the heap (monoio's is 640 bytes, aligned to 128: inline it would grow every
/// request's future, which is copied whole when an HTTP/2 stream's task is spawned).
pub type Timer = std::pin::Pin<Box<monoio::time::Sleep>>;

/// What happened to one request, for metrics and the access log. Borrows names from the
/// snapshot: no shared reference count is touched per request.
#[derive(Debug)]
pub struct Record<'s> {
    /// When the request head was complete.
    pub started: Instant,
    /// The route that matched.
    pub route: Option<&'s Route>,
    /// The cluster chosen.
    pub cluster: Option<&'s Cluster>,
    /// The endpoint of the last attempt.
    pub upstream: Option<SocketAddr>,
    /// Status sent to the client (0: none was).
    pub status: u16,
    /// Response flags.
    pub flags: ResponseFlags,
    /// The proxy answered instead of an upstream.
    pub locally_answered: bool,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Attempts made upstream.
    pub attempts: u32,
    /// Why a retry that a condition asked for did not happen.
    pub retry_stopped: Option<Stopped>,
    /// The client's address (the peer, or the trusted `x-forwarded-for` entry).
    pub client_ip: IpAddr,
    /// The connection's peer address.
    pub peer_ip: IpAddr,
    /// The authorization policy that decided (see `policy::authz::Verdict`).
    pub authz_policy: Option<&'s str>,
    /// The first audit policy that matched.
    pub authz_audit: Option<&'s str>,
    /// The verified SPIFFE ID of the last attempt's upstream (TLS clusters).
    pub upstream_principal: Option<Rc<SpiffeId>>,
    /// The request's trace, when `[telemetry.tracing]` is on (see [`Record::trace_id`]).
    pub trace: Option<RequestTrace>,
    /// A gRPC request (Istio's `request_protocol="grpc"`).
    pub grpc: bool,
    /// The `grpc-status` the client got (trailers, trailers-only or the proxy's own answer).
    pub grpc_status: Option<u16>,
    /// The listener reports Istio metrics as `reporter="source"`.
    pub reporter_source: bool,
}

impl Record<'_> {
    /// A record for a request whose head was complete at `started`.
    pub fn new(started: Instant, client_ip: IpAddr) -> Self {
        Self {
            started,
            route: None,
            cluster: None,
            upstream: None,
            status: 0,
            flags: ResponseFlags::default(),
            locally_answered: false,
            bytes_received: 0,
            bytes_sent: 0,
            attempts: 0,
            retry_stopped: None,
            client_ip,
            peer_ip: client_ip,
            authz_policy: None,
            authz_audit: None,
            upstream_principal: None,
            trace: None,
            grpc: false,
            grpc_status: None,
            reporter_source: false,
        }
    }

    /// The request's trace id (the client's, or the one the proxy started), when tracing is on;
    /// it displays as 32 lower-case hex digits.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace.map(|trace| trace.trace_id)
    }
}

/// An answer the proxy makes itself.
#[derive(Debug, Clone, Copy)]
pub enum Local<'s> {
    /// An error.
    Failure(Failure),
    /// A configured direct response.
    Direct(&'s DirectResponse),
    /// A redirect; the location is in [`Scratch::location`].
    Redirect(u16),
}

/// What to do with a request.
// A decision lives on the stack for one request; boxing the plan would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decision<'s> {
    /// Answer here.
    Reply(Local<'s>),
    /// Answer here after an injected fault delay.
    Delayed(Local<'s>, Duration),
    /// Send it upstream.
    Forward(Plan<'s>),
}

/// How a request goes upstream.
#[derive(Debug)]
pub struct Plan<'s> {
    /// The route.
    pub route: &'s Route,
    /// The cluster.
    pub cluster: &'s Cluster,
    /// The protocol spoken to it.
    pub wire: Wire,
    /// Hash for consistent-hash balancing.
    pub hash: Option<u64>,
    /// When the exchange must be over.
    pub deadline: Option<Instant>,
    /// Largest request body.
    pub body_limit: Option<u64>,
    /// The method is idempotent.
    pub idempotent: bool,
    /// The request head for the upstream (HTTP/1.1 bytes are in [`Scratch::upstream_head`]).
    pub request: UpstreamRequest,
    /// The shadow copy, when this request is mirrored.
    pub mirror: Option<Box<mirror::Shadow>>,
    /// A gRPC request: each attempt sends the time left as `grpc-timeout`.
    pub grpc: bool,
    /// `HEAD` (no response body) and `CONNECT` (a 2xx starts a tunnel).
    pub is_head: bool,
    /// See above.
    pub is_connect: bool,
    /// An injected fault delay, slept before the first attempt.
    pub delay: Option<Duration>,
}

/// Stages 1–5: what to do with `head`, arriving on `listener` of `snapshot` from `peer`.
/// Fills `record` with the route and cluster, and `scratch` with the request id and the
/// upstream head.
pub fn decide<'s>(
    core: &Core,
    snapshot: &'s Snapshot,
    listener: &'s Listener,
    http: &'s HttpSettings,
    head: &RequestHead<'_>,
    scratch: &mut Scratch,
    record: &mut Record<'s>,
) -> Decision<'s> {
    record.grpc = head.grpc;
    record.reporter_source = listener.reporter_source;
    scratch.request_id.clear();
    match head.request_id() {
        Some(id) => scratch.request_id.extend_from_slice(id),
        None => core.write_uuid(&mut scratch.request_id),
    }
    // The trace: the client's context continued, or a new one; sampled by the caller's decision
    // or, for a new trace, by the request id (one id, one decision).
    if let Some(tracer) = &snapshot.tracing {
        let mut trace = tracer.begin(head.fields.iter(), &scratch.request_id, || core.random());
        trace.set_method(head.method);
        record.trace = Some(trace);
    }

    // 0. The path, normalized once: what routing matches, authorization sees and the upstream
    // receives. A CONNECT target is an authority, an OPTIONS `*` no path: both are left alone.
    let normalized;
    let head = if head.path.starts_with('/') && head.upgrade != Some(Upgrade::Connect) {
        match normalize::normalize(head.path.as_bytes(), &http.paths, &mut scratch.path) {
            Ok(false) => head,
            Ok(true) => {
                let path_len = scratch.path.len();
                if !head.query.is_empty() {
                    scratch.path.push(b'?');
                    scratch.path.extend_from_slice(head.query.as_bytes());
                }
                // Decoding yields only unreserved ASCII and segments are cut at '/', so valid
                // UTF-8 stays valid; should it not, the request is refused, not forwarded.
                let Some((target, path)) = std::str::from_utf8(&scratch.path)
                    .ok()
                    .and_then(|target| Some((target, target.get(..path_len)?)))
                else {
                    return Decision::Reply(Local::Failure(Failure::BadRequest(
                        "path cannot be normalized",
                    )));
                };
                normalized = RequestHead {
                    path,
                    target,
                    ..*head
                };
                &normalized
            }
            Err(refused) => {
                return Decision::Reply(Local::Failure(Failure::BadRequest(refused.reason())));
            }
        }
    } else {
        head
    };

    // 1. Route; then authorization, which answers first: a refused client learns nothing about
    // which paths are routed (Envoy's RBAC filter also runs before the router's 404).
    let found = http.routes.as_ref().and_then(|table| {
        Some((
            table,
            table
                .find(head, &mut core.match_scratch.borrow_mut())
                .ok()?,
        ))
    });
    if let Some((_, found)) = found {
        record.route = Some(found.route);
    }
    if let Some(authz) = &listener.authz
        && !authorize(core, listener, authz, head, record)
    {
        return Decision::Reply(Local::Failure(Failure::Denied));
    }
    let Some((table, found)) = found else {
        return Decision::Reply(Local::Failure(Failure::NoRoute));
    };
    let route = found.route;

    // 2. Admission.
    let delay = match admit(core, snapshot, listener, table, found, head, record) {
        Ok(delay) => delay,
        Err((local, delay)) => return reply(local, delay),
    };

    // The body limit: the route's, else the listener's; 0 means unlimited.
    let limit = route.max_request_body.unwrap_or(http.max_request_body);
    let body_limit = (limit > 0).then_some(limit);
    if let (RequestBody::Length(n), Some(limit)) = (head.body, body_limit)
        && n > limit
    {
        return reply(Local::Failure(Failure::BodyTooLarge), delay);
    }

    // 3. Local actions.
    match &route.action {
        RouteAction::Redirect(redirect) => {
            let scheme = "http";
            redirect.write_location(
                scheme,
                head.authority.as_bytes(),
                head.path.as_bytes(),
                head.query.as_bytes(),
                &mut scratch.location,
            );
            return reply(Local::Redirect(redirect.status), delay);
        }
        RouteAction::DirectResponse(direct) => return reply(Local::Direct(direct), delay),
        RouteAction::Cluster(_) | RouteAction::WeightedClusters(_) => {}
    }

    // 4. Cluster: the weighted pick uses the top bits of one random number, the mirror sample
    // the low bits.
    let random = core.random();
    let Some(cluster_index) = route.pick_cluster(random) else {
        return reply(Local::Failure(Failure::NoRoute), delay);
    };
    let cluster = &*snapshot.clusters[cluster_index];
    record.cluster = Some(cluster);
    let wire = wire_for(cluster, head.protocol);
    if head.upgrade.is_some() && wire == Wire::H2 {
        return reply(
            Local::Failure(Failure::Unsupported(
                "upgrade is not supported toward an HTTP/2 cluster",
            )),
            delay,
        );
    }
    let hash = cluster.balancer.request_hash(head, record.client_ip);
    let grpc_timeout = if head.grpc {
        head.fields
            .get("grpc-timeout")
            .and_then(super::grpc::parse_timeout)
    } else {
        None
    };
    let deadline = [route.timeout, grpc_timeout]
        .into_iter()
        .flatten()
        .min()
        .map(|t| record.started + t);
    if let (true, Some(deadline)) = (head.grpc, deadline) {
        // The upstream gets the time that is left, so it gives up when the client does.
        let left = deadline.saturating_duration_since(Instant::now());
        grpc_timeout_value(left, &mut scratch.grpc_timeout);
    } else {
        scratch.grpc_timeout.clear();
    }
    // An injected delay counts against no timeout: the deadline starts after it.
    let deadline = deadline.map(|d| d + delay.unwrap_or_default());

    // 5. The upstream request.
    let target: &[u8] = match (&route.rewrite, head.upgrade) {
        (_, Some(Upgrade::Connect)) => head.target.as_bytes(),
        (Some(rewrite), _) => {
            rewrite.write(
                head.path.as_bytes(),
                head.query.as_bytes(),
                &mut scratch.target,
            );
            &scratch.target
        }
        (None, _) if head.target.starts_with('/') => head.target.as_bytes(),
        (None, _) => {
            // Absolute form: send origin form.
            scratch.target.clear();
            scratch.target.extend_from_slice(head.path.as_bytes());
            if !head.query.is_empty() {
                scratch.target.push(b'?');
                scratch.target.extend_from_slice(head.query.as_bytes());
            }
            &scratch.target
        }
    };
    // HTTP/1.0 clients may send no Host; the upstream request needs one, so it gets the
    // address the client connected to.
    let listener_host;
    let host: &[u8] = if head.authority.is_empty() {
        listener_host = listener.local_addr.to_string();
        listener_host.as_bytes()
    } else {
        head.authority.as_bytes()
    };
    let rules = RequestRules {
        mutation: &route.request_headers,
        forwarding: Forwarding {
            peer: &scratch.peer_ip,
            proto: "http",
            trust_proto: http.xff_trusted_hops > 0,
            request_id: &scratch.request_id,
        },
        join_cookies: wire == Wire::H1,
        keep_te_trailers: wire == Wire::H2,
        grpc_timeout: (!scratch.grpc_timeout.is_empty()).then_some(&scratch.grpc_timeout[..]),
        per_attempt: route.retries.is_some(),
        trace: record.trace.map(|trace| TraceHeaders {
            keep_tracestate: trace.keep_tracestate,
        }),
    };
    let framing = match head.body {
        RequestBody::None => BodyFraming::None,
        RequestBody::Length(n) => BodyFraming::Length(n),
        RequestBody::Stream => BodyFraming::Chunked,
    };
    let request = match wire {
        Wire::H1 => {
            let line = RequestLine {
                target,
                host,
                framing,
                upgrade: match head.upgrade {
                    Some(Upgrade::Protocol(value)) => Some(value),
                    _ => None,
                },
            };
            write_request_head(
                &mut scratch.upstream_head,
                head,
                &line,
                &rules,
                &mut scratch.values,
            );
            UpstreamRequest::H1(framing)
        }
        Wire::H2 => {
            match write_h2_request(head, target, host, framing, &rules, &mut scratch.values) {
                Some(request) => UpstreamRequest::H2(request),
                None => {
                    return reply(
                        Local::Failure(Failure::BadRequest("request cannot be sent over HTTP/2")),
                        delay,
                    );
                }
            }
        }
    };
    let mirror = route
        .mirror
        .as_ref()
        .filter(|m| m.share.sample(random) && head.upgrade.is_none())
        .and_then(|m| {
            let shadow = snapshot.clusters.get(m.cluster)?;
            let mut shadow_authority = Vec::with_capacity(host.len() + 7);
            shadow_host(host, &mut shadow_authority);
            let shadow_wire = wire_for(shadow, head.protocol);
            mirror::Shadow::build(
                m.cluster,
                shadow_wire,
                head,
                target,
                &shadow_authority,
                &rules,
                &mut scratch.values,
            )
        });

    Decision::Forward(Plan {
        route,
        cluster,
        wire,
        hash,
        deadline,
        body_limit,
        idempotent: head.is_idempotent(),
        request,
        mirror,
        grpc: head.grpc,
        is_head: head.is_head(),
        is_connect: head.upgrade == Some(Upgrade::Connect),
        delay,
    })
}

/// An answer made here, after the injected delay if there is one: a request the fault delays
/// is delayed whatever answers it.
fn reply(local: Local<'_>, delay: Option<Duration>) -> Decision<'_> {
    match delay {
        Some(delay) => Decision::Delayed(local, delay),
        None => Decision::Reply(local),
    }
}

/// Authorization (`policy::authz`): the listener's policies over the request, with the peer's
/// verified identity and SNI when the connection is TLS. Records the deciding and the auditing policy for the access
/// log; returns whether the request may go on.
#[inline]
fn authorize<'s>(
    core: &Core,
    listener: &'s Listener,
    authz: &'s ListenerAuthz,
    head: &RequestHead<'_>,
    record: &mut Record<'s>,
) -> bool {
    let input = AuthzInput {
        source_ip: record.peer_ip,
        remote_ip: record.client_ip,
        // The connection's verified SPIFFE ID and SNI, borrowed from its TLS details.
        principal: head.tls.and_then(TlsInfo::peer_id),
        sni: head.tls.and_then(|tls| tls.sni.as_deref()),
        destination_port: listener.local_addr.port(),
        http: Some(HttpAttributes {
            method: head.method,
            host: head.authority,
            path: head.path,
            headers: head,
        }),
    };
    let verdict = authz.evaluate(&input, core.id);
    record.authz_audit = verdict.audit;
    record.authz_policy = match (verdict.allowed, verdict.policy) {
        (false, None) => Some(authz::NO_ALLOW_MATCHED),
        (_, policy) => policy,
    };
    verdict.allowed
}

/// Stage 2: the local rate limits — listener, virtual host, route, each consuming from its
/// bucket when it admits — then the route's fault. Returns the injected delay, if any, or the
/// local answer. A listener, virtual host or route without a policy costs one branch.
#[inline]
fn admit<'s>(
    core: &Core,
    snapshot: &'s Snapshot,
    listener: &'s Listener,
    table: &RouteTable,
    found: RouteMatch<'s>,
    head: &RequestHead<'_>,
    record: &mut Record<'s>,
) -> Result<Option<Duration>, (Local<'s>, Option<Duration>)> {
    let route = found.route;
    let limiters = [
        listener.rate_limit.as_ref(),
        found
            .virtual_host
            .rate_limit
            .as_ref()
            .and_then(|_| snapshot.policies.virtual_hosts.get(found.virtual_host.id))
            .and_then(Option::as_ref),
        route
            .rate_limit
            .as_ref()
            .and_then(|_| snapshot.policies.routes.get(route.id))
            .and_then(Option::as_ref),
    ];
    for limiter in limiters.into_iter().flatten() {
        let admitted = match &limiter.limit.key {
            RateLimitKey::Global => limiter.admit(b"", core.id),
            RateLimitKey::ClientIp => limiter.admit_ip(record.client_ip, core.id),
            RateLimitKey::Header(name) => limiter.admit(head.header(name).unwrap_or(b""), core.id),
        };
        if let Err(limited) = admitted {
            return Err((Local::Failure(Failure::RateLimited(limited)), None));
        }
    }
    let Some(fault) = &route.fault else {
        return Ok(None);
    };
    if !table.fault_applies(fault, head, &mut core.match_scratch.borrow_mut()) {
        return Ok(None);
    }
    let injected = crate::policy::fault::draw(fault, core.random());
    let counters = snapshot
        .route_stats
        .get(route.id)
        .map(|(_, s)| s.slot(core.id));
    if injected.delay.is_some() {
        record.flags.insert(ResponseFlags::DELAY_INJECTED);
        if let Some(counters) = counters {
            counters.fault_delays.inc();
        }
    }
    match injected.abort {
        None => Ok(injected.delay),
        Some((status, grpc_status)) => {
            if let Some(counters) = counters {
                counters.fault_aborts.inc();
            }
            let failure = Failure::FaultAbort {
                status,
                grpc_status,
            };
            Err((Local::Failure(failure), injected.delay))
        }
    }
}

/// The protocol to speak to `cluster` for a client speaking `client`: the cluster's, and for
/// `auto` the client's own.
fn wire_for(cluster: &Cluster, client: ClientProtocol) -> Wire {
    match (cluster.protocol, client) {
        (UpstreamProtocol::H1, _) => Wire::H1,
        (UpstreamProtocol::H2, _) => Wire::H2,
        (UpstreamProtocol::Auto, ClientProtocol::Http2) => Wire::H2,
        (UpstreamProtocol::Auto, _) => Wire::H1,
    }
}

/// Carries out a decision: a local answer in the client's protocol, or the exchange with the
/// upstream ([`run`]). Returns the upstream connection when the exchange became a tunnel.
pub async fn serve<'s>(
    core: &Rc<Core>,
    snapshot: &'s SnapshotRef,
    http: &HttpSettings,
    decision: &mut Decision<'s>,
    down: &mut Downstream<'_>,
    scratch: &mut Scratch,
    record: &mut Record<'s>,
) -> Option<Connection> {
    // Nothing of the previous request's response reaches this one's log line.
    scratch.response_log.clear();
    // The decision is borrowed, not moved: a plan is hundreds of bytes, and every future that
    // owned one would carry it (twice, as argument and as local).
    let local = match decision {
        Decision::Forward(plan) => {
            return run(core, snapshot, http, plan, down, scratch, record).await;
        }
        Decision::Reply(local) => *local,
        Decision::Delayed(local, delay) => {
            if !injected_delay(core, *delay, down, record).await {
                return None;
            }
            *local
        }
    };
    let reply = match local {
        Local::Failure(failure) => {
            record.flags.insert(failure.flag());
            LocalReply::failure(failure)
        }
        Local::Direct(direct) => {
            LocalReply::direct(direct.status, &direct.body, &direct.content_type)
        }
        Local::Redirect(status) => LocalReply::redirect(status, &scratch.location),
    };
    // A gRPC client gets an error trailers-only, under HTTP 200.
    record.status = if down.is_grpc() && reply.grpc_status.is_some() {
        record.grpc_status = reply.grpc_status.and_then(|s| u16::try_from(s).ok());
        200
    } else {
        reply.status
    };
    record.locally_answered = true;
    record.bytes_sent = down.reply(&reply, &scratch.request_id).await;
    None
}

/// Stages 6–11 for a forwarded request. Returns the upstream connection when the exchange
/// became a tunnel (an HTTP/1.1 upgrade or CONNECT the upstream accepted).
async fn run<'s>(
    core: &Rc<Core>,
    snapshot: &'s SnapshotRef,
    http: &HttpSettings,
    plan: &mut Plan<'s>,
    down: &mut Downstream<'_>,
    scratch: &mut Scratch,
    record: &mut Record<'s>,
) -> Option<Connection> {
    if let Some(delay) = plan.delay
        && !injected_delay(core, delay, down, record).await
    {
        return None;
    }
    let progress = Progress::default();
    // The body is kept while it may still be replayed or mirrored.
    let keep = if plan.mirror.is_some() {
        mirror::BODY_LIMIT
    } else {
        REPLAY_LIMIT
    };
    let mut recording = (!down.body_done()).then(|| Recording::new(keep));
    let retries = Retries::new(
        record.started,
        plan.route.retries.as_ref(),
        &plan.cluster.retry_budget,
        plan.cluster.breaker.as_ref(),
        plan.cluster.stats.slot(core.id),
    );
    let context = Context {
        core,
        snapshot,
        plan,
        progress: &progress,
        retries: &retries,
    };
    let mut timer = scratch.timer.take();
    let outcome = monoio::select! {
        // Biased: the exchange first, the watchdog after (no random draw per poll); and a
        // request that completes in the same wake-up as its deadline has completed.
        biased;
        // The futures are built in place: a large future moved is a large copy per request.
        outcome = attempts(&context, down, scratch, &mut recording, record) => outcome,
        failure = watchdog(plan.deadline, http.stream_idle_timeout, &progress, &mut timer) => {
            Err(failure)
        }
    };
    scratch.timer = timer;
    // An attempt cut by the deadline or the idle timeout ends its client span here.
    if record.trace.is_some_and(|trace| trace.attempt.is_some()) {
        super::account::attempt_span(core, snapshot, record, outcome.as_ref().err().copied());
    }
    let (flags, stopped) = retries.outcome();
    record.flags.insert(flags);
    record.retry_stopped = stopped;
    if let Some(status) = progress.grpc_status.get() {
        record.grpc_status = Some(status);
    }
    record.bytes_received = progress.request_total.get();
    record.bytes_sent = progress.response_total.get();
    let counters = plan.cluster.stats.slot(core.id);
    let tunnel = match outcome {
        Ok(tunnel) => tunnel,
        Err(failure) => {
            record.flags.insert(failure.flag());
            match failure {
                Failure::PerTryTimeout => counters.timeouts.inc(),
                Failure::Timeout => {
                    counters.timeouts.inc();
                    // The attempt was dropped where it stood (a per-try timeout is observed
                    // where the try ends, in `attempts`).
                    if let (Some(health), Some(endpoint)) = (&plan.cluster.health, record.upstream)
                    {
                        health.observe_address(endpoint, Observation::LocalFailure);
                    }
                }
                Failure::UpstreamProtocol(_) => counters.protocol_errors.inc(),
                _ => {}
            }
            if matches!(
                failure,
                Failure::Timeout | Failure::PerTryTimeout | Failure::StreamIdle
            ) || failure.fault() == Fault::Downstream
            {
                // An interrupted exchange may have abandoned a read on the client, and a client
                // that broke the protocol cannot be trusted to be in step: an HTTP/1.1
                // connection closes after the answer.
                down.close_after();
            }
            if progress.response_started.get() {
                down.abort();
            } else if failure != Failure::ClientGone {
                // A gRPC client gets its answer trailers-only, under HTTP 200.
                record.status = if down.is_grpc() {
                    record.grpc_status = u16::try_from(failure.grpc_status()).ok();
                    200
                } else {
                    failure.status()
                };
                record.locally_answered = true;
                record.bytes_sent = down
                    .reply(&LocalReply::failure(failure), &scratch.request_id)
                    .await;
            } else {
                record.status = failure.status();
            }
            None
        }
    };
    // 11. Mirror: only a complete body within the limit.
    if let Some(shadow) = plan.mirror.take() {
        let body = match &recording {
            None => Some(None),
            Some(recording) if recording.is_complete() => Some(Some(recording)),
            Some(_) => None,
        };
        if let Some(body) = body {
            mirror::send(core, snapshot, shadow, body);
        }
    }
    tunnel
}

/// Sleeps an injected fault delay, before the deadline's and the idle timeout's clocks start.
/// Returns false when the client left meanwhile — an HTTP/2 client that reset its stream —
/// which ends the exchange here, so the upstream never sees the request (an HTTP/1.1 client's
/// departure is noticed once the exchange runs, as without a delay).
async fn injected_delay(
    core: &Core,
    delay: Duration,
    down: &mut Downstream<'_>,
    record: &mut Record<'_>,
) -> bool {
    let (_, mut out) = down.split(core.is_draining());
    let gone = monoio::select! {
        biased;
        failure = out.gone() => Some(failure),
        () = monoio::time::sleep(delay) => None,
    };
    match gone {
        None => true,
        Some(failure) => {
            record.flags.insert(failure.flag());
            record.status = failure.status();
            false
        }
    }
}

/// What every attempt of an exchange reads.
#[derive(Clone, Copy)]
struct Context<'a, 's> {
    core: &'a Core,
    snapshot: &'s Snapshot,
    plan: &'a Plan<'s>,
    progress: &'a Progress,
    retries: &'a Retries<'s>,
}

/// Where an exchange stands, shared by its two directions.
#[derive(Debug, Default)]
struct Progress {
    /// Request body bytes read from the client.
    request_total: Cell<u64>,
    /// Response body bytes sent to the client.
    response_total: Cell<u64>,
    /// Grows whenever a body byte moves either way (the stream idle timeout watches it).
    activity: Cell<u64>,
    /// The client has the response head: failures can no longer be answered.
    response_started: Cell<bool>,
    /// Fired by the watchdog when the request side starts watching the client for going away.
    watch: Signal,
    /// When the attempt under way must be over (a route's `per_try_timeout`), set by `attempts`
    /// before each attempt; the watchdog fires `try_expired` then.
    try_deadline: Cell<Option<Instant>>,
    /// See `try_deadline`.
    try_expired: Signal,
    /// The `grpc-status` of the response's trailers, when they carried one.
    grpc_status: Cell<Option<u16>>,
}

/// How long an exchange runs before the proxy starts watching an HTTP/1.1 client for going away
/// (`DownIn::watch_gone`).
const WATCH_AFTER: Duration = Duration::from_millis(100);

/// See [`watchdog`].
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// The exchange's one timer: resolves with the failure when the `deadline` passes, or when no
/// body byte moved for `idle` (checked every `idle`, so an idle exchange ends between one and
/// two idle periods after its last byte); on the way, fires `progress.watch` after
/// [`WATCH_AFTER`], and `progress.try_expired` when the attempt under way passes its per-try
/// deadline (`progress.try_deadline`). One timer rather than one per concern, made once per
/// connection (`timer`) and reset for each request.
async fn watchdog(
    deadline: Option<Instant>,
    idle: Option<Duration>,
    progress: &Progress,
    timer: &mut Option<Timer>,
) -> Failure {
    let start = Instant::now();
    let mut watch_at = Some(start + WATCH_AFTER);
    let mut idle_check = idle.map(|idle| (start + idle, progress.activity.get()));
    loop {
        // `attempts` sets a per-try deadline while this future waits, in the same task: every
        // poll below compares it with the one this wait was planned with, and plans again when
        // it changed.
        let planned_try = progress.try_deadline.get();
        let next = [
            deadline,
            watch_at,
            idle_check.map(|(at, _)| at),
            planned_try,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            std::future::poll_fn(|_| {
                if progress.try_deadline.get() == planned_try {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            continue;
        };
        let until = monoio::time::Instant::from_std(next);
        match timer.as_mut() {
            Some(timer) => timer.as_mut().reset(until),
            None => *timer = Some(Box::pin(monoio::time::sleep_until(until))),
        }
        if let Some(timer) = timer.as_mut() {
            // The exchange's task wakes several times per request (each completed read and
            // write) and every wake polls this future; the timer itself needs polling only to
            // register the task once and when its time has come. A clock read is cheaper than
            // re-registering. (The slack covers a timer wheel that rounds its slots: near its time,
            // the timer is always asked.)
            let near = next.checked_sub(TIMER_SLACK).unwrap_or(next);
            let mut registered: Option<std::task::Waker> = None;
            std::future::poll_fn(|cx| {
                if progress.try_deadline.get() != planned_try {
                    return std::task::Poll::Ready(());
                }
                let fresh = registered
                    .as_ref()
                    .is_none_or(|waker| !waker.will_wake(cx.waker()));
                if !fresh && Instant::now() < near {
                    return std::task::Poll::Pending;
                }
                if fresh {
                    registered = Some(cx.waker().clone());
                }
                timer.as_mut().poll(cx)
            })
            .await;
        }
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Failure::Timeout;
        }
        if watch_at.is_some_and(|at| now >= at) {
            progress.watch.fire();
            watch_at = None;
        }
        if progress.try_deadline.get().is_some_and(|at| now >= at) {
            progress.try_deadline.set(None);
            progress.try_expired.fire();
        }
        if let (Some(idle), Some((at, seen))) = (idle, idle_check)
            && now >= at
        {
            let moved = progress.activity.get();
            if moved == seen {
                return Failure::StreamIdle;
            }
            idle_check = Some((now + idle, moved));
        }
    }
}

/// Stages 6–9: attempts until one completes, or a failure that is not retried.
async fn attempts<'s>(
    context: &Context<'_, 's>,
    down: &mut Downstream<'_>,
    scratch: &mut Scratch,
    recording: &mut Option<Recording>,
    record: &mut Record<'s>,
) -> Result<Option<Connection>, Failure> {
    let Context {
        core,
        snapshot,
        plan,
        progress,
        retries,
    } = *context;
    let per_try = retries.per_try_timeout();
    loop {
        record.attempts += 1;
        // Each attempt is a client span of its own; its id is the parent the upstream sees.
        if let Some(trace) = &mut record.trace {
            trace.attempt = Some(Attempt {
                span_id: Tracer::span_id(|| core.random()),
                started: Instant::now(),
                number: record.attempts,
                endpoint: None,
                status: 0,
                http2: plan.wire == Wire::H2,
            });
        }
        // The per-try deadline is kept by the exchange's one timer (`watchdog`): a timer of its
        // own per attempt would cost a registration, an allocation and a clock read per request.
        if let Some(limit) = per_try {
            progress.try_expired.reset();
            progress.try_deadline.set(Some(Instant::now() + limit));
        }
        // One call site, so that the (large) attempt future has one slot in this one.
        let tried = monoio::select! {
            biased;
            tried = attempt(context, down, scratch, recording, record) => tried,
            () = per_try_expired(progress, per_try.is_some()) => Err(Failure::PerTryTimeout),
        };
        progress.try_deadline.set(None);
        if record.trace.is_some() {
            super::account::attempt_span(core, snapshot, record, tried.as_ref().err().copied());
        }
        let failure = match tried {
            Ok(Attempted::Done(tunnel)) => return Ok(tunnel),
            Ok(Attempted::Discarded) => None,
            Err(failure) => Some(failure),
        };
        if let Some(failure) = failure {
            if failure == Failure::PerTryTimeout
                && let (Some(health), Some(endpoint)) = (&plan.cluster.health, record.upstream)
            {
                // The try was dropped where it stood: outlier detection hears of it here.
                health.observe_address(endpoint, Observation::LocalFailure);
            }
            if progress.response_started.get() {
                return Err(failure);
            }
            // A try cut by its per-try timeout was dropped where it stood: a read from an
            // HTTP/1.1 client may have gone with bytes in it, so an upload still under way is
            // no longer whole. (An HTTP/2 stream keeps its unread DATA.)
            let cut_mid_upload = failure == Failure::PerTryTimeout
                && !down.body_done()
                && matches!(down, Downstream::H1(_));
            let body_at_hand =
                recording.as_ref().is_none_or(Recording::is_whole) && !cut_mid_upload;
            if retries.after_failure(failure, plan.idempotent, body_at_hand) == Verdict::Stop {
                return Err(failure);
            }
            tracing::debug!(?failure, attempt = record.attempts, "retrying");
        }
        let backoff = retries.backoff(core.random());
        if !backoff.is_zero() {
            // On the heap: a timer inline would grow every request's future; only retries pay.
            Box::pin(monoio::time::sleep(backoff)).await;
        }
    }
}

/// Resolves when the watchdog says the attempt's per-try deadline passed (never when there is
/// none).
async fn per_try_expired(progress: &Progress, armed: bool) {
    if armed {
        progress.try_expired.wait().await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// How an attempt that did not fail ended.
#[derive(Debug)]
enum Attempted {
    /// The exchange is complete (the connection, when it became a tunnel).
    Done(Option<Connection>),
    /// The upstream's response asked for a retry, which was granted; the client saw nothing.
    Discarded,
}

/// How one attempt's request side ended.
#[derive(Debug)]
enum SendEnd {
    /// The request went out whole, and the exchange ended (`stop`).
    Done,
    /// The upstream stopped taking the request (reset, closed): its response side says why.
    UpstreamStopped,
    /// The client's side failed (gone, malformed body, body too large).
    Failed(Failure),
}

/// Stages 6–8: one attempt.
async fn attempt<'s>(
    context: &Context<'_, 's>,
    down: &mut Downstream<'_>,
    scratch: &mut Scratch,
    recording: &mut Option<Recording>,
    record: &mut Record<'s>,
) -> Result<Attempted, Failure> {
    let Context {
        core,
        snapshot,
        plan,
        progress,
        retries,
    } = *context;
    let first = record.attempts == 1;
    // 6. An upstream connection or stream: a policy retry goes elsewhere where it can.
    let avoid = record.upstream.filter(|_| retries.avoid_last_endpoint());
    let fresh = !first && avoid.is_none();
    let mut upstream = Upstream::checkout(
        core,
        snapshot,
        plan.cluster,
        plan.wire,
        plan.hash,
        fresh,
        avoid,
    )
    .await?;
    record.upstream = Some(upstream.endpoint());
    // A reference count, not a copy: the identity was read at the connection's handshake.
    record.upstream_principal = upstream.peer();
    if let Some(attempt) = record.trace.as_mut().and_then(|t| t.attempt.as_mut()) {
        attempt.endpoint = record.upstream;
    }
    plan.cluster.stats.slot(core.id).requests.inc();

    // 7. The client may send its body now.
    down.send_continue().await?;

    let replaying = !first && recording.as_ref().is_some_and(|r| !r.is_empty());
    let body_follows = !down.body_done() || replaying;
    // A route that retries tells each try its number and, for gRPC, the time left; with
    // tracing on, each try carries its own client span as the parent.
    let mut count = itoa::Buffer::new();
    let mut extra: [(&'static str, &[u8]); 2] = [(ATTEMPT_COUNT, b""), ("grpc-timeout", b"")];
    let extra: &[(&'static str, &[u8])] = if retries.has_policy() {
        extra[0].1 = count.format(record.attempts).as_bytes();
        let left = [
            plan.deadline
                .map(|deadline| deadline.saturating_duration_since(Instant::now())),
            retries.per_try_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        match left.filter(|_| plan.grpc) {
            Some(left) => {
                grpc_timeout_value(left, &mut scratch.grpc_timeout);
                extra[1].1 = &scratch.grpc_timeout;
                &extra
            }
            None => &extra[..1],
        }
    } else {
        &[]
    };
    // Rendered into a reused buffer here rather than kept on this future across the await:
    // every request's future would grow by the size of the headers.
    scratch.trace_fields.clear();
    if let Some(trace) = &record.trace {
        trace.outgoing().write_lines(&mut scratch.trace_fields);
    }
    upstream
        .send_head(
            &plan.request,
            &scratch.upstream_head,
            extra,
            &scratch.trace_fields,
            &mut scratch.pending,
            !body_follows,
        )
        .await?;
    let framing = match plan.request {
        UpstreamRequest::H1(framing) => framing,
        UpstreamRequest::H2(_) => BodyFraming::None,
    };

    // 8. Both directions at once.
    let stop = Signal::default();
    // Two different "done"s. `request_read`: the client's whole request body has been read (from
    // the start for a request without one) — until then an HTTP/1.1 response head says
    // `connection: close`, and a response that completes first ends the upload early.
    // `request_sent`: the whole request has been written upstream — until then the upstream
    // connection cannot be reused.
    let request_read = Cell::new(down.body_done());
    let client_h2 = matches!(down, Downstream::H2(_));
    let request_sent = Cell::new(false);
    // The response is read once the request head is out. Reading earlier gains nothing (the
    // upstream cannot answer a head it has not seen) and costs: a read that finds nothing arms a
    // poll in the kernel, which measured a third of HTTP/1.1 throughput. Once the head is out,
    // the response is read while the body still goes up (full duplex).
    let head_sent = Signal::default();
    if plan.wire == Wire::H2 {
        head_sent.fire();
    }
    let draining = core.is_draining();
    // The most request body bytes that can be sent again (a retry), `None` without a body.
    let kept = recording.as_ref().map(Recording::limit);
    let result = {
        let (mut down_in, mut down_out) = down.split(draining);
        let (mut sink, mut up_in) = upstream.split(&mut scratch.pending, framing);
        let response_log = &mut scratch.response_log;
        // Built in place (`pin!` of the expression), not moved: see `run`.
        let mut sending = std::pin::pin!(async {
            if replaying
                && let (Some(replay), Some(sink)) = (recording.as_ref(), sink.as_mut())
                && body::replay(replay, sink).await.is_err()
            {
                return SendEnd::UpstreamStopped;
            }
            if replaying {
                head_sent.fire();
            }
            if let (Some(mut source), Some(sink)) = (down_in.source(), sink.as_mut()) {
                let mut hooks = Hooks {
                    limit: plan.body_limit,
                    total: &progress.request_total,
                    activity: &progress.activity,
                    record: recording.as_mut(),
                    read_done: Some(&request_read),
                    wrote: Some(&head_sent),
                    grpc_status: None,
                };
                match body::pump(&mut source, sink, &mut hooks).await {
                    Ok(_) => {}
                    Err(body::PumpError::Sink(_)) => return SendEnd::UpstreamStopped,
                    Err(body::PumpError::TooLarge) => {
                        return SendEnd::Failed(Failure::BodyTooLarge);
                    }
                    Err(body::PumpError::Malformed(reason)) => {
                        return SendEnd::Failed(Failure::BadRequest(reason));
                    }
                    Err(body::PumpError::Source(_)) => {
                        return SendEnd::Failed(Failure::ClientGone);
                    }
                }
            } else if let Some(sink) = sink.as_mut()
                && body::flush(sink).await.is_err()
            {
                return SendEnd::UpstreamStopped;
            }
            head_sent.fire();
            request_sent.set(true);
            match down_in.watch_gone(&stop, &progress.watch).await {
                Ok(()) => SendEnd::Done,
                Err(failure) => SendEnd::Failed(failure),
            }
        });
        let mut receiving = std::pin::pin!(async {
            head_sent.wait().await;
            let outcome = receive(
                &mut up_in,
                &mut down_out,
                context,
                record,
                &request_read,
                kept,
                response_log,
            )
            .await;
            stop.fire();
            outcome
        });
        // Biased, response side first: when both sides finish in the same wake-up (a client
        // that closes right after reading its whole response), the completed response counts.
        monoio::select! {
            biased;
            received = &mut receiving => {
                // The response side ended first. A final write whose completion arrived in the
                // same batch as the response is taken in first, so a whole exchange is seen as
                // whole.
                let mut sent = None;
                if !request_sent.get() {
                    sent = poll_once(sending.as_mut()).await;
                }
                if request_sent.get() && sent.is_none() {
                    // Only watching the client now: `stop` ends that without losing a byte the
                    // client sent next.
                    let _ = sending.await;
                }
                if request_read.get() || client_h2 {
                    received
                } else {
                    // Abandoned mid-upload: a read from an HTTP/1.1 client may have been dropped
                    // with bytes in it, so the body is no longer whole and is not retried. (An
                    // HTTP/2 stream keeps its unread DATA: its upload resumes on a retry.)
                    received.map_err(no_retry)
                }
            }
            sent = &mut sending => match sent {
                SendEnd::Done => receiving.await,
                // The upstream stopped reading the request: it may have answered early (an
                // upload it refuses) — then that is relayed — or reset the request, and how it
                // did says whether a retry is safe.
                SendEnd::UpstreamStopped => receiving.await,
                // A client that closed right after reading its whole response is not a failure:
                // the response side may have finished in the same moment.
                SendEnd::Failed(failure) => match poll_once(receiving.as_mut()).await {
                    Some(Ok(received)) => Ok(received),
                    _ => Err(failure),
                },
            },
        }
    };
    if let Some(attempt) = record.trace.as_mut().and_then(|t| t.attempt.as_mut()) {
        attempt.status = match &result {
            Ok(Received::Discarded { status }) => *status,
            Ok(Received::Relayed { .. }) => record.status,
            Err(_) => 0,
        };
    }
    upstream.observe(
        plan.cluster,
        match &result {
            Ok(Received::Discarded { status }) => Ok(*status),
            Ok(Received::Relayed { .. }) => Ok(record.status),
            Err(failure) => Err(*failure),
        },
    );
    match result {
        Ok(Received::Relayed { tunnel: true }) => Ok(Attempted::Done(upstream.into_connection())),
        Ok(Received::Relayed { tunnel: false }) => {
            if !request_read.get() {
                // A complete answer to a request still uploading: the upload stops here.
                down.end_early();
            }
            upstream.finish(core, plan.cluster, request_sent.get());
            Ok(Attempted::Done(None))
        }
        // The unread response goes with its connection (HTTP/1.1) or stream (HTTP/2).
        Ok(Received::Discarded { .. }) => {
            upstream.finish(core, plan.cluster, false);
            Ok(Attempted::Discarded)
        }
        Err(failure) => {
            upstream.finish(core, plan.cluster, false);
            Err(failure)
        }
    }
}

/// Polls `future` once: its output if that completes it.
async fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut future = Some(future);
    std::future::poll_fn(|cx| {
        let polled = future
            .take()
            .map(|f| f.poll(cx))
            .unwrap_or(std::task::Poll::Pending);
        std::task::Poll::Ready(match polled {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// The same failure, not to be retried.
fn no_retry(failure: Failure) -> Failure {
    match failure {
        Failure::UpstreamReset { .. } => Failure::UpstreamReset { retry: Retry::No },
        other => other,
    }
}

/// How the response side of an attempt ended.
#[derive(Debug, Clone, Copy)]
enum Received {
    /// The response went to the client.
    Relayed {
        /// The upstream accepted an upgrade or CONNECT.
        tunnel: bool,
    },
    /// The response asked for a retry, which was granted: the client saw none of it.
    Discarded {
        /// Its status (outlier detection counts it).
        status: u16,
    },
}

/// The response side of an attempt: the head (while watching for the client giving up), then
/// the body. `request_read`: whether the client's whole request was read when the head arrived;
/// `kept`: how much of a request body is kept for a retry; `response_log`: where the headers of
/// the response the client gets are copied for the access log's `%RESP(...)%`.
#[allow(clippy::too_many_arguments)]
async fn receive<'s>(
    up_in: &mut UpIn<'_>,
    down_out: &mut DownOut<'_>,
    context: &Context<'_, 's>,
    record: &mut Record<'s>,
    request_read: &Cell<bool>,
    kept: Option<usize>,
    response_log: &mut Captured,
) -> Result<Received, Failure> {
    let Context {
        plan,
        progress,
        retries,
        ..
    } = *context;
    let head = monoio::select! {
        biased;
        read = up_in.read_head() => read,
        gone = down_out.gone() => Err(gone),
    };
    head?;
    let started = up_in.relay_head(plan.is_head, plan.is_connect, |head| {
        // A retriable answer is dropped here, before the client sees a byte of it, when the
        // whole request is at hand to send again.
        let request_whole = request_read.get()
            && kept.is_none_or(|kept| progress.request_total.get() <= kept as u64);
        let grpc_status = head
            .fields
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok());
        if retries.on_response(head.status, grpc_status, request_whole) {
            return Err(head.status);
        }
        record.status = head.status;
        response_log.capture_response(context.snapshot.access_log.as_ref(), |name| {
            head.fields.get(name)
        });
        // A trailers-only answer carries its status in the head; otherwise the trailers do.
        record.grpc_status = grpc_status.and_then(|s| u16::try_from(s).ok());
        Ok(down_out.start_response(head, &plan.route.response_headers, request_read.get()))
    })?;
    let started = match started {
        Ok(started) => started?,
        Err(status) => return Ok(Received::Discarded { status }),
    };
    progress.response_started.set(true);
    if started.body
        && let (Some(mut source), Some(mut sink)) = (up_in.source(), down_out.sink())
    {
        let mut hooks = Hooks {
            limit: None,
            total: &progress.response_total,
            activity: &progress.activity,
            record: None,
            read_done: None,
            wrote: None,
            grpc_status: Some(&progress.grpc_status),
        };
        body::pump(&mut source, &mut sink, &mut hooks)
            .await
            .map_err(|e| match e {
                body::PumpError::Sink(_) => Failure::ClientGone,
                body::PumpError::Malformed(reason) => Failure::UpstreamProtocol(reason),
                body::PumpError::Source(_) | body::PumpError::TooLarge => Failure::UpstreamAborted,
            })?;
    } else if let Some(mut sink) = down_out.sink() {
        // A head without a body (or a tunnel's 101/2xx) goes out now.
        body::flush(&mut sink)
            .await
            .map_err(|_| Failure::ClientGone)?;
    }
    Ok(Received::Relayed {
        tunnel: started.tunnel,
    })
}
