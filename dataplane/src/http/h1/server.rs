//! The HTTP/1.1 server: one client connection, one request after another (pipelined requests are
//! answered in order because they are processed in order).
//!
//! For each request, [`serve_request`]:
//! 1. **reads the head** under the listener's limits: waiting for a request's first byte is
//!    bounded by the idle timeout (and ends early when the worker drains); once a byte has
//!    arrived, the whole head must come within `request_header_timeout` (408), counted from that
//!    byte — for the first request, from the byte protocol detection saw first;
//! 2. **parses** it strictly (`h1::parse_request`): anything ambiguous is a 4xx, the connection
//!    closes, and nothing reaches an upstream;
//! 3. hands it to the exchange core (`exchange::decide`, `exchange::run`), which routes it,
//!    forwards it or answers it, and accounts it (`account::record`);
//! 4. **keeps the connection** for the next request only after a complete exchange the client
//!    wants kept; a response that went out before the request body was read ends with a
//!    lingering close (the proxy stops writing and reads what is still in flight for a moment, so
//!    the client is not reset before it read the answer).
//!
//! Upgrade (WebSocket) and CONNECT requests leave the loop for a byte tunnel, but only after the
//! upstream answered 101 or 2xx: no client byte after the request head is forwarded before that.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::tls::TlsInfo;
use crate::tls::transport::Transport;
use tracing::debug;

use super::pool::Connection;
use super::{BodyFraming, Reject};
use crate::access_log::{AccessLog, Captured, ResponseFlags};
use crate::core::Core;
use crate::http::account::{self, LogFields};
use crate::http::body::H1Body;
use crate::http::downstream::{Downstream, H1Client, Tunnel};
use crate::http::exchange::{self, Record, Scratch};
use crate::http::headers::Fields;
use crate::http::io::{self, Reader, STOPPED, Writer};
use crate::http::reply::LocalReply;
use crate::http::request::{ClientProtocol, RequestBody, RequestHead, Upgrade};
use crate::snapshot::{HttpSettings, SnapshotRef};

/// Header fields parsed without touching the heap; larger limits use a heap array.
const STACK_HEADERS: usize = 128;
/// Initial capacity of a connection's read buffer.
const READ_BUFFER: usize = 8 * 1024;
/// How long an idle keep-alive connection of a draining worker waits for one more request.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// A lingering close reads what the client still sends for at most this long in all...
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// ...and gives up after this long without a byte.
const LINGER_IDLE: Duration = Duration::from_secs(1);

/// What happens to the connection after a request.
enum After {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// Close after reading what the client still sends (its body was not read).
    Linger,
    /// The upstream accepted an upgrade or CONNECT: join the two connections.
    Tunnel(Connection),
}

/// The client side of one connection.
struct Conn {
    reader: Reader,
    writer: Writer,
    /// Bytes read and not yet consumed; a request head starts at 0.
    buf: Vec<u8>,
    /// How much of `buf` the framing pre-scan has checked.
    scanned: usize,
    peer: SocketAddr,
    /// When the first byte of the next head arrived, if it already has (protocol detection).
    head_started: Option<Instant>,
    /// The connection's TLS details (SNI, verified peer identity), taken from the transport
    /// once: every request borrows them.
    tls: Option<TlsInfo>,
}

/// Copies of the request's fields for the access log (the read buffer moves on before the
/// request is logged), reused by every request on the connection.
#[derive(Default)]
struct LogCopy {
    method: String,
    authority: String,
    target: String,
    protocol: Option<ClientProtocol>,
    /// The request headers the access log's text format reads.
    headers: Captured,
}

/// Serves HTTP/1.1 on `stream` until the client closes, an error closes it, or it becomes a
/// tunnel. `initial` holds bytes already read by protocol detection, the first of which arrived
/// at `head_started`.
pub async fn serve(
    core: Rc<Core>,
    pinned: SnapshotRef,
    listener: Rc<str>,
    mut stream: Transport,
    peer: SocketAddr,
    initial: Vec<u8>,
    head_started: Option<Instant>,
) {
    let mut buf = initial;
    buf.reserve(READ_BUFFER.saturating_sub(buf.len()));
    let tls = stream.take_tls_info();
    let (mut reader, writer) = io::split_transport(stream);
    reader.count_received(buf.len());
    let mut conn = Conn {
        reader,
        writer,
        buf,
        scanned: 0,
        peer,
        head_started,
        tls,
    };
    let mut scratch = Scratch {
        peer_ip: peer.ip().to_string().into_bytes(),
        ..Scratch::default()
    };
    let mut out = Vec::new();
    let mut log = LogCopy::default();
    loop {
        let after = serve_request(
            &core,
            &pinned,
            &listener,
            &mut conn,
            &mut scratch,
            &mut out,
            &mut log,
        )
        .await;
        if let After::KeepAlive = after {
            continue;
        }
        // Requests count their bytes as they end; what a connection moved besides (a head that
        // never completed, a lingering close) is counted as it closes.
        count_bytes(&core, &pinned, &listener, &mut conn);
        match after {
            After::KeepAlive => continue,
            After::Close => return,
            After::Linger => {
                linger(&mut conn).await;
                count_bytes(&core, &pinned, &listener, &mut conn);
                return;
            }
            After::Tunnel(upstream) => {
                tunnel(&core, &listener, conn, upstream).await;
                return;
            }
        }
    }
}

/// Adds the bytes the connection moved since the last call to the listener's counters.
fn count_bytes(core: &Core, pinned: &SnapshotRef, listener_name: &str, conn: &mut Conn) {
    let (snapshot, _) = snapshot_for(core, pinned, listener_name);
    if let Some(listener) = snapshot.listener(listener_name) {
        let counters = listener.stats.workers.slot(core.id);
        counters.bytes_received.add(conn.reader.take_received());
        counters.bytes_sent.add(conn.writer.take_sent());
    }
}

/// One request, start to end.
async fn serve_request(
    core: &Rc<Core>,
    pinned: &SnapshotRef,
    listener_name: &str,
    conn: &mut Conn,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
    log: &mut LogCopy,
) -> After {
    // 1. Read the head, under the limits of the listener as configured now.
    let head = {
        let (snapshot, removed) = snapshot_for(core, pinned, listener_name);
        if removed && conn.buf.is_empty() {
            // A reload removed the listener: its keep-alive connections close between requests.
            return After::Close;
        }
        let Some(http) = snapshot
            .listener(listener_name)
            .and_then(|l| l.http.as_ref())
        else {
            return After::Close;
        };
        match read_request_head(core, conn, http).await {
            Ok(head) => head,
            Err(HeadError::Closed) => return After::Close,
            Err(HeadError::Idle) => {
                if let Some(listener) = snapshot.listener(listener_name) {
                    listener.stats.workers.slot(core.id).idle_timeouts.inc();
                }
                return After::Close;
            }
            Err(HeadError::Refused(reject, flags)) => {
                reply_and_close(core, &snapshot, listener_name, conn, out, reject, flags).await;
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

    // 2. Parse and validate, then 3. decide — synchronously, over the read buffer.
    let mut record = Record::new(started, conn.peer.ip());
    let parsed = {
        let mut stack_headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
        let mut heap_headers;
        let storage: &mut [httparse::Header<'_>] = if http.limits.max_headers <= STACK_HEADERS {
            &mut stack_headers[..]
        } else {
            heap_headers = vec![httparse::EMPTY_HEADER; http.limits.max_headers];
            &mut heap_headers[..]
        };
        match super::parse_request(&conn.buf, head, storage, &http.limits) {
            Err(reject) => Err(reject),
            Ok(request) => {
                let upgrade = match (request.upgrade, request.is_connect()) {
                    (false, _) => None,
                    (true, true) => Some(Upgrade::Connect),
                    (true, false) => Some(Upgrade::Protocol(
                        request.header("upgrade").unwrap_or_default(),
                    )),
                };
                let view = RequestHead {
                    method: request.method,
                    authority: request.authority,
                    path: request.path,
                    query: request.query.unwrap_or_default(),
                    target: request.target,
                    fields: Fields::H1(request.headers),
                    connection_tokens: request.connection_tokens,
                    protocol: if request.minor_version == 0 {
                        ClientProtocol::Http10
                    } else {
                        ClientProtocol::Http11
                    },
                    body: match request.body {
                        BodyFraming::None => RequestBody::None,
                        BodyFraming::Length(n) => RequestBody::Length(n),
                        BodyFraming::Chunked | BodyFraming::UntilClose => RequestBody::Stream,
                    },
                    expect_continue: request.expect_continue,
                    upgrade,
                    grpc: false,
                    tls: conn.tls.as_ref(),
                };
                if let Some(client) = view.forwarded_client(http.xff_trusted_hops) {
                    record.client_ip = client;
                }
                remember_for_log(log, &view, snapshot.access_log.as_ref());
                let decision =
                    exchange::decide(core, &snapshot, listener, http, &view, scratch, &mut record);
                Ok((
                    decision,
                    RequestShape {
                        framing: request.body,
                        keep_alive: request.keep_alive && !removed,
                        head_request: request.is_head(),
                        expect_continue: request.expect_continue,
                        minor_version: request.minor_version,
                        tunnel: upgrade.map(|u| match u {
                            Upgrade::Connect => Tunnel::Connect,
                            Upgrade::Protocol(_) => Tunnel::Upgrade,
                        }),
                    },
                ))
            }
        }
    };
    let (mut decision, shape) = match parsed {
        Ok(parsed) => parsed,
        Err(reject) => {
            let flags = ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            reply_and_close(core, &snapshot, listener_name, conn, out, reject, flags).await;
            return After::Close;
        }
    };
    conn.buf.drain(..head.len());
    conn.scanned = 0;
    conn.head_started = None;

    let mut client = Downstream::H1(H1Client {
        reader: &mut conn.reader,
        writer: &mut conn.writer,
        buf: &mut conn.buf,
        out,
        body: H1Body::new(shape.framing),
        minor_version: shape.minor_version,
        keep_alive: shape.keep_alive && !core.is_draining(),
        head_request: shape.head_request,
        expect_continue: shape.expect_continue,
        upgrade: shape.tunnel,
        watch_limit: http.limits.max_head,
    });
    let tunnel = exchange::serve(
        core,
        &snapshot,
        http,
        &mut decision,
        &mut client,
        scratch,
        &mut record,
    )
    .await;
    let Downstream::H1(client) = client else {
        return After::Close;
    };
    let body_done = client.body.is_done();
    let keep_alive = client.keep_alive;
    account::record(
        core,
        &snapshot,
        &record,
        &LogFields {
            method: &log.method,
            authority: &log.authority,
            target: &log.target,
            protocol: log.protocol.unwrap_or(ClientProtocol::Http11),
            request_id: &scratch.request_id,
            downstream: conn.peer,
            tls: conn.tls.as_ref(),
            listener: listener_name,
            headers: Some(&log.headers),
            response_headers: Some(&scratch.response_log),
        },
    );
    let counters = listener.stats.workers.slot(core.id);
    counters.bytes_received.add(conn.reader.take_received());
    counters.bytes_sent.add(conn.writer.take_sent());
    match tunnel {
        Some(upstream) => After::Tunnel(upstream),
        None if keep_alive && body_done => After::KeepAlive,
        None if !body_done && record.status != 0 => After::Linger,
        None => After::Close,
    }
}

/// What the connection loop needs of a parsed request once its head is gone.
struct RequestShape {
    framing: BodyFraming,
    keep_alive: bool,
    head_request: bool,
    expect_continue: bool,
    minor_version: u8,
    tunnel: Option<Tunnel>,
}

/// Copies the request fields the access log needs.
fn remember_for_log(log: &mut LogCopy, head: &RequestHead<'_>, access_log: Option<&AccessLog>) {
    log.method.clear();
    log.method.push_str(head.method);
    log.authority.clear();
    log.authority.push_str(head.authority);
    log.target.clear();
    log.target.push_str(head.target);
    log.protocol = Some(head.protocol);
    log.headers
        .capture(access_log, |name| head.fields.get(name));
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
    /// No request came within the listener's idle timeout: the proxy closes the connection.
    Idle,
    /// The head broke a limit or the framing policy (`DPE`), or did not arrive within the header
    /// timeout (408, `DT`).
    Refused(Reject, ResponseFlags),
}

fn refused(reject: Reject) -> HeadError {
    HeadError::Refused(reject, ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR)
}

fn timed_out() -> HeadError {
    let reject = Reject {
        status: 408,
        reason: "request header timeout",
    };
    HeadError::Refused(reject, ResponseFlags::DOWNSTREAM_TIMEOUT)
}

/// Stage 1: reads until the head is complete. Waiting for the first byte of a request is bounded
/// by the idle timeout (and ends early when the worker drains); once a byte has arrived, the rest
/// of the head must come within the header timeout, however slowly it trickles.
async fn read_request_head(
    core: &Core,
    conn: &mut Conn,
    http: &HttpSettings,
) -> Result<super::Head, HeadError> {
    let mut deadline: Option<Instant> = conn
        .head_started
        .map(|first| first + http.request_header_timeout);
    loop {
        if !conn.buf.is_empty() {
            match super::prescan(&conn.buf, conn.scanned).map_err(refused)? {
                super::Scan::Complete(head) => return Ok(head),
                super::Scan::Partial(scanned) => conn.scanned = scanned,
            }
            super::check_incomplete(&conn.buf, &http.limits).map_err(refused)?;
            deadline.get_or_insert_with(|| Instant::now() + http.request_header_timeout);
        }
        let read = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                conn.reader
                    .read_more_until(&mut conn.buf, READ_BUFFER, Some(left), None)
                    .await
            }
            None if core.is_draining() => {
                // Between requests while draining: a request may already be on its way, so wait a
                // short grace for it (it is answered with `connection: close`) rather than
                // closing the connection under it, which would reset it.
                let grace = http
                    .idle_timeout
                    .map_or(DRAIN_IDLE_GRACE, |w| w.min(DRAIN_IDLE_GRACE));
                match conn
                    .reader
                    .read_more_until(&mut conn.buf, READ_BUFFER, Some(grace), None)
                    .await
                {
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return Err(HeadError::Closed);
                    }
                    read => read,
                }
            }
            None => {
                // Between requests; when the worker starts draining, look again (grace above).
                let stop = &core.draining;
                match conn
                    .reader
                    .read_more_until(&mut conn.buf, READ_BUFFER, http.idle_timeout, Some(stop))
                    .await
                {
                    Err(e) if e.raw_os_error() == Some(STOPPED) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return Err(HeadError::Idle);
                    }
                    read => read,
                }
            }
        };
        match read {
            Ok(0) if conn.buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(refused(Reject {
                    status: 400,
                    reason: "incomplete request head",
                }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && deadline.is_some() => {
                return Err(timed_out());
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Answers a request that could not be read or parsed, logs it, and leaves the connection to be
/// closed.
async fn reply_and_close(
    core: &Core,
    snapshot: &SnapshotRef,
    listener: &str,
    conn: &mut Conn,
    out: &mut Vec<u8>,
    reject: Reject,
    flags: ResponseFlags,
) {
    let status = reject.status;
    let reply = LocalReply {
        status,
        body: crate::http::reply::ReplyBody::Reason(reject.reason),
        location: None,
        grpc_status: None,
        overloaded: false,
        rate_limit: None,
    };
    reply.write_h1(out, b"", true, false);
    let _ = conn.writer.write_all(out).await;
    let mut record = Record::new(Instant::now(), conn.peer.ip());
    record.status = status;
    record.flags = flags;
    record.bytes_sent = reply.body_len(false, false);
    account::record(
        core,
        snapshot,
        &record,
        &LogFields {
            method: "",
            authority: "",
            target: "",
            protocol: ClientProtocol::Http11,
            request_id: b"",
            downstream: conn.peer,
            tls: conn.tls.as_ref(),
            listener,
            headers: None,
            response_headers: None,
        },
    );
}

/// A lingering close: the response went out before the request body was read, so the client may
/// still be sending it. Closing with unread bytes would make the kernel reset the connection,
/// and a reset can destroy the response before the client read it; so the proxy sends FIN, then
/// reads and drops what arrives until the client closes, a quiet second passes, or five seconds.
async fn linger(conn: &mut Conn) {
    if conn.writer.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER_TOTAL;
    loop {
        conn.buf.clear();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match conn
            .reader
            .read_more_until(
                &mut conn.buf,
                io::BODY_CHUNK,
                Some(left.min(LINGER_IDLE)),
                None,
            )
            .await
        {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Joins the client and upstream connections after a 101 or a 2xx to CONNECT, forwarding first
/// whatever each side sent after its head.
async fn tunnel(core: &Core, listener_name: &str, conn: Conn, upstream: Connection) {
    let snapshot = core.snapshot();
    let Some(listener) = snapshot.listener(listener_name) else {
        return;
    };
    let Conn {
        reader,
        writer,
        mut buf,
        ..
    } = conn;
    let (Some(client), Some((upstream_stream, mut upstream_leftover, slot))) =
        (io::reunite(reader, writer), upstream.into_parts())
    else {
        return;
    };
    let (client_read, mut client_write) = client.split();
    let (upstream_read, mut upstream_write) = upstream_stream.split();
    if !buf.is_empty() && upstream_write.write_vec(&mut buf).await.is_err() {
        return;
    }
    if !upstream_leftover.is_empty()
        && client_write
            .write_vec(&mut upstream_leftover)
            .await
            .is_err()
    {
        return;
    }
    let counters = listener.stats.workers.slot(core.id);
    let outcome = crate::l4::copy::bidirectional_halves(
        (client_read, client_write),
        (upstream_read, upstream_write),
        listener.idle_timeout,
        counters,
        &crate::l4::copy::Moved::default(),
        None,
    )
    .await;
    if let Err(e) = outcome {
        debug!(error = %e, "tunnel ended");
    }
    drop(slot);
}
