//! Counters written by one worker each and summed by the admin thread on scrape.
//!
//! Every counter has exactly one writer: the worker that owns the slot. A single writer does not
//! need an atomic read-modify-write (a `lock`-prefixed instruction that bounces the cache line
//! between cores); it loads, adds and stores with `Relaxed` ordering, which compiles to plain
//! moves. The atomics exist only so that the admin thread may read the value at any time. Each
//! worker's slots sit on their own cache lines, so workers never share a line with each other.
//!
//! Stats objects are keyed by stable names (listener, cluster) and carried from one config
//! generation to the next, so a reload never resets a counter.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with a single writer thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this (see the module docs).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value, readable from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's counters for one listener. Aligned so that two workers' slots never share a cache
/// line (128 bytes covers adjacent-line prefetching on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ListenerCounters {
    /// Connections accepted (including those then refused by `max_connections`).
    pub accepted: Counter,
    /// Connections closed at once because the listener was at `max_connections`.
    pub rejected: Counter,
    /// Served connections that have ended.
    pub closed: Counter,
    /// accept() failures (EMFILE, ENFILE, ENOBUFS, ...).
    pub accept_errors: Counter,
    /// Bytes received from downstream clients.
    pub bytes_received: Counter,
    /// Bytes sent to downstream clients.
    pub bytes_sent: Counter,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: Counter,
}

impl ListenerCounters {
    /// Connections currently open on this worker.
    pub fn active(&self) -> u64 {
        // Read `closed` and `rejected` before `accepted`: the writer increments `accepted` first,
        // so this order never observes more ends than starts.
        let ended = self.closed.get() + self.rejected.get();
        self.accepted.get().saturating_sub(ended)
    }
}

/// One worker's counters for one cluster.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ClusterCounters {
    /// Upstream connections established.
    pub connections: Counter,
    /// Upstream connect attempts that failed (refused, unreachable, reset).
    pub connect_failures: Counter,
    /// Upstream connect attempts that timed out.
    pub connect_timeouts: Counter,
    /// Connections or requests that found no endpoint to try.
    pub no_endpoint: Counter,
}

/// Per-worker slots of one kind of counters, indexed by worker id.
#[derive(Debug)]
pub struct PerWorker<T> {
    slots: Box<[T]>,
}

impl<T: Default> PerWorker<T> {
    /// Slots for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers).map(|_| T::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// The slot of `worker`. Worker ids are assigned at start and are always in range.
    #[inline]
    pub fn slot(&self, worker: usize) -> &T {
        &self.slots[worker]
    }

    /// All slots, in worker order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter()
    }

    /// How many workers have slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are no workers (never, in a running proxy).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The sum of `f` over all workers.
    pub fn sum(&self, f: impl Fn(&T) -> u64) -> u64 {
        self.slots.iter().map(f).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_is_accepted_minus_ended() {
        let c = ListenerCounters::default();
        c.accepted.add(5);
        c.rejected.inc();
        c.closed.add(2);
        assert_eq!(c.active(), 2);
    }

    #[test]
    fn slots_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<ListenerCounters>() >= 128);
        assert!(std::mem::align_of::<ClusterCounters>() >= 128);
        let per = PerWorker::<ListenerCounters>::new(3);
        per.slot(0).accepted.inc();
        per.slot(2).accepted.add(4);
        assert_eq!(per.sum(|c| c.accepted.get()), 5);
    }
}
