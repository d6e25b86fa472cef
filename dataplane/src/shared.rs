//! Process-wide state read by the admin thread and written by the control thread and workers.
//!
//! Nothing here is touched per request: workers write their acknowledged generation once per
//! reload; the control thread writes reload outcomes; the admin thread only reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use crate::driver::IoDriver;
use crate::snapshot::SnapshotStore;

/// State shared by all threads of one ringmesh process.
#[derive(Debug)]
pub struct Shared {
    /// The current snapshot.
    pub store: SnapshotStore,
    /// The I/O driver every worker runs.
    pub driver: IoDriver,
    /// Per-worker status, indexed by worker id.
    pub workers: Box<[WorkerStatus]>,
    /// Set once shutdown has begun: `/ready` turns 503.
    pub draining: AtomicBool,
    /// Successful reloads since start.
    pub reloads: AtomicU64,
    /// Rejected reloads since start.
    pub reload_failures: AtomicU64,
    /// When the process started.
    pub started_at: SystemTime,
}

/// What the admin API shows about one worker.
#[derive(Debug)]
pub struct WorkerStatus {
    /// The core the worker is pinned to, if any.
    pub core: Option<usize>,
    /// The last config generation this worker applied.
    pub generation: AtomicU64,
}

impl Shared {
    /// State for `cores.len()` workers running on `driver`.
    pub fn new(store: SnapshotStore, driver: IoDriver, cores: &[Option<usize>]) -> Self {
        Self {
            store,
            driver,
            workers: cores
                .iter()
                .map(|&core| WorkerStatus {
                    core,
                    generation: AtomicU64::new(0),
                })
                .collect(),
            draining: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            started_at: SystemTime::now(),
        }
    }

    /// True when every worker runs the current generation and the process is not draining.
    pub fn is_ready(&self) -> bool {
        let generation = self.store.load().generation;
        generation > 0
            && !self.draining.load(Ordering::Acquire)
            && self
                .workers
                .iter()
                .all(|w| w.generation.load(Ordering::Acquire) == generation)
    }
}
