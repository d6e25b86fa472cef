//! The reload path, start to end: validate → check files → open the identity (when `[identity]`
//! is new or changed; reread it when not) → compile → bind (or adopt) listeners → publish → tell
//! workers → wait until every worker acknowledges.
//!
//! Loading the config at start is the first reload (generation 1), so start-up and every later
//! reload run the same code, whatever asked for it: SIGHUP, `--watch`, the admin API's
//! `POST /reload` (reread the file) and `PUT /config` (a config in the request body). A config that
//! fails at any step before publishing changes nothing: the old snapshot keeps serving, every error
//! is reported with its TOML path and line, and `ringmesh_config_reload_failed_total` counts it.
//!
//! Only the control thread owns a [`Reloader`], so there is exactly one writer of the snapshot.
//! Other threads send it a [`ControlRequest`] and, for reloads, get a [`ReloadOutcome`] back once
//! every worker runs the new generation (or the wait for them timed out), so "applied" means
//! "serving now".
//!
//! Listeners: a listener whose name and configured address survive keeps its sockets (and its
//! accept queue); a new or moved one gets new sockets bound here, before publishing, so that a bind
//! error rejects the config. A removed listener's sockets stop accepting on every worker: each
//! accept loop cancels its pending accept, serves the connections already in the kernel's queue,
//! then closes its socket. (A connection whose handshake completes in the microseconds between
//! that last accept and the close is reset, as it would be by any closed port; binary upgrades,
//! which must not lose any, hand the sockets over instead: see `upgrade`.) Connections already
//! open run to their end on the snapshot they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use config_schema::{Config, ConfigError, IdentitySpec};
use tracing::{info, warn};

use crate::identity::{IdentityFiles, LoadError, Store, Watcher, store::POLL_INTERVAL};
use crate::listener;
use crate::shared::Shared;
use crate::snapshot;
use crate::worker::{WorkerCommand, WorkerHandle};

/// How long a reload waits for every worker to acknowledge the new generation before answering.
pub const ACKNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the config of a reload comes from.
#[derive(Debug)]
pub enum ConfigSource {
    /// Reread the config file.
    File,
    /// This config text; the file is left as it is (a later reread goes back to the file).
    Text(String),
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Published: `generation` is current.
    Applied {
        /// The new generation.
        generation: u64,
        /// Workers that had not acknowledged it when the wait ended (normally none).
        pending_workers: Vec<usize>,
    },
    /// Rejected whole; the previous config keeps serving.
    Rejected(Vec<ConfigError>),
}

/// What other threads (signals, admin API, file watcher, upgrade socket) ask of the control
/// thread.
#[derive(Debug)]
pub enum ControlRequest {
    /// Apply a config; answer on `reply` when given.
    Reload {
        /// Where the config comes from.
        source: ConfigSource,
        /// Who asked, for the log.
        origin: &'static str,
        /// Where the outcome goes.
        reply: Option<flume::Sender<ReloadOutcome>>,
    },
    /// Stop accepting, drain, exit.
    Shutdown {
        /// Who asked, for the log.
        origin: &'static str,
    },
    /// A new process wants copies of every listening socket (binary upgrade).
    Handover {
        /// Where the copies go.
        reply: flume::Sender<std::io::Result<Vec<ListenerSockets>>>,
    },
    /// The new process serves on the handed-over sockets: release what it needs (the admin
    /// address), answer on `reply`, then drain and exit.
    HandedOver {
        /// Answered once the admin API is closed.
        reply: flume::Sender<()>,
    },
}

/// One listener's sockets, as handed from a running process to its successor.
#[derive(Debug)]
pub struct ListenerSockets {
    /// Listener name.
    pub name: String,
    /// The address in the config.
    pub configured: SocketAddr,
    /// The address bound.
    pub local: SocketAddr,
    /// One socket per worker of the process that bound them; all in one `SO_REUSEPORT` group.
    pub sockets: Vec<std::net::TcpListener>,
}

/// A listener's sockets as currently bound.
#[derive(Debug)]
struct Bound {
    /// The address in the config that produced the sockets.
    configured: SocketAddr,
    /// The address actually bound (differs when the config says port 0).
    local: SocketAddr,
    /// Duplicates of the workers' sockets (same kernel sockets), kept to hand them to a successor
    /// process. Dropping them does not close the sockets while workers hold theirs.
    sockets: Vec<std::net::TcpListener>,
}

/// Applies configs to a running process. Owned by the control thread.
#[derive(Debug)]
pub struct Reloader {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    /// Worker `i`'s core, for `SO_INCOMING_CPU` on its sockets.
    cores: Vec<Option<usize>>,
    bound: HashMap<Arc<str>, Bound>,
    /// The file that SIGHUP, `--watch` and `POST /reload` reread.
    config_path: Option<PathBuf>,
    /// Sockets taken over from a previous process, by listener name; adopted by the first apply
    /// when name and configured address match, closed otherwise.
    inherited: HashMap<String, ListenerSockets>,
    /// The node's identity in force (`[identity]`), with its watcher thread.
    identity: Option<NodeIdentity>,
}

/// An opened identity store, the section it was opened from, and the thread that rotates it.
#[derive(Debug)]
struct NodeIdentity {
    spec: IdentitySpec,
    store: Arc<Store>,
    /// Dropping it stops the thread.
    _watcher: Watcher,
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
            inherited: HashMap::new(),
            identity: None,
        }
    }

    /// Sockets received from the process being replaced, for the first [`Reloader::apply`].
    pub fn inherit(&mut self, listeners: Vec<ListenerSockets>) {
        for l in listeners {
            self.inherited.insert(l.name.clone(), l);
        }
    }

    /// Applies a config from `source` and waits (at most [`ACKNOWLEDGE_TIMEOUT`]) until every
    /// worker runs it.
    pub fn reload(&mut self, source: ConfigSource) -> ReloadOutcome {
        let result = match source {
            ConfigSource::File => self.reload_file(),
            ConfigSource::Text(text) => self.apply(&text),
        };
        match result {
            Ok(generation) => ReloadOutcome::Applied {
                generation,
                pending_workers: self
                    .shared
                    .wait_for_workers(generation, ACKNOWLEDGE_TIMEOUT),
            },
            Err(errors) => ReloadOutcome::Rejected(errors),
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
        let started = std::time::Instant::now();
        // 1. Validate: every error, with its line.
        let config = config_schema::parse(text)?;
        self.warn_about_restart_only_settings(&config);

        // 2. Check the files it names (certificates, keys, CA bundles, token file): validation is
        //    pure and cannot, and TLS material must not turn out missing after publishing.
        let missing = control::files::check(&config);
        if !missing.is_empty() {
            return Err(missing);
        }
        let admin_token = control::files::admin_token(&config)
            .map(|token| token.map(Arc::from))
            .map_err(|e| vec![e])?;

        // 3. The node's identity: an unchanged `[identity]` keeps its store (and rereads its
        //    files, so SIGHUP and `POST /reload` rotate at once); a new or changed one is opened
        //    here, with its watcher thread, and a failure rejects the config.
        let new_identity = match &config.spec.identity {
            Some(spec) => match &self.identity {
                Some(node) if node.spec == *spec => {
                    // A refused reread is counted and logged by the store, and the old material
                    // keeps serving: the rest of the config still applies.
                    let _ = node.store.reload();
                    None
                }
                _ => Some(self.open_identity(&config, spec)?),
            },
            None => None,
        };
        let mesh = crate::tls::Mesh {
            store: match (&new_identity, &config.spec.identity, &self.identity) {
                (Some(node), _, _) => Some(Arc::clone(&node.store)),
                (None, Some(_), Some(node)) => Some(Arc::clone(&node.store)),
                _ => None,
            },
            metrics: Arc::clone(&self.shared.identity_metrics),
        };

        // 4. Compile against the current snapshot, carrying counters over by name.
        let current = self.shared.store.load();
        let generation = current.generation + 1;
        let mut next =
            snapshot::compile_with(&config, generation, self.workers.len(), &current, &mesh)?;

        // 5. Sockets for listeners that are new or moved (adopted from the previous process after
        //    an upgrade, else bound); keep the others as they are.
        let mut opened: Vec<(Arc<str>, Vec<Vec<std::net::TcpListener>>)> = Vec::new();
        let mut kept: HashMap<Arc<str>, Vec<std::net::TcpListener>> = HashMap::new();
        let mut errors = Vec::new();
        for (index, listener) in next.listeners.iter_mut().enumerate() {
            if let Some(bound) = self.bound.get(&listener.name)
                && bound.configured == listener.address
            {
                listener.local_addr = bound.local;
                continue;
            }
            // A [node] listener in tproxy mode accepts connections to addresses that are not
            // the node's: its sockets are transparent.
            let transparent = listener.node.is_some()
                && next
                    .node
                    .as_ref()
                    .is_some_and(|node| node.capture == config_schema::CaptureMode::Tproxy);
            let sockets = match self
                .inherited
                .remove(&*listener.name)
                .filter(|inherited| inherited.configured == listener.address)
            {
                Some(inherited) => {
                    info!(listener = %listener.name, address = %inherited.local, sockets = inherited.sockets.len(), "adopting listening sockets from the previous process");
                    listener::adopt(inherited.local, inherited.sockets, &self.cores, transparent)
                }
                None => listener::bind_per_worker(listener.address, &self.cores, transparent).map(
                    |(local, sockets)| (local, sockets.into_iter().map(|s| vec![s]).collect()),
                ),
            };
            let duplicated = sockets.and_then(|(local, per_worker)| {
                let copies = per_worker
                    .iter()
                    .flatten()
                    .map(std::net::TcpListener::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()?;
                Ok((local, per_worker, copies))
            });
            match duplicated {
                Ok((local, per_worker, copies)) => {
                    listener.local_addr = local;
                    opened.push((Arc::clone(&listener.name), per_worker));
                    kept.insert(Arc::clone(&listener.name), copies);
                }
                Err(e) => errors.push(config.error_at(
                    &format!("listeners[{index}].address"),
                    format!("cannot listen on {}: {e}", listener.address),
                )),
            }
        }
        if !errors.is_empty() {
            // Dropping `opened` closes the sockets bound so far; nothing was published.
            return Err(errors);
        }
        // Inherited sockets that no listener of this config adopted: closed here; the previous
        // process still holds them until it stops.
        self.inherited.clear();
        let closed: Vec<Arc<str>> = self
            .bound
            .iter()
            .filter(|(name, bound)| {
                next.listener(name)
                    .is_none_or(|l| l.address != bound.configured)
            })
            .map(|(name, _)| Arc::clone(name))
            .collect();

        // 6. Publish: from here on, every new connection and request sees the new snapshot.
        let mut previous = std::mem::take(&mut self.bound);
        for l in &next.listeners {
            let sockets = match kept.remove(&l.name) {
                Some(sockets) => sockets,
                None => previous
                    .remove(&l.name)
                    .map(|b| b.sockets)
                    .unwrap_or_default(),
            };
            self.bound.insert(
                Arc::clone(&l.name),
                Bound {
                    configured: l.address,
                    local: l.local_addr,
                    sockets,
                },
            );
        }
        // The control thread's copies of removed listeners' sockets; the workers' copies close
        // once their accept loops have emptied the queues.
        drop(previous);
        for name in &closed {
            info!(listener = %name, "listener removed or moved: its sockets stop accepting");
        }
        for (name, _) in &opened {
            if let Some(l) = next.listener(name) {
                info!(listener = %l.name, address = %l.local_addr, protocol = ?l.protocol, "listening");
            }
        }
        self.shared.set_admin_token(admin_token);
        self.shared.store.publish(Arc::new(next));
        // The replaced store's watcher stops here; connections and configs still holding the
        // old store keep its last material until they end.
        if let Some(node) = new_identity {
            self.shared.identity.store(Some(Arc::clone(&node.store)));
            self.identity = Some(node);
        } else if config.spec.identity.is_none() {
            self.shared.identity.store(None);
            self.identity = None;
        }

        // 7. Tell each worker which sockets to start and stop accepting on; each acknowledges
        //    `generation` when done (`Shared::wait_for_workers`).
        let mut per_worker: Vec<Vec<(Arc<str>, std::net::TcpListener)>> =
            self.workers.iter().map(|_| Vec::new()).collect();
        for (name, sockets) in opened {
            for (worker, own) in sockets.into_iter().enumerate() {
                for socket in own {
                    per_worker[worker].push((Arc::clone(&name), socket));
                }
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
        info!(
            generation,
            elapsed_us = started.elapsed().as_micros(),
            "config applied"
        );
        Ok(generation)
    }

    /// Opens `[identity]`'s store and starts its watcher; an error at the file's key.
    fn open_identity(
        &self,
        config: &Config,
        spec: &IdentitySpec,
    ) -> Result<NodeIdentity, Vec<ConfigError>> {
        let files = IdentityFiles::from_spec(spec);
        let store = Store::open(files, Arc::clone(&self.shared.identity_metrics))
            .map_err(|e| vec![config.error_at(&identity_key(spec, &e), e.to_string())])?;
        let watcher = store.watch(POLL_INTERVAL).map_err(|e| {
            vec![config.error_at(
                "identity",
                format!("cannot start the identity watcher thread: {e}"),
            )]
        })?;
        Ok(NodeIdentity {
            spec: spec.clone(),
            store,
            _watcher: watcher,
        })
    }

    fn warn_about_restart_only_settings(&self, config: &Config) {
        let current = self.shared.store.load();
        if current.generation == 0 {
            return;
        }
        if current.spec.runtime != config.spec.runtime {
            warn!(
                "[runtime] changed: worker count, I/O driver, drain timeout and upgrade socket take effect at the next restart"
            );
        }
        if current.spec.admin.address != config.spec.admin.address
            || current.spec.admin.max_connections != config.spec.admin.max_connections
        {
            warn!(
                "admin.address or admin.max_connections changed: they take effect at the next restart"
            );
        }
    }

    /// Copies of every listening socket, for a successor process (binary upgrade). The kernel
    /// sockets are shared: the successor accepts from the same queues.
    pub fn handover(&self) -> std::io::Result<Vec<ListenerSockets>> {
        let mut names: Vec<&Arc<str>> = self.bound.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let bound = &self.bound[name];
                Ok(ListenerSockets {
                    name: name.to_string(),
                    configured: bound.configured,
                    local: bound.local,
                    sockets: bound
                        .sockets
                        .iter()
                        .map(std::net::TcpListener::try_clone)
                        .collect::<std::io::Result<_>>()?,
                })
            })
            .collect()
    }

    /// Stops accepting everywhere, waits for workers to finish their connections (each up to
    /// `deadline`), and joins them.
    pub fn drain(mut self, deadline: std::time::Instant) {
        self.shared.draining.store(true, Ordering::Release);
        for worker in &self.workers {
            if let Err(e) = worker.send(WorkerCommand::Drain { deadline }) {
                warn!(error = %e, "could not tell worker to drain");
            }
        }
        // The workers' accept loops close the last copies once they have emptied the queues.
        self.bound.clear();
        for worker in self.workers {
            worker.join();
        }
    }
}

/// The TOML path of the `[identity]` key naming the file a load error is about.
fn identity_key(spec: &IdentitySpec, error: &LoadError) -> String {
    let file = error.file.as_path();
    if file == std::path::Path::new(&spec.key) {
        return "identity.key".into();
    }
    if file == std::path::Path::new(&spec.ca_bundle) {
        return "identity.ca_bundle".into();
    }
    for (i, bundle) in spec.trust_bundles.iter().enumerate() {
        if file == std::path::Path::new(&bundle.ca) {
            return format!("identity.trust_bundles[{i}].ca");
        }
    }
    "identity.cert".into()
}

fn whole_file_error(message: String) -> ConfigError {
    ConfigError {
        path: String::new(),
        line: 0,
        column: 0,
        message,
    }
}
