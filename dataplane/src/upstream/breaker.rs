//! Circuit breakers: per-cluster limits on upstream connections, requests waiting for a
//! connection, requests in flight and retries in flight, across every worker of the process.
//!
//! A [`Breaker`] exists only for a cluster with `circuit_breaker` in its config: a cluster without
//! one pays nothing. Its counts live in a [`BreakerState`] of four atomics, shared by all workers
//! through the snapshot and carried over a reload by cluster name (whatever changed), so requests
//! admitted before the reload still count and their guards still release; the limits come from
//! the snapshot in force when a permit is asked for.
//!
//! **Exactness.** A permit is taken with a compare-and-swap loop (`count < limit` → `count + 1`),
//! and released by the guard's `Drop`: the number of holders never exceeds the limit, and a
//! request is refused only if the limit was reached at the moment of its CAS — the same answer a
//! lock would give, without a lock on the request path. (A reload that lowers a limit below the
//! current count refuses new permits until enough guards drop; nothing already admitted is cut.)
//!
//! **Resources**, as Envoy's:
//! - `max_connections`: upstream connections open (HTTP/1.1 and HTTP/2 connections of the
//!   per-core pools, and L4 connections). A pooled connection counts for the cluster that
//!   opened it. When reached, no new connection is opened; idle pooled connections still serve.
//! - `max_pending_requests`: attempts waiting for a connection or stream — from the start of the
//!   checkout until a connection is at hand (this includes the TCP connect and HTTP/2 handshake).
//! - `max_requests`: attempts in flight, from checkout to the end of the response.
//! - `max_retries`: retries in flight ([`Breaker::try_retry`]).
//!
//! Overflow is answered at once (the exchange maps it to `Failure::Overflow`: 503 `UO` with
//! `x-envoy-overloaded: true`, gRPC `UNAVAILABLE`); L4 closes the client's connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use config_schema::CircuitBreakerSpec;

/// One limited resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Upstream connections open.
    Connections = 0,
    /// Attempts waiting for a connection.
    PendingRequests = 1,
    /// Attempts in flight.
    Requests = 2,
    /// Retries in flight.
    Retries = 3,
}

impl Resource {
    /// Every resource, in index order.
    pub const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::PendingRequests,
        Resource::Requests,
        Resource::Retries,
    ];

    /// The metric label (the config key without `max_`).
    pub fn label(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::PendingRequests => "pending_requests",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
        }
    }
}

/// The counts behind a cluster's breaker, shared by every worker and carried across reloads.
#[derive(Debug, Default)]
pub struct BreakerState {
    in_use: [AtomicU32; 4],
    overflows: [AtomicU64; 4],
}

/// A cluster's circuit breaker: its limits (from this snapshot) and its shared counts.
#[derive(Debug)]
pub struct Breaker {
    limits: [u32; 4],
    state: Arc<BreakerState>,
}

impl Breaker {
    /// The breaker for `spec`, continuing `previous` counts (the same cluster's, before a
    /// reload) if there are any.
    pub fn new(spec: &CircuitBreakerSpec, previous: Option<&Breaker>) -> Self {
        Self {
            limits: [
                spec.max_connections,
                spec.max_pending_requests,
                spec.max_requests,
                spec.max_retries,
            ],
            state: previous.map_or_else(Arc::default, |p| Arc::clone(&p.state)),
        }
    }

    /// A permit for one unit of `resource`, or `None` (counted as an overflow) when the limit is
    /// reached.
    #[inline]
    pub fn try_acquire(&self, resource: Resource) -> Option<Permit> {
        let index = resource as usize;
        let limit = self.limits[index];
        let count = &self.state.in_use[index];
        let mut current = count.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                self.state.overflows[index].fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        state: Arc::clone(&self.state),
                        index,
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// A permit for one retry in flight (`max_retries`), or `None` when the limit is reached: the
    /// retry is then not made and the failure of the last attempt stands. Hold the permit for
    /// the retry's life.
    pub fn try_retry(&self) -> Option<Permit> {
        self.try_acquire(Resource::Retries)
    }

    /// The configured limit of `resource`.
    pub fn limit(&self, resource: Resource) -> u32 {
        self.limits[resource as usize]
    }

    /// Units of `resource` held now (across workers).
    pub fn in_use(&self, resource: Resource) -> u32 {
        self.state.in_use[resource as usize].load(Ordering::Relaxed)
    }

    /// What is left of `resource` before overflow.
    pub fn remaining(&self, resource: Resource) -> u32 {
        self.limit(resource).saturating_sub(self.in_use(resource))
    }

    /// Requests (or connections) refused for `resource` since the cluster first had a breaker.
    pub fn overflows(&self, resource: Resource) -> u64 {
        self.state.overflows[resource as usize].load(Ordering::Relaxed)
    }
}

/// One unit of a breaker's resource, held until dropped. `Send`: an HTTP/2 connection's guard
/// may be dropped by whichever task ends it.
#[derive(Debug)]
pub struct Permit {
    state: Arc<BreakerState>,
    index: usize,
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.state.in_use[self.index].fetch_sub(1, Ordering::AcqRel);
    }
}

/// A breaker's limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// A permit for `resource` of `breaker`, if the cluster has one: `Ok(None)` without a breaker,
/// `Err(Overflow)` when its limit is reached.
#[inline]
pub fn admit(breaker: Option<&Breaker>, resource: Resource) -> Result<Option<Permit>, Overflow> {
    match breaker {
        None => Ok(None),
        Some(breaker) => breaker.try_acquire(resource).map(Some).ok_or(Overflow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u32, retries: u32) -> CircuitBreakerSpec {
        CircuitBreakerSpec {
            max_connections: limit,
            max_pending_requests: limit,
            max_requests: limit,
            max_retries: retries,
        }
    }

    #[test]
    fn retries_are_limited_and_released_on_drop() {
        let breaker = Breaker::new(&spec(10, 2), None);
        let a = breaker.try_retry().expect("first retry");
        let b = breaker.try_retry().expect("second retry");
        assert!(breaker.try_retry().is_none(), "a third retry overflows");
        assert_eq!(breaker.remaining(Resource::Retries), 0);
        assert_eq!(breaker.overflows(Resource::Retries), 1);
        drop(a);
        assert_eq!(breaker.remaining(Resource::Retries), 1);
        let _c = breaker.try_retry().expect("a retry after one ended");
        drop(b);
        assert_eq!(breaker.in_use(Resource::Retries), 1);
    }

    #[test]
    fn counts_survive_a_reload_and_new_limits_apply() {
        let first = Breaker::new(&spec(2, 3), None);
        let held = first.try_acquire(Resource::Requests).expect("permit");
        let second = Breaker::new(&spec(1, 3), Some(&first));
        assert_eq!(second.in_use(Resource::Requests), 1);
        assert!(second.try_acquire(Resource::Requests).is_none());
        drop(held);
        assert!(second.try_acquire(Resource::Requests).is_some());
    }

    #[test]
    fn never_more_holders_than_the_limit_across_threads() {
        let breaker = Arc::new(Breaker::new(&spec(3, 3), None));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let breaker = Arc::clone(&breaker);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(permit) = breaker.try_acquire(Resource::Requests) {
                            peak.fetch_max(breaker.in_use(Resource::Requests), Ordering::Relaxed);
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(breaker.in_use(Resource::Requests), 0);
    }
}
