//! The HBONE server: one accepted tunnel connection (TLS done, ALPN `h2`), a task per CONNECT
//! stream.
//!
//! The caller captured the connection for one workload (`tunnel_for`, from its original
//! destination) and supplies a [`ConnectHandler`]: authorization and the connection to the
//! workload are its business; the protocol (statuses, headers, the byte copy, half-close,
//! flow control) is this module's. The repo's HTTP/2 abuse limits (`http::h2::guard`) watch every
//! byte the client sends; a connection that breaks one is closed with
//! GOAWAY(ENHANCE_YOUR_CALM).

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use h2::server::SendResponse;
use monoio::net::TcpStream;
use tracing::debug;

use super::{
    CONNECTION_WINDOW, ConnectRequest, HboneCounters, MAX_FRAME_SIZE, Outcome, SERVER_MAX_STREAMS,
    STREAM_WINDOW,
};
use crate::event::{Event, Signal};
use crate::http::h2::guard::FrameGuard;
use crate::http::h2::io::{ByteTally, H2Io};
use crate::identity::SpiffeId;
use crate::snapshot::GuardLimits;
use crate::tls::transport::Transport;

/// How long a closing connection may take to finish its streams.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// How long an abusive connection gets to receive its GOAWAY.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// Why the handler refuses a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Authorization denies it: 401.
    Unauthorized,
    /// The workload could not be connected: 503.
    Unavailable,
}

impl Refusal {
    /// The status answered.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Unauthorized => 401,
            Refusal::Unavailable => 503,
        }
    }
}

/// An accepted CONNECT: the connection to the workload, and the handler's own state for the
/// stream (e.g. its live re-check registration), handed back when the stream ends.
#[derive(Debug)]
pub struct Opened<S> {
    /// The connection to the workload.
    pub upstream: TcpStream,
    /// The handler's state for this stream.
    pub session: S,
}

/// Answers the CONNECT streams of tunnel connections. Static dispatch, `async fn`: monoio is
/// single-threaded, nothing here is `Send`.
#[allow(async_fn_in_trait)]
pub trait ConnectHandler {
    /// The handler's state for one open stream.
    type Session;

    /// Decides a CONNECT whose target is the tunnel's workload: authorization, then the
    /// connection to it.
    async fn open(&self, request: &ConnectRequest) -> Result<Opened<Self::Session>, Refusal>;

    /// The signal that closes the stream when fired (the live authorization re-check), if any:
    /// the stream is then reset with CANCEL and the upstream closed.
    fn close_signal<'s>(&self, session: &'s Self::Session) -> Option<&'s Signal>;

    /// The stream ended: what it moved and how (accounting, logs).
    fn ended(&self, request: &ConnectRequest, session: Self::Session, outcome: &Outcome);
}

/// Server settings beyond the fixed HBONE ones.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// The HTTP/2 abuse limits.
    pub guard: GuardLimits,
    /// Bound on the HTTP/2 handshake (the client preface and SETTINGS).
    pub handshake_timeout: Duration,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
}

impl ServerOptions {
    /// The limits of an HTTP/2 listener with `spec` (`Http2Spec::default()`: the same defaults
    /// as any `[listeners.http2]`), and `handshake_timeout`.
    pub fn from_http2(spec: &config_schema::Http2Spec, handshake_timeout: Duration) -> Self {
        let max_header_list_size =
            u32::try_from(spec.max_header_list_size.bytes()).unwrap_or(u32::MAX);
        Self {
            guard: GuardLimits {
                max_resets: spec.max_pending_accept_reset_streams,
                control_frames_per_second: spec.control_frames_per_second,
                control_frame_burst: spec.control_frame_burst,
                max_consecutive_empty_frames: spec.max_consecutive_empty_frames,
                // As for listeners: HPACK's encoded size stays within the decoded one plus
                // framing slack.
                max_header_block: max_header_list_size.saturating_add(16 * 1024),
            },
            handshake_timeout,
            max_header_list_size,
        }
    }
}

/// Serves CONNECT streams on `connection` until the client closes it, for the workload at
/// `tunnel_for`. Each stream runs on a task of its own (hence the `Rc` handler). When `drain`
/// fires (the worker's drain), GOAWAY(NO_ERROR) refuses new streams and those open finish.
pub async fn serve<H: ConnectHandler + 'static>(
    connection: Transport,
    tunnel_for: IpAddr,
    handler: Rc<H>,
    options: &ServerOptions,
    counters: Arc<HboneCounters>,
    drain: &Event,
) {
    let mut connection = connection;
    let peer: Option<SpiffeId> = connection
        .take_tls_info()
        .and_then(|info| info.peer_principal);
    let tripped = Event::new();
    let guard = Rc::new(RefCell::new(FrameGuard::new(options.guard)));
    let Ok(io) = H2Io::server(
        connection,
        Vec::new(),
        Rc::clone(&guard),
        Rc::clone(&tripped),
        Rc::new(ByteTally::default()),
    ) else {
        return;
    };
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(options.max_header_list_size)
        .max_pending_accept_reset_streams(options.guard.max_resets as usize)
        .handshake::<_, Bytes>(io);
    let mut h2 = match monoio::time::timeout(options.handshake_timeout, handshake).await {
        Ok(Ok(h2)) => h2,
        Ok(Err(e)) => {
            debug!(error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let mut draining = false;
    loop {
        let drain_signal = async {
            if draining {
                std::future::pending::<()>().await;
            }
            drain.wait().await;
        };
        let accepted = monoio::select! {
            accepted = h2.accept() => accepted,
            () = drain_signal => {
                draining = true;
                h2.graceful_shutdown();
                continue;
            }
            () = tripped.wait() => {
                let abuse = guard.borrow().broken();
                debug!(abuse = abuse.map_or("unknown", |a| a.name()), "closing abusive HBONE connection");
                h2.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                let _ = monoio::time::timeout(ABUSE_GRACE, poll_fn(|cx| h2.poll_closed(cx))).await;
                return;
            }
        };
        match accepted {
            Some(Ok((request, respond))) => {
                let stream = stream(
                    request,
                    respond,
                    tunnel_for,
                    peer.clone(),
                    Rc::clone(&handler),
                    Arc::clone(&counters),
                );
                monoio::spawn(crate::contain::contained("hbone stream", stream));
            }
            Some(Err(e)) => {
                debug!(error = %e, "HBONE connection error");
                break;
            }
            None => break,
        }
    }
    let _ = monoio::time::timeout(CLOSE_GRACE, poll_fn(|cx| h2.poll_closed(cx))).await;
}

/// One CONNECT stream: checks, the handler, then the copy.
async fn stream<H: ConnectHandler>(
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    tunnel_for: IpAddr,
    peer: Option<SpiffeId>,
    handler: Rc<H>,
    counters: Arc<HboneCounters>,
) {
    let Some(connect) = parse(&request, tunnel_for, peer) else {
        refuse(&mut respond, 400, &counters);
        return;
    };
    let opened = match handler.open(&connect).await {
        Ok(opened) => opened,
        Err(refusal) => {
            refuse(&mut respond, refusal.status(), &counters);
            return;
        }
    };
    let ok = http::Response::builder()
        .status(http::StatusCode::OK)
        .body(())
        .unwrap_or_default();
    let send = match respond.send_response(ok, false) {
        Ok(send) => send,
        Err(e) => {
            debug!(error = %e, "HBONE stream gone before its answer");
            let outcome = Outcome {
                from_tunnel: 0,
                into_tunnel: 0,
                ended: super::Ended::Tunnel(e),
            };
            handler.ended(&connect, opened.session, &outcome);
            return;
        }
    };
    counters.inbound_opened.inc();
    counters.streams_opened.inc();
    let recv = request.into_body();
    let outcome = super::copy::run(
        send,
        recv,
        Transport::Plain(opened.upstream),
        handler.close_signal(&opened.session),
    )
    .await;
    counters.streams_closed.inc();
    handler.ended(&connect, opened.session, &outcome);
}

/// The CONNECT request, if it is one for the tunnel's workload.
fn parse(
    request: &http::Request<h2::RecvStream>,
    tunnel_for: IpAddr,
    peer: Option<SpiffeId>,
) -> Option<ConnectRequest> {
    if request.method() != http::Method::CONNECT {
        return None;
    }
    let target = super::parse_target(request.uri().authority()?.as_str())?;
    if target.ip() != tunnel_for {
        return None;
    }
    let headers = request.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some(ConnectRequest {
        target,
        source: headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_forwarded),
        baggage: text("baggage"),
        traceparent: text("traceparent"),
        peer,
    })
}

/// Answers `status` and ends the stream.
fn refuse(respond: &mut SendResponse<Bytes>, status: u16, counters: &HboneCounters) {
    counters.inbound_refused.count(status);
    let answer = http::Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    if let Err(e) = respond.send_response(answer, true) {
        debug!(error = %e, status, "HBONE refusal not sent");
    }
}
