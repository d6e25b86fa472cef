//! The reload path, start to end: validate → compile → bind new listeners → publish → tell workers.
//!
//! Loading the config at start is the first reload (generation 1), so start-up and every later
//! reload (SIGHUP, and the admin API) run the same code. A config that fails at any step before
//! publishing changes nothing: the old snapshot keeps serving and every error is reported with its
//! TOML path and line.
//!
//! Only the control thread owns a [`Reloader`], so there is exactly one writer of the snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use config_schema::{Config, ConfigError};
use tracing::{info, warn};

use crate::listener;
use crate::shared::Shared;
use crate::snapshot;
use crate::worker::{WorkerCommand, WorkerHandle};

/// A listener's sockets as currently bound.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// The address in the config that produced the sockets.
    configured: SocketAddr,
    /// The address actually bound (differs when the config says port 0).
    local: SocketAddr,
}

/// Applies configs to a running process. Owned by the control thread.
#[derive(Debug)]
pub struct Reloader {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    /// Worker `i`'s core, for `SO_INCOMING_CPU` on its sockets.
    cores: Vec<Option<usize>>,
    bound: HashMap<Arc<str>, Bound>,
    /// The file that SIGHUP rereads.
    config_path: Option<PathBuf>,
}

impl Reloader {
    /// A reloader for running `workers`; nothing is applied until [`Reloader::apply`].
    pub fn new(
        shared: Arc<Shared>,
        workers: Vec<WorkerHandle>,
        cores: Vec<Option<usize>>,
        config_path: Option<PathBuf>,
    ) -> Self {
        Self {
            shared,
            workers,
            cores,
            bound: HashMap::new(),
            config_path,
        }
    }

    /// Rereads the config file and applies it.
    pub fn reload_file(&mut self) -> Result<u64, Vec<ConfigError>> {
        let Some(path) = self.config_path.clone() else {
            return Err(vec![whole_file_error(
                "no config file to reread".to_owned(),
            )]);
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => self.apply(&text),
            Err(e) => {
                self.shared.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(vec![whole_file_error(format!(
                    "cannot read {}: {e}",
                    path.display()
                ))])
            }
        }
    }

    /// Validates, compiles and publishes `text`, returning the new generation. On error nothing
    /// changes.
    pub fn apply(&mut self, text: &str) -> Result<u64, Vec<ConfigError>> {
        let result = self.try_apply(text);
        let counter = match &result {
            Ok(_) => &self.shared.reloads,
            Err(_) => &self.shared.reload_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn try_apply(&mut self, text: &str) -> Result<u64, Vec<ConfigError>> {
        // 1. Validate: every error, with its line.
        let config = config_schema::parse(text)?;
        self.warn_about_restart_only_settings(&config);

        // 2. Compile against the current snapshot, carrying counters over by name.
        let current = self.shared.store.load();
        let generation = current.generation + 1;
        let mut next = snapshot::compile(&config, generation, self.workers.len(), &current)?;

        // 3. Bind sockets for listeners that are new or moved; keep the others as they are.
        let mut opened: Vec<(Arc<str>, Vec<std::net::TcpListener>)> = Vec::new();
        let mut errors = Vec::new();
        for (index, listener) in next.listeners.iter_mut().enumerate() {
            match self.bound.get(&listener.name) {
                Some(bound) if bound.configured == listener.address => {
                    listener.local_addr = bound.local;
                }
                _ => match listener::bind_per_worker(listener.address, &self.cores) {
                    Ok((local, sockets)) => {
                        listener.local_addr = local;
                        opened.push((Arc::clone(&listener.name), sockets));
                    }
                    Err(e) => errors.push(config.error_at(
                        &format!("listeners[{index}].address"),
                        format!("cannot listen on {}: {e}", listener.address),
                    )),
                },
            }
        }
        if !errors.is_empty() {
            // Dropping `opened` closes the sockets bound so far; nothing was published.
            return Err(errors);
        }
        let closed: Vec<Arc<str>> = self
            .bound
            .iter()
            .filter(|(name, bound)| {
                next.listener(name)
                    .is_none_or(|l| l.address != bound.configured)
            })
            .map(|(name, _)| Arc::clone(name))
            .collect();

        // 4. Publish: from here on, every new connection and request sees the new snapshot.
        self.bound = next
            .listeners
            .iter()
            .map(|l| {
                (
                    Arc::clone(&l.name),
                    Bound {
                        configured: l.address,
                        local: l.local_addr,
                    },
                )
            })
            .collect();
        for listener in &next.listeners {
            info!(listener = %listener.name, address = %listener.local_addr, protocol = ?listener.protocol, "listening");
        }
        self.shared.store.publish(Arc::new(next));

        // 5. Tell each worker which sockets to start and stop accepting on.
        let mut per_worker: Vec<Vec<(Arc<str>, std::net::TcpListener)>> =
            self.workers.iter().map(|_| Vec::new()).collect();
        for (name, sockets) in opened {
            for (worker, socket) in sockets.into_iter().enumerate() {
                per_worker[worker].push((Arc::clone(&name), socket));
            }
        }
        for (worker, open) in self.workers.iter().zip(per_worker) {
            let command = WorkerCommand::Apply {
                generation,
                open,
                close: closed.clone(),
            };
            if let Err(e) = worker.send(command) {
                warn!(error = %e, "could not notify worker");
            }
        }
        info!(generation, "config applied");
        Ok(generation)
    }

    fn warn_about_restart_only_settings(&self, config: &Config) {
        let current = self.shared.store.load();
        if current.generation == 0 {
            return;
        }
        if current.spec.runtime != config.spec.runtime {
            warn!(
                "[runtime] changed: worker count, I/O driver and drain timeout take effect at the next restart"
            );
        }
        if current.spec.admin.address != config.spec.admin.address {
            warn!("admin.address changed: the admin listener moves at the next restart");
        }
    }

    /// Stops accepting everywhere, waits for workers to finish their connections (each up to
    /// `deadline`), and joins them.
    pub fn drain(self, deadline: std::time::Instant) {
        self.shared.draining.store(true, Ordering::Release);
        for worker in &self.workers {
            if let Err(e) = worker.send(WorkerCommand::Drain { deadline }) {
                warn!(error = %e, "could not tell worker to drain");
            }
        }
        for worker in self.workers {
            worker.join();
        }
    }
}

fn whole_file_error(message: String) -> ConfigError {
    ConfigError {
        path: String::new(),
        line: 0,
        column: 0,
        message,
    }
}
