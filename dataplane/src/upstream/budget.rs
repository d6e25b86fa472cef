//! A cluster's retry budget (Linkerd's shape): within any window of `ttl`, retries are at most
//! `ratio` × the requests sent by routes that retry, plus `min_retries_per_second` × `ttl`. A
//! failing upstream then sees at most `1 + ratio` times the traffic its clients send (plus the
//! floor), however many attempts the routes allow: retries cannot become a storm.
//!
//! Counted for the whole process: a worker whose requests fail may spend the budget that another
//! worker's requests earned, as one budget per cluster should behave. The counts live in one
//! ring of one-second slots per kind (requests, retries), each slot an atomic holding its second
//! and its count. Recording a request is one atomic add on a slot shared by the workers; only
//! requests on routes that retry are recorded, so a cluster without retrying routes pays nothing.
//! Slots are reset by the first writer of a new second (a compare-and-swap), so the window is
//! exact to the second; two workers crossing a second at once can lose one count between them,
//! which is immaterial for a ratio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use config_schema::RetryBudgetSpec;

/// Longest window, in seconds (the spec's limit).
const MAX_TTL: usize = 60;

/// The budget of one cluster, shared by all workers.
pub struct RetryBudget {
    /// Retries per request, in thousandths.
    ratio_milli: u64,
    /// Retries allowed per window whatever the ratio.
    floor: u64,
    /// Window length in seconds (1–60).
    ttl: u64,
    /// Where seconds are counted from.
    epoch: Instant,
    requests: Slots,
    retries: Slots,
}

impl RetryBudget {
    /// A budget as `spec` says.
    pub fn new(spec: &RetryBudgetSpec) -> Self {
        let ttl = spec.ttl.get().as_secs().clamp(1, MAX_TTL as u64);
        Self {
            ratio_milli: (spec.ratio.clamp(0.0, 1.0) * 1000.0).round() as u64,
            floor: u64::from(spec.min_retries_per_second) * ttl,
            ttl,
            epoch: Instant::now(),
            requests: Slots::new(ttl as usize),
            retries: Slots::new(ttl as usize),
        }
    }

    /// Whether this budget was made from `spec` (a reload keeps the state of an unchanged one).
    pub fn is(&self, spec: &RetryBudgetSpec) -> bool {
        let other = Self::new(spec);
        (self.ratio_milli, self.floor, self.ttl) == (other.ratio_milli, other.floor, other.ttl)
    }

    fn second(&self, now: Instant) -> u64 {
        // Offset by one so that a slot's second is never 0, which marks an unused slot.
        now.saturating_duration_since(self.epoch).as_secs() + 1
    }

    /// Counts a request that may be retried.
    pub fn deposit(&self, now: Instant) {
        self.requests.add(self.second(now));
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let requests = self.requests.sum(second, self.ttl);
        let retries = self.retries.sum(second, self.ttl);
        let allowed = requests * self.ratio_milli / 1000 + self.floor;
        if retries >= allowed {
            return false;
        }
        self.retries.add(second);
        true
    }
}

// What the budget is, not what it counted: a snapshot's `Debug` shows its config.
impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio_milli", &self.ratio_milli)
            .field("floor", &self.floor)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// One counter per second of the window, each packed as `second << 32 | count`.
#[derive(Debug)]
struct Slots(Box<[AtomicU64]>);

impl Slots {
    fn new(len: usize) -> Self {
        Self((0..len).map(|_| AtomicU64::new(0)).collect())
    }

    fn add(&self, second: u64) {
        let slot = &self.0[(second % self.0.len() as u64) as usize];
        let current = slot.load(Ordering::Relaxed);
        if current >> 32 == second {
            // The count cannot reach 2^32 within one second: the second is never disturbed.
            slot.fetch_add(1, Ordering::Relaxed);
        } else if slot
            .compare_exchange(
                current,
                second << 32 | 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // Another worker started the second first.
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts in the `ttl` seconds up to and including `second`.
    fn sum(&self, second: u64, ttl: u64) -> u64 {
        self.0
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&packed| {
                let at = packed >> 32;
                at != 0 && at <= second && second - at < ttl
            })
            .map(|packed| packed & 0xffff_ffff)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(ratio: f64, floor: u32, ttl: u64) -> RetryBudget {
        RetryBudget::new(&RetryBudgetSpec {
            ratio,
            min_retries_per_second: floor,
            ttl: config_schema::units::Duration::from_secs(ttl),
        })
    }

    #[test]
    fn retries_are_bounded_by_the_ratio_plus_the_floor() {
        let budget = budget(0.2, 1, 10);
        let now = budget.epoch;
        for _ in 0..100 {
            budget.deposit(now);
        }
        let granted = (0..1000).filter(|_| budget.withdraw(now)).count();
        // 20 % of 100 requests, plus 1 per second over 10 seconds.
        assert_eq!(granted, 20 + 10);
    }

    #[test]
    fn the_window_forgets_old_seconds() {
        let budget = budget(0.5, 0, 2);
        let start = budget.epoch;
        for _ in 0..10 {
            budget.deposit(start);
        }
        assert_eq!((0..100).filter(|_| budget.withdraw(start)).count(), 5);
        // Two seconds later the requests and the retries of the first second are out of the
        // window: nothing earned, nothing spent.
        let later = start + Duration::from_secs(2);
        assert!(!budget.withdraw(later));
        budget.deposit(later);
        budget.deposit(later);
        assert!(budget.withdraw(later));
        assert!(!budget.withdraw(later));
    }

    #[test]
    fn a_slot_reused_for_a_new_second_starts_from_zero() {
        let budget = budget(1.0, 0, 1);
        let start = budget.epoch;
        for _ in 0..3 {
            budget.deposit(start);
        }
        let next = start + Duration::from_secs(1);
        budget.deposit(next);
        assert_eq!(budget.requests.sum(budget.second(next), 1), 1);
    }

    #[test]
    fn an_unchanged_spec_is_recognised() {
        let spec = RetryBudgetSpec::default();
        assert!(RetryBudget::new(&spec).is(&spec));
        let other = RetryBudgetSpec {
            ratio: 0.5,
            ..spec.clone()
        };
        assert!(!RetryBudget::new(&spec).is(&other));
    }
}
