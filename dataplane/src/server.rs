//! The `ringmesh` process: start the threads, serve until a signal, drain, exit.
//!
//! ```text
//! main thread (control) ── owns the Reloader: applies the config at start, SIGHUP reloads, drain
//! signal thread        ── turns SIGTERM/SIGINT/SIGHUP into control requests
//! admin thread         ── admin API on its own runtime
//! worker 0..N          ── one pinned monoio runtime each, serving connections
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use config_schema::IoMode;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::admin::{self, AdminAddress};
use crate::driver;
use crate::reload::Reloader;
use crate::shared::Shared;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::worker;

/// Command-line settings for a running proxy; each overrides the config file's `[runtime]`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file.
    pub config_path: PathBuf,
    /// Worker threads (default: config, else one per available core).
    pub workers: Option<usize>,
    /// I/O driver (default: config, else auto).
    pub io: Option<IoMode>,
    /// File to write the admin API's bound address to (for port 0).
    pub admin_address_file: Option<PathBuf>,
}

/// What the control thread is asked to do.
#[derive(Debug)]
enum ControlRequest {
    /// Reread the config file (SIGHUP).
    ReloadFile,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT).
    Shutdown,
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    let path = &options.config_path;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = config_schema::parse(&text).map_err(|errors| {
        for e in &errors {
            error!("{}:{e}", path.display());
        }
        anyhow!("{} has {} error(s)", path.display(), errors.len())
    })?;
    let runtime = &config.spec.runtime;

    let choice = driver::choose(
        options.io.unwrap_or(runtime.io),
        runtime.uring_setup,
        runtime.ring_entries,
    )
    .map_err(|e| anyhow!(e))?;
    if let Some(note) = &choice.note {
        warn!("{note}");
    }

    let available = core_affinity::get_core_ids().unwrap_or_default();
    let workers = options
        .workers
        .or((runtime.workers > 0).then_some(runtime.workers as usize))
        .unwrap_or_else(|| available.len().max(1));
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let placements: Vec<Option<core_affinity::CoreId>> = (0..workers)
        .map(|i| {
            (runtime.pin_workers && !available.is_empty()).then(|| available[i % available.len()])
        })
        .collect();
    let cores: Vec<Option<usize>> = placements.iter().map(|p| p.map(|c| c.id)).collect();

    let shared = Arc::new(Shared::new(
        SnapshotStore::new(Snapshot::empty()),
        choice.driver,
        &cores,
    ));
    let mut handles = Vec::with_capacity(workers);
    for (id, placement) in placements.into_iter().enumerate() {
        let handle = worker::spawn(
            id,
            placement,
            choice.driver,
            runtime.ring_entries,
            Arc::clone(&shared),
        )
        .with_context(|| format!("worker {id} failed to start on {}", choice.driver))?;
        handles.push(handle);
    }

    let mut reloader = Reloader::new(
        Arc::clone(&shared),
        handles,
        cores.clone(),
        Some(path.clone()),
    );
    reloader.apply(&text).map_err(|errors| {
        for e in &errors {
            error!("{}:{e}", path.display());
        }
        anyhow!("cannot start with {}", path.display())
    })?;

    let admin_address = AdminAddress::parse(&config.spec.admin.address).map_err(|e| anyhow!(e))?;
    admin::start(
        &admin_address,
        config.spec.admin.max_connections,
        Arc::clone(&shared),
        options.admin_address_file.as_deref(),
    )
    .with_context(|| format!("cannot start the admin API on {admin_address}"))?;
    info!(driver = %choice.driver, workers, cores = ?cores, "ringmesh running");

    let requests = forward_signals()?;
    while let Ok(request) = requests.recv() {
        match request {
            ControlRequest::ReloadFile => match reloader.reload_file() {
                Ok(generation) => info!(generation, "reloaded {}", path.display()),
                Err(errors) => {
                    for e in &errors {
                        error!(
                            "reload rejected, previous config still serving: {}:{e}",
                            path.display()
                        );
                    }
                }
            },
            ControlRequest::Shutdown => break,
        }
    }

    // Re-read the drain timeout from the config in force now, not the one at start.
    let drain_timeout = shared.store.load().spec.runtime.drain_timeout.get();
    info!(timeout = ?drain_timeout, "draining: no new connections; waiting for open ones");
    reloader.drain(Instant::now() + drain_timeout);
    info!("drained; exiting");
    Ok(())
}

/// Starts the signal thread. The first SIGTERM/SIGINT asks for a graceful drain; a second one
/// exits at once.
fn forward_signals() -> anyhow::Result<flume::Receiver<ControlRequest>> {
    let (sender, receiver) = flume::unbounded();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("ringmesh-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let request = match signal {
                    SIGHUP => ControlRequest::ReloadFile,
                    _ if stopping => {
                        warn!("second termination signal: exiting without waiting for connections");
                        std::process::exit(1);
                    }
                    _ => {
                        stopping = true;
                        ControlRequest::Shutdown
                    }
                };
                if sender.send(request).is_err() {
                    return;
                }
            }
        })?;
    Ok(receiver)
}
