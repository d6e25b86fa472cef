//! Compiling a validated config into a [`Snapshot`]: clusters and their balancers, route tables,
//! listeners with their HTTP settings, and counters carried over by name from the previous
//! generation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use config_schema::{
    Config, ConfigError, Http2Spec, HttpLimitsSpec, ListenerProtocol, Reporter, TlsMode,
};

use super::{
    Cluster, Endpoint, GuardLimits, H2ClusterSettings, H2ServerSettings, HeadLimits, HttpSettings,
    Listener, ListenerStats, PassthroughSettings, PathRules, PoolLimits, Snapshot,
};
use crate::access_log::AccessLog;
use crate::policy::authz::{self, ListenerAuthz};
use crate::policy::{Policies, RateLimiter};
use crate::routing::sni::SniRoutes;
use crate::routing::{self, RouteCompileError, RouteConfig};
use crate::stats::{PerWorker, RouteCounters};
use crate::tls::{ClientTls, Mesh, ServerTls};
use crate::trace::{TraceStats, Tracer};
use crate::upstream::outlier::ClusterHealth;
use crate::upstream::{Balancer, Breaker, RetryBudget};
use crate::workload::{EndpointWorkloads, Workloads};

/// Compiles a validated config into the snapshot for `generation`.
///
/// Stats objects whose names survive from `previous` are reused. Compilation reports errors that
/// validation cannot see (TLS files that do not load, a key that does not fit its certificate) in
/// the same located form as validation errors.
pub fn compile(
    config: &Config,
    generation: u64,
    workers: usize,
    previous: &Snapshot,
) -> Result<Snapshot, Vec<ConfigError>> {
    compile_with(config, generation, workers, previous, &Mesh::default())
}

/// [`compile`] with the node's identity: `[identity]`'s store (opened by the reload path) is
/// the certificate of mesh listeners and clusters and the trust of their peers.
pub fn compile_with(
    config: &Config,
    generation: u64,
    workers: usize,
    previous: &Snapshot,
    mesh: &Mesh,
) -> Result<Snapshot, Vec<ConfigError>> {
    let spec = &config.spec;
    // Pools are keyed by the TLS settings and, when the node has an identity, by which one (its
    // trust domain and files; for every TLS cluster, which is simpler than telling which of them
    // present or trust it and costs only a fresh pool when [identity] changes): connections made
    // as one identity are never reused as another.
    let identity_key = mesh
        .store
        .as_ref()
        .map(|store| format!("{:?}", store.files()))
        .unwrap_or_default();

    let workloads = Workloads::compile(
        &spec.workloads,
        spec.node.as_ref(),
        spec.identity.as_ref().map(|i| i.trust_domain.as_str()),
    );
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
        let old = previous.clusters.iter().find(|old| *old.name == *c.name);
        let stats = old.filter(|old| old.stats.len() == workers).map_or_else(
            || Arc::new(PerWorker::new(workers)),
            |old| Arc::clone(&old.stats),
        );
        // An unchanged budget keeps what it counted: a reload does not refill it.
        let retry_budget = old
            .filter(|old| old.retry_budget.is(&c.retry_budget))
            .map_or_else(
                || Arc::new(RetryBudget::new(&c.retry_budget)),
                |old| Arc::clone(&old.retry_budget),
            );
        // Breaker counts and endpoint health carry over by name, whatever the worker count.
        let old = previous.clusters.iter().find(|old| *old.name == *c.name);
        let breaker = c
            .circuit_breaker
            .as_ref()
            .map(|spec| Breaker::new(spec, old.and_then(|old| old.breaker.as_ref())));
        let tls = match &c.tls {
            Some(tls) => match ClientTls::build(tls, c.protocol, workers, mesh) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(e) => {
                    errors.push(config.error_at(
                        &tls_path(&format!("clusters[{index}].tls"), &e.at),
                        e.message,
                    ));
                    continue;
                }
            },
            None => None,
        };
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
            retry_budget,
            stats,
            breaker,
            health: ClusterHealth::new(c, old.and_then(|old| old.health.as_ref())),
            tls_key: c
                .tls
                .as_ref()
                .map_or(0, |spec| tls_fingerprint(spec, c.protocol, &identity_key)),
            tls,
            endpoint_workloads: EndpointWorkloads::resolve(
                &workloads,
                c.endpoints.iter().map(|e| e.address),
            ),
            name_hash: xxhash_rust::xxh3::xxh3_64(c.name.as_bytes()).max(1),
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

    let authz_policies = authz::compile_all(&spec.authorization_policies);
    let mut tls_errors = Vec::new();
    let listeners: Vec<Listener> = spec
        .listeners
        .iter()
        .enumerate()
        .map(|(index, l)| {
            // Files are read at every reload: a SIGHUP picks up renewed certificates. Passthrough
            // listeners never decrypt: only terminate mode loads certificates.
            let tls = l
                .tls
                .as_ref()
                .filter(|tls| tls.mode == TlsMode::Terminate)
                .and_then(|tls| match ServerTls::build(tls, l.protocol, mesh) {
                    Ok(tls) => Some(Arc::new(tls)),
                    Err(e) => {
                        tls_errors.push(config.error_at(
                            &tls_path(&format!("listeners[{index}].tls"), &e.at),
                            e.message,
                        ));
                        None
                    }
                });
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
                stream_idle_timeout: (!l.stream_idle_timeout.is_zero())
                    .then(|| l.stream_idle_timeout.get()),
                xff_trusted_hops: l.xff_trusted_hops,
                routes: routes.listener(&l.name).cloned(),
                h2: h2_settings(&l.http2, &l.limits),
                paths: PathRules {
                    normalize: l.normalize_path,
                    merge_slashes: l.merge_slashes,
                    escaped_slashes: l.path_with_escaped_slashes,
                },
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
                rate_limit: l.rate_limit.as_ref().map(|limit| {
                    RateLimiter::new(
                        "listener",
                        l.name.as_str().into(),
                        routing::rate_limit(limit),
                        previous
                            .listener(&l.name)
                            .and_then(|old| old.rate_limit.as_ref()),
                        workers,
                    )
                }),
                authz: ListenerAuthz::compile(
                    &l.name,
                    &authz_policies,
                    previous
                        .listener(&l.name)
                        .filter(|old| old.stats.workers.len() == workers)
                        .and_then(|old| old.authz.as_ref()),
                    workers,
                ),
                // Validation keeps passthrough to tcp listeners, and every route's cluster
                // exists.
                passthrough: l
                    .tls
                    .as_ref()
                    .filter(|tls| {
                        tls.mode == TlsMode::Passthrough && l.protocol == ListenerProtocol::Tcp
                    })
                    .map(|tls| PassthroughSettings {
                        routes: SniRoutes::new(tls.sni_routes.iter().filter_map(
                            |(name, cluster)| {
                                Some((name.as_str(), *cluster_index.get(cluster.as_str())?))
                            },
                        )),
                        hello_timeout: l.request_header_timeout.get(),
                    }),
                // Absent: an inbound mesh listener (it verifies client certificates) reports
                // as the destination, anything else (outbound, gateway) as the source.
                reporter_source: match l.reporter {
                    Some(reporter) => reporter == Reporter::Source,
                    None => tls.as_ref().is_none_or(|tls| tls.client_auth.is_none()),
                },
                tls,
                node: None,
            }
        })
        .collect();
    let mut listeners = listeners;
    if let Some(node) = &spec.node {
        listeners.extend(node_listeners(
            node,
            spec,
            &authz_policies,
            previous,
            workers,
        ));
    }
    if !tls_errors.is_empty() {
        return Err(tls_errors);
    }
    let listener_index = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (Arc::clone(&l.name), i))
        .collect();

    let route_stats = route_stats(&routes, previous, workers);
    let policies = Policies::compile(&routes, &previous.policies, workers);
    let access_log = match &spec.telemetry.access_log {
        None => None,
        Some(log) => Some(
            AccessLog::compile(log, previous.access_log.as_ref()).map_err(|(key, e)| {
                vec![config.error_at(&format!("telemetry.access_log.{key}"), e)]
            })?,
        ),
    };

    let node_stats = if previous.node_stats.hbone.len() == workers {
        Arc::clone(&previous.node_stats)
    } else {
        Arc::new(crate::node::NodeStats::new(workers))
    };
    let trace_stats = if previous.trace_stats.workers.len() == workers {
        Arc::clone(&previous.trace_stats)
    } else {
        Arc::new(TraceStats::new(workers))
    };
    let tracing =
        match &spec.telemetry.tracing {
            None => None,
            Some(tracing) => match previous.tracing.as_ref().filter(|old| {
                old.spec == *tracing && Arc::ptr_eq(&previous.trace_stats, &trace_stats)
            }) {
                Some(old) => Some(Arc::clone(old)),
                None => Some(Arc::new(
                    Tracer::new(tracing, &trace_stats, &crate::trace::node_name()).map_err(
                        |(key, e)| vec![config.error_at(&format!("telemetry.tracing.{key}"), e)],
                    )?,
                )),
            },
        };

    // Node mode: the table, and with [identity] the HBONE TLS configs (built here, once per
    // generation, never per connection).
    let node = match (
        crate::node::NodeTable::compile(spec, &workloads),
        mesh.store.as_ref(),
    ) {
        (Some(table), Some(store)) => {
            Some(Arc::new(table.with_tls(store, &mesh.metrics).map_err(
                |e| vec![config.error_at("node", format!("HBONE TLS: {e}"))],
            )?))
        }
        (table, _) => table.map(Arc::new),
    };

    Ok(Snapshot {
        generation,
        tracing,
        trace_stats,
        node_stats,
        spec: Arc::new(spec.clone()),
        listeners,
        clusters,
        routes,
        route_stats,
        access_log,
        policies,
        node,
        workloads,
        listener_index,
    })
}

/// The listeners of `[node]`, named by their role: opaque TCP, no cluster (the node table
/// decides where each connection goes), authorized by the policies of the node-mode scope
/// (`listeners = ["inbound"]` or none), each reporting from its side of the mesh.
fn node_listeners(
    node: &config_schema::NodeSpec,
    spec: &config_schema::ConfigSpec,
    authz_policies: &[(Arc<crate::policy::authz::Policy>, Vec<String>)],
    previous: &Snapshot,
    workers: usize,
) -> Vec<Listener> {
    use crate::node::Role;
    [
        (Role::Outbound, node.outbound),
        (Role::Inbound, node.inbound),
        (Role::Hbone, node.hbone),
    ]
    .into_iter()
    .filter_map(|(role, address)| Some((role, address?)))
    .map(|(role, address)| {
        let name = role.name();
        let old = previous
            .listener(name)
            .filter(|old| old.stats.workers.len() == workers);
        Listener {
            name: name.into(),
            address,
            local_addr: address,
            protocol: ListenerProtocol::Tcp,
            cluster: None,
            max_connections: None,
            idle_timeout: None,
            http: None,
            l4_copy: spec.runtime.l4_copy,
            stats: old.map_or_else(
                || {
                    Arc::new(ListenerStats {
                        workers: PerWorker::new(workers),
                        open: AtomicU32::new(0),
                    })
                },
                |old| Arc::clone(&old.stats),
            ),
            rate_limit: None,
            authz: ListenerAuthz::compile(
                config_schema::validate::NODE_POLICY_SCOPE,
                authz_policies,
                old.and_then(|old| old.authz.as_ref()),
                workers,
            ),
            passthrough: None,
            tls: None,
            reporter_source: role == Role::Outbound,
            node: Some(role),
        }
    })
    .collect()
}

/// A fingerprint of a cluster's TLS settings (never 0): equal settings share pooled connections,
/// across clusters and reloads. The files' contents are not part of it: connections made before
/// a certificate was renewed stay pooled until they idle out.
fn tls_fingerprint(
    spec: &config_schema::UpstreamTlsSpec,
    protocol: config_schema::UpstreamProtocol,
    identity: &str,
) -> u64 {
    let text = format!("{spec:?}{protocol:?}{identity}");
    xxhash_rust::xxh3::xxh3_64(text.as_bytes()).max(1)
}

/// The TOML path of a TLS loading error: the section, then the key below it.
fn tls_path(section: &str, at: &str) -> String {
    if at.is_empty() {
        section.to_owned()
    } else {
        format!("{section}.{at}")
    }
}

/// Compiles `[listeners.http2]` into server settings.
/// The advertised SETTINGS_MAX_HEADER_LIST_SIZE is the smaller of `[http2]
/// max_header_list_size` and what the listener's HTTP/1.1 head limits allow in HTTP/2's
/// accounting (each field counts 32 bytes more), so a client learns the limit before it sends.
fn h2_settings(spec: &Http2Spec, limits: &HttpLimitsSpec) -> H2ServerSettings {
    let bytes_u32 = |size: config_schema::ByteSize| u32::try_from(size.bytes()).unwrap_or(u32::MAX);
    let head_limit = limits
        .max_header_bytes
        .bytes()
        .saturating_add(32 * u64::from(limits.max_headers));
    let header_list =
        bytes_u32(spec.max_header_list_size).min(u32::try_from(head_limit).unwrap_or(u32::MAX));
    H2ServerSettings {
        max_concurrent_streams: spec.max_concurrent_streams,
        max_header_list_size: header_list,
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
