//! The one immutable snapshot of everything that must change together, and how workers read it.
//!
//! A reload compiles a validated config into a new [`Snapshot`] and publishes it with one atomic
//! pointer swap into the [`SnapshotStore`]. Readers never lock: each worker holds a
//! [`SnapshotReader`] whose `current()` costs one atomic pointer load and compare when nothing
//! changed, and hands out an `Rc` so that per-request clones are plain increments on the worker's
//! own memory (no shared reference-count traffic between cores).
//!
//! An L4 connection keeps the snapshot it started with. HTTP looks up its route per request, so a
//! keep-alive connection sees new routes at once. An old snapshot is freed when the last connection
//! holding it ends.
//!
//! Counters are keyed by stable names and carried from the previous snapshot, so reloads never
//! reset them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use config_schema::{ConfigSpec, L4Copy, LbPolicy, ListenerProtocol, UpstreamProtocol};

use crate::access_log::AccessLog;
use crate::policy::authz::ListenerAuthz;
use crate::policy::{Policies, RateLimiter};
use crate::routing::RouteConfig;
use crate::stats::{ClusterCounters, ListenerCounters, PerWorker, RouteCounters};
use crate::trace::{TraceStats, Tracer};
use crate::upstream::outlier::ClusterHealth;
use crate::upstream::{Balancer, Breaker, RetryBudget};
use crate::workload::{EndpointWorkloads, Workloads};

mod compile;
mod settings;

pub use compile::{compile, compile_with};
pub use settings::{
    GuardLimits, H2ClusterSettings, H2ServerSettings, HeadLimits, HttpSettings,
    PassthroughSettings, PathRules, PoolLimits,
};

/// Everything a worker needs to serve traffic, for one config generation.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every successful reload; 1 is the config loaded at start.
    pub generation: u64,
    /// The config as loaded, for `/config_dump`.
    pub spec: Arc<ConfigSpec>,
    /// Listeners, in config order.
    pub listeners: Vec<Listener>,
    /// Clusters, in config order; referenced by index.
    pub clusters: Vec<Arc<Cluster>>,
    /// Route tables of the HTTP listeners.
    pub routes: RouteConfig,
    /// Per-route counters, indexed by route id, with the route's name; carried across reloads by
    /// name.
    pub route_stats: Vec<(Arc<str>, Arc<PerWorker<RouteCounters>>)>,
    /// Where access-log lines go, if anywhere.
    pub access_log: Option<AccessLog>,
    /// Rate limiters of virtual hosts and routes, by id; carried across reloads by name.
    pub policies: Policies,
    /// Tracing (`[telemetry.tracing]`); `None`: trace headers pass through untouched. Kept
    /// (with its exporter thread) by a reload that leaves the section unchanged.
    pub tracing: Option<Arc<Tracer>>,
    /// Tracing counters, carried across every reload (tracing on or off).
    pub trace_stats: Arc<TraceStats>,
    /// Node-mode counters (HBONE, refusals), carried across reloads while the worker count
    /// holds.
    pub node_stats: Arc<crate::node::NodeStats>,
    /// The `[[workloads]]` table: metric labels by peer address.
    pub workloads: Workloads,
    /// Node mode (`[node]`): its settings, services and the HBONE TLS configs; `None` without
    /// `[node]`.
    pub node: Option<Arc<crate::node::NodeTable>>,
    listener_index: HashMap<Arc<str>, usize>,
}

impl Snapshot {
    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listener_index.get(name).map(|&i| &self.listeners[i])
    }

    /// A snapshot with nothing in it: what workers see before the first config is published.
    pub fn empty() -> Self {
        Self {
            generation: 0,
            spec: Arc::new(ConfigSpec::default()),
            listeners: Vec::new(),
            clusters: Vec::new(),
            routes: RouteConfig::default(),
            route_stats: Vec::new(),
            access_log: None,
            policies: Policies::default(),
            tracing: None,
            trace_stats: Arc::new(TraceStats::new(0)),
            node_stats: Arc::new(crate::node::NodeStats::new(0)),
            workloads: Workloads::default(),
            node: None,
            listener_index: HashMap::new(),
        }
    }
}

/// A compiled listener.
#[derive(Debug)]
pub struct Listener {
    /// Stable name.
    pub name: Arc<str>,
    /// The address in the config (port 0 means "any free port").
    pub address: SocketAddr,
    /// The address actually bound, filled in by the reloader before publishing.
    pub local_addr: SocketAddr,
    /// What the listener speaks.
    pub protocol: ListenerProtocol,
    /// Index into [`Snapshot::clusters`] of the TCP destination.
    pub cluster: Option<usize>,
    /// Connection limit across all workers.
    pub max_connections: Option<u32>,
    /// Close connections idle for this long.
    pub idle_timeout: Option<Duration>,
    /// HTTP settings, for `http` and `auto` listeners.
    pub http: Option<HttpSettings>,
    /// How opaque TCP connections move bytes (`[runtime] l4_copy`).
    pub l4_copy: L4Copy,
    /// Counters, carried across reloads by name.
    pub stats: Arc<ListenerStats>,
    /// Local rate limit: tcp listeners, new connections; http and auto listeners, HTTP requests.
    pub rate_limit: Option<RateLimiter>,
    /// The authorization policies that apply to this listener; `None` when none does.
    pub authz: Option<ListenerAuthz>,
    /// TLS passthrough (tcp listeners): SNI routes and the ClientHello timeout. The default
    /// cluster is [`Listener::cluster`].
    pub passthrough: Option<PassthroughSettings>,
    /// TLS termination, when the listener has `[listeners.tls]`.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Istio metrics: this listener reports as `reporter="source"` (else `destination`).
    pub reporter_source: bool,
    /// A listener of `[node]` (its name is the role's): captured or tunnelled connections,
    /// served by [`crate::node::serve`].
    pub node: Option<crate::node::Role>,
}

/// Counters and the connection gauge of one listener.
#[derive(Debug)]
pub struct ListenerStats {
    /// Per-worker counters.
    pub workers: PerWorker<ListenerCounters>,
    /// Connections open across all workers; only maintained when `max_connections` is set,
    /// because it is the one piece of per-connection state shared between cores.
    pub open: AtomicU32,
}

/// A compiled upstream cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Stable name.
    pub name: Arc<str>,
    /// Position in [`Snapshot::clusters`] (routes refer to clusters by index).
    pub index: usize,
    /// Endpoints, in config order.
    pub endpoints: Box<[Endpoint]>,
    /// Load-balancing policy.
    pub lb_policy: LbPolicy,
    /// The policy's immutable tables (rings, schedules); per-core cursors live in the worker.
    pub balancer: Balancer,
    /// Time allowed per connect attempt.
    pub connect_timeout: Duration,
    /// Per-core connection pool settings.
    pub pool: PoolLimits,
    /// The HTTP version spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// HTTP/2 connection settings.
    pub h2: H2ClusterSettings,
    /// The retry budget, shared by all workers; carried across reloads while unchanged.
    pub retry_budget: Arc<RetryBudget>,
    /// Counters, carried across reloads by name.
    pub stats: Arc<PerWorker<ClusterCounters>>,
    /// The circuit breaker, when the cluster has one (its counts carried across reloads by name).
    pub breaker: Option<Breaker>,
    /// Which endpoints may take traffic, when the cluster has outlier detection or health checks
    /// (per-endpoint state carried across reloads by address).
    pub health: Option<ClusterHealth>,
    /// TLS to the endpoints, when the cluster has `[clusters.tls]`.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// A fingerprint of `tls` (0: plaintext), part of the upstream pools' keys, so that
    /// connections made with other TLS settings are never handed out for this cluster.
    pub tls_key: u64,
    /// The `[[workloads]]` entries of the endpoints, resolved when the snapshot was built: the
    /// Istio metrics' `destination_workload` labels.
    pub endpoint_workloads: EndpointWorkloads,
    /// A hash of the name, the TCP series' key for the cluster (never 0).
    pub name_hash: u64,
}

/// One upstream endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative weight.
    pub weight: u32,
}

/// The process-wide slot holding the current snapshot. Written only by the control thread.
#[derive(Debug)]
pub struct SnapshotStore {
    current: Arc<ArcSwap<Snapshot>>,
}

impl SnapshotStore {
    /// A store holding `initial`.
    pub fn new(initial: Snapshot) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(initial)),
        }
    }

    /// Publishes `snapshot`: every reader sees it on its next `current()`.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.current.store(snapshot);
    }

    /// The current snapshot (for the control and admin threads; workers use a reader).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A reader for one worker thread.
    pub fn reader(&self) -> SnapshotReader {
        let mut cache = Cache::new(Arc::clone(&self.current));
        let local = SnapshotRef(Rc::new(Arc::clone(cache.load())));
        SnapshotReader { cache, local }
    }
}

/// A worker-local handle on a snapshot: cloning it is a non-atomic increment on the worker's own
/// memory, while the `Arc` inside is touched only when a new snapshot is published.
#[derive(Debug, Clone)]
pub struct SnapshotRef(
    // The double indirection is the point: see the type's docs.
    #[allow(clippy::redundant_allocation)] Rc<Arc<Snapshot>>,
);

impl std::ops::Deref for SnapshotRef {
    type Target = Snapshot;

    #[inline]
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

/// A worker's handle on the current snapshot. `!Send`: it belongs to one worker thread.
#[derive(Debug)]
pub struct SnapshotReader {
    cache: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    local: SnapshotRef,
}

impl SnapshotReader {
    /// The current snapshot. When nothing was published since the last call this is one atomic
    /// load, a pointer compare and a non-atomic reference-count increment.
    #[inline]
    pub fn current(&mut self) -> SnapshotRef {
        let latest = self.cache.load();
        if !Arc::ptr_eq(latest, &self.local.0) {
            self.local = SnapshotRef(Rc::new(Arc::clone(latest)));
        }
        self.local.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> config_schema::Config {
        config_schema::parse(text).expect("valid config")
    }

    const ONE_TCP: &str = r#"
        [[listeners]]
        name = "db"
        address = "127.0.0.1:0"
        protocol = "tcp"
        cluster = "db"

        [[clusters]]
        name = "db"
        endpoints = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 3 }]
    "#;

    #[test]
    fn compile_resolves_cluster_references() {
        let snapshot = compile(&config(ONE_TCP), 1, 2, &Snapshot::empty()).expect("compiles");
        let listener = snapshot.listener("db").expect("listener");
        let cluster = &snapshot.clusters[listener.cluster.expect("cluster index")];
        assert_eq!(&*cluster.name, "db");
        assert_eq!(cluster.endpoints.len(), 2);
        assert_eq!(cluster.endpoints[1].weight, 3);
    }

    #[test]
    fn counters_survive_a_recompile_by_name() {
        let first = compile(&config(ONE_TCP), 1, 2, &Snapshot::empty()).expect("compiles");
        first
            .listener("db")
            .expect("db")
            .stats
            .workers
            .slot(1)
            .accepted
            .add(7);
        first.clusters[0].stats.slot(0).connections.add(3);
        let second = compile(&config(ONE_TCP), 2, 2, &first).expect("compiles");
        assert_eq!(
            second
                .listener("db")
                .expect("db")
                .stats
                .workers
                .slot(1)
                .accepted
                .get(),
            7
        );
        assert_eq!(second.clusters[0].stats.slot(0).connections.get(), 3);
    }

    #[test]
    fn reader_sees_published_snapshots() {
        let store = SnapshotStore::new(Snapshot::empty());
        let mut reader = store.reader();
        assert_eq!(reader.current().generation, 0);
        let next = compile(&config(ONE_TCP), 1, 1, &store.load()).expect("compiles");
        store.publish(Arc::new(next));
        assert_eq!(reader.current().generation, 1);
        // Unchanged: the same local handle is reused.
        let a = reader.current();
        let b = reader.current();
        assert!(Rc::ptr_eq(&a.0, &b.0));
    }

    #[test]
    fn compile_carries_breaker_counts_and_endpoint_state_over_a_reload() {
        use crate::upstream::breaker::Resource;
        use crate::upstream::outlier::Observation;
        let text = "[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
                    circuit_breaker = { max_requests = 2 }\n\
                    outlier_detection = { consecutive_5xx = 1, max_ejection_percent = 100 }\n";
        let config = config_schema::parse(text).expect("valid");
        let first = compile(&config, 1, 2, &Snapshot::empty()).expect("compiles");
        let cluster = &first.clusters[0];
        let permit = cluster
            .breaker
            .as_ref()
            .and_then(|b| b.try_acquire(Resource::Requests))
            .expect("permit");
        if let Some(health) = &cluster.health {
            health.observe(1, Observation::Response(503));
        }
        // The same cluster compiled again, as a reload with one worker fewer does.
        let second = compile(&config, 2, 1, &first).expect("compiles");
        let cluster = &second.clusters[0];
        let breaker = cluster.breaker.as_ref().expect("breaker");
        assert_eq!(breaker.in_use(Resource::Requests), 1);
        drop(permit);
        assert_eq!(breaker.in_use(Resource::Requests), 0);
        let health = cluster.health.as_ref().expect("health");
        assert!(!health.is_usable(1), "still ejected");
        assert!(health.is_usable(0));
    }
}
