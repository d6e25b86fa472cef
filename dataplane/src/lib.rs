//! The ringmesh data plane: a thread-per-core, shared-nothing proxy on monoio (io_uring or epoll).
//!
//! # Layout
//! - [`cli`], [`server`]: the `ringmesh` binary and its threads (control, signals, admin, workers).
//! - [`reload`]: the reload path — validate, check files, compile, bind, publish, notify workers,
//!   wait for their acknowledgement; [`watch`] reloads on file change; [`upgrade`] hands the
//!   listening sockets to a new process (binary upgrade).
//! - [`snapshot`]: the immutable per-generation [`snapshot::Snapshot`], how a config compiles into
//!   it, and how workers read it.
//! - [`worker`]: one pinned monoio runtime per core; [`driver`] picks io_uring or epoll.
//! - [`listener`]: `SO_REUSEPORT` + `SO_INCOMING_CPU` sockets per worker and the accept loop.
//! - [`l4`]: opaque TCP proxying (connect with fallback, bidirectional copy with half-close).
//! - [`tls`]: TLS with rustls over monoio's poll-io bridge (both drivers): termination on
//!   listeners, origination to clusters, plain-or-TLS transport halves, configs from PEM files.
//! - [`routing`]: HTTP route tables (virtual hosts, routes, precompiled actions), compiled per
//!   generation and matched per request without allocation.
//! - [`upstream`]: load balancers — immutable per-cluster tables plus per-core pick state — and
//!   the process-wide cluster policies (retry budgets, circuit breakers, outlier detection and
//!   health verdicts).
//! - [`health`]: the health thread, one per process: active health checks and outlier sweeps.
//! - [`policy`]: request admission — local rate limits (process-wide buckets held in the
//!   snapshot) and fault injection.
//! - [`identity`]: SPIFFE workload identity for mTLS — X.509-SVID verifiers for rustls, the
//!   node's SVID, key and trust bundles with rotation, `/certs`.
//! - [`trace`]: distributed tracing — trace context (W3C, B3), spans, the OTLP exporter thread.
//! - [`admin`]: the admin API on its own thread.
//! - [`stats`]: single-writer per-worker counters; [`event`]: a worker-local one-shot event.
//! - [`core`]: a worker's own state (snapshot reader, load-balancer state, pools, access-log
//!   buffer, random numbers), shared by the tasks on its thread.
//!
//! Imports form no circle: `server` → `reload`/`admin`/`upgrade`/`watch`/`health` → `worker` →
//! `listener` → `http`, `l4` → `core` → `snapshot` → `trace`, `policy` → `routing`, `upstream`,
//! `tls`, `stats`, `event`
//! (`farm-studio look dataplane` draws it). The settings the protocol code honours are owned by
//! `snapshot` (`snapshot::settings`), so the snapshot never imports a protocol module.
//! [`identity`] imports no other module of the crate; `admin` and `shared` use it.

pub mod access_log;
pub mod admin;
pub mod capture;
pub mod cli;
pub mod contain;
pub mod core;
pub mod driver;
pub mod event;
pub mod hbone;
pub mod health;
pub mod http;
pub mod identity;
pub mod l4;
pub mod listener;
pub mod log_budget;
pub mod net;
pub mod node;
pub mod policy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod stats;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod upstream;
pub mod watch;
pub mod worker;
pub mod workload;
