//! The HTTP/1.1 request path, read top to bottom.
//!
//! One downstream connection is served by [`serve`], one request after another (pipelined
//! requests are answered in order because they are processed in order). Each request goes through
//! these stages, in this order, in [`serve_request`]:
//!
//! 1. **read head** — bytes until CRLF CRLF, under the listener's size limits and header timeout;
//!    framing violations are refused as soon as they are seen.
//! 2. **parse and validate** — strict framing policy (`h1`); anything ambiguous is a 4xx and the
//!    connection closes, before a single byte goes upstream.
//! 3. **route** — virtual host by Host, then the route by path/method/headers/query, on the
//!    snapshot current *now* (keep-alive connections see reloads at once).
//! 4. **local actions** — redirect and direct response answer here.
//! 5. **cluster and endpoint** — weighted split, then the cluster's load balancer.
//! 6. **upstream connection** — a pooled keep-alive connection, or a new one (connect timeout,
//!    next endpoint on failure).
//! 7. **send request** — the rewritten head and the body bytes already read go out in one write;
//!    the rest of the body is streamed (never buffered whole).
//! 8. **receive response** — head parsed strictly (a malformed one is a 502 and the connection is
//!    dropped), rewritten, and sent with the first body bytes in one write; the body is streamed.
//! 9. **account** — access log, route and cluster metrics; the upstream connection goes back to
//!    the pool only after a complete exchange.
//!
//! Upgrade (WebSocket) and CONNECT requests leave this loop for a byte tunnel, but only after the
//! upstream answered 101 or 2xx: no client byte after the request head is forwarded before that.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::net::TcpStream;
use tracing::debug;

use super::h1::{self, BodyFraming, Reject};
use super::h1_upstream::{
    ResponseError, checkout, peek_status, read_response_head, retry_on_fresh_connection,
};
use super::head::{self, Forwarding, LocalReply, RequestHead, ResponseFraming, ResponseHead};
use super::io::{self, BodyCopy, BodyError};
use super::pool::Connection;
use crate::access_log::{Entry, ResponseFlags};
use crate::http::bridge::{self, PumpError};
use crate::http::h2::client::H2ClientLimits;
use crate::routing::{H1Request, NoRoute, Route, RouteAction, shadow_host};
use crate::snapshot::{Cluster, HttpSettings, Listener, Snapshot, SnapshotRef};
use crate::worker::Core;
use config_schema::UpstreamProtocol;

/// Header fields parsed without touching the heap; larger limits use a heap array.
const STACK_HEADERS: usize = 128;
/// Initial capacity of a connection's read buffer.
const READ_BUFFER: usize = 8 * 1024;
/// How long an idle keep-alive connection of a draining worker waits for one more request.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Largest request body copied for a mirror; bigger bodies are not mirrored.
const MIRROR_BODY_LIMIT: usize = 1024 * 1024;

/// What happens to the connection after a request.
enum After {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// The upstream accepted an upgrade or CONNECT: splice the two connections together.
    Tunnel(Connection),
}

/// The client side of one connection.
struct Downstream {
    stream: TcpStream,
    /// Bytes read and not yet consumed; a request head starts at 0.
    buf: Vec<u8>,
    /// How much of `buf` the framing pre-scan has checked.
    scanned: usize,
    peer: SocketAddr,
    /// The client's IP as text, for `X-Forwarded-For`.
    peer_ip: Vec<u8>,
    /// When protocol detection saw the first byte of the first request: its head deadline counts
    /// from then, not from the hand-over.
    first_byte_at: Option<Instant>,
}

/// Buffers reused by every request on a connection, so a request allocates nothing once they
/// have grown.
#[derive(Default)]
struct Scratch {
    /// The head being sent (upstream request, then downstream response).
    head: Vec<u8>,
    /// A rewritten path, a redirect location.
    path: Vec<u8>,
    /// Access-log copies of request fields (the read buffer moves on before logging).
    method: String,
    authority: String,
    target: String,
    request_id: Vec<u8>,
}

/// Serves HTTP/1.1 on `stream` until the client closes, an error closes it, or it becomes a
/// tunnel. `initial` holds bytes already read by protocol detection, the first of which arrived
/// at `first_byte_at`.
pub async fn serve(
    core: Rc<Core>,
    pinned: SnapshotRef,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    initial: Vec<u8>,
    first_byte_at: Option<Instant>,
) {
    let mut buf = initial;
    buf.reserve(READ_BUFFER.saturating_sub(buf.len()));
    let peer_ip = peer.ip().to_string().into_bytes();
    let mut downstream = Downstream {
        stream,
        buf,
        scanned: 0,
        peer,
        peer_ip,
        first_byte_at,
    };
    let mut scratch = Scratch::default();
    loop {
        match serve_request(&core, &pinned, &listener, &mut downstream, &mut scratch).await {
            After::KeepAlive => continue,
            After::Close => return,
            After::Tunnel(upstream) => {
                tunnel(&core, &listener, downstream, upstream).await;
                return;
            }
        }
    }
}

/// One request, start to end. The stages are numbered as in the module docs.
async fn serve_request(
    core: &Rc<Core>,
    pinned: &SnapshotRef,
    listener_name: &str,
    down: &mut Downstream,
    scratch: &mut Scratch,
) -> After {
    // 1. Read the head, under the limits of the listener as configured now.
    let head = {
        let (snapshot, removed) = snapshot_for(core, pinned, listener_name);
        if removed && down.buf.is_empty() {
            // A reload removed the listener: its keep-alive connections close between requests.
            return After::Close;
        }
        let Some(http) = snapshot
            .listener(listener_name)
            .and_then(|l| l.http.as_ref())
        else {
            return After::Close;
        };
        match read_request_head(core, down, http).await {
            Ok(head) => head,
            Err(HeadError::Closed) => return After::Close,
            Err(HeadError::Reject(reject)) => {
                let flags = ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
                reply_and_close(core, down, scratch, reject.status, reject.reason, flags).await;
                return After::Close;
            }
            Err(HeadError::Timeout) => {
                let flags = ResponseFlags::DOWNSTREAM_TIMEOUT;
                reply_and_close(core, down, scratch, 408, "request header timeout", flags).await;
                return After::Close;
            }
        }
    };
    let started = Instant::now();
    let (snapshot, removed) = snapshot_for(core, pinned, listener_name);
    let Some(listener) = snapshot.listener(listener_name) else {
        return After::Close;
    };
    let Some(http) = listener.http.as_ref() else {
        return After::Close;
    };

    // 2–5. Parse, validate, route and decide, synchronously over the read buffer.
    let mut plan = match plan_request(core, &snapshot, listener, http, down, head, scratch) {
        Ok(plan) => plan,
        Err(reject) => {
            let flags = ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            reply_and_close(core, down, scratch, reject.status, reject.reason, flags).await;
            return After::Close;
        }
    };
    down.buf.drain(..head.len());
    down.scanned = 0;
    if removed {
        // Answered on the config the connection arrived under, then closed.
        plan.keep_alive = false;
    }

    let mut exchange = Exchange::new(core, started, &plan);
    let after = match plan.action {
        Action::Reply {
            status,
            body,
            content_type,
            location,
        } => {
            let close = plan.framing != BodyFraming::None || !plan.keep_alive || core.is_draining();
            exchange.status = status;
            let reply = LocalReply {
                status,
                body,
                content_type,
                location: location.then_some(&scratch.path[..]),
                close,
                head_only: plan.is_head,
                request_id: &scratch.request_id,
            };
            head::write_local_reply(&mut scratch.head, &reply);
            exchange.bytes_sent = if plan.is_head { 0 } else { body.len() as u64 };
            let written = io::write_all(&mut down.stream, &mut scratch.head).await;
            if written.is_ok() && !close {
                After::KeepAlive
            } else {
                After::Close
            }
        }
        Action::Forward {
            route,
            cluster,
            hash,
        } => {
            forward(
                core,
                &snapshot,
                listener,
                http,
                route,
                cluster,
                hash,
                &plan,
                down,
                scratch,
                &mut exchange,
            )
            .await
        }
    };
    record(core, &snapshot, &plan, down.peer, scratch, &exchange);
    after
}

/// The current snapshot if it still has the listener, else the one the connection was accepted
/// on (`pinned`), with `true` to say the listener was removed by a reload.
fn snapshot_for(core: &Core, pinned: &SnapshotRef, listener_name: &str) -> (SnapshotRef, bool) {
    let current = core.snapshot();
    if current.listener(listener_name).is_some() {
        (current, false)
    } else {
        (pinned.clone(), true)
    }
}

/// Why no request head could be read.
enum HeadError {
    /// The client closed (or reset) the connection between requests: nothing to answer.
    Closed,
    /// The head broke a limit or the framing policy.
    Reject(Reject),
    /// The head did not arrive within the header timeout.
    Timeout,
}

/// Stage 1: reads until the head is complete. Waiting for the first byte of a request is bounded
/// by the idle timeout (and ends early when the worker drains); once a byte has arrived, the rest
/// of the head must come within the header timeout, counted from that byte (for the first
/// request, from when protocol detection saw it).
async fn read_request_head(
    core: &Core,
    down: &mut Downstream,
    http: &HttpSettings,
) -> Result<h1::Head, HeadError> {
    let mut deadline: Option<Instant> = None;
    // Only the connection's first request was seen by detection.
    let first_byte_at = down.first_byte_at.take();
    loop {
        if !down.buf.is_empty() {
            match h1::prescan(&down.buf, down.scanned).map_err(HeadError::Reject)? {
                h1::Scan::Complete(head) => return Ok(head),
                h1::Scan::Partial(scanned) => down.scanned = scanned,
            }
            h1::check_incomplete(&down.buf, &http.limits).map_err(HeadError::Reject)?;
            deadline.get_or_insert_with(|| {
                first_byte_at.unwrap_or_else(Instant::now) + http.request_header_timeout
            });
        }
        let wait = match deadline {
            Some(deadline) => Some(deadline.saturating_duration_since(Instant::now())),
            None => http.idle_timeout,
        };
        let read = if deadline.is_some() {
            io::read_more_within(&mut down.stream, &mut down.buf, READ_BUFFER, wait).await
        } else if core.is_draining() {
            // Between requests while draining: a request may already be on its way, so wait a
            // short grace for it (it is answered with `connection: close`) rather than closing the
            // connection under it, which would reset it.
            let grace = wait.map_or(DRAIN_IDLE_GRACE, |w| w.min(DRAIN_IDLE_GRACE));
            match io::read_more_within(&mut down.stream, &mut down.buf, READ_BUFFER, Some(grace))
                .await
            {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(HeadError::Closed);
                }
                read => read,
            }
        } else {
            // Between requests; when the worker starts draining, look again (grace above).
            let stop = &core.draining;
            match io::read_more_until(&mut down.stream, &mut down.buf, READ_BUFFER, wait, stop)
                .await
            {
                Err(e) if e.raw_os_error() == Some(io::STOPPED) => continue,
                read => read,
            }
        };
        match read {
            Ok(0) if down.buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Reject(Reject {
                    status: 400,
                    reason: "incomplete request head",
                }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && deadline.is_some() => {
                return Err(HeadError::Timeout);
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// What the proxy decided to do with a request.
struct Plan<'s> {
    action: Action<'s>,
    /// The route that matched, if any (local actions have one too).
    route: Option<&'s Route>,
    /// How the request body is framed.
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    /// Upgrade or CONNECT.
    upgrade: bool,
    is_head: bool,
    is_connect: bool,
    minor_version: u8,
    body_limit: Option<u64>,
    /// The mirror request's head and the cluster to send it to, when this request is mirrored.
    mirror: Option<(usize, Vec<u8>)>,
}

enum Action<'s> {
    /// Answer locally.
    Reply {
        status: u16,
        body: &'s [u8],
        content_type: &'s str,
        location: bool,
    },
    /// Forward to an endpoint of `cluster`, chosen with `hash` for hashing policies.
    Forward {
        route: &'s Route,
        cluster: &'s Cluster,
        hash: Option<u64>,
    },
}

/// Stages 2–5: parse and validate the head, route it, and write the upstream head into
/// `scratch.head` when forwarding. Synchronous: it borrows the read buffer.
fn plan_request<'s>(
    core: &Core,
    snapshot: &'s Snapshot,
    listener: &'s Listener,
    http: &'s HttpSettings,
    down: &Downstream,
    head: h1::Head,
    scratch: &mut Scratch,
) -> Result<Plan<'s>, Reject> {
    // 2. Parse and validate.
    let mut stack_headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap_headers;
    let storage: &mut [httparse::Header<'_>] = if http.limits.max_headers <= STACK_HEADERS {
        &mut stack_headers[..]
    } else {
        heap_headers = vec![httparse::EMPTY_HEADER; http.limits.max_headers];
        &mut heap_headers[..]
    };
    let request = h1::parse_request(&down.buf, head, storage, &http.limits)?;
    remember_for_log(scratch, &request, core);

    let mut plan = Plan {
        action: Action::Reply {
            status: 404,
            body: b"no route\n",
            content_type: "text/plain",
            location: false,
        },
        route: None,
        framing: request.body,
        keep_alive: request.keep_alive,
        expect_continue: request.expect_continue,
        upgrade: request.upgrade,
        is_head: request.is_head(),
        is_connect: request.is_connect(),
        minor_version: request.minor_version,
        body_limit: None,
        mirror: None,
    };

    // 3. Route, on the snapshot current now.
    let view = H1Request {
        method: request.method.as_bytes(),
        host: request.authority.as_bytes(),
        path: request.path.as_bytes(),
        query: request.query.unwrap_or_default().as_bytes(),
        headers: request.headers,
    };
    let matched = match &http.routes {
        Some(table) => table.find(&view, &mut core.match_scratch.borrow_mut()),
        None => Err(NoRoute::NoVirtualHost),
    };
    let route = match matched {
        Ok(found) => found.route,
        Err(_) => return Ok(plan),
    };
    plan.route = Some(route);

    // The body limit: the route's, else the listener's; 0 means unlimited.
    let limit = route.max_request_body.unwrap_or(http.max_request_body);
    plan.body_limit = (limit > 0).then_some(limit);
    if let (BodyFraming::Length(n), Some(limit)) = (request.body, plan.body_limit)
        && n > limit
    {
        return Err(Reject {
            status: 413,
            reason: "request body too large",
        });
    }

    // 4. Local actions.
    let cluster_index = match &route.action {
        RouteAction::Redirect(redirect) => {
            redirect.write_location("http", view.host, view.path, view.query, &mut scratch.path);
            plan.action = Action::Reply {
                status: redirect.status,
                body: b"",
                content_type: "text/plain",
                location: true,
            };
            return Ok(plan);
        }
        RouteAction::DirectResponse(direct) => {
            plan.action = Action::Reply {
                status: direct.status,
                body: &direct.body,
                content_type: &direct.content_type,
                location: false,
            };
            return Ok(plan);
        }
        RouteAction::Cluster(_) | RouteAction::WeightedClusters(_) => {
            // 5. Cluster: the weighted pick uses the top bits of one random number, the mirror
            // sample the low bits.
            let random = core.random();
            let Some(index) = route.pick_cluster(random) else {
                return Ok(plan);
            };
            if let Some(mirror) = &route.mirror
                && mirror.share.sample(random)
                && !request.upgrade
            {
                plan.mirror = Some((mirror.cluster, Vec::new()));
            }
            index
        }
    };
    let cluster = &snapshot.clusters[cluster_index];
    let hash = cluster.balancer.request_hash(&view, down.peer.ip());

    // The upstream head: rewritten path, filtered headers, forwarding headers, canonical framing.
    let path_and_query: &[u8] = match &route.rewrite {
        Some(rewrite) => {
            rewrite.write(view.path, view.query, &mut scratch.path);
            &scratch.path
        }
        None if request.target.starts_with('/') => request.target.as_bytes(),
        None => {
            // Absolute form: send origin form.
            scratch.path.clear();
            scratch.path.extend_from_slice(view.path);
            if !view.query.is_empty() {
                scratch.path.push(b'?');
                scratch.path.extend_from_slice(view.query);
            }
            &scratch.path
        }
    };
    // HTTP/1.0 clients may send no Host; the upstream request is HTTP/1.1 and needs one, so it
    // gets the address the client connected to.
    let host: &[u8] = if view.host.is_empty() {
        use std::fmt::Write as _;
        let _ = write!(scratch.authority, "{}", listener.local_addr);
        scratch.authority.as_bytes()
    } else {
        view.host
    };
    let upgrade_value = if request.upgrade && !request.is_connect() {
        request.header("upgrade")
    } else {
        None
    };
    let upstream_head = RequestHead {
        method: request.method,
        path_and_query: if request.is_connect() {
            request.target.as_bytes()
        } else {
            path_and_query
        },
        host,
        headers: request.headers,
        connection_tokens: request.connection_tokens,
        body: request.body,
        upgrade: upgrade_value,
        mutation: &route.request_headers,
        forwarding: Forwarding {
            peer: &down.peer_ip,
            proto: "http",
            trust_proto: http.xff_trusted_hops > 0,
            request_id: &scratch.request_id,
        },
    };
    head::write_request_head(&mut scratch.head, &upstream_head);
    if let Some((_, mirror_head)) = plan.mirror.as_mut() {
        let mut shadow = Vec::with_capacity(view.host.len() + 8);
        shadow_host(view.host, &mut shadow);
        let mirror_request = RequestHead {
            host: &shadow,
            ..upstream_head
        };
        head::write_request_head(mirror_head, &mirror_request);
    }
    plan.action = Action::Forward {
        route,
        cluster,
        hash,
    };
    let _ = listener;
    Ok(plan)
}

/// Copies the request fields the access log needs, and settles the request id: the client's if it
/// sent a sane one, a fresh UUID otherwise.
fn remember_for_log(scratch: &mut Scratch, request: &h1::Request<'_>, core: &Core) {
    scratch.method.clear();
    scratch.method.push_str(request.method);
    scratch.authority.clear();
    scratch.authority.push_str(request.authority);
    scratch.target.clear();
    scratch.target.push_str(request.target);
    scratch.request_id.clear();
    match request.header("x-request-id") {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.iter().all(|b| b.is_ascii_graphic()) =>
        {
            scratch.request_id.extend_from_slice(id);
        }
        _ => core.write_uuid(&mut scratch.request_id),
    }
}

/// What happened to one request, for the access log and metrics. Borrows names from the
/// snapshot rather than cloning `Arc`s: no shared reference count is touched per request.
struct Exchange<'s> {
    started: Instant,
    /// Wall-clock start, only read when an access log is configured.
    wall_start: Option<SystemTime>,
    status: u16,
    bytes_received: u64,
    /// The whole request body was read from the client.
    request_body_done: bool,
    /// The proxy answered (an error) instead of the upstream.
    locally_answered: bool,
    bytes_sent: u64,
    upstream: Option<SocketAddr>,
    route: Option<&'s Route>,
    cluster: Option<&'s Cluster>,
    flags: ResponseFlags,
}

impl<'s> Exchange<'s> {
    fn new(core: &Core, started: Instant, plan: &Plan<'s>) -> Self {
        let cluster = match &plan.action {
            Action::Forward { cluster, .. } => Some(*cluster),
            Action::Reply { .. } => None,
        };
        let mut flags = ResponseFlags::default();
        if plan.route.is_none() {
            flags.insert(ResponseFlags::NO_ROUTE);
        }
        let wall_start = core.access_log.borrow().enabled().then(SystemTime::now);
        Self {
            started,
            wall_start,
            status: 0,
            bytes_received: 0,
            request_body_done: false,
            locally_answered: false,
            bytes_sent: 0,
            upstream: None,
            route: plan.route,
            cluster,
            flags,
        }
    }
}

/// Stages 6–8 for a forwarded request.
#[allow(clippy::too_many_arguments)]
async fn forward(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    listener: &Listener,
    http: &HttpSettings,
    route: &Route,
    cluster: &Cluster,
    hash: Option<u64>,
    plan: &Plan<'_>,
    down: &mut Downstream,
    scratch: &mut Scratch,
    exchange: &mut Exchange<'_>,
) -> After {
    if cluster.protocol == UpstreamProtocol::H2 {
        return forward_to_h2(
            core, snapshot, cluster, route, hash, plan, down, scratch, exchange,
        )
        .await;
    }
    let counters = cluster.stats.slot(core.id);
    let limits = cluster.pool;

    // 6. An upstream connection: pooled if one is idle, else a new one. The in-flight guard
    // feeds least-request balancing until the exchange ends.
    let (mut upstream, _in_flight) = match checkout(core, snapshot, cluster, hash, &limits).await {
        Ok(found) => found,
        Err(failure) => {
            exchange.flags.insert(failure.flag());
            return reply_error(
                core,
                down,
                scratch,
                exchange,
                failure.status(),
                failure.reason(),
                plan,
            )
            .await;
        }
    };
    exchange.upstream = Some(upstream.endpoint());
    counters.requests.inc();
    if upstream.reuses > 0 {
        counters.pool_reuse.inc();
    }

    // 7. Send the request. The client waits for our 100 Continue before sending its body.
    if plan.expect_continue {
        scratch.path.clear();
        scratch
            .path
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if io::write_all(&mut down.stream, &mut scratch.path)
            .await
            .is_err()
        {
            exchange
                .flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            return After::Close;
        }
    }
    let mut mirror_body = plan
        .mirror
        .as_ref()
        .map(|_| Vec::with_capacity(MIRROR_BODY_LIMIT));
    // A bodiless request on a pooled connection can be sent again if the upstream turns out to
    // have closed that connection: `scratch.head` still holds its head until the response arrives.
    let retryable = plan.framing == BodyFraming::None && upstream.reuses > 0;
    let sent = io::copy_body(
        &mut down.stream,
        &mut down.buf,
        &mut upstream.stream,
        &mut scratch.head,
        BodyCopy {
            framing: plan.framing,
            limit: plan.body_limit,
            read_timeout: http.idle_timeout,
            dechunk: false,
            tee: mirror_body.as_mut(),
        },
    )
    .await;
    match sent {
        Ok(bytes) => {
            exchange.bytes_received = bytes;
            exchange.request_body_done = true;
        }
        Err(BodyError::TooLarge) => {
            // The upstream got part of a body but never a complete request: drop its connection.
            drop(upstream);
            return reply_error(
                core,
                down,
                scratch,
                exchange,
                413,
                "request body too large",
                plan,
            )
            .await;
        }
        Err(BodyError::Malformed(e)) => {
            drop(upstream);
            exchange
                .flags
                .insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
            return reply_error(core, down, scratch, exchange, 400, e.0, plan).await;
        }
        Err(BodyError::SourceClosed | BodyError::Source(_)) => {
            exchange
                .flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            return After::Close;
        }
        Err(BodyError::Destination(e)) => {
            debug!(error = %e, endpoint = %upstream.endpoint(), "upstream write failed");
            let retry = retryable.then_some(&mut scratch.head);
            match retry_on_fresh_connection(core, snapshot, cluster, hash, &limits, retry).await {
                Some(fresh) => upstream = fresh,
                None => {
                    exchange
                        .flags
                        .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
                    return reply_error(
                        core,
                        down,
                        scratch,
                        exchange,
                        502,
                        "upstream connection failed",
                        plan,
                    )
                    .await;
                }
            }
        }
    }
    if let (Some((mirror_cluster, mirror_head)), Some(body)) = (&plan.mirror, mirror_body) {
        send_mirror(core, snapshot, *mirror_cluster, mirror_head, body);
    }

    // 8. Receive the response head (1xx interim answers other than 101 are passed over: the
    // proxy already answered Expect itself).
    let deadline = route.timeout.map(|t| exchange.started + t);
    let head_len = loop {
        match read_response_head(&mut upstream, deadline).await {
            Ok(head_len) => {
                let status = peek_status(&upstream.buf[..head_len]);
                if (100..200).contains(&status) && status != 101 {
                    upstream.buf.drain(..head_len);
                    continue;
                }
                break head_len;
            }
            Err(ResponseError::Closed) if retryable && upstream.reuses > 0 => {
                // A pooled connection the upstream had already closed: nothing was processed, so
                // send the bodiless request again on a fresh connection.
                match retry_on_fresh_connection(
                    core,
                    snapshot,
                    cluster,
                    hash,
                    &limits,
                    Some(&mut scratch.head),
                )
                .await
                {
                    Some(fresh) => {
                        exchange.upstream = Some(fresh.endpoint());
                        upstream = fresh;
                        continue;
                    }
                    None => {
                        exchange
                            .flags
                            .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
                        return reply_error(
                            core,
                            down,
                            scratch,
                            exchange,
                            502,
                            "upstream closed the connection",
                            plan,
                        )
                        .await;
                    }
                }
            }
            Err(error) => {
                let (status, reason, flag) = error.reply();
                if flag == ResponseFlags::UPSTREAM_TIMEOUT {
                    counters.timeouts.inc();
                } else if flag == ResponseFlags::UPSTREAM_PROTOCOL_ERROR {
                    counters.protocol_errors.inc();
                }
                exchange.flags.insert(flag);
                return reply_error(core, down, scratch, exchange, status, reason, plan).await;
            }
        }
    };

    let draining = core.is_draining();
    let (response_framing, downstream_keep_alive, upstream_keep_alive, status, tunnel_ok) = {
        let mut storage = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
        let response = match h1::parse_response(
            &upstream.buf,
            head_len,
            &mut storage,
            plan.is_head,
            plan.is_connect,
        ) {
            Ok(response) => response,
            Err(h1::MalformedResponse(reason)) => {
                counters.protocol_errors.inc();
                exchange
                    .flags
                    .insert(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);
                return reply_error(core, down, scratch, exchange, 502, reason, plan).await;
            }
        };
        let tunnel_ok = plan.upgrade
            && ((response.status == 101 && !plan.is_connect)
                || (plan.is_connect && (200..300).contains(&response.status)));
        if response.status == 101 && !tunnel_ok {
            counters.protocol_errors.inc();
            exchange
                .flags
                .insert(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);
            return reply_error(
                core,
                down,
                scratch,
                exchange,
                502,
                "unexpected 101 response",
                plan,
            )
            .await;
        }
        // HTTP/1.0 clients cannot read chunked framing: decode it and end the body by closing.
        let client_10 = plan.minor_version == 0;
        let framing = match response.body {
            BodyFraming::None => ResponseFraming::NoBody,
            BodyFraming::Length(n) => ResponseFraming::Length(n),
            BodyFraming::Chunked if client_10 => ResponseFraming::UntilClose,
            BodyFraming::Chunked => ResponseFraming::Chunked,
            BodyFraming::UntilClose => ResponseFraming::UntilClose,
        };
        let keep_alive =
            plan.keep_alive && !draining && framing != ResponseFraming::UntilClose && !tunnel_ok;
        let connection = match (keep_alive, client_10) {
            _ if tunnel_ok => None,
            (false, _) => Some("close"),
            (true, true) => Some("keep-alive"),
            (true, false) => None,
        };
        let upgrade = if tunnel_ok && response.status == 101 {
            h1::find_header(response.headers, "upgrade")
        } else {
            None
        };
        head::write_response_head(
            &mut scratch.head,
            &ResponseHead {
                status: response.status,
                reason: if response.reason.is_empty() {
                    head::reason_phrase(response.status)
                } else {
                    response.reason
                },
                headers: response.headers,
                connection_tokens: response.connection_tokens,
                framing,
                mutation: &route.response_headers,
                connection,
                upgrade,
            },
        );
        (
            response.body,
            keep_alive,
            response.keep_alive,
            response.status,
            tunnel_ok,
        )
    };
    upstream.buf.drain(..head_len);
    exchange.status = status;
    counters.response(status);

    if tunnel_ok {
        // The 101/2xx head goes out now; whatever the upstream sent after it, and whatever the
        // client sent after its request, is forwarded by the tunnel.
        if io::write_all(&mut down.stream, &mut scratch.head)
            .await
            .is_err()
        {
            exchange
                .flags
                .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            return After::Close;
        }
        return After::Tunnel(upstream);
    }

    let response_deadline_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let copied = io::copy_body(
        &mut upstream.stream,
        &mut upstream.buf,
        &mut down.stream,
        &mut scratch.head,
        BodyCopy {
            framing: response_framing,
            limit: None,
            read_timeout: response_deadline_left.or(listener.idle_timeout),
            dechunk: plan.minor_version == 0 && response_framing == BodyFraming::Chunked,
            tee: None,
        },
    )
    .await;
    match copied {
        Ok(bytes) => exchange.bytes_sent = bytes,
        Err(error) => {
            let flag = match error {
                BodyError::Destination(_) => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                BodyError::Malformed(_) => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
                _ => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            };
            exchange.flags.insert(flag);
            // The client got a head and part of a body: closing is the only honest signal left.
            return After::Close;
        }
    }

    // 9. The upstream connection goes back to the pool only after a complete exchange on both
    // sides, with nothing unread; anything else closes it.
    if upstream_keep_alive && upstream.buf.is_empty() {
        core.pool.release(upstream, &limits);
    }
    if downstream_keep_alive {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Answers a forwarded request with a local error. The connection stays open only if the request
/// body was fully read (or there was none) and the client wants it open.
async fn reply_error(
    core: &Core,
    down: &mut Downstream,
    scratch: &mut Scratch,
    exchange: &mut Exchange<'_>,
    status: u16,
    reason: &str,
    plan: &Plan<'_>,
) -> After {
    let body_settled = plan.framing == BodyFraming::None || exchange.request_body_done;
    let close = !body_settled || !plan.keep_alive || core.is_draining();
    exchange.status = status;
    exchange.locally_answered = true;
    let mut body = Vec::with_capacity(reason.len() + 1);
    body.extend_from_slice(reason.as_bytes());
    body.push(b'\n');
    let reply = LocalReply {
        status,
        body: &body,
        content_type: "text/plain",
        location: None,
        close,
        head_only: plan.is_head,
        request_id: &scratch.request_id,
    };
    head::write_local_reply(&mut scratch.head, &reply);
    exchange.bytes_sent = if plan.is_head { 0 } else { body.len() as u64 };
    let written = io::write_all(&mut down.stream, &mut scratch.head).await;
    if written.is_ok() && !close {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Answers a request that could not be parsed, logs it, and leaves the connection to be closed.
async fn reply_and_close(
    core: &Core,
    down: &mut Downstream,
    scratch: &mut Scratch,
    status: u16,
    reason: &str,
    flags: ResponseFlags,
) {
    let mut body = reason.as_bytes().to_vec();
    body.push(b'\n');
    let reply = LocalReply {
        status,
        body: &body,
        content_type: "text/plain",
        location: None,
        close: true,
        head_only: false,
        request_id: b"",
    };
    head::write_local_reply(&mut scratch.head, &reply);
    let _ = io::write_all(&mut down.stream, &mut scratch.head).await;
    let mut log = core.access_log.borrow_mut();
    if log.enabled() {
        log.record(&Entry {
            start: SystemTime::now(),
            method: "",
            authority: "",
            path: "",
            protocol: "HTTP/1.1",
            status,
            bytes_received: 0,
            bytes_sent: body.len() as u64,
            duration: Duration::ZERO,
            upstream: None,
            route: "",
            cluster: "",
            flags,
            request_id: "",
            downstream: down.peer,
        });
    }
}

/// Stage 9: metrics and the access log.
fn record(
    core: &Core,
    snapshot: &Snapshot,
    plan: &Plan<'_>,
    peer: SocketAddr,
    scratch: &Scratch,
    exchange: &Exchange<'_>,
) {
    let duration = exchange.started.elapsed();
    crate::http::record_metrics(
        core,
        snapshot,
        exchange.route,
        exchange.cluster,
        exchange.status,
        exchange.locally_answered,
        duration,
    );
    let mut log = core.access_log.borrow_mut();
    if !log.enabled() {
        return;
    }
    log.record(&Entry {
        start: exchange.wall_start.unwrap_or_else(SystemTime::now),
        method: &scratch.method,
        authority: &scratch.authority,
        path: &scratch.target,
        protocol: if plan.minor_version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        },
        status: exchange.status,
        bytes_received: exchange.bytes_received,
        bytes_sent: exchange.bytes_sent,
        duration,
        upstream: exchange.upstream,
        route: exchange.route.map_or("", |r| &*r.name),
        cluster: exchange.cluster.map_or("", |c| &*c.name),
        flags: exchange.flags,
        request_id: std::str::from_utf8(&scratch.request_id).unwrap_or_default(),
        downstream: peer,
    });
}

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends a copy of the request to the shadow cluster on its own task. Its outcome never reaches
/// the client: failures only show in the shadow cluster's counters.
fn send_mirror(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    cluster: usize,
    head: &[u8],
    body: Vec<u8>,
) {
    let core = Rc::clone(core);
    let snapshot = snapshot.clone();
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head);
    request.extend_from_slice(&body);
    monoio::spawn(crate::contain::contained("mirror", async move {
        let Some(cluster) = snapshot.clusters.get(cluster) else {
            return;
        };
        let exchange = async {
            let (mut connection, _in_flight) =
                checkout(&core, &snapshot, cluster, None, &cluster.pool)
                    .await
                    .ok()?;
            cluster.stats.slot(core.id).requests.inc();
            io::write_all(&mut connection.stream, &mut request)
                .await
                .ok()?;
            let head_len = read_response_head(&mut connection, None).await.ok()?;
            let (framing, reusable, status) = {
                let mut storage = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
                let response =
                    h1::parse_response(&connection.buf, head_len, &mut storage, false, false)
                        .ok()?;
                (response.body, response.keep_alive, response.status)
            };
            connection.buf.drain(..head_len);
            cluster.stats.slot(core.id).response(status);
            io::discard_body(&mut connection.stream, &mut connection.buf, framing)
                .await
                .ok()?;
            if reusable && connection.buf.is_empty() {
                core.pool.release(connection, &cluster.pool);
            }
            Some(())
        };
        let _ = monoio::time::timeout(MIRROR_TIMEOUT, exchange).await;
    }));
}

/// Joins the client and upstream connections after a 101 or a 2xx to CONNECT, forwarding first
/// whatever each side sent after its head.
async fn tunnel(core: &Core, listener_name: &str, mut down: Downstream, upstream: Connection) {
    let snapshot = core.snapshot();
    let Some(listener) = snapshot.listener(listener_name) else {
        return;
    };
    let (mut upstream_stream, mut upstream_leftover, slot) = upstream.into_parts();
    if !down.buf.is_empty()
        && io::write_all(&mut upstream_stream, &mut down.buf)
            .await
            .is_err()
    {
        return;
    }
    if !upstream_leftover.is_empty()
        && io::write_all(&mut down.stream, &mut upstream_leftover)
            .await
            .is_err()
    {
        return;
    }
    let counters = listener.stats.workers.slot(core.id);
    let outcome = crate::l4::copy::bidirectional(
        down.stream,
        upstream_stream,
        listener.idle_timeout,
        counters,
    )
    .await;
    if let Err(e) = outcome {
        debug!(error = %e, "tunnel ended");
    }
    drop(slot);
}

/// Stages 6–8 toward an HTTP/2 cluster: the HTTP/1.1 request becomes a stream on a pooled
/// multiplexed connection, and the HTTP/2 response is written back as HTTP/1.1 (chunked, with
/// its trailers, when its length is not known).
#[allow(clippy::too_many_arguments)]
async fn forward_to_h2(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    cluster: &Cluster,
    route: &Route,
    hash: Option<u64>,
    plan: &Plan<'_>,
    down: &mut Downstream,
    scratch: &mut Scratch,
    exchange: &mut Exchange<'_>,
) -> After {
    let counters = cluster.stats.slot(core.id);
    if plan.upgrade {
        counters.protocol_errors.inc();
        return reply_error(
            core,
            down,
            scratch,
            exchange,
            502,
            "upgrade is not supported toward an HTTP/2 cluster",
            plan,
        )
        .await;
    }
    // The head for the upstream was written as HTTP/1.1 (forwarding headers and route changes
    // applied); it is re-read into an HTTP/2 request.
    let Some(request) = h2_request_from_head(&scratch.head) else {
        return reply_error(
            core,
            down,
            scratch,
            exchange,
            400,
            "request cannot be sent over HTTP/2",
            plan,
        )
        .await;
    };
    let limits = H2ClientLimits {
        max_streams: cluster.h2.max_streams,
        max_connections: cluster.pool.max_connections,
        connect_timeout: cluster.connect_timeout,
    };
    let ends_here = plan.framing == BodyFraming::None;
    if plan.expect_continue {
        scratch.path.clear();
        scratch
            .path
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if io::write_all(&mut down.stream, &mut scratch.path)
            .await
            .is_err()
        {
            return After::Close;
        }
    }
    // A bodiless request that an upstream refused unprocessed (GOAWAY after a connection's last
    // stream, REFUSED_STREAM) is sent once more, on a fresh connection.
    let mut request = Some(request);
    let mut attempt = 0;
    let (response, _in_flight) = loop {
        attempt += 1;
        let Some(request) = request
            .take()
            .or_else(|| h2_request_from_head(&scratch.head))
        else {
            return reply_error(
                core,
                down,
                scratch,
                exchange,
                400,
                "request cannot be sent over HTTP/2",
                plan,
            )
            .await;
        };
        // 6. A stream on a pooled connection to the balancer's pick, or to the next endpoints.
        let Some(first) = core.pick_endpoint(snapshot, cluster, hash) else {
            counters.no_endpoint.inc();
            exchange.flags.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
            return reply_error(
                core,
                down,
                scratch,
                exchange,
                503,
                "no healthy upstream",
                plan,
            )
            .await;
        };
        let endpoints = cluster.endpoints.len();
        let mut checkout = None;
        for offset in 0..endpoints {
            let endpoint = (first + offset) % endpoints;
            match core
                .h2_pool
                .checkout(cluster.endpoints[endpoint].address, &limits)
                .await
            {
                Ok(stream) => {
                    checkout = Some((endpoint, stream));
                    break;
                }
                Err(_) => counters.connect_failures.inc(),
            }
        }
        let Some((endpoint, mut stream)) = checkout else {
            exchange
                .flags
                .insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
            return reply_error(
                core,
                down,
                scratch,
                exchange,
                502,
                "upstream connect error",
                plan,
            )
            .await;
        };
        let in_flight = core.start_request(snapshot, cluster, endpoint);
        exchange.upstream = Some(cluster.endpoints[endpoint].address);
        counters.requests.inc();
        if stream.reused {
            counters.pool_reuse.inc();
        } else {
            counters.connections.inc();
        }

        // 7. Send the request: head, then the body as DATA frames.
        let sent = match std::future::poll_fn(|cx| stream.send.poll_ready(cx)).await {
            Ok(()) => stream.send.send_request(request, ends_here),
            Err(e) => Err(e),
        };
        let (response, mut upstream_body) = match sent {
            Ok(pair) => pair,
            Err(_) if ends_here && attempt == 1 => {
                stream.retire_connection();
                continue;
            }
            Err(_) => {
                stream.retire_connection();
                exchange
                    .flags
                    .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
                return reply_error(
                    core,
                    down,
                    scratch,
                    exchange,
                    502,
                    "upstream refused the stream",
                    plan,
                )
                .await;
            }
        };
        if ends_here {
            exchange.request_body_done = true;
        } else {
            match bridge::h1_to_h2(
                &mut down.stream,
                &mut down.buf,
                plan.framing,
                &mut upstream_body,
                plan.body_limit,
            )
            .await
            {
                Ok(bytes) => {
                    exchange.bytes_received = bytes;
                    exchange.request_body_done = true;
                }
                Err(PumpError::TooLarge) => {
                    return reply_error(
                        core,
                        down,
                        scratch,
                        exchange,
                        413,
                        "request body too large",
                        plan,
                    )
                    .await;
                }
                Err(PumpError::Malformed(reason)) => {
                    exchange
                        .flags
                        .insert(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
                    return reply_error(core, down, scratch, exchange, 400, reason, plan).await;
                }
                Err(PumpError::Source(_)) => {
                    exchange
                        .flags
                        .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                    return After::Close;
                }
                Err(PumpError::Destination(_)) => {
                    exchange
                        .flags
                        .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
                    return reply_error(
                        core,
                        down,
                        scratch,
                        exchange,
                        502,
                        "upstream reset the stream",
                        plan,
                    )
                    .await;
                }
            }
        }

        // 8. The response head.
        let response = match route.timeout {
            Some(timeout) => match monoio::time::timeout(
                timeout.saturating_sub(exchange.started.elapsed()),
                response,
            )
            .await
            {
                Ok(response) => response,
                Err(_) => {
                    counters.timeouts.inc();
                    exchange.flags.insert(ResponseFlags::UPSTREAM_TIMEOUT);
                    return reply_error(
                        core,
                        down,
                        scratch,
                        exchange,
                        504,
                        "upstream request timeout",
                        plan,
                    )
                    .await;
                }
            },
            None => response.await,
        };
        match response {
            Ok(response) => break (response, in_flight),
            Err(e) => {
                let unprocessed = e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM);
                if unprocessed {
                    stream.retire_connection();
                    if ends_here && attempt == 1 {
                        continue;
                    }
                }
                exchange
                    .flags
                    .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
                return reply_error(
                    core,
                    down,
                    scratch,
                    exchange,
                    502,
                    "upstream reset the stream",
                    plan,
                )
                .await;
            }
        }
    };
    let (parts, mut upstream_response) = response.into_parts();
    let status = parts.status.as_u16();
    let no_body = plan.is_head || status == 204 || status == 304 || (100..200).contains(&status);
    let length = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let client_10 = plan.minor_version == 0;
    let framing = match (no_body, length) {
        (true, _) => ResponseFraming::NoBody,
        (false, Some(n)) => ResponseFraming::Length(n),
        (false, None) if client_10 => ResponseFraming::UntilClose,
        (false, None) => ResponseFraming::Chunked,
    };
    let keep_alive =
        plan.keep_alive && !core.is_draining() && framing != ResponseFraming::UntilClose;
    let connection = match (keep_alive, client_10) {
        (false, _) => Some("close"),
        (true, true) => Some("keep-alive"),
        (true, false) => None,
    };
    let fields: Vec<httparse::Header<'_>> = parts
        .headers
        .iter()
        .map(|(name, value)| httparse::Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect();
    head::write_response_head(
        &mut scratch.head,
        &ResponseHead {
            status,
            reason: head::reason_phrase(status),
            headers: &fields,
            connection_tokens: "",
            framing,
            mutation: &route.response_headers,
            connection,
            upgrade: None,
        },
    );
    drop(fields);
    exchange.status = status;
    counters.response(status);
    if io::write_all(&mut down.stream, &mut scratch.head)
        .await
        .is_err()
    {
        exchange
            .flags
            .insert(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        return After::Close;
    }
    if framing != ResponseFraming::NoBody {
        let chunked = framing == ResponseFraming::Chunked;
        match bridge::h2_to_h1(
            &mut upstream_response,
            &mut down.stream,
            chunked,
            None,
            &mut scratch.path,
            None,
        )
        .await
        {
            Ok(bytes) => exchange.bytes_sent = bytes,
            Err(error) => {
                let flag = match error {
                    PumpError::Destination(_) => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                    _ => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                };
                exchange.flags.insert(flag);
                return After::Close;
            }
        }
    }
    if keep_alive {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Re-reads an HTTP/1.1 request head written by the proxy as an HTTP/2 request: the request line
/// becomes the pseudo-headers, `host` the authority, and headers HTTP/2 forbids are left out.
fn h2_request_from_head(head_bytes: &[u8]) -> Option<http::Request<()>> {
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut storage);
    parsed.parse(head_bytes).ok()?;
    let host = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)?;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(std::str::from_utf8(host).ok()?)
        .path_and_query(parsed.path?)
        .build()
        .ok()?;
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    for field in parsed.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || h1::is_hop_by_hop(name)
        {
            continue;
        }
        let name = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?;
        headers.append(name, http::HeaderValue::from_bytes(field.value).ok()?);
    }
    Some(request)
}
