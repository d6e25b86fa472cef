//! Worker threads: one monoio runtime per core, each owning its listeners' sockets and every
//! connection it accepts, from accept to close.
//!
//! A worker does what its command channel says: [`WorkerCommand::Apply`] opens and closes accept
//! loops after a new snapshot is published (the control thread has already bound the sockets and
//! worked out which listeners changed), and [`WorkerCommand::Drain`] stops accepting and waits for
//! open connections up to a deadline. The channel is the only cross-thread path into a worker;
//! everything else a worker touches is its own (`Rc`, `Cell`) or read-only (the snapshot).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use tracing::{error, info};

use crate::driver::{self, IoDriver};
use crate::event::Event;
use crate::listener;
use crate::shared::Shared;
use crate::snapshot::{SnapshotReader, SnapshotRef};

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
            let result = driver::block_on(driver, ring_entries, || {
                let _ = started_tx.send(Ok(()));
                run(id, shared, inbox)
            });
            if let Err(e) = result {
                let _ = started_tx.send(Err(e));
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

/// A worker's own state, shared by the tasks on its thread.
#[derive(Debug)]
pub struct Core {
    /// Worker index: selects this worker's counter slots.
    pub id: usize,
    reader: RefCell<SnapshotReader>,
    open_connections: Cell<usize>,
    /// Round-robin cursors for L4 connects, by cluster name.
    round_robin: RefCell<HashMap<Arc<str>, usize>>,
}

impl Core {
    fn new(id: usize, reader: SnapshotReader) -> Self {
        Self {
            id,
            reader: RefCell::new(reader),
            open_connections: Cell::new(0),
            round_robin: RefCell::new(HashMap::new()),
        }
    }

    /// The current snapshot (see [`SnapshotReader::current`]).
    #[inline]
    pub fn snapshot(&self) -> SnapshotRef {
        self.reader.borrow_mut().current()
    }

    /// The next round-robin start position for `cluster` on this core.
    pub fn next_round_robin(&self, cluster: &Arc<str>, endpoints: usize) -> usize {
        let mut cursors = self.round_robin.borrow_mut();
        let cursor = cursors.entry(Arc::clone(cluster)).or_insert(0);
        let position = *cursor % endpoints;
        *cursor = position + 1;
        position
    }

    pub(crate) fn connection_opened(&self) {
        self.open_connections.set(self.open_connections.get() + 1);
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections
            .set(self.open_connections.get().saturating_sub(1));
    }

    /// Connections open on this worker.
    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
    }
}

async fn run(id: usize, shared: Arc<Shared>, inbox: flume::Receiver<WorkerCommand>) {
    let core = Rc::new(Core::new(id, shared.store.reader()));
    let mut accepting: HashMap<Arc<str>, Rc<Event>> = HashMap::new();
    while let Ok(command) = inbox.recv_async().await {
        match command {
            WorkerCommand::Apply {
                generation,
                open,
                close,
            } => {
                for name in close {
                    if let Some(stop) = accepting.remove(&name) {
                        stop.fire();
                    }
                }
                for (name, socket) in open {
                    match TcpListener::from_std(socket) {
                        Ok(socket) => {
                            let stop = Event::new();
                            accepting.insert(Arc::clone(&name), Rc::clone(&stop));
                            monoio::spawn(listener::accept_loop(
                                Rc::clone(&core),
                                name,
                                socket,
                                stop,
                            ));
                        }
                        Err(e) => {
                            error!(worker = id, listener = %name, error = %e, "cannot register listening socket")
                        }
                    }
                }
                shared.workers[id]
                    .generation
                    .store(generation, Ordering::Release);
            }
            WorkerCommand::Drain { deadline } => {
                for stop in accepting.values() {
                    stop.fire();
                }
                accepting.clear();
                wait_for_connections(&core, deadline).await;
                break;
            }
        }
    }
}

/// Waits until `core` has no open connection or `deadline` passes.
async fn wait_for_connections(core: &Core, deadline: Instant) {
    // Polled, not event-driven: this runs once per process lifetime, for at most the drain timeout.
    const POLL: Duration = Duration::from_millis(20);
    while core.open_connections() > 0 {
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
