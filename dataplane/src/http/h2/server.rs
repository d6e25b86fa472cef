//! Serving one inbound HTTP/2 connection: the handshake with the listener's settings and abuse
//! limits, then a task per stream.
//!
//! Streams get their own tasks because a stream handler awaits its request body, and the body only
//! arrives while the connection is being polled: awaiting it inside the accept loop would
//! deadlock. The connection task keeps polling (accept, then `poll_closed`) until every stream has
//! ended. A connection without a stream for the listener's `idle_timeout` is closed with GOAWAY,
//! as an idle HTTP/1.1 keep-alive connection is.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::tls::TlsInfo;
use crate::tls::transport::Transport;
use bytes::Bytes;
use h2::Reason;
use tracing::debug;

use super::guard::{Abuse, FrameGuard};
use super::io::{ByteTally, H2Io};
use crate::core::Core;
use crate::event::Event;
use crate::snapshot::{H2ServerSettings, SnapshotRef};

/// How long a closing connection may take to flush GOAWAY and finish its streams.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// How long an abusive connection gets to receive its GOAWAY.
const ABUSE_GRACE: Duration = Duration::from_secs(1);

/// Serves HTTP/2 on `stream`; `initial` holds bytes read by protocol detection (the preface).
pub async fn serve(
    core: Rc<Core>,
    snapshot: SnapshotRef,
    listener_name: Rc<str>,
    stream: Transport,
    peer: SocketAddr,
    initial: Vec<u8>,
) {
    let Some(listener) = snapshot.listener(&listener_name) else {
        return;
    };
    let Some(http) = listener.http.as_ref() else {
        return;
    };
    let settings = &http.h2;
    let counters = listener.stats.workers.slot(core.id);
    let tripped = Event::new();
    let guard = Rc::new(RefCell::new(FrameGuard::new(settings.guard)));
    let tally = Rc::new(ByteTally::default());
    // The TLS details, shared by every stream of the connection.
    let mut stream = stream;
    let tls: Option<Rc<TlsInfo>> = stream.take_tls_info().map(Rc::new);
    let Ok(io) = H2Io::server(
        stream,
        initial,
        Rc::clone(&guard),
        Rc::clone(&tripped),
        Rc::clone(&tally),
    ) else {
        return;
    };

    let handshake = builder(settings).handshake::<_, Bytes>(io);
    let mut connection = match monoio::time::timeout(http.request_header_timeout, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "HTTP/2 handshake failed");
            counters.h2_protocol_errors.inc();
            return;
        }
        Err(_) => return,
    };

    enum Next<T> {
        Stream(Option<Result<T, h2::Error>>),
        Abuse,
        Drain,
        IdleCheck,
    }
    let streams = Rc::new(Streams::default());
    let mut draining = false;
    loop {
        let drain_signal = async {
            if draining {
                std::future::pending::<()>().await;
            }
            core.draining.wait().await;
        };
        // With no stream open, sleep until the idle timeout would pass; with some open, look
        // again one idle timeout later (a stream may end meanwhile).
        let idle_check = async {
            match listener.idle_timeout {
                Some(idle) if !draining => {
                    let wait = match streams.active.get() {
                        0 => (streams.idle_since.get() + idle)
                            .saturating_duration_since(Instant::now()),
                        _ => idle,
                    };
                    monoio::time::sleep(wait).await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let next = monoio::select! {
            accepted = connection.accept() => Next::Stream(accepted),
            () = tripped.wait() => Next::Abuse,
            () = drain_signal => Next::Drain,
            () = idle_check => Next::IdleCheck,
        };
        match next {
            Next::Stream(Some(Ok((request, respond)))) => {
                counters.h2_streams.inc();
                let open = StreamOpen::new(&streams, &tally);
                let stream = super::stream::serve(
                    Rc::clone(&core),
                    Rc::clone(&listener_name),
                    peer,
                    tls.clone(),
                    request,
                    respond,
                    open,
                );
                monoio::spawn(crate::contain::contained("http2 stream", stream));
            }
            Next::IdleCheck => {
                let idle = listener.idle_timeout.unwrap_or_default();
                if streams.active.get() == 0 && streams.idle_since.get().elapsed() >= idle {
                    debug!(%peer, "closing idle HTTP/2 connection");
                    counters.idle_timeouts.inc();
                    draining = true;
                    connection.graceful_shutdown();
                }
            }
            Next::Stream(Some(Err(e))) => {
                if e.is_go_away() || e.is_reset() || e.reason().is_some() {
                    counters.h2_protocol_errors.inc();
                }
                debug!(%peer, error = %e, "HTTP/2 connection error");
                if e.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
                    // h2's own limits: too many CONTINUATION frames (small ones stay under the
                    // guard's byte limit), else pending-accept or local-error resets.
                    if guard.borrow().in_header_block() {
                        counters.h2_abuse_continuation_flood.inc();
                    } else {
                        counters.h2_abuse_rapid_reset.inc();
                    }
                }
                break;
            }
            Next::Stream(None) => break,
            Next::Abuse => {
                let abuse = guard.borrow().broken();
                match abuse {
                    Some(Abuse::RapidReset) => counters.h2_abuse_rapid_reset.inc(),
                    Some(Abuse::ControlFlood) => counters.h2_abuse_control_flood.inc(),
                    Some(Abuse::ContinuationFlood) => counters.h2_abuse_continuation_flood.inc(),
                    Some(Abuse::EmptyFrames) => counters.h2_abuse_empty_frames.inc(),
                    Some(Abuse::WindowUpdateFlood) => counters.h2_abuse_window_update_flood.inc(),
                    Some(Abuse::MadeYouReset) => counters.h2_abuse_made_you_reset.inc(),
                    None => {}
                }
                debug!(%peer, abuse = abuse.map_or("unknown", Abuse::name), "closing abusive HTTP/2 connection");
                connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                let _ =
                    monoio::time::timeout(ABUSE_GRACE, poll_fn(|cx| connection.poll_closed(cx)))
                        .await;
                return;
            }
            Next::Drain => {
                // GOAWAY(NO_ERROR): no new streams; streams in flight finish.
                draining = true;
                connection.graceful_shutdown();
            }
        }
    }
    // Keep driving the connection so streams still in flight can finish.
    let _ = monoio::time::timeout(CLOSE_GRACE, poll_fn(|cx| connection.poll_closed(cx))).await;
    count_bytes(&core, &snapshot, &listener_name, &tally);
}

/// Adds what the connection moved since the last call to the listener's byte counters.
fn count_bytes(core: &Core, snapshot: &SnapshotRef, name: &str, tally: &ByteTally) {
    if let Some(listener) = snapshot.listener(name) {
        let counters = listener.stats.workers.slot(core.id);
        let (received, sent) = tally.take();
        counters.bytes_received.add(received);
        counters.bytes_sent.add(sent);
    }
}

/// The streams open on a connection, for its idle timeout.
#[derive(Debug)]
pub struct Streams {
    active: Cell<usize>,
    /// When the last stream ended (or the connection started).
    idle_since: Cell<Instant>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            active: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        }
    }
}

/// One open stream of a connection, until dropped (its task's end). It also carries the
/// connection's byte tally, which the stream adds to the listener's counters when it ends.
#[derive(Debug)]
struct StreamOpen {
    streams: Rc<Streams>,
    tally: Rc<ByteTally>,
}

impl StreamOpen {
    fn new(streams: &Rc<Streams>, tally: &Rc<ByteTally>) -> Self {
        streams.active.set(streams.active.get() + 1);
        Self {
            streams: Rc::clone(streams),
            tally: Rc::clone(tally),
        }
    }
}

impl super::stream::StreamHandle for StreamOpen {
    fn count_bytes(&self, core: &Core, snapshot: &SnapshotRef, name: &str) {
        count_bytes(core, snapshot, name, &self.tally);
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        let active = self.streams.active.get().saturating_sub(1);
        self.streams.active.set(active);
        if active == 0 {
            self.streams.idle_since.set(Instant::now());
        }
    }
}

/// An `h2` server builder with the listener's settings.
fn builder(settings: &H2ServerSettings) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .initial_window_size(settings.initial_stream_window)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(settings.max_local_error_reset_streams))
        .max_send_buffer_size(settings.max_send_buffer);
    builder
}
