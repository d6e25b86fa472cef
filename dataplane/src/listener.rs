//! Listening sockets and the accept loop.
//!
//! Every worker has its own `SO_REUSEPORT` socket per listener, so the kernel spreads connections
//! across workers and no accept ever crosses cores. Each socket also sets `SO_INCOMING_CPU` to its
//! worker's core: since Linux 6.2 the reuseport group then prefers the socket whose CPU is the one
//! that received the SYN, so with NIC queue IRQs steered to worker cores (see
//! `perf/scripts/nic-queues.sh`) a connection is served on the core where its packets arrive.
//!
//! Sockets are created by the control thread (so that bind errors are reported as config errors,
//! and so that a binary upgrade can hand them over: [`adopt`]), then moved into the workers.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use config_schema::ListenerProtocol;
use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};

use crate::tls::transport::Transport;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use crate::core::Core;
use crate::event::Event;
use crate::log_budget::LogBudget;
use crate::snapshot::SnapshotRef;

/// Pending connections the kernel queues per socket before the worker accepts them.
const BACKLOG: i32 = 4096;

/// Binds one socket per worker for `address`; `cores[i]` is worker `i`'s core, if pinned;
/// `transparent`: `IP_TRANSPARENT` (a `[node]` listener in tproxy mode, which accepts
/// connections to addresses that are not the node's).
///
/// With port 0, the first socket picks a free port and the others join it. Returns the bound
/// address and the sockets in worker order.
pub fn bind_per_worker(
    address: SocketAddr,
    cores: &[Option<usize>],
    transparent: bool,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut local = address;
    let mut sockets = Vec::with_capacity(cores.len());
    for core in cores {
        let socket = bind_one(local, *core, transparent)?;
        local = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok((local, sockets))
}

/// Binds one `SO_REUSEPORT` socket (`IP_TRANSPARENT` if `transparent`); with a fixed port it
/// joins that port's group.
pub fn bind_one(
    address: SocketAddr,
    core: Option<usize>,
    transparent: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if transparent {
        crate::capture::set_transparent(&socket, address)?;
    }
    if let Some(cpu) = core {
        socket.set_cpu_affinity(cpu)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Takes over the sockets of a listener bound by a previous process (binary upgrade) for this
/// process's workers: worker `i` gets sockets `i`, `i + n`, `i + 2n`... so that every inherited
/// socket, each of which receives its share of the listener's connections from the kernel, is
/// still accepted from; workers left without one get a new socket joined to the same
/// `SO_REUSEPORT` group. Returns the address and each worker's sockets.
pub fn adopt(
    local: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    cores: &[Option<usize>],
    transparent: bool,
) -> io::Result<(SocketAddr, Vec<Vec<std::net::TcpListener>>)> {
    let workers = cores.len().max(1);
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for (i, socket) in sockets.into_iter().enumerate() {
        let worker = i % workers;
        socket.set_nonblocking(true)?;
        if let Some(Some(cpu)) = cores.get(worker) {
            // Best effort: steering is an optimisation, and the socket works without it.
            let _ = socket2::SockRef::from(&socket).set_cpu_affinity(*cpu);
        }
        per_worker[worker].push(socket);
    }
    for (worker, own) in per_worker.iter_mut().enumerate() {
        if own.is_empty() {
            own.push(bind_one(
                local,
                cores.get(worker).copied().flatten(),
                transparent,
            )?);
        }
    }
    Ok((local, per_worker))
}

/// Accepts connections on `socket` for the listener `name` until `stop` fires, spawning a task
/// per connection.
///
/// Stopping never loses a connection the kernel has already completed: the pending accept is
/// cancelled rather than dropped (with io_uring, a dropped accept that had already taken a
/// connection would leak it), whatever it returns is served, and the connections still queued
/// are accepted and served before the socket is closed. When another process holds the same
/// socket (after a binary upgrade), closing this copy leaves the socket, and its queue, to it.
pub async fn accept_loop(
    core: Rc<Core>,
    name: Arc<str>,
    socket: std::net::TcpListener,
    stop: Rc<Event>,
) {
    // A second handle on the same kernel socket, to empty the queue once stopped.
    let spare = match socket.try_clone() {
        Ok(spare) => spare,
        Err(e) => {
            warn!(listener = %name, error = %e, "cannot duplicate listening socket");
            return;
        }
    };
    let socket = match TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(listener = %name, error = %e, "cannot register listening socket");
            return;
        }
    };
    let _running = AcceptLoopGuard::new(&core);
    let canceller = Canceller::new();
    let cancel = canceller.handle();
    {
        let stop = Rc::clone(&stop);
        monoio::spawn(async move {
            stop.wait().await;
            let _ = canceller.cancel();
        });
    }
    // The latest snapshot that has this listener: connections accepted after a reload removed it
    // are still served, on the config they arrived under.
    let mut snapshot = core.snapshot();
    // Each connection holds the listener's name to find its settings per request: a worker-local
    // copy, so handing it out costs no shared reference count.
    let name: Rc<str> = Rc::from(&*name);
    let mut backoff = Backoff::new();
    loop {
        let accepted = socket.cancelable_accept(cancel.clone()).await;
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                admit(&core, &name, &mut snapshot, stream, peer);
            }
            Err(_) if stop.is_fired() => break,
            Err(e) => {
                if let Some(listener) = snapshot.listener(&name) {
                    listener.stats.workers.slot(core.id).accept_errors.inc();
                }
                // Out of descriptors or memory: the connection stays queued in the kernel, so
                // retrying at once would spin. Pause, longer each time, until accept works again.
                let pause = backoff.next();
                warn!(listener = %name, error = %e, pause_ms = pause.as_millis(), "accept failed");
                monoio::select! {
                    _ = stop.wait() => break,
                    _ = monoio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Empty the queue: these connections completed their handshake while the listener existed.
    let mut drained = 0usize;
    while let Ok((stream, peer)) = spare.accept() {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            admit(&core, &name, &mut snapshot, stream, peer);
            drained += 1;
        }
    }
    debug!(listener = %name, worker = core.id, drained, "stopped accepting");
}

/// Counts and spawns one accepted connection, on the current snapshot if it still has the
/// listener, else on the last one that had it.
fn admit(
    core: &Rc<Core>,
    name: &Rc<str>,
    snapshot: &mut SnapshotRef,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let current = core.snapshot();
    if current.listener(name).is_some() {
        *snapshot = current;
    }
    let Some(listener) = snapshot.listener(name) else {
        return;
    };
    let counters = listener.stats.workers.slot(core.id);
    counters.accepted.inc();
    // A tcp listener's rate limit counts new connections (an HTTP listener's counts requests, in
    // the exchange). Over it, the connection is closed before anything is read or sent.
    if listener.protocol == ListenerProtocol::Tcp
        && let Some(limiter) = &listener.rate_limit
        && limiter.admit_ip(peer.ip(), core.id).is_err()
    {
        counters.rejected.inc();
        debug!(listener = %name, %peer, "refused: listener rate limit");
        return;
    }
    let Some(guard) = ConnectionGuard::admit(core, snapshot, name) else {
        counters.rejected.inc();
        debug!(listener = %name, %peer, "refused: listener at max_connections");
        return;
    };
    let connection = serve(
        Rc::clone(core),
        snapshot.clone(),
        Rc::clone(name),
        stream,
        peer,
        guard,
    );
    monoio::spawn(crate::contain::contained("connection", connection));
}

/// Counts a running accept loop, so that a draining worker waits for loops that are still
/// emptying their queues.
struct AcceptLoopGuard(Rc<Core>);

impl AcceptLoopGuard {
    fn new(core: &Rc<Core>) -> Self {
        core.accept_loops.set(core.accept_loops.get() + 1);
        Self(Rc::clone(core))
    }
}

impl Drop for AcceptLoopGuard {
    fn drop(&mut self) {
        self.0
            .accept_loops
            .set(self.0.accept_loops.get().saturating_sub(1));
    }
}

/// Serves one accepted connection according to its listener's protocol.
async fn serve(
    core: Rc<Core>,
    snapshot: SnapshotRef,
    name: Rc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let Some(listener) = snapshot.listener(&name) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    if let Some(role) = listener.node {
        crate::node::serve(&core, &snapshot, listener, &name, role, stream, peer).await;
        drop(guard);
        return;
    }
    if let Some(tls) = &listener.tls {
        // Boxed: a task's future is as big as its largest branch, and the TLS one (handshake,
        // then an HTTP or L4 server) would make every plaintext connection carry its size.
        Box::pin(serve_tls(
            &core, &snapshot, listener, tls, name, stream, peer,
        ))
        .await;
        drop(guard);
        return;
    }
    match listener.protocol {
        ListenerProtocol::Tcp => match &listener.passthrough {
            Some(passthrough) => {
                crate::l4::passthrough::serve(
                    &core,
                    &snapshot,
                    listener,
                    &name,
                    passthrough,
                    stream,
                    peer,
                )
                .await;
            }
            None => {
                let stream = Transport::Plain(stream);
                crate::l4::proxy(&core, &snapshot, listener, &name, stream, peer, Vec::new()).await
            }
        },
        ListenerProtocol::Http | ListenerProtocol::Auto => {
            crate::http::serve(Rc::clone(&core), snapshot.clone(), name, stream, peer).await;
        }
    }
    drop(guard);
}

/// Bound on a TLS handshake on a tcp listener (HTTP listeners use their header timeout): a client
/// that goes silent mid-handshake cannot hold a connection longer.
const TCP_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminates TLS on an accepted connection, then serves the plaintext as the listener's
/// protocol says (ALPN choosing HTTP/2 or HTTP/1.1; tcp listeners copy it to their cluster).
async fn serve_tls(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    listener: &crate::snapshot::Listener,
    tls: &crate::tls::ServerTls,
    name: Rc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let timeout = listener
        .http
        .as_ref()
        .map_or(TCP_TLS_HANDSHAKE_TIMEOUT, |http| {
            http.request_header_timeout
        });
    let counters = listener.stats.workers.slot(core.id);
    let (stream, info) = match crate::tls::accept(stream, tls, timeout).await {
        Ok(accepted) => accepted,
        Err(e) => {
            counters.tls_handshake_errors.inc();
            handshake_refused(tls, &name, peer, &e);
            return;
        }
    };
    counters.tls_handshakes.inc();
    match listener.protocol {
        ListenerProtocol::Tcp => {
            let stream = Transport::Tls(Box::new(stream), Box::new(info));
            crate::l4::proxy(core, snapshot, listener, &name, stream, peer, Vec::new()).await;
        }
        ListenerProtocol::Http | ListenerProtocol::Auto => {
            crate::http::serve_tls(Rc::clone(core), snapshot.clone(), name, stream, info, peer)
                .await;
        }
    }
}

/// Logs (and, where the verifier did not, counts) a failed server handshake.
///
/// A refused client certificate is what an operator must see: it logs at WARN with the listener,
/// the peer and the `reason` label of `ringmesh_tls_handshake_failures_total`. Logging is
/// rate-limited per worker ([`LogBudget`]: a burst of 32 lines, then 4 a second; the lines
/// skipped are counted in the next line's `suppressed`), so a flood of bad handshakes costs a
/// counter each, not a log line each. The counters are exact. Handshakes that fail for other
/// reasons (a client that goes away, a protocol error, a timeout) stay at DEBUG: scanners and
/// health checkers make many, and `ringmesh_listener_tls_handshake_errors_total` counts them.
fn handshake_refused(
    tls: &crate::tls::ServerTls,
    name: &str,
    peer: SocketAddr,
    error: &crate::tls::HandshakeError,
) {
    let rustls_error = match error {
        crate::tls::HandshakeError::Failed(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        crate::tls::HandshakeError::TimedOut(_) => None,
    };
    let reason = match (rustls_error, &tls.client_auth) {
        (Some(e), Some(auth)) => match crate::identity::refusal_reason(e) {
            Some(reason) => {
                // The SPIFFE verifiers count what they refuse; rustls refuses a missing
                // certificate itself, and a plain `client_ca` verifier counts nothing.
                if reason == crate::identity::Reason::NoCertificate || !auth.spiffe {
                    auth.metrics.handshake_failed(reason);
                }
                Some(reason)
            }
            None if !auth.spiffe => {
                let reason = webpki_reason(e);
                if let Some(reason) = reason {
                    auth.metrics.handshake_failed(reason);
                }
                reason
            }
            None => None,
        },
        _ => None,
    };
    match reason {
        Some(reason) => {
            if let Some(suppressed) = REFUSAL_LOG.with(LogBudget::admit) {
                warn!(listener = %name, %peer, reason = reason.as_str(), suppressed, error = %error, "TLS handshake refused: client certificate");
            }
        }
        None => debug!(listener = %name, %peer, %error, "TLS handshake failed"),
    }
}

/// The refusal reason of a plain (`client_ca`) chain verification error.
fn webpki_reason(error: &rustls::Error) -> Option<crate::identity::Reason> {
    use crate::identity::Reason;
    use rustls::CertificateError as E;
    let rustls::Error::InvalidCertificate(e) = error else {
        return None;
    };
    Some(match e {
        E::Expired | E::ExpiredContext { .. } => Reason::Expired,
        E::NotValidYet | E::NotValidYetContext { .. } => Reason::NotYetValid,
        E::UnknownIssuer => Reason::UntrustedRoot,
        E::BadEncoding => Reason::Malformed,
        E::BadSignature | E::UnsupportedSignatureAlgorithmContext { .. } => Reason::WeakSignature,
        _ => Reason::InvalidChain,
    })
}

thread_local! {
    /// This worker's budget of handshake refusal lines.
    static REFUSAL_LOG: LogBudget = const { LogBudget::new() };
}

/// Exponential pause after accept errors: 10 ms doubling to 1 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        pause
    }
}

/// Accounts for one open connection: the worker's connection count (for drain), the listener's
/// closed counter, and the cross-worker count used by `max_connections`. It finds the listener's
/// stats through the connection's own snapshot handle (worker-local reference counts only), not
/// by holding the shared `Arc` of the stats.
#[derive(Debug)]
pub struct ConnectionGuard {
    core: Rc<Core>,
    snapshot: SnapshotRef,
    name: Rc<str>,
    limited: bool,
}

impl ConnectionGuard {
    /// Admits a connection to listener `name` of `snapshot`, or returns `None` when the
    /// listener is at `max_connections`.
    pub fn admit(core: &Rc<Core>, snapshot: &SnapshotRef, name: &Rc<str>) -> Option<Self> {
        let listener = snapshot.listener(name)?;
        let stats = &listener.stats;
        let max = listener.max_connections;
        if let Some(max) = max {
            // The only shared read-modify-write per connection, and only when a limit is set.
            let previous = stats.open.fetch_add(1, Ordering::Relaxed);
            if previous >= max {
                stats.open.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
        }
        core.connection_opened();
        Some(Self {
            core: Rc::clone(core),
            snapshot: snapshot.clone(),
            name: Rc::clone(name),
            limited: max.is_some(),
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(listener) = self.snapshot.listener(&self.name) {
            if self.limited {
                listener.stats.open.fetch_sub(1, Ordering::Relaxed);
            }
            listener.stats.workers.slot(self.core.id).closed.inc();
        }
        self.core.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new();
        let pauses: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next().as_millis(), 10);
    }

    #[test]
    fn port_zero_binds_one_port_for_all_workers() {
        let (local, sockets) = bind_per_worker(
            "127.0.0.1:0".parse().expect("addr"),
            &[None, None, None],
            false,
        )
        .expect("bind");
        assert_ne!(local.port(), 0);
        assert_eq!(sockets.len(), 3);
        for socket in &sockets {
            assert_eq!(socket.local_addr().expect("addr"), local);
        }
    }

    #[test]
    fn incoming_cpu_is_set_per_socket() {
        let (_, sockets) = bind_per_worker(
            "127.0.0.1:0".parse().expect("addr"),
            &[Some(0), Some(1)],
            false,
        )
        .expect("bind");
        let cpus: Vec<usize> = sockets
            .into_iter()
            .map(|s| Socket::from(s).cpu_affinity().expect("SO_INCOMING_CPU"))
            .collect();
        assert_eq!(cpus, [0, 1]);
    }
}
