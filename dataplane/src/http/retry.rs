//! When an attempt is tried again: one rule for every pair of client and cluster protocol.
//!
//! Two kinds of retry, checked in this order:
//!
//! 1. **The safety retry**, on every route, policy or not: once, on a fresh connection, when the
//!    upstream provably did not process the request (HTTP/2 REFUSED_STREAM, a GOAWAY that excludes
//!    the stream, nothing sent at all), or when a *reused* connection failed before any response
//!    byte and the method is idempotent (the race of a pooled connection that the upstream closed
//!    as it was taken, RFC 9110 §9.2.2). It costs no budget and waits no backoff: the failure was
//!    the connection's, not the endpoint's.
//! 2. **The route's policy** (`routes[].retries`): up to `attempts` retries on the conditions of
//!    `retry_on` (Envoy's names and meanings), each after a full-jitter backoff, on another endpoint
//!    where the cluster has one, and only while the cluster's [`RetryBudget`] allows and, with a
//!    circuit breaker, while its `max_retries` has room (the permit is held for the retry's life).
//!
//! Never retried: anything once the client has the response head; a request whose body is not at
//! hand (bigger than the replay buffer, or abandoned mid-upload by an HTTP/1.1 client). A
//! condition that matched but could not be retried leaves flag `URX` and says why in the access
//! log (`retry_stopped`).
//!
//! A response with a retriable status is discarded before the client sees anything (its HTTP/1.1
//! connection is closed, its HTTP/2 stream reset); the last attempt's response is relayed as it is.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use config_schema::RetryOn;

use super::error::{Failure, Retry};
use crate::access_log::ResponseFlags;
use crate::routing::RetryPolicy;
use crate::stats::ClusterCounters;
use crate::upstream::{Breaker, Permit, RetryBudget};

/// Why a retry that a condition asked for did not happen (the access log's `retry_stopped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The policy's `attempts` were used up.
    Attempts,
    /// The cluster's retry budget was spent.
    Budget,
    /// The cluster's circuit breaker had no room for another retry in flight (`max_retries`).
    Breaker,
    /// The request body is not at hand to send again.
    BodyNotKept,
}

impl Stopped {
    /// The access log's words.
    pub fn as_str(self) -> &'static str {
        match self {
            Stopped::Attempts => "attempts_exhausted",
            Stopped::Budget => "budget_exhausted",
            Stopped::Breaker => "circuit_breaker_max_retries",
            Stopped::BodyNotKept => "body_not_kept",
        }
    }
}

/// The retry state of one exchange.
#[derive(Debug)]
pub struct Retries<'a> {
    policy: Option<&'a RetryPolicy>,
    budget: &'a RetryBudget,
    breaker: Option<&'a Breaker>,
    counters: &'a ClusterCounters,
    /// The `max_retries` permit of the retry in flight.
    permit: RefCell<Option<Permit>>,
    /// Policy retries taken so far.
    taken: Cell<u32>,
    /// The safety retry was taken.
    safety_taken: Cell<bool>,
    /// Why a wanted retry did not happen.
    stopped: Cell<Option<Stopped>>,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, after this long.
    Again(Duration),
    /// Give the client this failure.
    Stop,
}

impl<'a> Retries<'a> {
    /// The state for a request that arrived at `started` on a route with `policy`, to a cluster
    /// with `budget` and `breaker`. Counts the request in the budget when the route may retry
    /// (at its arrival: the budget counts whole seconds, so no fresh clock read is needed).
    pub fn new(
        started: Instant,
        policy: Option<&'a RetryPolicy>,
        budget: &'a RetryBudget,
        breaker: Option<&'a Breaker>,
        counters: &'a ClusterCounters,
    ) -> Self {
        if policy.is_some_and(|p| p.attempts > 0) {
            budget.deposit(started);
        }
        Self {
            policy: policy.filter(|p| p.attempts > 0),
            budget,
            breaker,
            counters,
            permit: RefCell::new(None),
            taken: Cell::new(0),
            safety_taken: Cell::new(false),
            stopped: Cell::new(None),
        }
    }

    /// Whether the route has a retry policy (attempts then carry `x-envoy-attempt-count`).
    pub fn has_policy(&self) -> bool {
        self.policy.is_some()
    }

    /// The per-try timeout.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.policy.and_then(|p| p.per_try_timeout)
    }

    /// Whether the next attempt should avoid the endpoint that just failed (policy retries do;
    /// the safety retry wants a fresh connection, wherever).
    pub fn avoid_last_endpoint(&self) -> bool {
        self.taken.get() > 0
    }

    /// After a failed attempt that sent the client nothing: retry or not. `idempotent`: the
    /// request's method; `body_at_hand`: the body can be sent again.
    pub fn after_failure(&self, failure: Failure, idempotent: bool, body_at_hand: bool) -> Verdict {
        let safe = match failure.retry() {
            Retry::Unprocessed => true,
            Retry::IfIdempotent => idempotent,
            Retry::No => false,
        };
        if safe && body_at_hand && !self.safety_taken.get() {
            self.safety_taken.set(true);
            return Verdict::Again(Duration::ZERO);
        }
        let Some(policy) = self.policy else {
            return Verdict::Stop;
        };
        if !failure_matches(policy, failure) {
            return Verdict::Stop;
        }
        self.take(policy, body_at_hand)
    }

    /// When a response head arrives: whether to discard it and retry. `request_whole`: the
    /// client's whole request body has been read and kept.
    pub fn on_response(&self, status: u16, grpc_status: Option<u32>, request_whole: bool) -> bool {
        let Some(policy) = self.policy else {
            return false;
        };
        if !response_matches(policy, status, grpc_status) {
            return false;
        }
        matches!(self.take(policy, request_whole), Verdict::Again(_))
    }

    /// The backoff before the retry just decided (zero after the safety retry).
    pub fn backoff(&self, random: u64) -> Duration {
        let (Some(policy), n @ 1..) = (self.policy, self.taken.get()) else {
            return Duration::ZERO;
        };
        // Full jitter: a uniform wait between 0 and base × 2^(n-1), capped.
        let ceiling = policy
            .backoff
            .saturating_mul(1 << (n - 1).min(20))
            .min(policy.max_backoff);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(if micros == 0 {
            0
        } else {
            random % (micros + 1)
        })
    }

    /// Takes a policy retry if attempts, body, breaker and budget allow.
    fn take(&self, policy: &RetryPolicy, body_at_hand: bool) -> Verdict {
        // The previous retry is over: its breaker permit goes back before another is asked for.
        self.permit.borrow_mut().take();
        let mut permit = None;
        let stop = if self.taken.get() >= policy.attempts {
            Some(Stopped::Attempts)
        } else if !body_at_hand {
            Some(Stopped::BodyNotKept)
        } else if let Some(breaker) = self.breaker
            && {
                permit = breaker.try_retry();
                permit.is_none()
            }
        {
            Some(Stopped::Breaker)
        } else if !self.budget.withdraw(Instant::now()) {
            self.counters.retry_overflow.inc();
            Some(Stopped::Budget)
        } else {
            None
        };
        if let Some(stop) = stop {
            self.stopped.set(Some(stop));
            return Verdict::Stop;
        }
        *self.permit.borrow_mut() = permit;
        self.taken.set(self.taken.get() + 1);
        self.counters.retries.inc();
        Verdict::Again(Duration::ZERO)
    }

    /// Flags and the access log's reason, when a wanted retry did not happen.
    pub fn outcome(&self) -> (ResponseFlags, Option<Stopped>) {
        match self.stopped.get() {
            Some(stopped) => (ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, Some(stopped)),
            None => (ResponseFlags::default(), None),
        }
    }
}

/// Whether a failure with no response matches the policy's conditions.
fn failure_matches(policy: &RetryPolicy, failure: Failure) -> bool {
    let on = |condition| policy.retry_on.contains(condition);
    match failure {
        Failure::ConnectFailed => {
            on(RetryOn::ConnectFailure) || on(RetryOn::ServerError) || on(RetryOn::GatewayError)
        }
        Failure::UpstreamReset { retry } => {
            on(RetryOn::Reset)
                || on(RetryOn::ServerError)
                || (retry == Retry::Unprocessed && on(RetryOn::RefusedStream))
        }
        Failure::PerTryTimeout => {
            on(RetryOn::Reset) || on(RetryOn::ServerError) || on(RetryOn::GatewayError)
        }
        _ => false,
    }
}

/// Whether a response head matches the policy's conditions.
fn response_matches(policy: &RetryPolicy, status: u16, grpc_status: Option<u32>) -> bool {
    let on = |condition| policy.retry_on.contains(condition);
    (on(RetryOn::ServerError) && (500..600).contains(&status))
        || (on(RetryOn::GatewayError) && matches!(status, 502..=504))
        || (on(RetryOn::Retriable4xx) && status == 409)
        || (on(RetryOn::RetriableStatusCodes) && policy.retriable_status_codes.contains(&status))
        || grpc_status.is_some_and(|code| {
            (on(RetryOn::Cancelled) && code == 1)
                || (on(RetryOn::DeadlineExceeded) && code == 4)
                || (on(RetryOn::ResourceExhausted) && code == 8)
                || (on(RetryOn::Unavailable) && code == 14)
        })
}

#[cfg(test)]
mod tests {
    use config_schema::RetryBudgetSpec;

    use super::*;
    use crate::routing::RetryOnSet;

    fn policy(attempts: u32, retry_on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy {
            attempts,
            per_try_timeout: None,
            retry_on: RetryOnSet::new(retry_on),
            retriable_status_codes: vec![418].into(),
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
        }
    }

    fn generous_budget() -> RetryBudget {
        RetryBudget::new(&RetryBudgetSpec {
            ratio: 1.0,
            min_retries_per_second: 1000,
            ..RetryBudgetSpec::default()
        })
    }

    #[test]
    fn the_safety_retry_is_taken_once_without_a_policy() {
        let budget = generous_budget();
        let counters = ClusterCounters::default();
        let retries = Retries::new(Instant::now(), None, &budget, None, &counters);
        let unprocessed = Failure::UpstreamReset {
            retry: Retry::Unprocessed,
        };
        assert_eq!(
            retries.after_failure(unprocessed, false, true),
            Verdict::Again(Duration::ZERO)
        );
        assert_eq!(
            retries.after_failure(unprocessed, false, true),
            Verdict::Stop
        );
        let stale = Failure::UpstreamReset {
            retry: Retry::IfIdempotent,
        };
        let retries = Retries::new(Instant::now(), None, &budget, None, &counters);
        assert_eq!(retries.after_failure(stale, false, true), Verdict::Stop);
        assert_eq!(
            retries.after_failure(stale, true, true),
            Verdict::Again(Duration::ZERO)
        );
        assert_eq!(retries.outcome().1, None);
    }

    #[test]
    fn a_policy_retries_its_conditions_up_to_its_attempts_then_says_urx() {
        let budget = generous_budget();
        let counters = ClusterCounters::default();
        let policy = policy(2, &[RetryOn::GatewayError]);
        let retries = Retries::new(Instant::now(), Some(&policy), &budget, None, &counters);
        assert!(retries.on_response(503, None, true));
        assert!(
            !retries.on_response(500, None, true),
            "500 is not a gateway error"
        );
        assert!(retries.on_response(504, None, true));
        assert!(!retries.on_response(502, None, true));
        assert_eq!(counters.retries.get(), 2);
        let (flags, stopped) = retries.outcome();
        assert_eq!(flags, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        assert_eq!(stopped, Some(Stopped::Attempts));
    }

    #[test]
    fn conditions_follow_envoy() {
        let budget = generous_budget();
        let counters = ClusterCounters::default();
        let cases: &[(&[RetryOn], Failure, bool)] = &[
            (&[RetryOn::ConnectFailure], Failure::ConnectFailed, true),
            (&[RetryOn::ServerError], Failure::ConnectFailed, true),
            (&[RetryOn::Reset], Failure::ConnectFailed, false),
            (
                &[RetryOn::Reset],
                Failure::UpstreamReset { retry: Retry::No },
                true,
            ),
            (
                &[RetryOn::RefusedStream],
                Failure::UpstreamReset { retry: Retry::No },
                false,
            ),
            (&[RetryOn::GatewayError], Failure::PerTryTimeout, true),
            (&[RetryOn::ConnectFailure], Failure::PerTryTimeout, false),
            (&[RetryOn::ServerError], Failure::Timeout, false),
            (&[RetryOn::ServerError], Failure::ClientGone, false),
        ];
        for &(on, failure, expected) in cases {
            let policy = policy(1, on);
            let retries = Retries::new(Instant::now(), Some(&policy), &budget, None, &counters);
            let verdict = retries.after_failure(failure, false, true);
            assert_eq!(verdict != Verdict::Stop, expected, "{on:?} {failure:?}");
        }
        let policy = policy(
            5,
            &[
                RetryOn::Retriable4xx,
                RetryOn::RetriableStatusCodes,
                RetryOn::Unavailable,
                RetryOn::ResourceExhausted,
            ],
        );
        let retries = Retries::new(Instant::now(), Some(&policy), &budget, None, &counters);
        assert!(retries.on_response(409, None, true));
        assert!(retries.on_response(418, None, true));
        assert!(!retries.on_response(404, None, true));
        assert!(retries.on_response(200, Some(14), true));
        assert!(retries.on_response(200, Some(8), true));
        assert!(!retries.on_response(200, Some(4), true));
        assert!(!retries.on_response(500, None, true));
    }

    #[test]
    fn a_body_not_at_hand_is_not_retried_and_says_so() {
        let budget = generous_budget();
        let counters = ClusterCounters::default();
        let policy = policy(3, &[RetryOn::ServerError]);
        let retries = Retries::new(Instant::now(), Some(&policy), &budget, None, &counters);
        assert!(!retries.on_response(503, None, false));
        assert_eq!(retries.outcome().1, Some(Stopped::BodyNotKept));
    }

    #[test]
    fn the_budget_stops_retries() {
        let budget = RetryBudget::new(&RetryBudgetSpec {
            ratio: 0.0,
            min_retries_per_second: 0,
            ..RetryBudgetSpec::default()
        });
        let counters = ClusterCounters::default();
        let policy = policy(3, &[RetryOn::ServerError]);
        let retries = Retries::new(Instant::now(), Some(&policy), &budget, None, &counters);
        assert!(!retries.on_response(503, None, true));
        assert_eq!(retries.outcome().1, Some(Stopped::Budget));
        assert_eq!(counters.retry_overflow.get(), 1);
    }

    #[test]
    fn the_breaker_bounds_retries_in_flight() {
        let budget = generous_budget();
        let counters = ClusterCounters::default();
        let spec = config_schema::CircuitBreakerSpec {
            max_connections: 100,
            max_pending_requests: 100,
            max_requests: 100,
            max_retries: 1,
        };
        let breaker = Breaker::new(&spec, None);
        let policy = policy(5, &[RetryOn::ServerError]);
        let first = Retries::new(
            Instant::now(),
            Some(&policy),
            &budget,
            Some(&breaker),
            &counters,
        );
        let second = Retries::new(
            Instant::now(),
            Some(&policy),
            &budget,
            Some(&breaker),
            &counters,
        );
        assert!(first.on_response(503, None, true));
        // One retry in flight in the process: another exchange's retry is refused...
        assert!(!second.on_response(503, None, true));
        assert_eq!(second.outcome().1, Some(Stopped::Breaker));
        // ...and the first exchange's next retry may go, its previous one being over.
        assert!(first.on_response(503, None, true));
        drop(first);
        let third = Retries::new(
            Instant::now(),
            Some(&policy),
            &budget,
            Some(&breaker),
            &counters,
        );
        assert!(
            third.on_response(503, None, true),
            "the permit went back with its exchange"
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let budget = generous_budget();
        let counters = ClusterCounters::default();
        let policy = policy(10, &[RetryOn::ServerError]);
        let retries = Retries::new(Instant::now(), Some(&policy), &budget, None, &counters);
        assert_eq!(
            retries.backoff(u64::MAX),
            Duration::ZERO,
            "no retry taken yet"
        );
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            assert!(retries.on_response(500, None, true));
            // The largest draw shows the ceiling: 25, 50, 100, 200, then capped at 250 ms.
            let ceiling = (0..=u64::from(u32::MAX))
                .step_by(1 << 28)
                .map(|r| retries.backoff(r))
                .max();
            ceilings.push(ceiling);
            assert!(retries.backoff(0) == Duration::ZERO);
        }
        let limits = [25u64, 50, 100, 200, 250, 250];
        for (ceiling, limit) in ceilings.iter().zip(limits) {
            let ceiling = ceiling.unwrap_or_default();
            assert!(
                ceiling <= Duration::from_millis(limit),
                "{ceiling:?} > {limit} ms"
            );
        }
        let micros = 250_000u64;
        assert_eq!(retries.backoff(micros), Duration::from_micros(micros));
    }
}
