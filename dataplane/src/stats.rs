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

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

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
    /// Connections closed at once because the listener was at `max_connections` or over its
    /// connection rate limit.
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
    /// TLS handshakes completed (TLS listeners).
    pub tls_handshakes: Counter,
    /// TLS handshakes that failed or timed out (TLS listeners).
    pub tls_handshake_errors: Counter,
    /// HTTP/2 streams accepted.
    pub h2_streams: Counter,
    /// HTTP/2 connections that failed with a protocol error.
    pub h2_protocol_errors: Counter,
    /// HTTP/2 connections closed for rapid reset.
    pub h2_abuse_rapid_reset: Counter,
    /// HTTP/2 connections closed for a PING/SETTINGS/PRIORITY flood.
    pub h2_abuse_control_flood: Counter,
    /// HTTP/2 connections closed for a CONTINUATION flood.
    pub h2_abuse_continuation_flood: Counter,
    /// HTTP/2 connections closed for a run of empty frames.
    pub h2_abuse_empty_frames: Counter,
    /// Open L4 connections closed because a reload's authorization policies deny them.
    pub authz_revoked: Counter,
    /// TLS passthrough: connections sent where an SNI route says.
    pub sni_routed: Counter,
    /// TLS passthrough: connections sent to the listener's default cluster (no SNI, an SNI no
    /// route names, or no well-formed ClientHello).
    pub sni_defaulted: Counter,
    /// TLS passthrough: connections closed because no route took them and there is no default.
    pub sni_no_route: Counter,
    /// TLS passthrough: connections closed because no whole ClientHello arrived in time.
    pub sni_timeouts: Counter,
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
#[derive(Debug)]
#[repr(align(128))]
pub struct ClusterCounters {
    /// Upstream connections established.
    pub connections: Counter,
    /// Upstream connect attempts that failed (refused, unreachable, reset).
    pub connect_failures: Counter,
    /// Upstream connect attempts that timed out.
    pub connect_timeouts: Counter,
    /// Upstream TLS handshakes that failed or timed out (clusters with TLS).
    pub tls_handshake_errors: Counter,
    /// Connections or requests that found no endpoint to try.
    pub no_endpoint: Counter,
    /// HTTP requests sent upstream.
    pub requests: Counter,
    /// HTTP requests sent on a pooled (reused) connection.
    pub pool_reuse: Counter,
    /// Requests refused because the endpoint's pool was full.
    pub pool_overflow: Counter,
    /// Upstream responses that broke the protocol.
    pub protocol_errors: Counter,
    /// Upstream responses that did not arrive in time.
    pub timeouts: Counter,
    /// Retries sent by route retry policies (the safety retry of a stale connection is not one).
    pub retries: Counter,
    /// Retries that a policy asked for and the cluster's retry budget refused.
    pub retry_overflow: Counter,
    /// Responses sent to clients for this cluster, by status code (index = code - 100), so that
    /// `istio_requests_total` can carry its `response_code` label.
    pub response_codes: Box<[Counter]>,
    /// Time from request head to end of response, for requests routed to this cluster.
    pub duration: Histogram,
    /// The part of `response_codes` that came over mutually authenticated connections, by the
    /// client's SPIFFE ID: `istio_requests_total`'s `source_principal` label.
    pub peers: PeerResponses,
}

/// Most (source principal, response code) rows one worker keeps per cluster
/// ([`PeerResponses`]); responses beyond them count under the principal `other`.
pub const MAX_PEER_ROWS: usize = 64;

/// One worker's responses of one cluster to mutually authenticated clients, by (SPIFFE ID,
/// status code), for `istio_requests_total{source_principal=...}`.
///
/// Bounded: at most [`MAX_PEER_ROWS`] rows, claimed in arrival order and kept for the life of
/// the cluster's counters (they are carried across reloads like the others); a pair that finds
/// the table full is counted under `other`, by status code. Principals are peer workloads, so a
/// mesh's real cardinality is small; the bound protects the scrape from a CA that mints an
/// identity per pod restart. Nothing is allocated until the first mTLS response (rows) or the
/// first overflow (`other`); a row allocates its principal once, when it is claimed.
///
/// Single writer (the owning worker), read by the admin thread: a row's principal and code are
/// written before `claimed` is raised past it (`Release`), and the reader reads `claimed` first
/// (`Acquire`), so it never sees a half-written row. No lock.
#[derive(Debug, Default)]
pub struct PeerResponses {
    rows: OnceLock<Box<[PeerRow]>>,
    claimed: AtomicUsize,
    other: OnceLock<Box<[Counter]>>,
}

#[derive(Debug, Default)]
struct PeerRow {
    principal: OnceLock<Box<str>>,
    code: AtomicU16,
    count: Counter,
}

impl PeerResponses {
    /// Counts a response with `status` (100–599) to the client `principal` (its SPIFFE ID).
    /// Only the owning worker may call this. A linear scan of the claimed rows: a handful of
    /// short comparisons, only for requests on mTLS connections.
    pub fn record(&self, principal: &str, status: u16) {
        if !(100..600).contains(&status) {
            return;
        }
        let rows = self
            .rows
            .get_or_init(|| (0..MAX_PEER_ROWS).map(|_| PeerRow::default()).collect());
        let claimed = self.claimed.load(Ordering::Relaxed);
        let found = rows.iter().take(claimed).find(|row| {
            row.code.load(Ordering::Relaxed) == status
                && row.principal.get().is_some_and(|p| **p == *principal)
        });
        if let Some(row) = found {
            row.count.inc();
            return;
        }
        match rows.get(claimed) {
            Some(row) => {
                let _ = row.principal.set(principal.into());
                row.code.store(status, Ordering::Relaxed);
                row.count.inc();
                self.claimed.store(claimed + 1, Ordering::Release);
            }
            None => {
                let other = self
                    .other
                    .get_or_init(|| (100..600).map(|_| Counter::default()).collect());
                if let Some(counter) = other.get(usize::from(status) - 100) {
                    counter.inc();
                }
            }
        }
    }

    /// Every (principal, status, count) counted so far; `other` for the overflow.
    pub fn for_each(&self, mut f: impl FnMut(&str, u16, u64)) {
        let claimed = self.claimed.load(Ordering::Acquire);
        if let Some(rows) = self.rows.get() {
            for row in rows.iter().take(claimed) {
                if let Some(principal) = row.principal.get() {
                    f(principal, row.code.load(Ordering::Relaxed), row.count.get());
                }
            }
        }
        if let Some(other) = self.other.get() {
            for (code, counter) in (100u16..).zip(other.iter()) {
                let count = counter.get();
                if count > 0 {
                    f("other", code, count);
                }
            }
        }
    }
}

impl Default for ClusterCounters {
    fn default() -> Self {
        Self {
            connections: Counter::default(),
            connect_failures: Counter::default(),
            connect_timeouts: Counter::default(),
            tls_handshake_errors: Counter::default(),
            no_endpoint: Counter::default(),
            requests: Counter::default(),
            pool_reuse: Counter::default(),
            pool_overflow: Counter::default(),
            protocol_errors: Counter::default(),
            timeouts: Counter::default(),
            retries: Counter::default(),
            retry_overflow: Counter::default(),
            response_codes: (100..600).map(|_| Counter::default()).collect(),
            duration: Histogram::default(),
            peers: PeerResponses::default(),
        }
    }
}

impl ClusterCounters {
    /// Counts a response with `status` (100–599) sent to a client.
    #[inline]
    pub fn response(&self, status: u16) {
        if let Some(counter) = self
            .response_codes
            .get(usize::from(status).wrapping_sub(100))
        {
            counter.inc();
        }
    }
}

/// Request-duration histogram bucket bounds in microseconds: Istio's defaults (0.5 ms to 1 h),
/// so that the standard dashboards' queries work.
pub const DURATION_BUCKETS_US: [u64; 19] = [
    500,
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_800_000_000,
    3_600_000_000,
];

/// A duration histogram with fixed buckets, single writer.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`DURATION_BUCKETS_US`] and above the previous one
    /// (not cumulative; the exposition sums them), plus one for +Inf.
    buckets: [Counter; DURATION_BUCKETS_US.len() + 1],
    sum_micros: Counter,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, duration: std::time::Duration) {
        let micros = duration.as_micros().min(u128::from(u64::MAX)) as u64;
        let index = DURATION_BUCKETS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(DURATION_BUCKETS_US.len());
        self.buckets[index].inc();
        self.sum_micros.add(micros);
    }

    /// Per-bucket counts (not cumulative), the last one being +Inf.
    pub fn bucket_counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().map(Counter::get)
    }

    /// Sum of observations in microseconds.
    pub fn sum_micros(&self) -> u64 {
        self.sum_micros.get()
    }
}

/// One worker's counters for one route.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct RouteCounters {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [Counter; 5],
    /// Time from request head to end of response.
    pub duration: Histogram,
    /// Requests answered by an injected fault abort.
    pub fault_aborts: Counter,
    /// Requests held by an injected fault delay.
    pub fault_delays: Counter,
}

impl RouteCounters {
    /// Counts a response with `status` and its duration.
    #[inline]
    pub fn record(&self, status: u16, duration: std::time::Duration) {
        if let Some(class) = self
            .responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            class.inc();
        }
        self.duration.observe(duration);
    }
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
    fn histogram_buckets_follow_istio_bounds() {
        let h = Histogram::default();
        for micros in [100, 500, 501, 1_000, 7_000, 4_000_000_000] {
            h.observe(std::time::Duration::from_micros(micros));
        }
        let counts: Vec<u64> = h.bucket_counts().collect();
        assert_eq!(counts[0], 2, "<= 0.5 ms");
        assert_eq!(counts[1], 2, "<= 1 ms");
        assert_eq!(counts[3], 1, "<= 10 ms");
        assert_eq!(counts[DURATION_BUCKETS_US.len()], 1, "+Inf");
        assert_eq!(
            h.sum_micros(),
            100 + 500 + 501 + 1_000 + 7_000 + 4_000_000_000
        );
    }

    #[test]
    fn route_counters_count_by_class() {
        let r = RouteCounters::default();
        r.record(204, std::time::Duration::ZERO);
        r.record(503, std::time::Duration::ZERO);
        r.record(0, std::time::Duration::ZERO);
        let classes: Vec<u64> = r.responses.iter().map(Counter::get).collect();
        assert_eq!(classes, [0, 1, 0, 0, 1]);
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

    fn rows(peers: &PeerResponses) -> Vec<(String, u16, u64)> {
        let mut out = Vec::new();
        peers.for_each(|p, code, n| out.push((p.to_owned(), code, n)));
        out
    }

    #[test]
    fn peer_responses_count_by_principal_and_code_and_overflow_to_other() {
        let peers = PeerResponses::default();
        assert!(rows(&peers).is_empty());
        peers.record("spiffe://td/ns/a/sa/x", 200);
        peers.record("spiffe://td/ns/a/sa/x", 200);
        peers.record("spiffe://td/ns/a/sa/x", 503);
        peers.record("spiffe://td/ns/b/sa/y", 200);
        peers.record("spiffe://td/ns/b/sa/y", 0);
        peers.record("spiffe://td/ns/b/sa/y", 600);
        assert_eq!(
            rows(&peers),
            vec![
                ("spiffe://td/ns/a/sa/x".to_owned(), 200, 2),
                ("spiffe://td/ns/a/sa/x".to_owned(), 503, 1),
                ("spiffe://td/ns/b/sa/y".to_owned(), 200, 1),
            ]
        );
        for i in 0..MAX_PEER_ROWS + 10 {
            peers.record(&format!("spiffe://td/ns/n{i}/sa/s"), 200);
        }
        peers.record("spiffe://td/ns/a/sa/x", 200);
        let all = rows(&peers);
        assert_eq!(
            all.len(),
            MAX_PEER_ROWS + 1,
            "the cap, then one `other` row"
        );
        assert_eq!(all.last(), Some(&("other".to_owned(), 200, 13)));
        assert!(all.contains(&("spiffe://td/ns/a/sa/x".to_owned(), 200, 3)));
    }
}
