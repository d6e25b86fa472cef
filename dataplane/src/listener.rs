//! Listening sockets and the accept loop.
//!
//! Every worker has its own `SO_REUSEPORT` socket per listener, so the kernel spreads connections
//! across workers and no accept ever crosses cores. Each socket also sets `SO_INCOMING_CPU` to its
//! worker's core: since Linux 6.2 the reuseport group then prefers the socket whose CPU is the one
//! that received the SYN, so with NIC queue IRQs steered to worker cores (see
//! `perf/scripts/nic-queues.sh`) a connection is served on the core where its packets arrive.
//!
//! Sockets are created by the control thread (so that bind errors are reported as config errors,
//! and so that a later binary upgrade can hand them over), then moved into the workers.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use config_schema::ListenerProtocol;
use monoio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use crate::event::Event;
use crate::snapshot::{ListenerStats, SnapshotRef};
use crate::worker::Core;

/// Pending connections the kernel queues per socket before the worker accepts them.
const BACKLOG: i32 = 4096;

/// Binds one socket per worker for `address`; `cores[i]` is worker `i`'s core, if pinned.
///
/// With port 0, the first socket picks a free port and the others join it. Returns the bound
/// address and the sockets in worker order.
pub fn bind_per_worker(
    address: SocketAddr,
    cores: &[Option<usize>],
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut local = address;
    let mut sockets = Vec::with_capacity(cores.len());
    for core in cores {
        let socket = bind_one(local, *core)?;
        local = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok((local, sockets))
}

fn bind_one(address: SocketAddr, core: Option<usize>) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if let Some(cpu) = core {
        socket.set_cpu_affinity(cpu)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts connections on `socket` for the listener `name` until `stop` fires, spawning a task
/// per connection. Dropping the socket at the end closes it.
pub async fn accept_loop(core: Rc<Core>, name: Arc<str>, socket: TcpListener, stop: Rc<Event>) {
    let mut backoff = Backoff::new();
    loop {
        let accepted = monoio::select! {
            _ = stop.wait() => return,
            accepted = socket.accept() => accepted,
        };
        let snapshot = core.snapshot();
        let Some(listener) = snapshot.listener(&name) else {
            // Removed by a reload that this worker has not applied yet; the stop is on its way.
            continue;
        };
        let counters = listener.stats.workers.slot(core.id);
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                counters.accepted.inc();
                let Some(guard) =
                    ConnectionGuard::admit(&core, &listener.stats, listener.max_connections)
                else {
                    counters.rejected.inc();
                    debug!(listener = %name, %peer, "refused: listener at max_connections");
                    continue;
                };
                let connection = serve(
                    Rc::clone(&core),
                    snapshot,
                    Arc::clone(&name),
                    stream,
                    peer,
                    guard,
                );
                monoio::spawn(crate::contain::contained("connection", connection));
            }
            Err(e) => {
                counters.accept_errors.inc();
                // Out of descriptors or memory: the connection stays queued in the kernel, so
                // retrying at once would spin. Pause, longer each time, until accept works again.
                let pause = backoff.next();
                warn!(listener = %name, error = %e, pause_ms = pause.as_millis(), "accept failed");
                monoio::select! {
                    _ = stop.wait() => return,
                    _ = monoio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Serves one accepted connection according to its listener's protocol.
async fn serve(
    core: Rc<Core>,
    snapshot: SnapshotRef,
    name: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let Some(listener) = snapshot.listener(&name) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    match listener.protocol {
        ListenerProtocol::Tcp => {
            crate::l4::proxy(&core, &snapshot, listener, stream, peer, Vec::new()).await;
        }
        ListenerProtocol::Http | ListenerProtocol::Auto => {
            crate::http::serve(Rc::clone(&core), snapshot.clone(), name, stream, peer).await;
        }
    }
    drop(guard);
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
/// closed counter, and the cross-worker count used by `max_connections`.
#[derive(Debug)]
pub struct ConnectionGuard {
    core: Rc<Core>,
    stats: Arc<ListenerStats>,
    limited: bool,
}

impl ConnectionGuard {
    /// Admits a connection, or returns `None` when the listener is at `max_connections`.
    pub fn admit(core: &Rc<Core>, stats: &Arc<ListenerStats>, max: Option<u32>) -> Option<Self> {
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
            stats: Arc::clone(stats),
            limited: max.is_some(),
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.limited {
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
        self.stats.workers.slot(self.core.id).closed.inc();
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
        let (local, sockets) =
            bind_per_worker("127.0.0.1:0".parse().expect("addr"), &[None, None, None])
                .expect("bind");
        assert_ne!(local.port(), 0);
        assert_eq!(sockets.len(), 3);
        for socket in &sockets {
            assert_eq!(socket.local_addr().expect("addr"), local);
        }
    }

    #[test]
    fn incoming_cpu_is_set_per_socket() {
        let (_, sockets) =
            bind_per_worker("127.0.0.1:0".parse().expect("addr"), &[Some(0), Some(1)])
                .expect("bind");
        let cpus: Vec<usize> = sockets
            .into_iter()
            .map(|s| Socket::from(s).cpu_affinity().expect("SO_INCOMING_CPU"))
            .collect();
        assert_eq!(cpus, [0, 1]);
    }
}
