//! The upstream side of one attempt, whichever protocol the cluster speaks: an HTTP/1.1
//! connection from the per-core pool, or a stream on a pooled HTTP/2 connection.
//!
//! [`Upstream::checkout`] gets one, [`Upstream::send_head`] starts the request, and
//! [`Upstream::split`] hands the exchange core the two directions — where the request body goes
//! (a [`Sink`]) and where the response comes from ([`UpIn`]) — so that both move at once.
//! [`Upstream::finish`] returns an HTTP/1.1 connection to the pool after a complete exchange.
//! Failures are [`Failure`]s; nothing here answers a client.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{Reason, RecvStream, SendStream};

use super::body::{H1Body, Sink, SinkFraming, Source};
use super::error::{Failure, Retry, Unavailable};
use super::h1::pool::Connection;
use super::h1::{self, BodyFraming};
use super::h2::client::{H2ClientLimits, H2Stream};
use super::headers::Fields;
use crate::core::Core;
use crate::identity::SpiffeId;
use crate::snapshot::{Cluster, Snapshot};
use crate::upstream::breaker::{self, Resource};
use crate::upstream::outlier::Observation;
use crate::upstream::{InFlightGuard, Permit};

/// The protocol spoken to a cluster's endpoints, resolved for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 (h2c).
    H2,
}

/// The request as it goes upstream, built once per exchange in the cluster's protocol.
// Built once per request and kept in place for its retries; boxing would allocate per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum UpstreamRequest {
    /// An HTTP/1.1 head (the bytes are in the exchange's scratch) and how its body is framed.
    H1(BodyFraming),
    /// An HTTP/2 request head.
    H2(http::Request<()>),
}

/// How the upstream announces its response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// HTTP/1.1 chunked.
    Chunked,
    /// HTTP/1.1: until the upstream closes.
    UntilClose,
    /// HTTP/2 DATA frames without a `content-length`.
    Stream,
}

/// A response head from an upstream, as the client side writes it.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    /// Status code.
    pub status: u16,
    /// HTTP/1.1 reason phrase (empty from HTTP/2).
    pub reason: &'a str,
    /// Header fields.
    pub fields: Fields<'a>,
    /// Names listed in HTTP/1.1 `Connection`.
    pub connection_tokens: &'a str,
    /// The body.
    pub body: ResponseBody,
}

/// The upstream side of one attempt.
#[derive(Debug)]
pub enum Upstream {
    /// An HTTP/1.1 connection.
    H1 {
        /// The connection.
        connection: Connection,
        /// The response body's framing, once the head is read.
        body: Option<H1Body>,
        /// The upstream will keep the connection open after the response.
        keep_alive: bool,
        /// Least-request accounting, for the attempt's life.
        _in_flight: Option<InFlightGuard>,
        /// The circuit breaker's `max_requests` permit, for the attempt's life.
        _admitted: Option<Permit>,
        /// The endpoint's index in the cluster (outlier detection).
        index: usize,
    },
    /// A stream on an HTTP/2 connection.
    H2 {
        /// The stream slot.
        stream: H2Stream,
        /// The endpoint.
        endpoint: SocketAddr,
        /// Set by [`Upstream::send_head`].
        response: Option<ResponseFuture>,
        /// The request body's side of the stream.
        send: Option<SendStream<Bytes>>,
        /// The response, once its head arrived.
        received: Option<(http::response::Parts, RecvStream)>,
        /// Least-request accounting.
        _in_flight: Option<InFlightGuard>,
        /// The circuit breaker's `max_requests` permit, for the attempt's life.
        _admitted: Option<Permit>,
        /// The endpoint's index in the cluster (outlier detection).
        index: usize,
    },
}

impl Upstream {
    /// A connection (HTTP/1.1) or stream (HTTP/2) to the endpoint of `cluster` that the load
    /// balancer picks, or, if that one is full or fails, to the next endpoints in turn (nothing
    /// has been sent yet, so trying another is always safe). `fresh`: a retry after a stale
    /// connection, which takes a new HTTP/1.1 connection. `avoid`: an endpoint that just failed
    /// this request; when the pick is that one, the next is taken instead (if there is another).
    ///
    /// With a circuit breaker, the attempt holds a `max_requests` permit for its life and a
    /// `max_pending_requests` permit until it has a connection or stream; either limit reached is
    /// [`Failure::Overflow`] at once, as is a new connection beyond `max_connections`.
    pub async fn checkout(
        core: &Core,
        snapshot: &Snapshot,
        cluster: &Cluster,
        wire: Wire,
        hash: Option<u64>,
        fresh: bool,
        avoid: Option<SocketAddr>,
    ) -> Result<Self, Failure> {
        let counters = cluster.stats.slot(core.id);
        let breaker = cluster.breaker.as_ref();
        let admitted =
            breaker::admit(breaker, Resource::Requests).map_err(|_| Failure::Overflow)?;
        let _pending =
            breaker::admit(breaker, Resource::PendingRequests).map_err(|_| Failure::Overflow)?;
        let Some((mut first, skip_unusable)) = core.pick_usable(snapshot, cluster, hash) else {
            counters.no_endpoint.inc();
            return Err(Failure::NoHealthyUpstream);
        };
        let mut admitted = Some(admitted);
        let endpoints = cluster.endpoints.len();
        if avoid.is_some_and(|avoid| cluster.endpoints[first].address == avoid) && endpoints > 1 {
            first = (first + 1) % endpoints;
        }
        let mut overflow = false;
        let mut tried = false;
        for attempt in 0..endpoints {
            let index = (first + attempt) % endpoints;
            if skip_unusable && cluster.health.as_ref().is_some_and(|h| !h.is_usable(index)) {
                continue;
            }
            tried = true;
            let address = cluster.endpoints[index].address;
            let opened = match wire {
                Wire::H1 => h1::client::connection(core, cluster, address, fresh)
                    .await
                    .map(|connection| Upstream::H1 {
                        connection,
                        body: None,
                        keep_alive: false,
                        _in_flight: None,
                        _admitted: None,
                        index: 0,
                    }),
                Wire::H2 => core
                    .h2_pool
                    .checkout(
                        address,
                        &H2ClientLimits::of(cluster),
                        breaker,
                        cluster.tls.as_ref().map(|tls| (tls, core.id)),
                    )
                    .await
                    .map(|stream| {
                        if stream.reused {
                            counters.pool_reuse.inc();
                        } else {
                            counters.connections.inc();
                        }
                        Upstream::H2 {
                            stream,
                            endpoint: address,
                            response: None,
                            send: None,
                            received: None,
                            _in_flight: None,
                            _admitted: None,
                            index: 0,
                        }
                    }),
            };
            match opened {
                Ok(mut upstream) => {
                    let guard = core.start_request(snapshot, cluster, index);
                    match &mut upstream {
                        Upstream::H1 {
                            _in_flight: slot,
                            _admitted: permit,
                            index: at,
                            ..
                        }
                        | Upstream::H2 {
                            _in_flight: slot,
                            _admitted: permit,
                            index: at,
                            ..
                        } => {
                            *slot = guard;
                            *permit = admitted.take().flatten();
                            *at = index;
                        }
                    }
                    return Ok(upstream);
                }
                Err(Unavailable::Exhausted) => {
                    counters.pool_overflow.inc();
                    overflow = true;
                }
                Err(Unavailable::CircuitOpen) => overflow = true,
                Err(Unavailable::Tls(e)) => {
                    counters.tls_handshake_errors.inc();
                    tracing::debug!(cluster = %cluster.name, endpoint = %address, error = %e, "upstream TLS handshake failed");
                    if let Some(health) = &cluster.health {
                        health.observe(index, Observation::LocalFailure);
                    }
                }
                Err(Unavailable::Connect(e)) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        counters.connect_timeouts.inc();
                    } else {
                        counters.connect_failures.inc();
                    }
                    tracing::debug!(cluster = %cluster.name, endpoint = %address, error = %e, "upstream connect failed");
                    if let Some(health) = &cluster.health {
                        health.observe(index, Observation::LocalFailure);
                    }
                }
            }
        }
        Err(if overflow {
            Failure::Overflow
        } else if !tried {
            counters.no_endpoint.inc();
            Failure::NoHealthyUpstream
        } else {
            Failure::ConnectFailed
        })
    }

    /// Tells outlier detection how the attempt on this endpoint ended: a response head with its
    /// status, or a failure (only upstream resets and broken responses count, as local-origin
    /// failures; failures of the client or the proxy say nothing about the endpoint).
    pub fn observe(&self, cluster: &Cluster, outcome: Result<u16, Failure>) {
        let Some(health) = &cluster.health else {
            return;
        };
        let observation = match outcome {
            Ok(status) => Observation::Response(status),
            Err(
                Failure::UpstreamReset { .. }
                | Failure::UpstreamAborted
                | Failure::UpstreamProtocol(_),
            ) => Observation::LocalFailure,
            Err(_) => return,
        };
        let (Upstream::H1 { index, .. } | Upstream::H2 { index, .. }) = self;
        health.observe(*index, observation);
    }

    /// The upstream's verified SPIFFE ID (TLS clusters whose server certificate carries one).
    pub fn peer(&self) -> Option<Rc<SpiffeId>> {
        match self {
            Upstream::H1 { connection, .. } => connection.peer.clone(),
            Upstream::H2 { stream, .. } => stream.peer().cloned(),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> SocketAddr {
        match self {
            Upstream::H1 { connection, .. } => connection.endpoint(),
            Upstream::H2 { endpoint, .. } => *endpoint,
        }
    }

    /// Starts the request. HTTP/1.1: `head` is queued in `pending`, to go out with the first
    /// body bytes; HTTP/2: the HEADERS frame is sent (ending the stream when `ends_stream`).
    /// `extra`: fields this attempt adds to the head (the attempt count, the time left);
    /// `trace`: its trace headers, as HTTP/1.1 field lines (`trace::context::Outgoing`).
    pub async fn send_head(
        &mut self,
        request: &UpstreamRequest,
        head: &[u8],
        extra: &[(&'static str, &[u8])],
        trace: &[u8],
        pending: &mut Vec<u8>,
        ends_stream: bool,
    ) -> Result<(), Failure> {
        match (self, request) {
            (Upstream::H1 { .. }, UpstreamRequest::H1(_)) => {
                pending.clear();
                match head.strip_suffix(b"\r\n") {
                    Some(fields) if !extra.is_empty() || !trace.is_empty() => {
                        pending.extend_from_slice(fields);
                        for (name, value) in extra {
                            h1::push_header(pending, name.as_bytes(), value);
                        }
                        pending.extend_from_slice(trace);
                        pending.extend_from_slice(b"\r\n");
                    }
                    _ => pending.extend_from_slice(head),
                }
                Ok(())
            }
            (
                Upstream::H2 {
                    stream,
                    response,
                    send,
                    ..
                },
                UpstreamRequest::H2(request),
            ) => {
                // A connection that went away between checkout and now processed nothing.
                let refused = |stream: &H2Stream| {
                    stream.retire_connection();
                    Failure::UpstreamReset {
                        retry: Retry::Unprocessed,
                    }
                };
                if poll_fn(|cx| stream.send.poll_ready(cx)).await.is_err() {
                    return Err(refused(stream));
                }
                let mut request = clone_request(request);
                let trace = crate::trace::context::lines(trace);
                for (name, value) in extra.iter().copied().chain(trace) {
                    if let Ok(value) = http::HeaderValue::from_bytes(value) {
                        request
                            .headers_mut()
                            .insert(http::HeaderName::from_static(name), value);
                    }
                }
                let sent = stream.send.send_request(request, ends_stream);
                let Ok((future, body)) = sent else {
                    return Err(refused(stream));
                };
                *response = Some(future);
                *send = Some(body);
                Ok(())
            }
            _ => Err(Failure::Unsupported("request built for another protocol")),
        }
    }

    /// The two directions of the attempt: where the request body goes (`None` when the request
    /// ended with its HTTP/2 HEADERS frame) and where the response comes from. `framing` is how
    /// an HTTP/1.1 request body is framed.
    pub fn split<'a>(
        &'a mut self,
        pending: &'a mut Vec<u8>,
        framing: BodyFraming,
    ) -> (Option<Sink<'a>>, UpIn<'a>) {
        match self {
            Upstream::H1 {
                connection,
                body,
                keep_alive,
                ..
            } => {
                let Connection {
                    reader,
                    writer,
                    buf,
                    reuses,
                    ..
                } = connection;
                let framing = match framing {
                    BodyFraming::Chunked => SinkFraming::Chunked,
                    _ => SinkFraming::Length,
                };
                (
                    Some(Sink::H1 {
                        writer,
                        pending,
                        framing,
                        reframe: false,
                    }),
                    UpIn::H1 {
                        reader,
                        buf,
                        reused: *reuses > 0,
                        head_len: 0,
                        body,
                        keep_alive,
                    },
                )
            }
            Upstream::H2 {
                stream,
                response,
                send,
                received,
                ..
            } => (
                send.as_mut().map(Sink::H2),
                UpIn::H2 {
                    response,
                    received,
                    reused: stream.reused,
                    stream,
                },
            ),
        }
    }

    /// Ends the attempt: an HTTP/1.1 connection goes back to the pool when `complete` (the whole
    /// request went out, the whole response came in) and the upstream keeps it open; anything
    /// else closes it. An HTTP/2 stream that did not complete is reset (`CANCEL`).
    pub fn finish(self, core: &Core, cluster: &Cluster, complete: bool) {
        match self {
            Upstream::H1 {
                connection,
                keep_alive,
                ..
            } => {
                if complete && keep_alive && connection.buf.is_empty() {
                    core.pool.release(connection, &cluster.pool);
                }
            }
            Upstream::H2 { mut send, .. } => {
                if !complete && let Some(send) = send.as_mut() {
                    send.send_reset(Reason::CANCEL);
                }
            }
        }
    }

    /// The HTTP/1.1 connection, for a tunnel after `101`/`2xx` to CONNECT.
    pub fn into_connection(self) -> Option<Connection> {
        match self {
            Upstream::H1 { connection, .. } => Some(connection),
            Upstream::H2 { .. } => None,
        }
    }
}

/// Where the response comes from.
#[derive(Debug)]
pub enum UpIn<'a> {
    /// An HTTP/1.1 connection.
    H1 {
        /// Receiving half.
        reader: &'a mut super::io::Reader,
        /// Read buffer.
        buf: &'a mut Vec<u8>,
        /// The connection carried requests before.
        reused: bool,
        /// The response head's length, once read.
        head_len: usize,
        /// The response body, once the head is parsed.
        body: &'a mut Option<H1Body>,
        /// Whether the upstream keeps the connection.
        keep_alive: &'a mut bool,
    },
    /// An HTTP/2 stream.
    H2 {
        /// The response, until it arrives.
        response: &'a mut Option<ResponseFuture>,
        /// The response head and body.
        received: &'a mut Option<(http::response::Parts, RecvStream)>,
        /// The stream's connection carried streams before.
        reused: bool,
        /// The stream slot (to retire its connection after a failure).
        stream: &'a mut H2Stream,
    },
}

impl UpIn<'_> {
    /// Waits for the final response head (interim answers are passed over).
    pub async fn read_head(&mut self) -> Result<(), Failure> {
        match self {
            UpIn::H1 {
                reader,
                buf,
                reused,
                head_len,
                ..
            } => {
                *head_len = h1::client::read_response_head(reader, buf, *reused).await?;
                Ok(())
            }
            UpIn::H2 {
                response,
                received,
                reused,
                stream,
            } => {
                let Some(future) = response.as_mut() else {
                    return Err(Failure::UpstreamReset { retry: Retry::No });
                };
                match future.await {
                    Ok(answer) => {
                        **response = None;
                        let (parts, body) = answer.into_parts();
                        **received = Some((parts, body));
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream HTTP/2 stream failed before its response");
                        let unprocessed =
                            e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM);
                        if unprocessed || e.is_io() {
                            stream.retire_connection();
                        }
                        let retry = if unprocessed {
                            Retry::Unprocessed
                        } else if e.is_io() && *reused {
                            Retry::IfIdempotent
                        } else {
                            Retry::No
                        };
                        Err(Failure::UpstreamReset { retry })
                    }
                }
            }
        }
    }

    /// Parses the response head read by [`Self::read_head`] and hands it to `relay` (which
    /// writes the client's head). `is_head`/`is_connect` say what the request was, which decides
    /// whether the response has a body.
    pub fn relay_head<R>(
        &mut self,
        is_head: bool,
        is_connect: bool,
        relay: impl FnOnce(&ResponseHead<'_>) -> R,
    ) -> Result<R, Failure> {
        match self {
            UpIn::H1 {
                buf,
                head_len,
                body,
                keep_alive,
                ..
            } => {
                let mut storage = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
                let (result, framing) = {
                    let response =
                        h1::parse_response(buf, *head_len, &mut storage, is_head, is_connect)
                            .map_err(|h1::MalformedResponse(reason)| {
                                Failure::UpstreamProtocol(reason)
                            })?;
                    let head = ResponseHead {
                        status: response.status,
                        reason: response.reason,
                        fields: Fields::H1(response.headers),
                        connection_tokens: response.connection_tokens,
                        body: match response.body {
                            BodyFraming::None => ResponseBody::None,
                            BodyFraming::Length(n) => ResponseBody::Length(n),
                            BodyFraming::Chunked => ResponseBody::Chunked,
                            BodyFraming::UntilClose => ResponseBody::UntilClose,
                        },
                    };
                    **keep_alive = response.keep_alive;
                    (relay(&head), response.body)
                };
                buf.drain(..*head_len);
                **body = Some(H1Body::new(framing));
                Ok(result)
            }
            UpIn::H2 { received, .. } => {
                let Some((parts, recv)) = received.as_ref() else {
                    return Err(Failure::UpstreamReset { retry: Retry::No });
                };
                let no_body =
                    is_head || recv.is_end_stream() || parts.status == 204 || parts.status == 304;
                let length = parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let head = ResponseHead {
                    status: parts.status.as_u16(),
                    reason: "",
                    fields: Fields::H2(&parts.headers),
                    connection_tokens: "",
                    body: match (no_body, length) {
                        (true, _) => ResponseBody::None,
                        (false, Some(n)) => ResponseBody::Length(n),
                        (false, None) => ResponseBody::Stream,
                    },
                };
                Ok(relay(&head))
            }
        }
    }

    /// The response body's source (after [`Self::relay_head`]).
    pub fn source(&mut self) -> Option<Source<'_>> {
        match self {
            UpIn::H1 {
                reader, buf, body, ..
            } => body.as_mut().map(|body| Source::H1 { reader, buf, body }),
            UpIn::H2 { received, .. } => received.as_mut().map(|(_, recv)| Source::H2(recv)),
        }
    }
}

/// A copy of a request head (the body type is `()`, so this only clones the head).
fn clone_request(request: &http::Request<()>) -> http::Request<()> {
    let mut copy = http::Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}
