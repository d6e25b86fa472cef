//! The `ringmesh` process: start the threads, serve until a signal, drain, exit.
//!
//! ```text
//! main thread (control) ── owns the Reloader: applies the config at start, then serves
//!                          ControlRequests (reloads, shutdown, binary-upgrade handover) in order
//! signal thread        ── SIGTERM/SIGINT → Shutdown, SIGHUP → reload the file
//! admin thread         ── admin API on its own runtime; POST /reload, PUT /config, POST /drain
//! health thread        ── active health checks and outlier-ejection sweeps, on its own runtime
//! watch thread         ── with --watch: reload the file when it changes
//! upgrade thread       ── with an upgrade socket: hands the listening sockets to a new process
//! worker 0..N          ── one pinned monoio runtime each, serving connections
//! ```
//!
//! Every thread that wants something changed sends the control thread a
//! [`ControlRequest`]; the control thread is the only one that writes the snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use config_schema::IoMode;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::admin::{self, AdminAddress, AdminServer};
use crate::driver;
use crate::reload::{self, ConfigSource, ControlRequest, ReloadOutcome, Reloader};
use crate::shared::Shared;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::upgrade;
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
    /// Reload when the config file changes.
    pub watch: bool,
    /// Serve the upgrade socket here (default: `[runtime] upgrade_socket`).
    pub upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the process serving this upgrade socket.
    pub upgrade_from: Option<PathBuf>,
}

/// Nice value of the control thread and of the threads it starts after the workers (admin,
/// signals, watch, upgrade, access-log writer), so that parsing and compiling a config or
/// rendering a scrape never delays a worker on the same core: the scheduler lets a worker preempt
/// them. Workers keep the process's priority.
const BACKGROUND_NICE: i32 = 10;

/// How long a new process keeps trying to bind the admin address the old one is releasing.
const ADMIN_BIND_PATIENCE: Duration = Duration::from_secs(5);

/// Runs the proxy until SIGTERM, SIGINT, `POST /drain` or a binary upgrade, then drains and
/// returns.
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

    // Everything this thread does from here on, and every thread it starts, is background work
    // next to the workers': let a worker with requests to serve have the core first.
    if let Err(e) = lower_this_thread_priority(BACKGROUND_NICE) {
        warn!(error = %e, "cannot lower the priority of the control thread");
    }

    let mut reloader = Reloader::new(
        Arc::clone(&shared),
        handles,
        cores.clone(),
        Some(path.clone()),
    );
    let takeover = match &options.upgrade_from {
        Some(socket) => {
            info!(socket = %socket.display(), "binary upgrade: taking over the listening sockets of the running process");
            let (takeover, listeners) = upgrade::take_over(socket).with_context(|| {
                format!("cannot take over from the process at {}", socket.display())
            })?;
            reloader.inherit(listeners);
            Some(takeover)
        }
        None => None,
    };
    let generation = reloader.apply(&text).map_err(|errors| {
        for e in &errors {
            error!("{}:{e}", path.display());
        }
        anyhow!("cannot start with {}", path.display())
    })?;
    let behind = shared.wait_for_workers(generation, reload::ACKNOWLEDGE_TIMEOUT);
    if !behind.is_empty() {
        bail!("workers {behind:?} did not start serving");
    }
    if let Some(takeover) = takeover {
        takeover
            .finish()
            .context("the previous process did not confirm the handover")?;
    }

    // Everything else is set up before the admin API starts: once its address file appears (and
    // `/ready` answers), signals, the watcher and the upgrade socket all work.
    let (control, requests) = flume::unbounded();
    let upgrade_socket = options
        .upgrade_socket
        .clone()
        .or_else(|| runtime.upgrade_socket.as_ref().map(PathBuf::from));
    if let Some(socket) = &upgrade_socket {
        upgrade::serve(socket, control.clone())
            .with_context(|| format!("cannot serve the upgrade socket {}", socket.display()))?;
    }
    forward_signals(control.clone())?;
    if options.watch {
        crate::watch::spawn(path.clone(), control.clone())?;
    }
    crate::health::spawn(Arc::clone(&shared)).context("cannot start the health thread")?;
    let admin_address = AdminAddress::parse(&config.spec.admin.address).map_err(|e| anyhow!(e))?;
    let admin = start_admin(
        &admin_address,
        config.spec.admin.max_connections,
        &shared,
        &control,
        &options,
    )?;
    drop(control);
    info!(driver = %choice.driver, workers, cores = ?cores, generation, "ringmesh running");

    let mut admin = Some(admin);
    while let Ok(request) = requests.recv() {
        match request {
            ControlRequest::Reload {
                source,
                origin,
                reply,
            } => {
                let from = match &source {
                    ConfigSource::File => path.display().to_string(),
                    ConfigSource::Text(_) => "<request body>".to_owned(),
                };
                let outcome = reloader.reload(source);
                log_outcome(origin, &from, &outcome);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            ControlRequest::Handover { reply } => {
                let _ = reply.send(reloader.handover());
            }
            ControlRequest::HandedOver { reply } => {
                info!("binary upgrade: handing the admin API over; draining");
                if let Some(admin) = admin.take() {
                    admin.stop();
                }
                let _ = reply.send(());
                break;
            }
            ControlRequest::Shutdown { origin } => {
                info!(origin, "shutting down");
                break;
            }
        }
    }

    // Re-read the drain timeout from the config in force now, not the one at start.
    let drain_timeout = shared.store.load().spec.runtime.drain_timeout.get();
    info!(timeout = ?drain_timeout, "draining: no new connections; waiting for open ones");
    reloader.drain(Instant::now() + drain_timeout);
    // The workers flushed their access-log buffers as they stopped: let the writer write them
    // before the process exits.
    if let Some(log) = &shared.store.load().access_log {
        log.sink.sync(Duration::from_secs(5));
    }
    info!("drained; exiting");
    Ok(())
}

fn log_outcome(origin: &str, from: &str, outcome: &ReloadOutcome) {
    match outcome {
        ReloadOutcome::Applied {
            generation,
            pending_workers,
        } if pending_workers.is_empty() => {
            info!(
                origin,
                generation, "reloaded {from}: every worker runs the new config"
            );
        }
        ReloadOutcome::Applied {
            generation,
            pending_workers,
        } => warn!(
            origin,
            generation,
            pending = ?pending_workers,
            "reloaded {from}, but some workers had not acknowledged in time"
        ),
        ReloadOutcome::Rejected(errors) => {
            for e in errors {
                error!(
                    origin,
                    "reload rejected, previous config still serving: {from}:{e}"
                );
            }
        }
    }
}

/// Starts the admin API. After a binary upgrade the old process may still be releasing the
/// address, so binding is retried for a moment.
fn start_admin(
    address: &AdminAddress,
    max_connections: u32,
    shared: &Arc<Shared>,
    control: &flume::Sender<ControlRequest>,
    options: &RunOptions,
) -> anyhow::Result<AdminServer> {
    let deadline = Instant::now() + ADMIN_BIND_PATIENCE;
    loop {
        let started = admin::start(
            address,
            max_connections,
            Arc::clone(shared),
            control.clone(),
            options.admin_address_file.as_deref(),
        );
        match started {
            Ok(server) => return Ok(server),
            Err(e)
                if options.upgrade_from.is_some()
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot start the admin API on {address}"));
            }
        }
    }
}

/// Starts the signal thread. The first SIGTERM/SIGINT asks for a graceful drain; a second one
/// exits at once.
fn forward_signals(control: flume::Sender<ControlRequest>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("ringmesh-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let request = match signal {
                    SIGHUP => ControlRequest::Reload {
                        source: ConfigSource::File,
                        origin: "SIGHUP",
                        reply: None,
                    },
                    _ if stopping => {
                        warn!("second termination signal: exiting without waiting for connections");
                        std::process::exit(1);
                    }
                    _ => {
                        stopping = true;
                        ControlRequest::Shutdown { origin: "signal" }
                    }
                };
                if control.send(request).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Sets the calling thread's nice value (on Linux the nice value belongs to each thread, and
/// threads started later inherit it).
fn lower_this_thread_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours; with PRIO_PROCESS and
    // `who` 0 it applies to the calling thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from /proc (field 19 of its stat line).
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read stat");
        let after_name = &stat[stat.rfind(')').expect("(comm)") + 1..];
        after_name
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("nice field")
    }

    #[test]
    fn background_threads_are_niced_and_only_they() {
        let before = own_nice();
        let (inner, spawned) = std::thread::spawn(move || {
            lower_this_thread_priority(before as i32 + 5).expect("raising nice needs no privilege");
            let inner = own_nice();
            // Threads started afterwards inherit it.
            let spawned = std::thread::spawn(own_nice).join().expect("thread");
            (inner, spawned)
        })
        .join()
        .expect("thread");
        assert_eq!(inner, before + 5);
        assert_eq!(spawned, before + 5);
        assert_eq!(own_nice(), before, "other threads keep their priority");
    }
}
