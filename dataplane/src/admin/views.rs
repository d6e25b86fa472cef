//! The read-only endpoints: `/stats`, `/config_dump`, `/listeners`, `/certs` as JSON. They only read the
//! snapshot and the shared counters; nothing here changes anything.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::shared::Shared;

/// `GET /config_dump`: the active config (token redacted), its generation, and the generation
/// each worker runs.
pub(super) fn config_dump(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.store.load();
    let mut config = serde_json::to_value(&*snapshot.spec).unwrap_or_default();
    if let Some(token) = config.pointer_mut("/admin/token")
        && !token.is_null()
    {
        *token = json!("<redacted>");
    }
    json!({
        "generation": snapshot.generation,
        "workers": worker_generations(shared),
        "config": config,
    })
}

/// `GET /certs`: the identity store's view (`identity::Store::certs_json`), or empty lists when
/// the node serves no identity.
pub(super) fn certs(shared: &Shared) -> serde_json::Value {
    match shared.identity.load_full() {
        Some(store) => store.certs_json(std::time::SystemTime::now()),
        None => json!({ "identities": [], "trust_bundles": [] }),
    }
}

/// `GET /listeners`: names and the addresses actually bound.
pub(super) fn listeners(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.store.load();
    let listeners: Vec<_> = snapshot
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": &*l.name,
                "address": l.address.to_string(),
                "local_address": l.local_addr.to_string(),
                "protocol": l.protocol,
            })
        })
        .collect();
    json!(listeners)
}

fn worker_generations(shared: &Shared) -> Vec<serde_json::Value> {
    shared
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| json!({ "id": id, "generation": w.generation.load(Ordering::Acquire) }))
        .collect()
}

/// `GET /stats`.
pub(super) fn stats_json(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.store.load();
    let workers: Vec<_> = shared
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| {
            let open: u64 = snapshot
                .listeners
                .iter()
                .map(|l| l.stats.workers.slot(id).active())
                .sum();
            json!({
                "id": id,
                "core": w.core,
                "generation": w.generation.load(Ordering::Acquire),
                "open_connections": open,
            })
        })
        .collect();
    let listeners: Vec<_> = snapshot
        .listeners
        .iter()
        .map(|l| {
            let per_worker: Vec<_> = l
                .stats
                .workers
                .iter()
                .map(|c| {
                    json!({
                        "accepted": c.accepted.get(),
                        "active": c.active(),
                        "closed": c.closed.get(),
                        "rejected": c.rejected.get(),
                    })
                })
                .collect();
            let w = &l.stats.workers;
            json!({
                "name": &*l.name,
                "local_address": l.local_addr.to_string(),
                "accepted": w.sum(|c| c.accepted.get()),
                "active": w.sum(|c| c.active()),
                "closed": w.sum(|c| c.closed.get()),
                "rejected": w.sum(|c| c.rejected.get()),
                "accept_errors": w.sum(|c| c.accept_errors.get()),
                "idle_timeouts": w.sum(|c| c.idle_timeouts.get()),
                "authz_revoked": w.sum(|c| c.authz_revoked.get()),
                "bytes_received": w.sum(|c| c.bytes_received.get()),
                "bytes_sent": w.sum(|c| c.bytes_sent.get()),
                "tls": {
                    "handshakes": w.sum(|c| c.tls_handshakes.get()),
                    "handshake_errors": w.sum(|c| c.tls_handshake_errors.get()),
                },
                "http2": {
                    "streams": w.sum(|c| c.h2_streams.get()),
                    "protocol_errors": w.sum(|c| c.h2_protocol_errors.get()),
                    "rapid_reset": w.sum(|c| c.h2_abuse_rapid_reset.get()),
                    "control_flood": w.sum(|c| c.h2_abuse_control_flood.get()),
                    "continuation_flood": w.sum(|c| c.h2_abuse_continuation_flood.get()),
                    "empty_frames": w.sum(|c| c.h2_abuse_empty_frames.get()),
                    "window_update_flood": w.sum(|c| c.h2_abuse_window_update_flood.get()),
                    "made_you_reset": w.sum(|c| c.h2_abuse_made_you_reset.get()),
                },
                "sni": {
                    "routed": w.sum(|c| c.sni_routed.get()),
                    "defaulted": w.sum(|c| c.sni_defaulted.get()),
                    "no_route": w.sum(|c| c.sni_no_route.get()),
                    "timeouts": w.sum(|c| c.sni_timeouts.get()),
                },
                "per_worker": per_worker,
            })
        })
        .collect();
    let clusters: Vec<_> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let s = &c.stats;
            let breaker = c.breaker.as_ref().map(|b| {
                crate::upstream::breaker::Resource::ALL
                    .iter()
                    .map(|&r| {
                        (
                            r.label().to_owned(),
                            json!({
                                "limit": b.limit(r),
                                "remaining": b.remaining(r),
                                "overflows": b.overflows(r),
                            }),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
            });
            let endpoint_health = c.health.as_ref().map(|h| {
                h.endpoints
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.address.to_string(),
                            "healthy": e.is_healthy(),
                            "ejected": e.is_ejected(),
                            "times_ejected": e.times_ejected(),
                            "ejections": e.ejections(),
                            "health_check_failures": e.check_failures(),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            json!({
                "name": &*c.name,
                "endpoints": c.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
                "upstream_connections": s.sum(|x| x.connections.get()),
                "upstream_connect_failures": s.sum(|x| x.connect_failures.get()),
                "upstream_connect_timeouts": s.sum(|x| x.connect_timeouts.get()),
                "upstream_tls_handshake_errors": s.sum(|x| x.tls_handshake_errors.get()),
                "no_endpoint": s.sum(|x| x.no_endpoint.get()),
                "circuit_breaker": breaker,
                "endpoint_health": endpoint_health,
            })
        })
        .collect();
    let uptime = shared
        .started_at
        .elapsed()
        .map(|d| d.as_secs())
        .unwrap_or_default();
    json!({
        "driver": shared.driver.name(),
        "driver_detail": shared.driver.to_string(),
        "generation": snapshot.generation,
        "reloads": shared.reloads.load(Ordering::Relaxed),
        "reload_failures": shared.reload_failures.load(Ordering::Relaxed),
        "draining": shared.draining.load(Ordering::Acquire),
        "uptime_seconds": uptime,
        "workers": workers,
        "listeners": listeners,
        "clusters": clusters,
        "tracing": tracing_json(&snapshot),
    })
}

/// The tracing counters of `/stats` (`trace::TraceStats`), and whether tracing is on.
fn tracing_json(snapshot: &crate::snapshot::Snapshot) -> serde_json::Value {
    let mut map: serde_json::Map<String, serde_json::Value> = crate::trace::TOTAL_NAMES
        .iter()
        .zip(snapshot.trace_stats.totals())
        .map(|(name, value)| ((*name).to_owned(), json!(value)))
        .collect();
    map.insert("enabled".to_owned(), json!(snapshot.tracing.is_some()));
    serde_json::Value::Object(map)
}
