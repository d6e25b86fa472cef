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
use config_schema::{
    Config, ConfigError, ConfigSpec, Http2Spec, L4Copy, LbPolicy, ListenerProtocol,
    UpstreamProtocol,
};

use crate::access_log::AccessLogSink;
use crate::http::h1::HeadLimits;
use crate::http::h2::H2ServerSettings;
use crate::http::h2::guard::GuardLimits;
use crate::http::pool::PoolLimits;
use crate::routing::{self, RouteCompileError, RouteConfig, RouteTable};
use crate::stats::{ClusterCounters, ListenerCounters, PerWorker, RouteCounters};
use crate::upstream::Balancer;

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
    pub access_log: Option<AccessLogSink>,
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
}

/// The HTTP settings of a listener.
#[derive(Debug)]
pub struct HttpSettings {
    /// Request head limits.
    pub limits: HeadLimits,
    /// Largest request body unless the route says otherwise; 0 = unlimited.
    pub max_request_body: u64,
    /// Time allowed for a request head once its first byte arrived.
    pub request_header_timeout: Duration,
    /// Keep-alive idle limit between requests (the listener's idle timeout).
    pub idle_timeout: Option<Duration>,
    /// Proxies in front of this one whose `X-Forwarded-*` headers are trusted.
    pub xff_trusted_hops: u32,
    /// The routes this listener serves.
    pub routes: Option<Arc<RouteTable>>,
    /// HTTP/2 server settings and abuse limits.
    pub h2: H2ServerSettings,
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
    /// Counters, carried across reloads by name.
    pub stats: Arc<PerWorker<ClusterCounters>>,
}

/// How a cluster's HTTP/2 connections are shared.
#[derive(Debug, Clone, Copy)]
pub struct H2ClusterSettings {
    /// Streams per connection before another connection is opened.
    pub max_streams: u32,
}

/// One upstream endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative weight.
    pub weight: u32,
}

/// Compiles a validated config into the snapshot for `generation`.
///
/// Stats objects whose names survive from `previous` are reused. Compilation reports errors that
/// validation cannot see (once TLS lands: unreadable certificate files) in the same located form as
/// validation errors; today every validated config compiles.
pub fn compile(
    config: &Config,
    generation: u64,
    workers: usize,
    previous: &Snapshot,
) -> Result<Snapshot, Vec<ConfigError>> {
    let spec = &config.spec;

    let mut errors = Vec::new();
    let mut clusters: Vec<Arc<Cluster>> = Vec::with_capacity(spec.clusters.len());
    for (index, c) in spec.clusters.iter().enumerate() {
        let balancer = match Balancer::new(c) {
            Ok(balancer) => balancer,
            Err(e) => {
                errors
                    .push(config.error_at(&format!("clusters[{index}].lb_policy"), e.to_string()));
                continue;
            }
        };
        let stats = previous
            .clusters
            .iter()
            .find(|old| *old.name == *c.name && old.stats.len() == workers)
            .map_or_else(
                || Arc::new(PerWorker::new(workers)),
                |old| Arc::clone(&old.stats),
            );
        clusters.push(Arc::new(Cluster {
            name: c.name.as_str().into(),
            index,
            endpoints: c
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    address: e.address,
                    weight: e.weight,
                })
                .collect(),
            lb_policy: c.lb_policy,
            balancer,
            connect_timeout: c.connect_timeout.get(),
            pool: PoolLimits {
                max_connections: c.pool.max_connections_per_endpoint,
                max_idle: c.pool.max_idle_per_endpoint,
                idle_timeout: c.pool.idle_timeout.get(),
            },
            protocol: c.protocol,
            h2: H2ClusterSettings {
                max_streams: c.pool.max_streams_per_connection,
            },
            stats,
        }));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let cluster_index: HashMap<&str, usize> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (&*c.name, i))
        .collect();
    let routes =
        routing::compile(spec, &cluster_index).map_err(|e| vec![route_error(config, &e)])?;

    let listeners: Vec<Listener> = spec
        .listeners
        .iter()
        .map(|l| {
            let stats = previous
                .listener(&l.name)
                .filter(|old| old.stats.workers.len() == workers)
                .map_or_else(
                    || {
                        Arc::new(ListenerStats {
                            workers: PerWorker::new(workers),
                            open: AtomicU32::new(0),
                        })
                    },
                    |old| Arc::clone(&old.stats),
                );
            let idle_timeout = (!l.idle_timeout.is_zero()).then(|| l.idle_timeout.get());
            let http = (l.protocol != ListenerProtocol::Tcp).then(|| HttpSettings {
                limits: HeadLimits {
                    max_request_line: usize::try_from(l.limits.max_request_line.bytes())
                        .unwrap_or(usize::MAX),
                    max_head: usize::try_from(l.limits.max_header_bytes.bytes())
                        .unwrap_or(usize::MAX),
                    max_headers: l.limits.max_headers as usize,
                },
                max_request_body: l.limits.max_request_body.bytes(),
                request_header_timeout: l.request_header_timeout.get(),
                idle_timeout,
                xff_trusted_hops: l.xff_trusted_hops,
                routes: routes.listener(&l.name).cloned(),
                h2: h2_settings(&l.http2),
            });
            Listener {
                name: l.name.as_str().into(),
                address: l.address,
                local_addr: l.address,
                protocol: l.protocol,
                // Validation guarantees that a named cluster exists.
                cluster: l
                    .cluster
                    .as_deref()
                    .and_then(|c| cluster_index.get(c).copied()),
                max_connections: l.max_connections,
                idle_timeout,
                http,
                l4_copy: spec.runtime.l4_copy,
                stats,
            }
        })
        .collect();
    let listener_index = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (Arc::clone(&l.name), i))
        .collect();

    let route_stats = route_stats(&routes, previous, workers);
    let access_log = match &spec.telemetry.access_log {
        None => None,
        Some(log) => match previous
            .access_log
            .as_ref()
            .filter(|sink| sink.path() == log.path)
        {
            Some(sink) => Some(sink.clone()),
            None => Some(AccessLogSink::open(&log.path).map_err(|e| {
                vec![config.error_at(
                    "telemetry.access_log.path",
                    format!("cannot open {}: {e}", log.path),
                )]
            })?),
        },
    };

    Ok(Snapshot {
        generation,
        spec: Arc::new(spec.clone()),
        listeners,
        clusters,
        routes,
        route_stats,
        access_log,
        listener_index,
    })
}

/// Compiles `[listeners.http2]` into server settings.
fn h2_settings(spec: &Http2Spec) -> H2ServerSettings {
    let bytes_u32 = |size: config_schema::ByteSize| u32::try_from(size.bytes()).unwrap_or(u32::MAX);
    H2ServerSettings {
        max_concurrent_streams: spec.max_concurrent_streams,
        max_header_list_size: bytes_u32(spec.max_header_list_size),
        initial_stream_window: bytes_u32(spec.initial_stream_window),
        initial_connection_window: bytes_u32(spec.initial_connection_window),
        max_pending_accept_reset_streams: spec.max_pending_accept_reset_streams as usize,
        max_local_error_reset_streams: spec.max_local_error_reset_streams as usize,
        max_send_buffer: usize::try_from(spec.max_send_buffer.bytes()).unwrap_or(usize::MAX),
        guard: GuardLimits {
            max_resets: spec.max_pending_accept_reset_streams,
            control_frames_per_second: spec.control_frames_per_second,
            control_frame_burst: spec.control_frame_burst,
            max_consecutive_empty_frames: spec.max_consecutive_empty_frames,
            // A header block may not outgrow the header list limit by much: HPACK compresses,
            // so its encoded size is at most the decoded size plus framing slack.
            max_header_block: bytes_u32(spec.max_header_list_size).saturating_add(16 * 1024),
        },
    }
}

/// Counters for every route, indexed by route id, reusing the previous generation's by route
/// name.
fn route_stats(
    routes: &RouteConfig,
    previous: &Snapshot,
    workers: usize,
) -> Vec<(Arc<str>, Arc<PerWorker<RouteCounters>>)> {
    let old: HashMap<&str, &Arc<PerWorker<RouteCounters>>> = previous
        .route_stats
        .iter()
        .filter(|(_, stats)| stats.len() == workers)
        .map(|(name, stats)| (&**name, stats))
        .collect();
    let mut stats = Vec::new();
    for table in routes.tables() {
        for vhost in table.virtual_hosts() {
            for route in vhost.routes.iter() {
                if stats.len() <= route.id {
                    // Ids of routes no listener serves stay unnamed (and are never matched).
                    stats.resize_with(route.id + 1, || {
                        (Arc::from(""), Arc::new(PerWorker::new(workers)))
                    });
                }
                let counters = old
                    .get(&*route.name)
                    .map_or_else(|| Arc::new(PerWorker::new(workers)), |s| Arc::clone(s));
                stats[route.id] = (Arc::clone(&route.name), counters);
            }
        }
    }
    stats
}

/// A route compile error in the located form of validation errors.
fn route_error(config: &Config, error: &RouteCompileError) -> ConfigError {
    let path = match error {
        RouteCompileError::UnknownCluster { path, .. }
        | RouteCompileError::UnknownVirtualHost { path, .. }
        | RouteCompileError::Regex { path, .. }
        | RouteCompileError::Invalid { path, .. } => path.as_str(),
    };
    config.error_at(path, error.to_string())
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

    fn config(text: &str) -> Config {
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
}
