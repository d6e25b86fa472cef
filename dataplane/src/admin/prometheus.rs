//! Prometheus text exposition of the per-worker counters, summed at scrape time.
//!
//! Two views of the same counters: `ringmesh_listener_*` summed over workers (what dashboards
//! usually want) and `ringmesh_worker_*` per listener and worker (to see imbalance between cores).
//! Istio's standard metrics (`istio_requests_total`, the duration and size histograms,
//! `istio_tcp_*`) with Istio's full label set come from [`super::istio`], so existing Grafana
//! and Kiali dashboards work unchanged; docs/METRICS.md lists every metric and label. When the
//! node serves an identity, its metrics follow (`ringmesh_cert_expiry_seconds`,
//! `ringmesh_cert_reload*_total`, `ringmesh_tls_handshake_failures_total`;
//! `identity::Store::render_prometheus`).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::exposition::escape;
use crate::policy::authz::{AuthzCounters, NO_ALLOW_MATCHED};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use config_schema::AuthorizationAction;
use std::sync::Arc;

use crate::stats::{
    ClusterCounters, DURATION_BUCKETS_US, Histogram, ListenerCounters, PerWorker, RouteCounters,
};

/// Renders every metric of the process.
pub(super) fn render(shared: &Shared) -> String {
    let snapshot = shared.store.load();
    let mut out = String::with_capacity(8 * 1024);
    process(&mut out, shared, &snapshot);
    listeners(&mut out, &snapshot);
    workers(&mut out, &snapshot);
    clusters(&mut out, &snapshot);
    breakers(&mut out, &snapshot);
    endpoints(&mut out, &snapshot);
    routes(&mut out, &snapshot);
    policies(&mut out, &snapshot);
    authz(&mut out, &snapshot);
    let node = shared.identity.load_full().map(|store| store.current());
    super::istio::render(&mut out, &snapshot, node.as_ref().map(|m| m.id.as_str()));
    tracing_counters(&mut out, &snapshot);
    node_counters(&mut out, &snapshot);
    match shared.identity.load_full() {
        Some(identity) => identity.render_prometheus(&mut out, std::time::SystemTime::now()),
        None => shared.identity_metrics.render_prometheus(&mut out),
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn process(out: &mut String, shared: &Shared, snapshot: &Snapshot) {
    header(
        out,
        "ringmesh_info",
        "gauge",
        "Build and runtime information.",
    );
    let _ = writeln!(
        out,
        "ringmesh_info{{version=\"{}\",driver=\"{}\",workers=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        shared.driver.name(),
        shared.workers.len()
    );
    header(
        out,
        "ringmesh_config_generation",
        "gauge",
        "Generation of the published config.",
    );
    let _ = writeln!(out, "ringmesh_config_generation {}", snapshot.generation);
    header(
        out,
        "ringmesh_worker_config_generation",
        "gauge",
        "Config generation each worker has applied.",
    );
    for (id, worker) in shared.workers.iter().enumerate() {
        let generation = worker.generation.load(Ordering::Acquire);
        let _ = writeln!(
            out,
            "ringmesh_worker_config_generation{{worker=\"{id}\"}} {generation}"
        );
    }
    header(
        out,
        "ringmesh_config_reloads_total",
        "counter",
        "Configs applied, the initial one included.",
    );
    let _ = writeln!(
        out,
        "ringmesh_config_reloads_total {}",
        shared.reloads.load(Ordering::Relaxed)
    );
    header(
        out,
        "ringmesh_config_reload_failed_total",
        "counter",
        "Configs rejected; the previous config kept serving.",
    );
    let _ = writeln!(
        out,
        "ringmesh_config_reload_failed_total {}",
        shared.reload_failures.load(Ordering::Relaxed)
    );
}

/// One metric family read from counters of type `T`: (name suffix, kind, help, accessor).
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

const LISTENER_METRICS: &[Family<ListenerCounters>] = &[
    (
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        |c| c.accepted.get(),
    ),
    (
        "connections_active",
        "gauge",
        "Connections open now.",
        ListenerCounters::active,
    ),
    (
        "connections_closed_total",
        "counter",
        "Served connections that ended.",
        |c| c.closed.get(),
    ),
    (
        "connections_rejected_total",
        "counter",
        "Connections closed at accept because of max_connections.",
        |c| c.rejected.get(),
    ),
    (
        "accept_errors_total",
        "counter",
        "accept() failures (EMFILE, ENFILE, ENOBUFS, ...).",
        |c| c.accept_errors.get(),
    ),
    (
        "idle_timeouts_total",
        "counter",
        "Connections closed by the idle timeout.",
        |c| c.idle_timeouts.get(),
    ),
    (
        "received_bytes_total",
        "counter",
        "Bytes received from downstream clients.",
        |c| c.bytes_received.get(),
    ),
    (
        "sent_bytes_total",
        "counter",
        "Bytes sent to downstream clients.",
        |c| c.bytes_sent.get(),
    ),
    (
        "tls_handshakes_total",
        "counter",
        "TLS handshakes completed.",
        |c| c.tls_handshakes.get(),
    ),
    (
        "tls_handshake_errors_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        |c| c.tls_handshake_errors.get(),
    ),
    (
        "http2_streams_total",
        "counter",
        "HTTP/2 streams accepted.",
        |c| c.h2_streams.get(),
    ),
    (
        "http2_protocol_errors_total",
        "counter",
        "HTTP/2 connections ended by a protocol error.",
        |c| c.h2_protocol_errors.get(),
    ),
    (
        "http2_rapid_reset_total",
        "counter",
        "HTTP/2 connections closed for rapid reset.",
        |c| c.h2_abuse_rapid_reset.get(),
    ),
    (
        "http2_control_flood_total",
        "counter",
        "HTTP/2 connections closed for a control-frame flood (PING, SETTINGS, PRIORITY, ACKs, unknown types).",
        |c| c.h2_abuse_control_flood.get(),
    ),
    (
        "http2_continuation_flood_total",
        "counter",
        "HTTP/2 connections closed for a CONTINUATION flood.",
        |c| c.h2_abuse_continuation_flood.get(),
    ),
    (
        "http2_empty_frames_total",
        "counter",
        "HTTP/2 connections closed for a run of empty frames.",
        |c| c.h2_abuse_empty_frames.get(),
    ),
    (
        "http2_window_update_flood_total",
        "counter",
        "HTTP/2 connections closed for a WINDOW_UPDATE flood.",
        |c| c.h2_abuse_window_update_flood.get(),
    ),
    (
        "http2_made_you_reset_total",
        "counter",
        "HTTP/2 connections closed for provoking stream resets (MadeYouReset).",
        |c| c.h2_abuse_made_you_reset.get(),
    ),
    (
        "authz_revoked_total",
        "counter",
        "Open L4 connections closed because a reload's authorization policies deny them.",
        |c| c.authz_revoked.get(),
    ),
    (
        "sni_routed_total",
        "counter",
        "TLS passthrough: connections sent where an SNI route says.",
        |c| c.sni_routed.get(),
    ),
    (
        "sni_defaulted_total",
        "counter",
        "TLS passthrough: connections sent to the default cluster (no SNI, no route for it, or no ClientHello).",
        |c| c.sni_defaulted.get(),
    ),
    (
        "sni_no_route_total",
        "counter",
        "TLS passthrough: connections closed for want of a route and of a default cluster.",
        |c| c.sni_no_route.get(),
    ),
    (
        "sni_timeouts_total",
        "counter",
        "TLS passthrough: connections closed because no whole ClientHello arrived in time.",
        |c| c.sni_timeouts.get(),
    ),
];

fn listeners(out: &mut String, snapshot: &Snapshot) {
    for (suffix, kind, help, get) in LISTENER_METRICS {
        let name = format!("ringmesh_listener_{suffix}");
        header(out, &name, kind, help);
        for listener in &snapshot.listeners {
            let total = listener.stats.workers.sum(get);
            let _ = writeln!(
                out,
                "{name}{{listener=\"{}\"}} {total}",
                escape(&listener.name)
            );
        }
    }
}

fn workers(out: &mut String, snapshot: &Snapshot) {
    for (suffix, kind, help, get) in &LISTENER_METRICS[..3] {
        let name = format!("ringmesh_worker_{suffix}");
        header(out, &name, kind, &format!("{help} Per worker."));
        for listener in &snapshot.listeners {
            for (worker, counters) in listener.stats.workers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",worker=\"{worker}\"}} {}",
                    escape(&listener.name),
                    get(counters)
                );
            }
        }
    }
}

const CLUSTER_METRICS: &[Family<ClusterCounters>] = &[
    (
        "upstream_connections_total",
        "counter",
        "Upstream connections established.",
        |c| c.connections.get(),
    ),
    (
        "upstream_connect_failures_total",
        "counter",
        "Upstream connects refused or failed.",
        |c| c.connect_failures.get(),
    ),
    (
        "upstream_connect_timeouts_total",
        "counter",
        "Upstream connects that timed out.",
        |c| c.connect_timeouts.get(),
    ),
    (
        "upstream_tls_handshake_errors_total",
        "counter",
        "Upstream TLS handshakes that failed or timed out.",
        |c| c.tls_handshake_errors.get(),
    ),
    (
        "no_endpoint_total",
        "counter",
        "Connections or requests that found no endpoint.",
        |c| c.no_endpoint.get(),
    ),
    (
        "upstream_requests_total",
        "counter",
        "HTTP requests sent upstream.",
        |c| c.requests.get(),
    ),
    (
        "pool_reuse_total",
        "counter",
        "HTTP requests sent on a pooled (reused) connection.",
        |c| c.pool_reuse.get(),
    ),
    (
        "pool_overflow_total",
        "counter",
        "Connection attempts refused because an endpoint's pool was full.",
        |c| c.pool_overflow.get(),
    ),
    (
        "upstream_protocol_errors_total",
        "counter",
        "Malformed upstream responses.",
        |c| c.protocol_errors.get(),
    ),
    (
        "upstream_timeouts_total",
        "counter",
        "Upstream responses that did not arrive in time.",
        |c| c.timeouts.get(),
    ),
    (
        "upstream_retries_total",
        "counter",
        "Retries sent by route retry policies.",
        |c| c.retries.get(),
    ),
    (
        "upstream_retry_overflow_total",
        "counter",
        "Retries refused by the cluster's retry budget.",
        |c| c.retry_overflow.get(),
    ),
];

fn clusters(out: &mut String, snapshot: &Snapshot) {
    for (suffix, kind, help, get) in CLUSTER_METRICS {
        let name = format!("ringmesh_cluster_{suffix}");
        header(out, &name, kind, help);
        for cluster in &snapshot.clusters {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\"}} {}",
                escape(&cluster.name),
                cluster.stats.sum(get)
            );
        }
    }
}

/// Circuit breakers: remaining capacity and overflows per resource, for clusters that have one.
fn breakers(out: &mut String, snapshot: &Snapshot) {
    use crate::upstream::Breaker;
    use crate::upstream::breaker::Resource;
    type Read = fn(&Breaker, Resource) -> u64;
    let families: [(&str, &str, &str, Read); 2] = [
        (
            "ringmesh_cluster_circuit_breaker_remaining",
            "gauge",
            "What is left of a circuit breaker's limit, across workers.",
            |b, r| u64::from(b.remaining(r)),
        ),
        (
            "ringmesh_cluster_circuit_breaker_overflow_total",
            "counter",
            "Requests or connections refused by a circuit breaker.",
            Breaker::overflows,
        ),
    ];
    for (name, kind, help, read) in families {
        header(out, name, kind, help);
        for cluster in &snapshot.clusters {
            let Some(breaker) = &cluster.breaker else {
                continue;
            };
            for resource in Resource::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",resource=\"{}\"}} {}",
                    escape(&cluster.name),
                    resource.label(),
                    read(breaker, resource)
                );
            }
        }
    }
}

/// Per-endpoint ejection and health state, for clusters with outlier detection or health checks.
fn endpoints(out: &mut String, snapshot: &Snapshot) {
    use crate::upstream::outlier::EndpointHealth;
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&EndpointHealth) -> u64,
    );
    let families: [Family; 4] = [
        (
            "ringmesh_endpoint_ejected",
            "gauge",
            "1 while outlier detection has the endpoint ejected.",
            |e| u64::from(e.is_ejected()),
        ),
        (
            "ringmesh_endpoint_healthy",
            "gauge",
            "1 while the endpoint passes active health checks (always without them).",
            |e| u64::from(e.is_healthy()),
        ),
        (
            "ringmesh_endpoint_ejections_total",
            "counter",
            "Times outlier detection ejected the endpoint.",
            EndpointHealth::ejections,
        ),
        (
            "ringmesh_endpoint_health_check_failures_total",
            "counter",
            "Active health checks of the endpoint that failed.",
            EndpointHealth::check_failures,
        ),
    ];
    for (name, kind, help, get) in families {
        header(out, name, kind, help);
        for cluster in &snapshot.clusters {
            let Some(health) = &cluster.health else {
                continue;
            };
            for endpoint in health.endpoints.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                    escape(&cluster.name),
                    endpoint.address,
                    get(endpoint)
                );
            }
        }
    }
}

/// Per-route responses by status class and duration histograms.
fn routes(out: &mut String, snapshot: &Snapshot) {
    let mut routes: Vec<&(Arc<str>, Arc<PerWorker<RouteCounters>>)> = snapshot
        .route_stats
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .collect();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    header(
        out,
        "ringmesh_route_responses_total",
        "counter",
        "Responses by route and status class.",
    );
    for (name, stats) in &routes {
        for (class, label) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let count = stats.sum(|c| c.responses[class].get());
            let _ = writeln!(
                out,
                "ringmesh_route_responses_total{{route=\"{}\",class=\"{label}\"}} {count}",
                escape(name)
            );
        }
    }
    header(
        out,
        "ringmesh_route_request_duration_milliseconds",
        "histogram",
        "Request duration by route.",
    );
    for (name, stats) in &routes {
        let labels = format!("route=\"{}\"", escape(name));
        histogram(
            out,
            "ringmesh_route_request_duration_milliseconds",
            &labels,
            stats.iter().map(|c| &c.duration),
        );
    }
}

/// Authorization policies: decisions by listener and policy (`policy="-"`: refused because no
/// allow policy matched).
fn authz(out: &mut String, snapshot: &Snapshot) {
    type Pick = fn(&AuthzCounters) -> u64;
    let families: [(&str, &str, AuthorizationAction, Pick); 3] = [
        (
            "ringmesh_authz_denied_total",
            "Requests (tcp listeners: connections) refused by authorization, by listener and the deny policy that matched (\"-\": no allow policy matched).",
            AuthorizationAction::Deny,
            |c| c.denied.get(),
        ),
        (
            "ringmesh_authz_allowed_total",
            "Requests (tcp listeners: connections) let through by an allow policy, by listener and policy.",
            AuthorizationAction::Allow,
            |c| c.allowed.get(),
        ),
        (
            "ringmesh_authz_audited_total",
            "Requests (tcp listeners: connections) matched by an audit policy, by listener and policy.",
            AuthorizationAction::Audit,
            |c| c.audited.get(),
        ),
    ];
    for (name, help, wanted, pick) in families {
        header(out, name, "counter", help);
        for listener in &snapshot.listeners {
            let Some(authz) = &listener.authz else {
                continue;
            };
            let rows = authz
                .policies
                .iter()
                .filter(|a| a.policy.action == wanted)
                .map(|a| (&*a.policy.name, &a.counters));
            let no_match = (wanted == AuthorizationAction::Deny)
                .then_some((NO_ALLOW_MATCHED, &authz.no_allow_matched));
            for (policy, counters) in rows.chain(no_match) {
                let total: u64 = counters.iter().map(pick).sum();
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",policy=\"{}\"}} {total}",
                    escape(&listener.name),
                    escape(policy)
                );
            }
        }
    }
}

/// Local rate limits (refusals by scope and name) and fault injection (by route).
fn policies(out: &mut String, snapshot: &Snapshot) {
    header(
        out,
        "ringmesh_rate_limited_total",
        "counter",
        "Requests (tcp listeners: connections) refused by a local rate limit, by scope \
         (listener, virtual_host, route) and name.",
    );
    let limiters = snapshot
        .listeners
        .iter()
        .filter_map(|l| l.rate_limit.as_ref())
        .chain(snapshot.policies.all());
    for limiter in limiters {
        let _ = writeln!(
            out,
            "ringmesh_rate_limited_total{{scope=\"{}\",name=\"{}\"}} {}",
            limiter.scope,
            escape(&limiter.name),
            limiter.refused()
        );
    }
    let mut routes: Vec<&(Arc<str>, Arc<PerWorker<RouteCounters>>)> = snapshot
        .route_stats
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .collect();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    let families: [Family<RouteCounters>; 2] = [
        (
            "ringmesh_fault_aborts_total",
            "counter",
            "Requests answered by an injected fault abort, by route.",
            |c| c.fault_aborts.get(),
        ),
        (
            "ringmesh_fault_delays_total",
            "counter",
            "Requests held by an injected fault delay, by route.",
            |c| c.fault_delays.get(),
        ),
    ];
    for (name, kind, help, get) in families {
        header(out, name, kind, help);
        for (route, stats) in &routes {
            let _ = writeln!(
                out,
                "{name}{{route=\"{}\"}} {}",
                escape(route),
                stats.sum(get)
            );
        }
    }
}

/// Writes one histogram's buckets, sum and count, summing the per-worker histograms.
fn histogram<'a>(
    out: &mut String,
    name: &str,
    labels: &str,
    parts: impl Iterator<Item = &'a Histogram>,
) {
    let parts: Vec<&Histogram> = parts.collect();
    let mut cumulative = 0u64;
    for (i, bound) in DURATION_BUCKETS_US.iter().enumerate() {
        cumulative += parts
            .iter()
            .map(|h| h.bucket_counts().nth(i).unwrap_or(0))
            .sum::<u64>();
        let le = *bound as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    cumulative += parts
        .iter()
        .map(|h| h.bucket_counts().last().unwrap_or(0))
        .sum::<u64>();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let sum_ms = parts.iter().map(|h| h.sum()).sum::<u64>() as f64 / 1000.0;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum_ms}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// `ringmesh_tracing_*_total`: spans started, sampled, exported and dropped, export failures
/// and retries (`trace::TraceStats`, carried across reloads).
fn tracing_counters(out: &mut String, snapshot: &Snapshot) {
    const HELP: [&str; 6] = [
        "Spans the proxy started (server, client per attempt, L4), sampled or not.",
        "Spans sampled for export.",
        "Spans an OTLP collector accepted.",
        "Sampled spans dropped: the export queue was full, or the collector could not take them.",
        "OTLP export requests that failed (each try).",
        "OTLP export requests sent again after a failure.",
    ];
    let totals = snapshot.trace_stats.totals();
    for ((name, help), value) in crate::trace::TOTAL_NAMES.iter().zip(HELP).zip(totals) {
        let metric = format!("ringmesh_tracing_{name}_total");
        header(out, &metric, "counter", help);
        let _ = writeln!(out, "{metric} {value}");
    }
}

/// Node mode: `ringmesh_hbone_*` (tunnels and their connections) and
/// `ringmesh_node_refused_total{reason}`, summed over workers. Absent without `[node]`.
fn node_counters(out: &mut String, snapshot: &Snapshot) {
    if snapshot.node.is_none() {
        return;
    }
    let stats = &snapshot.node_stats;
    let sum = |pick: &dyn Fn(&crate::hbone::HboneCounters) -> u64| -> u64 {
        stats.hbone.iter().map(|c| pick(c)).sum()
    };
    header(
        out,
        "ringmesh_hbone_tunnels_opened_total",
        "counter",
        "HBONE CONNECT streams answered 200: inbound (this node's server) and outbound (its client).",
    );
    let _ = writeln!(
        out,
        "ringmesh_hbone_tunnels_opened_total{{direction=\"inbound\"}} {}",
        sum(&|c| c.inbound_opened.get())
    );
    let _ = writeln!(
        out,
        "ringmesh_hbone_tunnels_opened_total{{direction=\"outbound\"}} {}",
        sum(&|c| c.outbound_opened.get())
    );
    header(
        out,
        "ringmesh_hbone_tunnels_refused_total",
        "counter",
        "HBONE CONNECT streams refused, by direction and status (400 bad target, 401 denied, 503 no upstream).",
    );
    for (direction, by) in [
        (
            "inbound",
            (|c| &c.inbound_refused) as fn(&crate::hbone::HboneCounters) -> &crate::hbone::ByStatus,
        ),
        ("outbound", |c| &c.outbound_refused),
    ] {
        for (status, pick) in [
            (
                "400",
                (|b| b.bad_request.get()) as fn(&crate::hbone::ByStatus) -> u64,
            ),
            ("401", |b| b.unauthorized.get()),
            ("503", |b| b.unavailable.get()),
            ("other", |b| b.other.get()),
        ] {
            let _ = writeln!(
                out,
                "ringmesh_hbone_tunnels_refused_total{{direction=\"{direction}\",status=\"{status}\"}} {}",
                sum(&|c| pick(by(c)))
            );
        }
    }
    for (name, kind, help, value) in [
        (
            "ringmesh_hbone_tunnels_failed_total",
            "counter",
            "Outbound HBONE tunnels that failed before an answer (connect, TLS, HTTP/2, timeout).",
            sum(&|c| c.outbound_failed.get()),
        ),
        (
            "ringmesh_hbone_streams_active",
            "gauge",
            "HBONE streams carrying bytes now, both directions.",
            sum(&|c| c.streams_active()),
        ),
        (
            "ringmesh_hbone_connections_active",
            "gauge",
            "Outbound HBONE connections (to other nodes) open now.",
            sum(&|c| c.connections_active()),
        ),
        (
            "ringmesh_hbone_connections_opened_total",
            "counter",
            "Outbound HBONE connections opened.",
            sum(&|c| c.connections_opened.get()),
        ),
        (
            "ringmesh_hbone_connections_reused_total",
            "counter",
            "Outbound tunnels placed on an HBONE connection that was already open.",
            sum(&|c| c.connections_reused.get()),
        ),
    ] {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        out,
        "ringmesh_node_refused_total",
        "counter",
        "Node-mode connections closed before any byte moved, by reason (strict: plaintext to a STRICT workload).",
    );
    let mut totals = [0u64; 6];
    let mut names = [""; 6];
    for refused in stats.refused.iter() {
        for (i, (reason, count)) in refused.by_reason().into_iter().enumerate() {
            names[i] = reason;
            totals[i] += count;
        }
    }
    for (reason, total) in names.iter().zip(totals) {
        if !reason.is_empty() {
            let _ = writeln!(
                out,
                "ringmesh_node_refused_total{{reason=\"{reason}\"}} {total}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
