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
//!
//! Istio's metrics live in [`SeriesTable`]s, one per worker and cluster (HTTP) or listener
//! (TCP): a bounded table of series keyed by integers ([`SeriesKey`]), with the same single-writer
//! rule; `admin::istio` gives them their labels and sums them over workers (docs/METRICS.md).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::access_log::ResponseFlags;
use crate::workload::Workload;

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
    /// HTTP/2 connections closed for a flood of PING/SETTINGS/PRIORITY, their ACKs, or unknown
    /// frame types.
    pub h2_abuse_control_flood: Counter,
    /// HTTP/2 connections closed for a CONTINUATION flood.
    pub h2_abuse_continuation_flood: Counter,
    /// HTTP/2 connections closed for a run of empty frames.
    pub h2_abuse_empty_frames: Counter,
    /// HTTP/2 connections closed for a WINDOW_UPDATE flood.
    pub h2_abuse_window_update_flood: Counter,
    /// HTTP/2 connections closed for provoking stream resets ("MadeYouReset").
    pub h2_abuse_made_you_reset: Counter,
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
    /// Istio's TCP series of the opaque connections this listener forwarded
    /// (`istio_tcp_*`), by source, destination and cluster.
    pub tcp_series: SeriesTable<TcpMetrics>,
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
    /// Istio's request series of the requests routed to this cluster (`istio_requests_total`,
    /// `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`).
    pub series: SeriesTable<HttpMetrics>,
}

/// Histogram bucket bounds in thousandths of the unit: Envoy's default buckets, which Istio's
/// histograms use (0.5 to 3 600 000: milliseconds for durations, bytes for sizes), so that the
/// standard dashboards' queries work. For durations the bounds are microseconds.
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

/// A histogram with fixed buckets (Envoy's defaults, [`DURATION_BUCKETS_US`]), single writer:
/// durations in microseconds, or sizes in bytes.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`DURATION_BUCKETS_US`] and above the previous one
    /// (not cumulative; the exposition sums them), plus one for +Inf.
    buckets: [Counter; DURATION_BUCKETS_US.len() + 1],
    /// Sum of observations: microseconds ([`Histogram::observe`]) or bytes
    /// ([`Histogram::observe_bytes`]).
    sum: Counter,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, duration: std::time::Duration) {
        let micros = duration.as_micros().min(u128::from(u64::MAX)) as u64;
        self.record(micros, micros);
    }

    /// Records one size in bytes (bucket bounds read as bytes).
    #[inline]
    pub fn observe_bytes(&self, bytes: u64) {
        self.record(bytes.saturating_mul(1000), bytes);
    }

    #[inline]
    fn record(&self, thousandths: u64, sum: u64) {
        // The first bound at or above the value (a binary search: three histograms per request).
        let index = DURATION_BUCKETS_US.partition_point(|&bound| bound < thousandths);
        self.buckets[index].inc();
        self.sum.add(sum);
    }

    /// Per-bucket counts (not cumulative), the last one being +Inf.
    pub fn bucket_counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().map(Counter::get)
    }

    /// Sum of observations: microseconds for durations, bytes for sizes.
    pub fn sum(&self) -> u64 {
        self.sum.get()
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

/// Most series one worker keeps per table (per cluster for HTTP, per listener for TCP); what
/// does not fit counts in the table's one `other` series.
pub const MAX_SERIES: usize = 128;

/// Slots of a series table's open-addressing index: twice [`MAX_SERIES`], so probes stay short.
const SERIES_SLOTS: usize = 2 * MAX_SERIES;

/// `grpc_response_status` of a series that is not gRPC.
pub const NO_GRPC_STATUS: u16 = u16::MAX;

/// `request_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum RequestProtocol {
    /// An HTTP request (any version) that is not gRPC.
    #[default]
    Http,
    /// A gRPC request (`content-type: application/grpc...`).
    Grpc,
    /// An opaque TCP connection.
    Tcp,
}

impl RequestProtocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// The label values of an Istio series that vary from request to request, as numbers: what a
/// series table looks rows up by. Workloads are [`Workload::id`]s and principals hashes of the
/// SPIFFE ID (0: none), so a key is compared without touching a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeriesKey {
    /// The source workload's id (0: the table does not name the peer).
    pub source_workload: u64,
    /// A hash of the client's verified SPIFFE ID (0: no verified client certificate).
    pub source_principal: u64,
    /// The destination workload's id (the upstream endpoint's; 0: unknown).
    pub destination_workload: u64,
    /// A hash of the upstream's verified SPIFFE ID (0: none).
    pub destination_principal: u64,
    /// TCP: a hash of the destination cluster's name (a listener's connections may go to
    /// several clusters); HTTP: 0 (the table is the cluster's).
    pub service: u64,
    /// `response_code` (0 for TCP and for requests that got no response).
    pub response_code: u16,
    /// `grpc_response_status`, or [`NO_GRPC_STATUS`].
    pub grpc_status: u16,
    /// `response_flags`.
    pub flags: ResponseFlags,
    /// `request_protocol`.
    pub protocol: RequestProtocol,
    /// `connection_security_policy="mutual_tls"` (else `none`).
    pub mutual_tls: bool,
    /// `reporter="source"` (else `destination`).
    pub reporter_source: bool,
}

impl SeriesKey {
    /// Where the key's probe starts: a multiply-xor mix of the fields (no SipHash: the inputs
    /// are already hashes or small numbers, and the table is bounded whatever they are).
    #[inline]
    fn slot(&self) -> usize {
        let small = u64::from(self.response_code)
            | u64::from(self.grpc_status) << 16
            | (self.protocol as u64) << 32
            | u64::from(self.mutual_tls) << 40
            | u64::from(self.reporter_source) << 41;
        let mixed = (self.source_workload
            ^ self.source_principal.rotate_left(11)
            ^ self.destination_workload.rotate_left(23)
            ^ self.destination_principal.rotate_left(37)
            ^ self.service.rotate_left(47)
            ^ small)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 40) as usize % SERIES_SLOTS
    }
}

/// A principal's number in a [`SeriesKey`]: a hash of the SPIFFE ID, never 0 (no principal);
/// 1 for a verified certificate that carries no SPIFFE ID (`""`).
#[inline]
pub fn principal_hash(id: &str) -> u64 {
    if id.is_empty() {
        1
    } else {
        xxhash_rust::xxh3::xxh3_64(id.as_bytes()).max(2)
    }
}

/// A series' label values as text, written once when its row is claimed.
#[derive(Debug, Clone, Default)]
pub struct SeriesLabels {
    /// The numbers the row is found by (code, status, flags, protocol, policy, reporter).
    pub key: SeriesKey,
    /// The source workload, if the table names it.
    pub source_workload: Option<Arc<Workload>>,
    /// The client's verified SPIFFE ID (empty: verified, but the certificate has none).
    pub source_principal: Option<Box<str>>,
    /// The destination workload, if the table names the endpoint.
    pub destination_workload: Option<Arc<Workload>>,
    /// The upstream's verified SPIFFE ID.
    pub destination_principal: Option<Box<str>>,
    /// TCP: the destination cluster's name.
    pub service: Option<Arc<str>>,
}

/// The metrics of one HTTP series.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// `istio_requests_total`.
    pub requests: Counter,
    /// `istio_request_duration_milliseconds`.
    pub duration: Histogram,
    /// `istio_request_bytes` (request body bytes).
    pub request_bytes: Histogram,
    /// `istio_response_bytes` (response body bytes).
    pub response_bytes: Histogram,
}

/// The metrics of one TCP series.
#[derive(Debug, Default)]
pub struct TcpMetrics {
    /// `istio_tcp_connections_opened_total`.
    pub opened: Counter,
    /// `istio_tcp_connections_closed_total`.
    pub closed: Counter,
    /// `istio_tcp_received_bytes_total` (from the client).
    pub received: Counter,
    /// `istio_tcp_sent_bytes_total` (to the client).
    pub sent: Counter,
}

/// One claimed row: its labels and metrics.
#[derive(Debug)]
pub struct SeriesRow<M> {
    /// The labels, fixed when the row was claimed.
    pub labels: SeriesLabels,
    /// The counters.
    pub metrics: M,
}

/// One slot of a series table's index: empty, or a claimed row.
type Slot<M> = OnceLock<Box<SeriesRow<M>>>;

/// One worker's Istio series of one cluster (HTTP) or listener (TCP): a bounded open-addressing
/// table keyed by [`SeriesKey`].
///
/// Bounded: at most [`MAX_SERIES`] rows, claimed in arrival order and kept for the life of the
/// table (it is carried across reloads with the counters that hold it); a key that finds the
/// table full counts in the one `other` row, whose per-request labels all read `other`. So a
/// scrape has at most `MAX_SERIES + 1` series per worker and table whatever clients send, and
/// the sum over a metric stays exact.
///
/// Single writer (the owning worker), read by the admin thread with no lock: a row is written
/// whole into a `OnceLock` before the index slot is set, so a reader sees complete rows only.
/// Nothing is allocated until the first request (the index, 256 pointers) and then once per new
/// row (the row and its label strings); a request whose row exists allocates nothing, hashes no
/// string and never grows a map.
#[derive(Debug)]
pub struct SeriesTable<M> {
    slots: OnceLock<Box<[Slot<M>]>>,
    claimed: AtomicUsize,
    other: OnceLock<Box<M>>,
}

impl<M> Default for SeriesTable<M> {
    fn default() -> Self {
        Self {
            slots: OnceLock::new(),
            claimed: AtomicUsize::new(0),
            other: OnceLock::new(),
        }
    }
}

impl<M: Default> SeriesTable<M> {
    /// The metrics of the series `key`, claiming a row (with the labels `labels` makes) if it is
    /// new and there is room, else the `other` row. Only the owning worker may call this.
    #[inline]
    pub fn get(&self, key: &SeriesKey, labels: impl FnOnce() -> SeriesLabels) -> &M {
        let slots = self
            .slots
            .get_or_init(|| (0..SERIES_SLOTS).map(|_| OnceLock::new()).collect());
        let mut index = key.slot();
        for _ in 0..SERIES_SLOTS {
            let Some(slot) = slots.get(index) else {
                break;
            };
            match slot.get() {
                Some(row) if row.labels.key == *key => return &row.metrics,
                Some(_) => index = (index + 1) % SERIES_SLOTS,
                None => {
                    let claimed = self.claimed.load(Ordering::Relaxed);
                    if claimed >= MAX_SERIES {
                        break;
                    }
                    let mut row_labels = labels();
                    row_labels.key = *key;
                    let row = slot.get_or_init(|| {
                        Box::new(SeriesRow {
                            labels: row_labels,
                            metrics: M::default(),
                        })
                    });
                    self.claimed.store(claimed + 1, Ordering::Relaxed);
                    return &row.metrics;
                }
            }
        }
        self.other.get_or_init(Box::default)
    }
}

impl<M> SeriesTable<M> {
    /// Every claimed row's labels and metrics, then (labels `None`) the `other` row's metrics
    /// if anything overflowed.
    pub fn for_each(&self, mut f: impl FnMut(Option<&SeriesLabels>, &M)) {
        if let Some(slots) = self.slots.get() {
            for slot in slots.iter() {
                if let Some(row) = slot.get() {
                    f(Some(&row.labels), &row.metrics);
                }
            }
        }
        if let Some(metrics) = self.other.get() {
            f(None, metrics);
        }
    }

    /// Rows claimed so far.
    pub fn len(&self) -> usize {
        self.claimed.load(Ordering::Relaxed)
    }

    /// Whether no row was claimed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert_eq!(h.sum(), 100 + 500 + 501 + 1_000 + 7_000 + 4_000_000_000);
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

    fn key(code: u16, principal: u64) -> SeriesKey {
        SeriesKey {
            response_code: code,
            source_principal: principal,
            grpc_status: NO_GRPC_STATUS,
            ..SeriesKey::default()
        }
    }

    fn rows(table: &SeriesTable<HttpMetrics>) -> (Vec<(u16, u64, u64)>, Option<u64>) {
        let mut rows = Vec::new();
        let mut other = None;
        table.for_each(|labels, m| match labels {
            Some(labels) => rows.push((
                labels.key.response_code,
                labels.key.source_principal,
                m.requests.get(),
            )),
            None => other = Some(m.requests.get()),
        });
        rows.sort();
        (rows, other)
    }

    #[test]
    fn series_rows_are_found_by_key_and_overflow_to_other() {
        let table = SeriesTable::<HttpMetrics>::default();
        assert_eq!(rows(&table), (vec![], None));
        let labels = || SeriesLabels {
            source_principal: Some("spiffe://td/ns/a/sa/x".into()),
            ..SeriesLabels::default()
        };
        table.get(&key(200, 7), labels).requests.inc();
        table
            .get(&key(200, 7), || unreachable!("the row exists"))
            .requests
            .inc();
        table.get(&key(503, 7), labels).requests.inc();
        table.get(&key(200, 8), labels).requests.inc();
        assert_eq!(
            rows(&table),
            (vec![(200, 7, 2), (200, 8, 1), (503, 7, 1)], None)
        );
        for i in 0..(MAX_SERIES as u64 + 10) {
            table
                .get(&key(201, 100 + i), SeriesLabels::default)
                .requests
                .inc();
        }
        table
            .get(&key(200, 7), || unreachable!("the row exists"))
            .requests
            .inc();
        let (all, other) = rows(&table);
        assert_eq!(all.len(), MAX_SERIES, "the cap");
        assert_eq!(other, Some(13), "what did not fit");
        assert!(all.contains(&(200, 7, 3)));
        assert_eq!(table.len(), MAX_SERIES);
    }

    #[test]
    fn byte_histograms_use_the_same_bounds_in_bytes() {
        let h = Histogram::default();
        for bytes in [0, 1, 2, 5, 6, 1_000, 4_000_000] {
            h.observe_bytes(bytes);
        }
        let counts: Vec<u64> = h.bucket_counts().collect();
        assert_eq!(counts[0], 1, "<= 0.5 B");
        assert_eq!(counts[1], 1, "<= 1 B");
        assert_eq!(counts[2], 2, "<= 5 B");
        assert_eq!(counts[3], 1, "<= 10 B");
        assert_eq!(counts[9], 1, "<= 1000 B");
        assert_eq!(counts[DURATION_BUCKETS_US.len()], 1, "+Inf");
        assert_eq!(h.sum(), 1 + 2 + 5 + 6 + 1_000 + 4_000_000);
    }
}
