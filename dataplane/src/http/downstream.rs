//! The client side of one exchange, whichever protocol the client speaks: an HTTP/1.1 connection
//! or an HTTP/2 stream.
//!
//! The exchange core decides; this module encodes what it decided in the client's protocol: a
//! local reply, `100 Continue`, the response head relayed from the upstream, an abort. The
//! request body comes out of [`DownIn`] and the response goes into [`DownOut`], two halves that
//! work at the same time, so a response can stream while its request is still uploading.

use std::future::poll_fn;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Response, StatusCode};

use super::body::{H1Body, Sink, SinkFraming, Source};
use super::error::Failure;
use super::h1::{self, push_decimal};
use super::headers;
use super::io::{Reader, STOPPED, Writer};
use super::reply::LocalReply;
use super::upstream::{ResponseBody, ResponseHead};
use crate::event::Signal;
use crate::routing::HeaderMutation;

/// What an HTTP/1.1 request asks to turn its connection into, once the upstream agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// Another protocol (`Upgrade`, answered with `101`).
    Upgrade,
    /// A `CONNECT` tunnel (answered with a `2xx`).
    Connect,
}

/// An HTTP/1.1 client, for one request on its connection.
#[derive(Debug)]
pub struct H1Client<'c> {
    /// Receiving half.
    pub reader: &'c mut Reader,
    /// Sending half.
    pub writer: &'c mut Writer,
    /// Bytes read and not consumed: the request body, then whatever the client sends next.
    pub buf: &'c mut Vec<u8>,
    /// Where heads and local replies are written.
    pub out: &'c mut Vec<u8>,
    /// The request body's framing and progress.
    pub body: H1Body,
    /// 0 for HTTP/1.0 clients.
    pub minor_version: u8,
    /// The connection may carry another request after this one; cleared whenever something
    /// forbids it (the client asked to close, a body was left unread, the worker drains).
    pub keep_alive: bool,
    /// The request was HEAD.
    pub head_request: bool,
    /// The client waits for `100 Continue`.
    pub expect_continue: bool,
    /// An upgrade or CONNECT was requested.
    pub upgrade: Option<Tunnel>,
    /// At most this many bytes of what the client sends next are read while watching for it to
    /// go away (beyond that, the proxy stops watching).
    pub watch_limit: usize,
}

/// An HTTP/2 client stream.
#[derive(Debug)]
pub struct H2Client<'c> {
    /// The request body.
    pub recv: &'c mut RecvStream,
    /// Where the response head goes.
    pub respond: &'c mut SendResponse<Bytes>,
    /// The response body, once the head went out.
    pub send: Option<SendStream<Bytes>>,
    /// A gRPC call: errors are answered trailers-only.
    pub grpc: bool,
    /// The request was HEAD.
    pub head_request: bool,
    /// The client waits for `100 Continue`.
    pub expect_continue: bool,
}

/// The client side of an exchange.
#[derive(Debug)]
pub enum Downstream<'c> {
    /// HTTP/1.x.
    H1(H1Client<'c>),
    /// HTTP/2.
    H2(H2Client<'c>),
}

impl<'c> Downstream<'c> {
    /// Whether the whole request body has been read.
    pub fn body_done(&self) -> bool {
        match self {
            Downstream::H1(client) => client.body.is_done(),
            Downstream::H2(client) => client.recv.is_end_stream(),
        }
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        matches!(self, Downstream::H2(client) if client.grpc)
    }

    /// Whether the request was HEAD.
    pub fn is_head(&self) -> bool {
        match self {
            Downstream::H1(client) => client.head_request,
            Downstream::H2(client) => client.head_request,
        }
    }

    /// Sends `100 Continue` if the client waits for it (once): the proxy answers `Expect`
    /// itself, for every protocol, once it has an upstream for the request.
    pub async fn send_continue(&mut self) -> Result<(), Failure> {
        match self {
            Downstream::H1(client) if client.expect_continue => {
                client.expect_continue = false;
                client.out.clear();
                client
                    .out
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                client
                    .writer
                    .write_all(client.out)
                    .await
                    .map_err(|_| Failure::ClientGone)
            }
            Downstream::H2(client) if client.expect_continue => {
                client.expect_continue = false;
                let mut interim = Response::new(());
                *interim.status_mut() = StatusCode::CONTINUE;
                client
                    .respond
                    .send_informational(interim)
                    .map_err(|_| Failure::ClientGone)
            }
            _ => Ok(()),
        }
    }

    /// Answers with a local reply. Returns the body bytes sent. An HTTP/1.1 connection stays
    /// open only if the request body was read and the client wants it open.
    pub async fn reply(&mut self, reply: &LocalReply<'_>, request_id: &[u8]) -> u64 {
        let head_only = self.is_head();
        let grpc = self.is_grpc();
        let body_done = self.body_done();
        match self {
            Downstream::H1(client) => {
                client.keep_alive &= body_done;
                let close = !client.keep_alive;
                reply.write_h1(client.out, request_id, close, head_only);
                if client.writer.write_all(client.out).await.is_err() {
                    client.keep_alive = false;
                }
            }
            Downstream::H2(client) => {
                let (response, body) = reply.h2_response(request_id, grpc);
                // A client still sending its body is told to stop once the answer is out: `h2`
                // sends RST_STREAM(NO_ERROR) after the response when the stream's handles drop
                // (RFC 9113 §8.1).
                match (head_only, body) {
                    (false, Some(body)) => {
                        if let Ok(mut stream) = client.respond.send_response(response, false) {
                            let _ = stream.send_data(body, true);
                        }
                    }
                    _ => {
                        let _ = client.respond.send_response(response, true);
                    }
                }
            }
        }
        reply.body_len(head_only, grpc)
    }

    /// Closes an HTTP/1.1 connection after this exchange (HTTP/2 streams are independent).
    pub fn close_after(&mut self) {
        if let Downstream::H1(client) = self {
            client.keep_alive = false;
        }
    }

    /// Ends an exchange whose response already started: an HTTP/1.1 connection closes (the only
    /// honest signal left), an HTTP/2 stream is reset.
    pub fn abort(&mut self) {
        match self {
            Downstream::H1(client) => client.keep_alive = false,
            Downstream::H2(client) => match client.send.as_mut() {
                Some(send) => send.send_reset(Reason::CANCEL),
                None => client.respond.send_reset(Reason::CANCEL),
            },
        }
    }

    /// After a complete response to a request whose body is still arriving: HTTP/1.1 closes
    /// the connection after the response (its `connection: close` said so). An HTTP/2 stream
    /// needs nothing here: when its handles drop with the request still streaming, `h2` sends
    /// RST_STREAM(NO_ERROR) after the response's last frame, which tells the client to stop
    /// sending (RFC 9113 §8.1); an explicit reset now would discard response frames not yet
    /// written.
    pub fn end_early(&mut self) {
        if let Downstream::H1(client) = self {
            client.keep_alive = false;
        }
    }

    /// The two directions: the request body in, the response out.
    pub fn split(&mut self, draining: bool) -> (DownIn<'_>, DownOut<'_>) {
        match self {
            Downstream::H1(client) => (
                DownIn::H1 {
                    reader: client.reader,
                    buf: client.buf,
                    body: &mut client.body,
                    watch_limit: client.watch_limit,
                },
                DownOut::H1 {
                    writer: client.writer,
                    out: client.out,
                    minor_version: client.minor_version,
                    keep_alive: &mut client.keep_alive,
                    head_request: client.head_request,
                    upgrade: client.upgrade,
                    draining,
                    framing: SinkFraming::Length,
                },
            ),
            Downstream::H2(client) => (
                DownIn::H2(client.recv),
                DownOut::H2 {
                    respond: client.respond,
                    send: &mut client.send,
                    head_request: client.head_request,
                },
            ),
        }
    }
}

/// Where the request body comes from.
#[derive(Debug)]
pub enum DownIn<'a> {
    /// An HTTP/1.1 connection.
    H1 {
        /// Receiving half.
        reader: &'a mut Reader,
        /// Read buffer.
        buf: &'a mut Vec<u8>,
        /// The body's progress.
        body: &'a mut H1Body,
        /// See [`H1Client::watch_limit`].
        watch_limit: usize,
    },
    /// An HTTP/2 stream.
    H2(&'a mut RecvStream),
}

impl DownIn<'_> {
    /// The rest of the request body, if any is left.
    pub fn source(&mut self) -> Option<Source<'_>> {
        match self {
            DownIn::H1 {
                reader, buf, body, ..
            } => (!body.is_done()).then_some(Source::H1 { reader, buf, body }),
            DownIn::H2(recv) => (!recv.is_end_stream()).then_some(Source::H2(recv)),
        }
    }

    /// Once the request is complete: watches for the client going away until `stop` fires. An
    /// HTTP/1.1 client's next bytes (a pipelined request, tunnel bytes after an upgrade) are
    /// kept; a close or reset is [`Failure::ClientGone`]. (An HTTP/2 client's reset is watched on
    /// the response side, where the stream's handle is.)
    /// `start`: most responses come before it fires, and then no watch is needed at all (a read
    /// that finds nothing arms a poll in the kernel and must be cancelled afterwards, two extra
    /// operations that measured a third of HTTP/1.1 throughput when done per request).
    pub async fn watch_gone(&mut self, stop: &Signal, start: &Signal) -> Result<(), Failure> {
        let DownIn::H1 {
            reader,
            buf,
            watch_limit,
            ..
        } = self
        else {
            stop.wait().await;
            return Ok(());
        };
        monoio::select! {
            biased;
            () = stop.wait() => return Ok(()),
            () = start.wait() => {}
        }
        loop {
            if buf.len() >= *watch_limit {
                stop.wait().await;
                return Ok(());
            }
            match reader.read_more_unless(buf, 4096, stop).await {
                Ok(0) => return Err(Failure::ClientGone),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(STOPPED) => return Ok(()),
                Err(_) => return Err(Failure::ClientGone),
            }
        }
    }
}

/// What [`DownOut::start_response`] set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// A body follows the head.
    pub body: bool,
    /// The upstream accepted an upgrade or CONNECT: the connections become a tunnel.
    pub tunnel: bool,
}

/// Where the response goes.
#[derive(Debug)]
pub enum DownOut<'a> {
    /// An HTTP/1.1 connection.
    H1 {
        /// Sending half.
        writer: &'a mut Writer,
        /// The head, waiting for the first body bytes.
        out: &'a mut Vec<u8>,
        /// 0 for HTTP/1.0 clients.
        minor_version: u8,
        /// See [`H1Client::keep_alive`].
        keep_alive: &'a mut bool,
        /// The request was HEAD.
        head_request: bool,
        /// An upgrade or CONNECT was requested.
        upgrade: Option<Tunnel>,
        /// The worker drains: connections close after their request.
        draining: bool,
        /// How the body is framed toward the client (set by the head).
        framing: SinkFraming,
    },
    /// An HTTP/2 stream.
    H2 {
        /// Where the head goes.
        respond: &'a mut SendResponse<Bytes>,
        /// The body, once the head went out.
        send: &'a mut Option<SendStream<Bytes>>,
        /// The request was HEAD.
        head_request: bool,
    },
}

impl DownOut<'_> {
    /// Resolves when an HTTP/2 client resets its stream (never for HTTP/1.1, whose close is
    /// seen on the request side).
    pub async fn gone(&mut self) -> Failure {
        match self {
            DownOut::H1 { .. } => std::future::pending().await,
            DownOut::H2 { respond, send, .. } => {
                match send.as_mut() {
                    Some(send) => {
                        let _ = poll_fn(|cx| send.poll_reset(cx)).await;
                    }
                    None => {
                        let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
                    }
                }
                Failure::ClientGone
            }
        }
    }

    /// Writes the client's response head for the upstream's `head`, with the route's
    /// `mutation`. `request_done`: the whole request body was read; if not, an HTTP/1.1 client
    /// is told the connection closes after this response (the rest of its body may never be
    /// read).
    pub fn start_response(
        &mut self,
        head: &ResponseHead<'_>,
        mutation: &HeaderMutation,
        request_done: bool,
    ) -> Result<Started, Failure> {
        match self {
            DownOut::H1 {
                out,
                minor_version,
                keep_alive,
                head_request,
                upgrade,
                draining,
                framing,
                ..
            } => {
                let connect = *upgrade == Some(Tunnel::Connect);
                let tunnel = upgrade.is_some()
                    && ((head.status == 101 && !connect)
                        || (connect && (200..300).contains(&head.status)));
                if head.status == 101 && !tunnel {
                    return Err(Failure::UpstreamProtocol("unexpected 101 response"));
                }
                let client_10 = *minor_version == 0;
                let body = if *head_request || tunnel {
                    ResponseBody::None
                } else {
                    head.body
                };
                let (sink, length) = match body {
                    // An HTTP/2 answer that ended with its HEADERS frame (a gRPC trailers-only
                    // answer, say) has no body, but an HTTP/1.1 client learns that only from
                    // `content-length: 0` — without it, it would read until the connection
                    // closes. HEAD answers, tunnels and bodiless statuses need no length.
                    ResponseBody::None => {
                        let bodiless =
                            head.status < 200 || head.status == 204 || head.status == 304;
                        let unframed = !*head_request
                            && !tunnel
                            && !bodiless
                            && head.fields.get("content-length").is_none();
                        (None, unframed.then_some(0))
                    }
                    ResponseBody::Length(n) => (Some(SinkFraming::Length), Some(n)),
                    ResponseBody::Chunked | ResponseBody::Stream if !client_10 => {
                        (Some(SinkFraming::Chunked), None)
                    }
                    ResponseBody::Chunked | ResponseBody::Stream | ResponseBody::UntilClose => {
                        (Some(SinkFraming::UntilClose), None)
                    }
                };
                let stays_open = **keep_alive
                    && !*draining
                    && request_done
                    && !tunnel
                    && sink != Some(SinkFraming::UntilClose);
                **keep_alive = stays_open;
                *framing = sink.unwrap_or(SinkFraming::Length);

                out.clear();
                out.extend_from_slice(b"HTTP/1.1 ");
                push_decimal(out, u64::from(head.status));
                out.push(b' ');
                out.extend_from_slice(if head.reason.is_empty() {
                    h1::reason_phrase(head.status).as_bytes()
                } else {
                    head.reason.as_bytes()
                });
                out.extend_from_slice(b"\r\n");
                headers::response_headers(
                    head.fields,
                    head.connection_tokens,
                    mutation,
                    sink.is_none(),
                    *out,
                );
                if let Some(n) = length {
                    out.extend_from_slice(b"content-length: ");
                    push_decimal(out, n);
                    out.extend_from_slice(b"\r\n");
                } else if sink == Some(SinkFraming::Chunked) {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                if tunnel && head.status == 101 {
                    if let Some(value) = head.fields.get("upgrade") {
                        h1::push_header(out, b"upgrade", value);
                    }
                    out.extend_from_slice(b"connection: upgrade\r\n");
                } else if !tunnel {
                    match (stays_open, client_10) {
                        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
                        (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
                        (true, false) => {}
                    }
                }
                out.extend_from_slice(b"\r\n");
                Ok(Started {
                    body: sink.is_some(),
                    tunnel,
                })
            }
            DownOut::H2 {
                respond,
                send,
                head_request,
            } => {
                if head.status == 101 {
                    return Err(Failure::UpstreamProtocol("unexpected 101 response"));
                }
                let mut response = Response::new(());
                *response.status_mut() =
                    StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut fields = HeaderMap::with_capacity(head.fields.len());
                headers::response_headers(
                    head.fields,
                    head.connection_tokens,
                    mutation,
                    true,
                    &mut fields,
                );
                *response.headers_mut() = fields;
                let ends = *head_request || head.body == ResponseBody::None;
                let stream = respond
                    .send_response(response, ends)
                    .map_err(|_| Failure::ClientGone)?;
                if !ends {
                    **send = Some(stream);
                }
                Ok(Started {
                    body: !ends,
                    tunnel: false,
                })
            }
        }
    }

    /// Where the response body goes (after [`Self::start_response`]).
    pub fn sink(&mut self) -> Option<Sink<'_>> {
        match self {
            DownOut::H1 {
                writer,
                out,
                framing,
                ..
            } => Some(Sink::H1 {
                writer,
                pending: out,
                framing: *framing,
                reframe: false,
            }),
            DownOut::H2 { send, .. } => send.as_mut().map(Sink::H2),
        }
    }
}
