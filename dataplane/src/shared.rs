//! Process-wide state read by the admin thread and written by the control thread and workers.
//!
//! Nothing here is touched per request: workers write their acknowledged generation once per
//! reload; the control thread writes reload outcomes and the admin token; the admin thread only
//! reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::driver::IoDriver;
use crate::identity::{IdentityMetrics, Store};
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
    /// The node's identity material (`[identity]`), shown by `/certs` and the
    /// `ringmesh_cert_*`/`ringmesh_tls_handshake_failures_total` metrics. Set by the reload path
    /// when it opens the store; empty without `[identity]`.
    pub identity: ArcSwapOption<Store>,
    /// The process's identity counters (handshake refusals by reason, identity reloads): every
    /// store and every verifier the reload path builds counts here, so counts survive a reload
    /// that replaces the store, and refusals are counted even without `[identity]` (a
    /// `client_ca` listener).
    pub identity_metrics: Arc<IdentityMetrics>,
    /// The admin API's bearer token, resolved from the config in force (inline, environment or
    /// file) by the control thread at each reload. `None`: mutating endpoints are disabled.
    admin_token: Mutex<Option<Arc<str>>>,
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
            identity: ArcSwapOption::empty(),
            identity_metrics: Arc::new(IdentityMetrics::new()),
            admin_token: Mutex::new(None),
        }
    }

    /// The admin token in force.
    pub fn admin_token(&self) -> Option<Arc<str>> {
        self.admin_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the admin token (control thread, when a config is applied).
    pub fn set_admin_token(&self, token: Option<Arc<str>>) {
        *self
            .admin_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
    }

    /// Workers that have not yet acknowledged `generation` (or a later one).
    pub fn workers_behind(&self, generation: u64) -> Vec<usize> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.generation.load(Ordering::Acquire) < generation)
            .map(|(id, _)| id)
            .collect()
    }

    /// Waits until every worker has acknowledged `generation`, at most `timeout`; returns the
    /// workers still behind (empty on success). Polled: it runs once per reload, off the data path.
    pub fn wait_for_workers(&self, generation: u64, timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind = self.workers_behind(generation);
            if behind.is_empty() || Instant::now() >= deadline {
                return behind;
            }
            std::thread::sleep(Duration::from_micros(200));
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
