//! Worker threads: one monoio runtime per core, each owning its listeners' sockets and every
//! connection it accepts, from accept to close.
//!
//! A worker does what its command channel says: [`WorkerCommand::Apply`] opens and closes accept
//! loops after a new snapshot is published (the control thread has already bound the sockets and
//! worked out which listeners changed), and [`WorkerCommand::Drain`] stops accepting and waits for
//! open connections up to a deadline. The channel is the only cross-thread path into a worker;
//! everything else a worker touches is its own (`Rc`, `Cell`) or read-only (the snapshot).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::access_log;
use crate::core::Core;
use crate::driver::{self, IoDriver};
use crate::event::Event;
use crate::listener;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// What the control thread asks of a worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// A new snapshot is published: stop accepting on `close`, start accepting on `open`, then
    /// acknowledge `generation`.
    Apply {
        /// The generation now current.
        generation: u64,
        /// Listeners to start: name and this worker's socket.
        open: Vec<(Arc<str>, std::net::TcpListener)>,
        /// Listeners to stop accepting on (their connections continue).
        close: Vec<Arc<str>>,
    },
    /// Stop accepting everywhere; return once no connection is open or at `deadline`.
    Drain {
        /// When remaining connections are closed regardless.
        deadline: Instant,
    },
}

/// A running worker thread, as seen by the control thread.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Worker index.
    pub id: usize,
    commands: flume::Sender<WorkerCommand>,
    thread: JoinHandle<()>,
}

impl WorkerHandle {
    /// Sends a command; fails only if the worker has exited.
    pub fn send(&self, command: WorkerCommand) -> Result<(), String> {
        self.commands
            .send(command)
            .map_err(|_| format!("worker {} has exited", self.id))
    }

    /// Waits for the worker thread to end.
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!(worker = self.id, "worker thread panicked");
        }
    }
}

/// Starts worker `id` on its own thread, pinned to `core` when given. Returns once the worker's
/// runtime is up, or with the error that prevented it.
pub fn spawn(
    id: usize,
    core: Option<core_affinity::CoreId>,
    driver: IoDriver,
    ring_entries: u32,
    shared: Arc<Shared>,
) -> io::Result<WorkerHandle> {
    let (commands, inbox) = flume::unbounded();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let thread = std::thread::Builder::new()
        .name(format!("ringmesh-w{id}"))
        .spawn(move || {
            if let Some(core) = core
                && !core_affinity::set_for_current(core)
            {
                error!(
                    worker = id,
                    core = core.id,
                    "could not pin worker to its core"
                );
            }
            let draining = Arc::clone(&shared);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                driver::block_on(driver, ring_entries, || {
                    let _ = started_tx.send(Ok(()));
                    run(id, shared, inbox)
                })
            }));
            match result {
                Ok(Ok(())) if draining.draining.load(Ordering::Acquire) => {}
                Ok(Err(e)) => {
                    let _ = started_tx.send(Err(e));
                }
                // A worker that stops outside a drain leaves its listening sockets accepting
                // connections nobody serves. Exiting lets the supervisor (systemd, Kubernetes)
                // restart the proxy, which is better than serving part of the traffic into a void.
                Ok(Ok(())) | Err(_) => {
                    error!(
                        worker = id,
                        "worker stopped unexpectedly; exiting so that ringmesh is restarted"
                    );
                    std::process::exit(70);
                }
            }
        })?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(WorkerHandle {
            id,
            commands,
            thread,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other(format!("worker {id} died while starting"))),
    }
}

async fn run(id: usize, shared: Arc<Shared>, inbox: flume::Receiver<WorkerCommand>) {
    let core = Rc::new(Core::new(id, shared.store.reader()));
    monoio::spawn(housekeeping(Rc::clone(&core)));
    let mut accepting: HashMap<Arc<str>, Rc<Event>> = HashMap::new();
    while let Ok(command) = inbox.recv_async().await {
        match command {
            WorkerCommand::Apply {
                generation,
                open,
                close,
            } => {
                // Follow the new snapshot's access log before accepting on its listeners:
                // housekeeping only picks it up at its next tick, and requests served until then
                // would not be logged.
                core.access_log
                    .borrow_mut()
                    .set_sink(core.snapshot().access_log.as_ref());
                follow_tracer(&core, &core.snapshot());
                for name in close {
                    if let Some(stop) = accepting.remove(&name) {
                        stop.fire();
                    }
                }
                // After a binary upgrade from a process with more workers, a listener can come
                // with several sockets for this worker; one stop event covers them all.
                for (name, socket) in open {
                    let stop = Rc::clone(accepting.entry(Arc::clone(&name)).or_default());
                    monoio::spawn(listener::accept_loop(Rc::clone(&core), name, socket, stop));
                }
                // Pools of endpoints that no cluster has any more drain: idle connections close
                // now, busy ones after their request.
                let snapshot = core.snapshot();
                let live: HashSet<SocketAddr> = snapshot
                    .clusters
                    .iter()
                    .flat_map(|c| c.endpoints.iter().map(|e| e.address))
                    .collect();
                core.pool
                    .close_idle_except(|endpoint| live.contains(endpoint));
                core.h2_pool
                    .close_except(|endpoint| live.contains(endpoint));
                // Open L4 connections that the new policies deny are closed (ztunnel's re-check).
                recheck_l4(&core, &snapshot);
                shared.workers[id]
                    .generation
                    .store(generation, Ordering::Release);
            }
            WorkerCommand::Drain { deadline } => {
                for stop in accepting.values() {
                    stop.fire();
                }
                accepting.clear();
                core.draining.fire();
                wait_for_connections(&core, deadline).await;
                core.access_log.borrow_mut().flush();
                core.spans.borrow_mut().flush();
                break;
            }
        }
    }
}

/// Points the worker's span buffer at the exporter of `snapshot`'s tracer (none without one).
fn follow_tracer(core: &Core, snapshot: &Snapshot) {
    let sink = snapshot
        .tracing
        .as_ref()
        .and_then(|tracer| tracer.sink.as_ref());
    core.spans.borrow_mut().set_sink(sink);
}

/// Re-checks every open L4 connection of this worker against the policies of `snapshot` and
/// revokes those that no longer pass. A connection whose listener is gone keeps running (it
/// keeps the snapshot it started with, and its listener's policies with it).
fn recheck_l4(core: &Core, snapshot: &Snapshot) {
    if core.l4_connections.is_empty() {
        return;
    }
    let revoked = core.l4_connections.recheck(|tracked| {
        let Some(listener) = snapshot.listener(&tracked.listener) else {
            return true;
        };
        let passes = listener
            .authz
            .as_ref()
            .is_none_or(|authz| authz.passes(&tracked.input()));
        if !passes {
            listener.stats.workers.slot(core.id).authz_revoked.inc();
        }
        passes
    });
    if revoked > 0 {
        info!(
            worker = core.id,
            revoked,
            generation = snapshot.generation,
            "authorization re-check closed open connections"
        );
    }
}

/// Periodic per-worker chores: hand buffered access-log lines and spans to their writer and
/// exporter threads (and follow the snapshot's across reloads), and close pooled connections that sat idle too long.
async fn housekeeping(core: Rc<Core>) {
    let mut ticks: u32 = 0;
    while !core.is_draining() {
        monoio::select! {
            () = monoio::time::sleep(access_log::FLUSH_INTERVAL) => {}
            () = core.draining.wait() => return,
        }
        let snapshot = core.snapshot();
        {
            let mut log = core.access_log.borrow_mut();
            log.set_sink(snapshot.access_log.as_ref());
            log.flush();
        }
        follow_tracer(&core, &snapshot);
        core.spans.borrow_mut().flush();
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(5) {
            // Each endpoint's idle connections live as long as the shortest pool idle timeout
            // of the clusters it belongs to; an endpoint no cluster has any more, not at all.
            let mut idle: HashMap<SocketAddr, Duration> = HashMap::new();
            for cluster in &snapshot.clusters {
                for endpoint in cluster.endpoints.iter() {
                    idle.entry(endpoint.address)
                        .and_modify(|t| *t = (*t).min(cluster.pool.idle_timeout))
                        .or_insert(cluster.pool.idle_timeout);
                }
            }
            let limit = |endpoint: &SocketAddr| idle.get(endpoint).copied().unwrap_or_default();
            core.pool.evict_idle(limit);
            core.h2_pool.evict_idle(limit);
        }
    }
}

/// Waits until `core` has no open connection and no accept loop still emptying its queue, or
/// `deadline` passes.
async fn wait_for_connections(core: &Core, deadline: Instant) {
    // Polled, not event-driven: this runs once per process lifetime, for at most the drain timeout.
    const POLL: Duration = Duration::from_millis(20);
    while core.open_connections() > 0 || core.accept_loops.get() > 0 {
        let now = Instant::now();
        if now >= deadline {
            info!(
                worker = core.id,
                open = core.open_connections(),
                "drain timeout: closing remaining connections"
            );
            return;
        }
        monoio::time::sleep(POLL.min(deadline - now)).await;
    }
}
