//! The service map: `GET /service_graph` (JSON, or Graphviz with `?format=dot`) and `GET /ui`, a
//! self-contained page that draws it.
//!
//! The map is this node's view, as Kiali draws it: source nodes (the clients that sent traffic
//! through this proxy, named by their SPIFFE ID or the node's `telemetry.source_workload`) on
//! one side, destination services (clusters) on the other, and one edge per (source,
//! destination, protocol) with request rate, error rate, p50/p99 latency and bytes.
//!
//! Rates are "now", not since start: the admin thread samples the cumulative counters every
//! [`SAMPLE_EVERY`] into a ring ([`History`], a timer task on the admin runtime, never on a
//! worker) and a request diffs the counters of this moment against the sample taken a window
//! ago (`?window=SECONDS`, default [`DEFAULT_WINDOW`], at most [`MAX_WINDOW`]). While the process
//! is younger than the window, the baseline is the empty sample taken when the admin API started,
//! so the numbers cover everything since then.
//!
//! All knowledge of where the numbers come from is in one function, [`edge_totals`]; the rest
//! only diffs [`EdgeTotals`] and renders them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::stats::DURATION_BUCKETS_US;

/// How often the admin thread samples the counters.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The window of `/service_graph` when the request names none.
pub(super) const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// The longest window a request may ask for; the ring keeps just enough samples for it.
pub(super) const MAX_WINDOW: Duration = Duration::from_secs(300);
/// The shortest window (one sample interval: shorter ones would have no baseline to diff).
const MIN_WINDOW: Duration = SAMPLE_EVERY;
/// Samples kept: one per interval over the longest window, plus the one at its start.
const RING: usize = (MAX_WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

/// Duration histogram slots: one per bound of [`DURATION_BUCKETS_US`] plus +Inf.
const BUCKETS: usize = DURATION_BUCKETS_US.len() + 1;

/// The page `/ui` serves: inline CSS, JS and SVG, nothing fetched but `/service_graph`.
pub(super) const UI_PAGE: &str = include_str!("ui.html");

/// The page may run its own inline script and style and fetch from this origin, nothing else.
pub(super) const UI_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// What an edge carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Protocol {
    /// HTTP/1.1, HTTP/2 or gRPC requests.
    Http,
    /// Opaque TCP connections (tcp listeners).
    Tcp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Cumulative counters of one edge of the map, summed over workers: everything the map needs,
/// and nothing about where it came from. [`edge_totals`] fills them; the map diffs two of them
/// taken a window apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EdgeTotals {
    /// The client (see [`source_name`]).
    pub source: String,
    /// The destination service (`destination_service`: the cluster's name).
    pub destination: String,
    /// HTTP (and gRPC) requests, or TCP connections.
    pub protocol: Protocol,
    /// HTTP: requests routed to the destination. TCP: connections opened.
    pub requests: u64,
    /// HTTP: responses with a 5xx status, and gRPC answers with a status other than OK.
    /// TCP: always 0 (there is no per-connection outcome).
    pub errors: u64,
    /// Request durations, not cumulative: `duration[i]` counts durations at or below
    /// `DURATION_BUCKETS_US[i]` and above the previous bound; the last slot is +Inf. All zero
    /// for TCP.
    pub duration: [u64; BUCKETS],
    /// Bytes received from the source and sent to it.
    pub bytes: Bytes,
}

/// Bytes of an edge, as the proxy counts them on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Bytes {
    /// From the client (request bodies, or the TCP stream's upload).
    pub received: u64,
    /// To the client (response bodies, or the TCP stream's download).
    pub sent: u64,
}

/// The map's edges as the counters stand now: the Istio series (`admin::istio::series`, the
/// same numbers `/stats/prometheus` exposes) grouped by (source, destination service,
/// protocol). **The one place that knows the counters.** HTTP bytes are body bytes
/// (`istio_request_bytes`, `istio_response_bytes`); TCP bytes are the stream's.
pub(super) fn edge_totals(snapshot: &Snapshot) -> Vec<EdgeTotals> {
    let fallback = snapshot.spec.telemetry.source_workload.as_deref();
    let series = super::istio::series(snapshot, None);
    let mut edges: BTreeMap<(String, String, Protocol), EdgeTotals> = BTreeMap::new();
    for (labels, http) in &series.http {
        let failed = labels.response_code.starts_with('5')
            || !matches!(labels.grpc_response_status.as_str(), "" | "0");
        let totals: &mut EdgeTotals = edge(&mut edges, labels, fallback, Protocol::Http);
        totals.requests += http.requests;
        if failed {
            totals.errors += http.requests;
        }
        for (slot, count) in totals.duration.iter_mut().zip(&http.duration.counts) {
            *slot += count;
        }
        totals.bytes.received += http.request_bytes.sum;
        totals.bytes.sent += http.response_bytes.sum;
    }
    for (labels, _listener, tcp) in &series.tcp {
        let totals: &mut EdgeTotals = edge(&mut edges, labels, fallback, Protocol::Tcp);
        totals.requests += tcp.opened;
        totals.bytes.received += tcp.received;
        totals.bytes.sent += tcp.sent;
    }
    edges.into_values().collect()
}

/// The totals of the edge `labels` belong to, created empty on first sight.
fn edge<'e>(
    edges: &'e mut BTreeMap<(String, String, Protocol), EdgeTotals>,
    labels: &super::istio::Labels,
    fallback: Option<&str>,
    protocol: Protocol,
) -> &'e mut EdgeTotals {
    let source = source_name(labels, fallback);
    let destination = labels.destination_service.clone();
    edges
        .entry((source.clone(), destination.clone(), protocol))
        .or_insert_with(|| EdgeTotals {
            source,
            destination,
            protocol,
            requests: 0,
            errors: 0,
            duration: [0; BUCKETS],
            bytes: Bytes::default(),
        })
}

/// The name a client is drawn under: its workload when the `[[workloads]]` table names it, else
/// its SPIFFE ID when it presented one, else the node's `telemetry.source_workload` (the
/// `source_workload` label of a caller the table does not name), else `unknown`.
fn source_name(labels: &super::istio::Labels, fallback: Option<&str>) -> String {
    let workload = labels.source_workload.as_str();
    let from_table = workload != "unknown" && Some(workload) != fallback;
    if !from_table && labels.source_principal != "unknown" {
        return labels.source_principal.clone();
    }
    workload.to_owned()
}

/// One sample of the counters.
#[derive(Debug)]
struct Sample {
    at: Instant,
    edges: Vec<EdgeTotals>,
}

/// The ring of samples the map diffs against. Lives on the admin thread (no lock).
#[derive(Debug)]
pub(super) struct History {
    samples: std::cell::RefCell<VecDeque<Sample>>,
}

impl History {
    /// A ring holding one empty sample, taken now: counters start at zero with the process, so
    /// until the ring reaches back a whole window, the numbers are those since start.
    pub(super) fn new() -> Self {
        let mut samples = VecDeque::with_capacity(RING);
        samples.push_back(Sample {
            at: Instant::now(),
            edges: Vec::new(),
        });
        Self {
            samples: std::cell::RefCell::new(samples),
        }
    }

    /// Samples the counters now, dropping the oldest sample once the ring is full.
    pub(super) fn record(&self, shared: &Shared) {
        let edges = edge_totals(&shared.store.load());
        let mut samples = self.samples.borrow_mut();
        if samples.len() >= RING {
            samples.pop_front();
        }
        samples.push_back(Sample {
            at: Instant::now(),
            edges,
        });
    }

    /// The map over the last `window`: the counters now, diffed against the newest sample at
    /// least `window` old (or the oldest one kept).
    fn map(&self, now_edges: Vec<EdgeTotals>, now: Instant, window: Duration) -> Map {
        let samples = self.samples.borrow();
        let base = samples
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= window)
            .or(samples.front());
        let (since, base_edges) = match base {
            Some(sample) => (now.saturating_duration_since(sample.at), &sample.edges[..]),
            None => (Duration::ZERO, &[][..]),
        };
        Map::diff(now_edges, base_edges, since)
    }
}

/// Samples the counters every [`SAMPLE_EVERY`], for as long as the admin runtime runs.
pub(super) async fn sample(admin: std::rc::Rc<super::Admin>) {
    loop {
        monoio::time::sleep(SAMPLE_EVERY).await;
        admin.graph.record(&admin.shared);
    }
}

/// One edge over a window.
#[derive(Debug, Clone, PartialEq)]
struct Edge {
    source: String,
    destination: String,
    protocol: Protocol,
    requests: u64,
    errors: u64,
    duration: [u64; BUCKETS],
    bytes: Bytes,
}

/// The map over one window.
#[derive(Debug)]
struct Map {
    /// The window actually covered (the age of the baseline sample).
    window: Duration,
    /// Edges that carried traffic in the window, by source, destination and protocol.
    edges: Vec<Edge>,
}

impl Map {
    /// `now` minus `base`, edge by edge, each difference at least zero. Counters only grow while
    /// their cluster or listener lives; a reset (a cluster removed and added back by reloads)
    /// is rare, and its edge counts from its baseline once the counters pass it, or once it
    /// leaves the window, rather than counting everything since start again.
    fn diff(now: Vec<EdgeTotals>, base: &[EdgeTotals], window: Duration) -> Self {
        let base: HashMap<(&str, &str, Protocol), &EdgeTotals> = base
            .iter()
            .map(|e| ((&*e.source, &*e.destination, e.protocol), e))
            .collect();
        let mut edges: Vec<Edge> = now
            .into_iter()
            .filter_map(|e| {
                let old = base.get(&(&*e.source, &*e.destination, e.protocol));
                let mut duration = e.duration;
                let (mut requests, mut errors, mut bytes) = (e.requests, e.errors, e.bytes);
                if let Some(old) = old {
                    requests = requests.saturating_sub(old.requests);
                    errors = errors.saturating_sub(old.errors).min(requests);
                    for (slot, was) in duration.iter_mut().zip(old.duration) {
                        *slot = slot.saturating_sub(was);
                    }
                    bytes = Bytes {
                        received: bytes.received.saturating_sub(old.bytes.received),
                        sent: bytes.sent.saturating_sub(old.bytes.sent),
                    };
                }
                let moved = bytes.received + bytes.sent > 0;
                (requests > 0 || moved).then_some(Edge {
                    source: e.source,
                    destination: e.destination,
                    protocol: e.protocol,
                    requests,
                    errors,
                    duration,
                    bytes,
                })
            })
            .collect();
        edges.sort_by(|a, b| {
            (&a.source, &a.destination, a.protocol).cmp(&(&b.source, &b.destination, b.protocol))
        });
        Self { window, edges }
    }
}

/// The `q` quantile (0..1) of a non-cumulative histogram in milliseconds, interpolated within
/// its bucket as Prometheus's `histogram_quantile` does; `None` without observations. A
/// quantile in the +Inf bucket is the largest finite bound.
fn quantile_ms(duration: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = duration.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in duration.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = DURATION_BUCKETS_US.get(i) else {
                break;
            };
            let lower = if i == 0 {
                0
            } else {
                DURATION_BUCKETS_US[i - 1]
            };
            let within = (rank - below as f64) / count as f64;
            let micros = lower as f64 + (upper - lower) as f64 * within;
            return Some(micros / 1000.0);
        }
        below += count;
    }
    DURATION_BUCKETS_US
        .last()
        .map(|&bound| bound as f64 / 1000.0)
}

/// The id of a node: its kind and name, so that a client and a service of the same name stay
/// two nodes.
fn source_id(name: &str) -> String {
    format!("client:{name}")
}

fn service_id(name: &str) -> String {
    format!("service:{name}")
}

/// A short label for a source: the service account and namespace of a SPIFFE ID
/// (`spiffe://td/ns/N/sa/S` → `S`, namespace `N`), else the name itself.
fn source_label(name: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = name
        .strip_prefix("spiffe://")
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    match parts.as_slice() {
        [_, "ns", namespace, "sa", account] => {
            ((*account).to_owned(), Some((*namespace).to_owned()))
        }
        _ => (name.to_owned(), None),
    }
}

/// Rounds for display: three decimals are plenty for rates and milliseconds.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

impl Edge {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Kiali's edge colours: green under 0.1 % errors, orange under 20 %, red from there.
    fn health(&self) -> &'static str {
        let rate = self.error_rate();
        if rate >= 0.2 {
            "failure"
        } else if rate >= 0.001 {
            "degraded"
        } else {
            "healthy"
        }
    }
}

/// The map as JSON (the schema is in docs/SERVICE-MAP.md).
fn to_json(map: &Map, node: &NodeInfo, requested: Duration) -> Value {
    let seconds = map.window.as_secs_f64();
    let per_second = |n: u64| {
        if seconds > 0.0 {
            round(n as f64 / seconds)
        } else {
            0.0
        }
    };
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    let mut edges = Vec::new();
    for edge in &map.edges {
        let (label, namespace) = source_label(&edge.source);
        nodes.entry(source_id(&edge.source)).or_insert_with(|| {
            json!({
                "id": source_id(&edge.source),
                "kind": "client",
                "name": edge.source,
                "label": label,
                "namespace": namespace,
            })
        });
        nodes
            .entry(service_id(&edge.destination))
            .or_insert_with(|| {
                json!({
                    "id": service_id(&edge.destination),
                    "kind": "service",
                    "name": edge.destination,
                    "label": edge.destination,
                    "namespace": null,
                })
            });
        let http = edge.protocol == Protocol::Http;
        let latency = |q| {
            http.then(|| quantile_ms(&edge.duration, q))
                .flatten()
                .map(round)
        };
        edges.push(json!({
            "source": source_id(&edge.source),
            "destination": service_id(&edge.destination),
            "protocol": edge.protocol.name(),
            "requests": edge.requests,
            "errors": edge.errors,
            "request_rate": per_second(edge.requests),
            "error_rate": round(edge.error_rate()),
            "health": edge.health(),
            "p50_ms": latency(0.5),
            "p99_ms": latency(0.99),
            "bytes_received": edge.bytes.received,
            "bytes_sent": edge.bytes.sent,
            "bytes_rate": per_second(edge.bytes.received + edge.bytes.sent),
        }));
    }
    json!({
        "node": {
            "workload": node.workload,
            "principal": node.principal,
        },
        "window_seconds": round(seconds),
        "requested_window_seconds": requested.as_secs(),
        "sample_interval_seconds": SAMPLE_EVERY.as_secs(),
        "nodes": nodes.into_values().collect::<Vec<_>>(),
        "edges": edges,
    })
}

/// The map as a Graphviz digraph: clients left, services right, one labelled edge each.
fn to_dot(map: &Map) -> String {
    let seconds = map.window.as_secs_f64().max(f64::MIN_POSITIVE);
    let mut out =
        String::from("digraph service_graph {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
    let mut sources = BTreeSet::new();
    let mut services = BTreeSet::new();
    for edge in &map.edges {
        sources.insert(&edge.source);
        services.insert(&edge.destination);
    }
    for source in &sources {
        let (label, namespace) = source_label(source);
        let label = match namespace {
            Some(ns) => format!("{label}\n{ns}"),
            None => label,
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\", shape=box];",
            dot_escape(&source_id(source)),
            dot_escape(&label)
        );
    }
    for service in &services {
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\", shape=ellipse];",
            dot_escape(&service_id(service)),
            dot_escape(service)
        );
    }
    for edge in &map.edges {
        let rate = edge.requests as f64 / seconds;
        // TCP connections have no outcome to count as an error: their rate is of connections.
        let mut label = match edge.protocol {
            Protocol::Http => format!("http\n{rate:.2}/s, {:.1}% err", edge.error_rate() * 100.0),
            Protocol::Tcp => format!("tcp\n{rate:.2} conn/s"),
        };
        if edge.protocol == Protocol::Http
            && let (Some(p50), Some(p99)) = (
                quantile_ms(&edge.duration, 0.5),
                quantile_ms(&edge.duration, 0.99),
            )
        {
            let _ = write!(label, "\np50 {p50:.1} ms, p99 {p99:.1} ms");
        }
        let _ = write!(
            label,
            "\n{} B in, {} B out",
            edge.bytes.received, edge.bytes.sent
        );
        let colour = match edge.health() {
            "failure" => "red",
            "degraded" => "orange",
            _ => "green",
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{}\", color={colour}];",
            dot_escape(&source_id(&edge.source)),
            dot_escape(&service_id(&edge.destination)),
            dot_escape(&label)
        );
    }
    out.push_str("}\n");
    out
}

/// Escapes a DOT quoted string: backslash and quote; a newline becomes the `\n` line break.
fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Who "this node" is, for the map's title.
struct NodeInfo {
    workload: Option<String>,
    principal: Option<String>,
}

/// What `/service_graph` was asked for.
#[derive(Debug, PartialEq)]
pub(super) struct Query {
    window: Duration,
    dot: bool,
}

impl Query {
    /// Parses `window=SECONDS` (clamped to [`MIN_WINDOW`]..=[`MAX_WINDOW`]) and `format=json|dot`
    /// from a query string.
    pub(super) fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = Query {
            window: DEFAULT_WINDOW,
            dot: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "window" => {
                    let seconds: u64 = value
                        .trim_end_matches('s')
                        .parse()
                        .map_err(|_| format!("window={value}: give whole seconds"))?;
                    parsed.window = Duration::from_secs(seconds).clamp(MIN_WINDOW, MAX_WINDOW);
                }
                "format" => match value {
                    "json" => parsed.dot = false,
                    "dot" => parsed.dot = true,
                    _ => return Err(format!("format={value}: json or dot")),
                },
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Answers `GET /service_graph`: (content type, body).
pub(super) fn render(admin: &super::Admin, query: &Query) -> (&'static str, String) {
    let snapshot = admin.shared.store.load();
    let map = admin
        .graph
        .map(edge_totals(&snapshot), Instant::now(), query.window);
    if query.dot {
        return ("text/vnd.graphviz; charset=utf-8", to_dot(&map));
    }
    let node = NodeInfo {
        workload: snapshot.spec.telemetry.source_workload.clone(),
        principal: admin
            .shared
            .identity
            .load_full()
            .map(|store| store.current().id.as_str().to_owned()),
    };
    let mut body =
        serde_json::to_string_pretty(&to_json(&map, &node, query.window)).unwrap_or_default();
    body.push('\n');
    ("application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(source: &str, destination: &str, requests: u64, errors: u64) -> EdgeTotals {
        let mut duration = [0; BUCKETS];
        duration[2] = requests;
        EdgeTotals {
            source: source.into(),
            destination: destination.into(),
            protocol: Protocol::Http,
            requests,
            errors,
            duration,
            bytes: Bytes {
                received: requests * 10,
                sent: requests * 100,
            },
        }
    }

    #[test]
    fn the_map_is_the_difference_over_the_window() {
        let base = vec![totals("a", "x", 10, 1), totals("b", "x", 5, 0)];
        let now = vec![
            totals("a", "x", 30, 3),
            totals("b", "x", 5, 0),
            totals("c", "y", 4, 4),
        ];
        let map = Map::diff(now, &base, Duration::from_secs(10));
        let got: Vec<(&str, &str, u64, u64)> = map
            .edges
            .iter()
            .map(|e| (&*e.source, &*e.destination, e.requests, e.errors))
            .collect();
        // `b` sent nothing in the window: no edge. `c` is new: all of it.
        assert_eq!(got, vec![("a", "x", 20, 2), ("c", "y", 4, 4)]);
        assert_eq!(map.edges[0].duration[2], 20);
        assert_eq!(
            map.edges[0].bytes,
            Bytes {
                received: 200,
                sent: 2000
            }
        );
        assert_eq!(map.edges[1].health(), "failure");
        assert_eq!(map.edges[0].health(), "degraded");
    }

    #[test]
    fn a_count_that_went_back_is_no_traffic_not_a_reset() {
        // A cluster removed and added back by reloads starts its counters again: until they
        // pass the baseline, its edge shows nothing rather than everything since start.
        let base = vec![totals("a", "x", 50, 1)];
        let mut now = vec![totals("a", "x", 49, 1)];
        let map = Map::diff(now.clone(), &base, Duration::from_secs(10));
        assert!(map.edges.is_empty(), "{:?}", map.edges);
        now[0] = totals("a", "x", 60, 1);
        let map = Map::diff(now, &base, Duration::from_secs(10));
        assert_eq!(map.edges[0].requests, 10);
        assert_eq!(map.edges[0].bytes.received, 100);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut h = [0u64; BUCKETS];
        assert_eq!(quantile_ms(&h, 0.5), None);
        // 10 observations in (1 ms, 5 ms]: the median is half way through the bucket.
        h[2] = 10;
        assert_eq!(quantile_ms(&h, 0.5), Some(3.0));
        assert_eq!(quantile_ms(&h, 0.99).map(round), Some(4.96));
        // Everything in +Inf: the largest finite bound.
        let mut inf = [0u64; BUCKETS];
        inf[BUCKETS - 1] = 3;
        assert_eq!(quantile_ms(&inf, 0.5), Some(3_600_000.0));
    }

    #[test]
    fn queries_clamp_the_window_and_pick_the_format() {
        assert_eq!(
            Query::parse(""),
            Ok(Query {
                window: DEFAULT_WINDOW,
                dot: false
            })
        );
        assert_eq!(
            Query::parse("window=60&format=dot"),
            Ok(Query {
                window: Duration::from_secs(60),
                dot: true
            })
        );
        assert_eq!(
            Query::parse("window=100000").map(|q| q.window),
            Ok(MAX_WINDOW)
        );
        assert_eq!(Query::parse("window=0").map(|q| q.window), Ok(MIN_WINDOW));
        assert!(Query::parse("window=soon").is_err());
        assert!(Query::parse("format=svg").is_err());
    }

    #[test]
    fn spiffe_ids_are_labelled_by_account_and_namespace() {
        assert_eq!(
            source_label("spiffe://cluster.local/ns/shop/sa/web"),
            ("web".to_owned(), Some("shop".to_owned()))
        );
        assert_eq!(source_label("unknown"), ("unknown".to_owned(), None));
    }

    #[test]
    fn dot_escapes_quotes_and_names_every_edge() {
        let map = Map::diff(
            vec![totals("we\"ird", "x", 2, 0)],
            &[],
            Duration::from_secs(2),
        );
        let dot = to_dot(&map);
        assert!(
            dot.contains("\"client:we\\\"ird\" -> \"service:x\""),
            "{dot}"
        );
        assert!(dot.starts_with("digraph service_graph {"));
        assert!(dot.ends_with("}\n"));
    }
}
