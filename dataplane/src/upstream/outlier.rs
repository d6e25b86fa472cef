//! Which endpoints of a cluster may take traffic: outlier detection (passive), the flags active
//! health checks write (`health.rs`), and the panic threshold — process-wide, per endpoint.
//!
//! A [`ClusterHealth`] exists only for a cluster with `outlier_detection` or `health_check`: a
//! cluster without either pays nothing (no atomic is touched on its request path). Each endpoint
//! has an [`EndpointHealth`] of atomics, shared by every worker through the snapshot and carried
//! over a reload by cluster name and endpoint address (so an ejection, its multiplier and the
//! health-check verdict survive a reload, and survive for the endpoints that stay when others
//! are added or removed).
//!
//! **Outlier detection.** Every attempt's outcome is one [`Observation`]: a response (its status)
//! or a local-origin failure (connect refused or timed out, reset, route timeout). Three
//! consecutive counters per endpoint — 5xx, gateway failures (502/503/504), local-origin failures
//! — count observations from all workers (`fetch_add`); a non-5xx response resets the first two,
//! any response the third. The worker whose observation reaches a threshold ejects the endpoint
//! with a compare-and-swap on its `ejected_until` time, so exactly one ejection happens however
//! many workers see the Nth failure at once. An ejection lasts `base_ejection_time × times
//! ejected`, at most `max(base_ejection_time, max_ejection_time)`.
//!
//! `max_ejection_percent` is checked by counting the endpoints ejected now (at least one endpoint
//! is always ejectable, as Envoy). Two workers ejecting *different* endpoints at the same instant
//! may both pass the check, so the bound can be exceeded by at most one endpoint per concurrently
//! ejecting worker — a lock would make it exact, and is not worth a lock on the request path.
//!
//! Return: an ejected endpoint is usable again as soon as its time has passed (the pick reads the
//! time: exact, lazy); the sweep (`sweep`, every `interval`, on the health thread — never a
//! worker) clears the ejection, writes the "returned" log line, and decreases the multiplier of
//! endpoints that stayed in, as Envoy does.
//!
//! **Panic threshold.** A pick that lands on an unusable endpoint moves on to a usable one —
//! unless fewer than `panic_threshold` % of the endpoints are usable: then all are used, as in
//! Envoy's panic mode. The share is counted only when a pick lands on an unusable endpoint (so a
//! healthy cluster pays one load per endpoint tried); an endpoint both ejected and unhealthy
//! counts once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use config_schema::{ClusterSpec, HealthCheckKind, HealthCheckSpec, OutlierDetectionSpec};

/// Milliseconds since the first call in this process (monotonic; 0 is reserved for "not ejected",
/// so the clock starts at 1).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// The outcome of one attempt on an endpoint, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A response head with this status arrived.
    Response(u16),
    /// A local-origin failure: connect refused or timed out, reset, the route timeout.
    LocalFailure,
    /// An L4 connection was established (resets the local-origin counter).
    Connected,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure`.
    ConsecutiveLocalOriginFailure,
}

impl Reason {
    /// The config key, for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Reason::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
        }
    }
}

/// One endpoint's shared state.
#[derive(Debug)]
pub struct EndpointHealth {
    /// The endpoint.
    pub address: SocketAddr,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// [`now_ms`] when the ejection ends; 0: not ejected (or returned by the sweep).
    ejected_until: AtomicU64,
    /// The ejection multiplier (times ejected, decreased while the endpoint stays in).
    times_ejected: AtomicU32,
    /// Ejections since the endpoint first appeared.
    ejections: AtomicU64,
    /// The active health checks' verdict (true until a check says otherwise).
    healthy: AtomicBool,
    /// Active health checks that failed.
    check_failures: AtomicU64,
}

impl EndpointHealth {
    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            check_failures: AtomicU64::new(0),
        }
    }

    /// Whether the endpoint is ejected at `now` (a [`now_ms`] value).
    #[inline]
    pub fn ejected_at(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && now < until
    }

    /// Whether the endpoint is ejected now.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && now_ms() < until
    }

    /// Whether the active health checks pass (always, without them).
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets the health-check verdict; returns the previous one.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::AcqRel)
    }

    /// Whether the endpoint may take traffic (outside panic mode).
    #[inline]
    pub fn is_usable(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Counts a failed active health check.
    pub fn check_failed(&self) {
        self.check_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Active health checks that failed since the endpoint first appeared.
    pub fn check_failures(&self) -> u64 {
        self.check_failures.load(Ordering::Relaxed)
    }

    /// Ejections since the endpoint first appeared.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The current ejection multiplier.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }
}

/// Outlier-detection settings, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// Sweep period.
    pub interval: Duration,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejection_percent: u32,
}

impl OutlierPolicy {
    fn new(spec: &OutlierDetectionSpec) -> Self {
        Self {
            consecutive_5xx: spec.consecutive_5xx,
            consecutive_gateway: spec.consecutive_gateway_failure,
            consecutive_local: spec.consecutive_local_origin_failure,
            interval: spec.interval.get(),
            base_ejection: spec.base_ejection_time.get(),
            max_ejection: spec.max_ejection_time.get(),
            max_ejection_percent: spec.max_ejection_percent,
        }
    }

    /// How long the `times`th ejection lasts.
    fn ejection_time(&self, times: u32) -> Duration {
        let cap = self.base_ejection.max(self.max_ejection);
        self.base_ejection.saturating_mul(times.max(1)).min(cap)
    }
}

/// Active health-check settings, compiled (see `health.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPolicy {
    /// HTTP or TCP.
    pub kind: HealthCheckKind,
    /// The HTTP/1.1 request, whole (`GET path`, `host`, `connection: close`).
    pub request: Box<[u8]>,
    /// Statuses that pass.
    pub expected_statuses: Box<[u16]>,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Up to this much random time added to each interval.
    pub jitter: Duration,
}

impl CheckPolicy {
    fn new(cluster: &str, spec: &HealthCheckSpec) -> Self {
        let host = spec.host.as_deref().unwrap_or(cluster);
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: ringmesh-health-check\r\nconnection: close\r\n\r\n",
            spec.path
        );
        Self {
            kind: spec.kind,
            request: request.into_bytes().into(),
            expected_statuses: spec.expected_statuses.clone().into(),
            interval: spec.interval.get(),
            timeout: spec.timeout.get(),
            healthy_threshold: spec.healthy_threshold,
            unhealthy_threshold: spec.unhealthy_threshold,
            jitter: spec.jitter.get(),
        }
    }
}

/// The usable-endpoint state of one cluster (see the module docs).
#[derive(Debug)]
pub struct ClusterHealth {
    cluster: Arc<str>,
    /// Per endpoint, in the cluster's endpoint order.
    pub endpoints: Box<[Arc<EndpointHealth>]>,
    /// Outlier detection, when configured.
    pub outlier: Option<OutlierPolicy>,
    /// Active health checks, when configured.
    pub check: Option<CheckPolicy>,
    /// Panic threshold, in percent.
    pub panic_threshold: u32,
}

impl ClusterHealth {
    /// The state for `spec` if it has outlier detection or active health checks, carrying over
    /// each endpoint's state by address from `previous` (the same cluster before a reload).
    pub fn new(spec: &ClusterSpec, previous: Option<&ClusterHealth>) -> Option<Self> {
        if spec.outlier_detection.is_none() && spec.health_check.is_none() {
            return None;
        }
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| {
                previous
                    .and_then(|p| p.endpoints.iter().find(|old| old.address == e.address))
                    .map_or_else(|| Arc::new(EndpointHealth::new(e.address)), Arc::clone)
            })
            .collect();
        let endpoints: Box<[Arc<EndpointHealth>]> = endpoints;
        if spec.health_check.is_none() {
            // No checks any more: a verdict of the old ones must not keep an endpoint out.
            for endpoint in endpoints.iter() {
                endpoint.set_healthy(true);
            }
        }
        Some(Self {
            cluster: spec.name.as_str().into(),
            endpoints,
            outlier: spec.outlier_detection.as_ref().map(OutlierPolicy::new),
            check: spec
                .health_check
                .as_ref()
                .map(|c| CheckPolicy::new(&spec.name, c)),
            panic_threshold: spec.panic_threshold,
        })
    }

    /// Whether endpoint `index` may take traffic (outside panic mode).
    #[inline]
    pub fn is_usable(&self, index: usize) -> bool {
        self.endpoints.get(index).is_some_and(|e| e.is_usable())
    }

    /// How a walk over the endpoints from a pick treats unusable ones: `Some(true)` skip them,
    /// `Some(false)` use all (panic mode: fewer than `panic_threshold` % usable), `None` no
    /// endpoint may be used (none usable, panic mode off).
    pub fn walk_mode(&self, first: usize) -> Option<bool> {
        if self.is_usable(first) {
            return Some(true);
        }
        let total = self.endpoints.len();
        let usable = self.endpoints.iter().filter(|e| e.is_usable()).count();
        if (usable as u64) * 100 < u64::from(self.panic_threshold) * (total as u64) {
            return Some(false);
        }
        (usable > 0).then_some(true)
    }

    /// Records the outcome of one attempt on endpoint `index`; may eject it.
    pub fn observe(&self, index: usize, observation: Observation) {
        let (Some(policy), Some(endpoint)) = (&self.outlier, self.endpoints.get(index)) else {
            return;
        };
        let bump = |counter: &AtomicU32, threshold: u32| {
            threshold > 0 && counter.fetch_add(1, Ordering::AcqRel).saturating_add(1) >= threshold
        };
        // A reset is a load first: the common case (nothing to reset) writes nothing shared.
        let reset = |counter: &AtomicU32| {
            if counter.load(Ordering::Relaxed) != 0 {
                counter.store(0, Ordering::Relaxed);
            }
        };
        let reason = match observation {
            Observation::Response(status) if status >= 500 => {
                reset(&endpoint.consecutive_local);
                let gateway = matches!(status, 502..=504);
                let by_gateway =
                    gateway && bump(&endpoint.consecutive_gateway, policy.consecutive_gateway);
                if !gateway {
                    reset(&endpoint.consecutive_gateway);
                }
                if bump(&endpoint.consecutive_5xx, policy.consecutive_5xx) {
                    Some(Reason::Consecutive5xx)
                } else if by_gateway {
                    Some(Reason::ConsecutiveGatewayFailure)
                } else {
                    None
                }
            }
            Observation::Response(_) => {
                reset(&endpoint.consecutive_5xx);
                reset(&endpoint.consecutive_gateway);
                reset(&endpoint.consecutive_local);
                None
            }
            Observation::Connected => {
                reset(&endpoint.consecutive_local);
                None
            }
            Observation::LocalFailure => {
                bump(&endpoint.consecutive_local, policy.consecutive_local)
                    .then_some(Reason::ConsecutiveLocalOriginFailure)
            }
        };
        if let Some(reason) = reason {
            self.eject(policy, endpoint, reason);
        }
    }

    /// [`Self::observe`] for the endpoint at `address` (a path that knows only the address).
    pub fn observe_address(&self, address: SocketAddr, observation: Observation) {
        if let Some(index) = self.endpoints.iter().position(|e| e.address == address) {
            self.observe(index, observation);
        }
    }

    /// Ejects `endpoint` unless it is ejected already or `max_ejection_percent` forbids it.
    fn eject(&self, policy: &OutlierPolicy, endpoint: &EndpointHealth, reason: Reason) {
        let now = now_ms();
        let until = endpoint.ejected_until.load(Ordering::Acquire);
        if until != 0 && now < until {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.ejected_at(now)).count() as u64;
        let total = self.endpoints.len() as u64;
        if ejected > 0 && (ejected + 1) * 100 > u64::from(policy.max_ejection_percent) * total {
            return;
        }
        let times = endpoint
            .times_ejected
            .load(Ordering::Acquire)
            .saturating_add(1);
        let duration = policy.ejection_time(times);
        let end = now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        if endpoint
            .ejected_until
            .compare_exchange(until, end, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another worker ejected (or the sweep returned) it in the meantime.
            return;
        }
        endpoint.times_ejected.store(times, Ordering::Release);
        endpoint.ejections.fetch_add(1, Ordering::Relaxed);
        endpoint.consecutive_5xx.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway.store(0, Ordering::Relaxed);
        endpoint.consecutive_local.store(0, Ordering::Relaxed);
        tracing::info!(
            cluster = %self.cluster,
            endpoint = %endpoint.address,
            reason = reason.as_str(),
            times_ejected = times,
            duration_ms = duration.as_millis() as u64,
            "outlier detection: endpoint ejected"
        );
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &Arc<str> {
        &self.cluster
    }

    /// The periodic sweep (health thread): returns endpoints whose ejection time has passed,
    /// logging each, and decreases the multiplier of endpoints that stayed in.
    pub fn sweep(&self) {
        let now = now_ms();
        for endpoint in self.endpoints.iter() {
            let until = endpoint.ejected_until.load(Ordering::Acquire);
            if until == 0 {
                let times = endpoint.times_ejected.load(Ordering::Relaxed);
                if times > 0 {
                    endpoint.times_ejected.store(times - 1, Ordering::Relaxed);
                }
            } else if now >= until
                && endpoint
                    .ejected_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                tracing::info!(
                    cluster = %self.cluster,
                    endpoint = %endpoint.address,
                    times_ejected = endpoint.times_ejected.load(Ordering::Relaxed),
                    "outlier detection: endpoint returned"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(text: &str) -> ClusterSpec {
        let config = config_schema::parse(&format!(
            "[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"]\n{text}"
        ))
        .expect("valid config");
        config.spec.clusters[0].clone()
    }

    #[test]
    fn consecutive_5xx_ejects_once_and_success_resets() {
        let spec =
            cluster("outlier_detection = { consecutive_5xx = 3, max_ejection_percent = 50 }");
        let health = ClusterHealth::new(&spec, None).expect("configured");
        health.observe(0, Observation::Response(500));
        health.observe(0, Observation::Response(500));
        health.observe(0, Observation::Response(200));
        health.observe(0, Observation::Response(500));
        health.observe(0, Observation::Response(500));
        assert!(health.is_usable(0), "the success reset the count");
        health.observe(0, Observation::Response(500));
        assert!(!health.is_usable(0));
        assert_eq!(health.endpoints[0].ejections(), 1);
        for _ in 0..5 {
            health.observe(0, Observation::Response(500));
        }
        assert_eq!(health.endpoints[0].ejections(), 1, "ejected once");
    }

    #[test]
    fn max_ejection_percent_keeps_at_least_one_ejectable_and_bounds_the_rest() {
        let spec = cluster(
            "outlier_detection = { consecutive_local_origin_failure = 1, max_ejection_percent = 1 }",
        );
        let health = ClusterHealth::new(&spec, None).expect("configured");
        health.observe(0, Observation::LocalFailure);
        health.observe(1, Observation::LocalFailure);
        assert!(!health.is_usable(0), "at least one endpoint is ejectable");
        assert!(
            health.is_usable(1),
            "1% of four endpoints: no second ejection"
        );
    }

    #[test]
    fn panic_mode_uses_all_below_the_threshold() {
        let spec = cluster(
            "panic_threshold = 50\noutlier_detection = { consecutive_gateway_failure = 1, consecutive_5xx = 0, max_ejection_percent = 100 }",
        );
        let health = ClusterHealth::new(&spec, None).expect("configured");
        health.observe(0, Observation::Response(503));
        health.observe(1, Observation::Response(502));
        assert_eq!(health.walk_mode(0), Some(true), "half usable: skip");
        health.observe(2, Observation::Response(504));
        assert_eq!(health.walk_mode(0), Some(false), "a quarter usable: panic");
        assert_eq!(health.walk_mode(3), Some(true), "a usable pick is used");
    }

    #[test]
    fn ejection_time_grows_with_the_multiplier_up_to_the_maximum() {
        let spec = cluster(
            "outlier_detection = { base_ejection_time = \"10s\", max_ejection_time = \"25s\" }",
        );
        let health = ClusterHealth::new(&spec, None).expect("configured");
        let policy = health.outlier.as_ref().expect("policy");
        assert_eq!(policy.ejection_time(1), Duration::from_secs(10));
        assert_eq!(policy.ejection_time(2), Duration::from_secs(20));
        assert_eq!(policy.ejection_time(3), Duration::from_secs(25));
    }

    #[test]
    fn state_carries_over_by_address() {
        let spec =
            cluster("outlier_detection = { consecutive_5xx = 1, max_ejection_percent = 100 }");
        let first = ClusterHealth::new(&spec, None).expect("configured");
        first.observe(1, Observation::Response(500));
        let mut moved = spec.clone();
        moved.endpoints.remove(0);
        let second = ClusterHealth::new(&moved, Some(&first)).expect("configured");
        assert!(!second.is_usable(0), "127.0.0.1:2 is still ejected");
        assert!(Arc::ptr_eq(&first.endpoints[1], &second.endpoints[0]));
    }
}
