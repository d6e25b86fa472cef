//! Istio's standard metrics, aggregated: the one place that turns the workers' series tables
//! (`stats::SeriesTable`) into labelled series, for the Prometheus exposition and the service map.
//!
//! [`series`] reads every worker's table of every cluster (HTTP) and listener (TCP), gives each
//! row Istio's full label set and sums the rows with equal labels over workers. Label values come
//! from the row (workloads, principals, code, status, flags, protocol, policy, reporter), from the
//! cluster (`destination_service*`) and from the node (`destination_principal` of an inbound mTLS
//! request: the `[identity]` SVID); what is not known reads `unknown`. docs/METRICS.md says where
//! each value comes from.
//!
//! Cardinality: at most `stats::MAX_SERIES` rows (plus one `other` row) per worker and cluster
//! (HTTP) or listener (TCP), so a scrape holds at most that many series per table and worker
//! whatever the traffic.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::identity::SpiffeId;
use crate::snapshot::{Cluster, Snapshot};
use crate::stats::{
    DURATION_BUCKETS_US, Histogram, HttpMetrics, NO_GRPC_STATUS, SeriesLabels, TcpMetrics,
};
use crate::workload::Workload;

/// The label value of what is not known.
pub const UNKNOWN: &str = "unknown";

/// The per-request label values of the series that did not fit a worker's table.
pub const OTHER: &str = "other";

/// Istio's label set of one series, in Istio's names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    /// `source` or `destination` (`other` for the overflow row).
    pub reporter: String,
    /// The source workload's name.
    pub source_workload: String,
    /// Its namespace (or the client certificate's, when the table does not name the peer).
    pub source_workload_namespace: String,
    /// The client's verified SPIFFE ID.
    pub source_principal: String,
    /// The source workload's `app`.
    pub source_app: String,
    /// The source workload's `version`.
    pub source_version: String,
    /// The destination (upstream endpoint's) workload.
    pub destination_workload: String,
    /// Its namespace.
    pub destination_workload_namespace: String,
    /// The upstream's verified SPIFFE ID (reporter `source`), or the node's (reporter
    /// `destination`, over mTLS).
    pub destination_principal: String,
    /// The destination workload's `app`.
    pub destination_app: String,
    /// The destination workload's `version`.
    pub destination_version: String,
    /// The cluster's name.
    pub destination_service: String,
    /// The cluster's name, or its first label when it is a Kubernetes service name
    /// (`name.namespace.svc...`).
    pub destination_service_name: String,
    /// The namespace of a Kubernetes service name, else the destination workload's.
    pub destination_service_namespace: String,
    /// `http`, `grpc` or `tcp`.
    pub request_protocol: String,
    /// The status sent to the client (`0`: none was); empty for TCP.
    pub response_code: String,
    /// The gRPC status, empty when the request is not gRPC (as Istio); empty for TCP.
    pub grpc_response_status: String,
    /// Envoy's response flags, `-` for none.
    pub response_flags: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

impl Labels {
    /// `(name, value)` pairs in exposition order; TCP series leave out `response_code` and
    /// `grpc_response_status` (Istio's TCP metrics have neither).
    pub fn pairs(&self, tcp: bool) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![
            ("reporter", &*self.reporter),
            ("source_workload", &*self.source_workload),
            (
                "source_workload_namespace",
                &*self.source_workload_namespace,
            ),
            ("source_principal", &*self.source_principal),
            ("source_app", &*self.source_app),
            ("source_version", &*self.source_version),
            ("destination_workload", &*self.destination_workload),
            (
                "destination_workload_namespace",
                &*self.destination_workload_namespace,
            ),
            ("destination_principal", &*self.destination_principal),
            ("destination_app", &*self.destination_app),
            ("destination_version", &*self.destination_version),
            ("destination_service", &*self.destination_service),
            ("destination_service_name", &*self.destination_service_name),
            (
                "destination_service_namespace",
                &*self.destination_service_namespace,
            ),
            ("request_protocol", &*self.request_protocol),
        ];
        if !tcp {
            pairs.push(("response_code", &*self.response_code));
            pairs.push(("grpc_response_status", &*self.grpc_response_status));
        }
        pairs.push(("response_flags", &*self.response_flags));
        pairs.push((
            "connection_security_policy",
            &*self.connection_security_policy,
        ));
        pairs
    }
}

/// A histogram summed over workers: per-bucket counts (not cumulative; the last is +Inf) over
/// [`DURATION_BUCKETS_US`] read in thousandths, and the sum (microseconds for durations, bytes
/// for sizes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Observations per bucket, the last one +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: u64,
}

impl Buckets {
    fn add(&mut self, histogram: &Histogram) {
        if self.counts.is_empty() {
            self.counts = vec![0; DURATION_BUCKETS_US.len() + 1];
        }
        for (total, count) in self.counts.iter_mut().zip(histogram.bucket_counts()) {
            *total += count;
        }
        self.sum += histogram.sum();
    }

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bounds of the buckets in the metric's unit (ms or bytes), +Inf last.
    pub fn bounds() -> impl Iterator<Item = f64> {
        DURATION_BUCKETS_US
            .iter()
            .map(|&b| b as f64 / 1000.0)
            .chain(std::iter::once(f64::INFINITY))
    }
}

/// One HTTP series, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSeries {
    /// `istio_requests_total`.
    pub requests: u64,
    /// `istio_request_duration_milliseconds` (sum in microseconds).
    pub duration: Buckets,
    /// `istio_request_bytes` (request body bytes).
    pub request_bytes: Buckets,
    /// `istio_response_bytes` (response body bytes).
    pub response_bytes: Buckets,
}

/// One TCP series, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpSeries {
    /// `istio_tcp_connections_opened_total`.
    pub opened: u64,
    /// `istio_tcp_connections_closed_total`.
    pub closed: u64,
    /// `istio_tcp_received_bytes_total`.
    pub received: u64,
    /// `istio_tcp_sent_bytes_total`.
    pub sent: u64,
}

/// Every Istio series of the process, summed over workers, sorted by labels.
#[derive(Debug, Default)]
pub struct Series {
    /// HTTP series (`istio_requests_total` and the histograms).
    pub http: Vec<(Labels, HttpSeries)>,
    /// TCP series, with the listener that carried them (an extra `listener` label).
    pub tcp: Vec<(Labels, Arc<str>, TcpSeries)>,
}

/// Reads every worker's series tables of `snapshot` into labelled series, summed over workers.
/// `node_principal` is the node's SPIFFE ID (`[identity]`), the `destination_principal` of
/// requests a mesh listener received over mTLS. Runs on the admin thread (it allocates).
pub fn series(snapshot: &Snapshot, node_principal: Option<&str>) -> Series {
    let context = Context {
        fallback_source: snapshot.spec.telemetry.source_workload.as_deref(),
        node_principal,
    };
    let mut http: BTreeMap<Labels, HttpSeries> = BTreeMap::new();
    for cluster in &snapshot.clusters {
        for counters in cluster.stats.iter() {
            let mut add = |labels: Labels, metrics: &HttpMetrics| {
                let entry = http.entry(labels).or_default();
                entry.requests += metrics.requests.get();
                entry.duration.add(&metrics.duration);
                entry.request_bytes.add(&metrics.request_bytes);
                entry.response_bytes.add(&metrics.response_bytes);
            };
            counters.series.for_each(|row, metrics| match row {
                Some(row) => add(context.labels(row, Some(cluster)), metrics),
                None => add(other_labels(Some(cluster), false), metrics),
            });
        }
    }
    let mut tcp: BTreeMap<(Labels, Arc<str>), TcpSeries> = BTreeMap::new();
    for listener in &snapshot.listeners {
        for counters in listener.stats.workers.iter() {
            let mut add = |labels: Labels, metrics: &TcpMetrics| {
                let entry = tcp.entry((labels, Arc::clone(&listener.name))).or_default();
                entry.opened += metrics.opened.get();
                entry.closed += metrics.closed.get();
                entry.received += metrics.received.get();
                entry.sent += metrics.sent.get();
            };
            counters.tcp_series.for_each(|row, metrics| {
                let Some(row) = row else {
                    add(other_labels(None, true), metrics);
                    return;
                };
                let cluster = row
                    .service
                    .as_deref()
                    .and_then(|name| snapshot.clusters.iter().find(|c| *c.name == *name));
                let mut labels = context.labels(row, cluster.map(|c| &**c));
                if cluster.is_none()
                    && let Some(name) = &row.service
                {
                    // A cluster a reload removed: its name still labels what it carried.
                    labels.destination_service = name.to_string();
                    labels.destination_service_name = name.to_string();
                }
                add(labels, metrics);
            });
        }
    }
    Series {
        http: http.into_iter().collect(),
        tcp: tcp
            .into_iter()
            .map(|((labels, listener), counts)| (labels, listener, counts))
            .collect(),
    }
}

/// What labels need beyond the row.
struct Context<'a> {
    fallback_source: Option<&'a str>,
    node_principal: Option<&'a str>,
}

impl Context<'_> {
    fn labels(&self, row: &SeriesLabels, cluster: Option<&Cluster>) -> Labels {
        let key = &row.key;
        let tcp = key.protocol == crate::stats::RequestProtocol::Tcp;
        let principal = |p: &Option<Box<str>>| match p.as_deref() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => UNKNOWN.to_owned(),
        };
        let source = row.source_workload.as_deref();
        let destination = row.destination_workload.as_deref();
        let source_namespace = source.map(|w| w.namespace.to_string()).or_else(|| {
            let id = SpiffeId::parse(row.source_principal.as_deref()?).ok()?;
            id.namespace().map(str::to_owned)
        });
        let destination_principal = if key.reporter_source {
            principal(&row.destination_principal)
        } else if key.mutual_tls {
            self.node_principal.unwrap_or(UNKNOWN).to_owned()
        } else {
            UNKNOWN.to_owned()
        };
        let (service, service_name, service_namespace) = service_labels(cluster, destination);
        Labels {
            reporter: if key.reporter_source {
                "source"
            } else {
                "destination"
            }
            .to_owned(),
            source_workload: source
                .map(|w| w.name.to_string())
                .or_else(|| self.fallback_source.map(str::to_owned))
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            source_workload_namespace: source_namespace.unwrap_or_else(|| UNKNOWN.to_owned()),
            source_principal: principal(&row.source_principal),
            source_app: app(source),
            source_version: version(source),
            destination_workload: destination.map_or(UNKNOWN, |w| &*w.name).to_owned(),
            destination_workload_namespace: destination
                .map_or(UNKNOWN, |w| &*w.namespace)
                .to_owned(),
            destination_principal,
            destination_app: app(destination),
            destination_version: version(destination),
            destination_service: service,
            destination_service_name: service_name,
            destination_service_namespace: service_namespace,
            request_protocol: key.protocol.as_str().to_owned(),
            response_code: if tcp {
                String::new()
            } else {
                key.response_code.to_string()
            },
            grpc_response_status: if key.grpc_status == NO_GRPC_STATUS {
                String::new()
            } else {
                key.grpc_status.to_string()
            },
            response_flags: {
                let mut flags = String::new();
                key.flags.write_to(&mut flags);
                flags
            },
            connection_security_policy: if key.mutual_tls { "mutual_tls" } else { "none" }
                .to_owned(),
        }
    }
}

/// The labels of a table's `other` row: the destination service is known (the table is the
/// cluster's), everything that varies per request reads `other`.
fn other_labels(cluster: Option<&Cluster>, tcp: bool) -> Labels {
    let other = || OTHER.to_owned();
    let (service, service_name, service_namespace) = match cluster {
        Some(_) => service_labels(cluster, None),
        None => (other(), other(), other()),
    };
    Labels {
        reporter: other(),
        source_workload: other(),
        source_workload_namespace: other(),
        source_principal: other(),
        source_app: other(),
        source_version: other(),
        destination_workload: other(),
        destination_workload_namespace: other(),
        destination_principal: other(),
        destination_app: other(),
        destination_version: other(),
        destination_service: service,
        destination_service_name: service_name,
        destination_service_namespace: service_namespace,
        request_protocol: if tcp { "tcp".to_owned() } else { other() },
        response_code: if tcp { String::new() } else { other() },
        grpc_response_status: if tcp { String::new() } else { other() },
        response_flags: other(),
        connection_security_policy: other(),
    }
}

/// `destination_service`, `_name` and `_namespace`: the cluster's name; a name of the shape
/// `<service>.<namespace>.svc[.<domain>]` (a Kubernetes service's) gives the other two, else
/// the name is the service name and the namespace the destination workload's.
fn service_labels(
    cluster: Option<&Cluster>,
    destination: Option<&Workload>,
) -> (String, String, String) {
    let Some(cluster) = cluster else {
        let unknown = || UNKNOWN.to_owned();
        return (unknown(), unknown(), unknown());
    };
    let name = &*cluster.name;
    let mut parts = name.split('.');
    if let (Some(service), Some(namespace), Some("svc")) =
        (parts.next(), parts.next(), parts.next())
        && !service.is_empty()
        && !namespace.is_empty()
    {
        return (name.to_owned(), service.to_owned(), namespace.to_owned());
    }
    (
        name.to_owned(),
        name.to_owned(),
        destination.map_or(UNKNOWN, |w| &*w.namespace).to_owned(),
    )
}

fn app(workload: Option<&Workload>) -> String {
    workload
        .and_then(|w| w.app.as_deref())
        .unwrap_or(UNKNOWN)
        .to_owned()
}

fn version(workload: Option<&Workload>) -> String {
    workload
        .and_then(|w| w.version.as_deref())
        .unwrap_or(UNKNOWN)
        .to_owned()
}

/// Writes Istio's metrics in the Prometheus text format.
pub(super) fn render(out: &mut String, snapshot: &Snapshot, node_principal: Option<&str>) {
    let all = series(snapshot, node_principal);
    header(
        out,
        "istio_requests_total",
        "counter",
        "HTTP requests, by Istio's standard labels.",
    );
    for (labels, series) in &all.http {
        let _ = writeln!(
            out,
            "istio_requests_total{{{}}} {}",
            label_text(labels, false, None),
            series.requests
        );
    }
    type Pick = fn(&HttpSeries) -> &Buckets;
    let histograms: [(&str, &str, Pick, f64); 3] = [
        (
            "istio_request_duration_milliseconds",
            "HTTP request duration (request head to end of response), in milliseconds.",
            |s| &s.duration,
            1000.0,
        ),
        (
            "istio_request_bytes",
            "HTTP request body sizes, in bytes.",
            |s| &s.request_bytes,
            1.0,
        ),
        (
            "istio_response_bytes",
            "HTTP response body sizes, in bytes.",
            |s| &s.response_bytes,
            1.0,
        ),
    ];
    for (name, help, pick, sum_divisor) in histograms {
        header(out, name, "histogram", help);
        for (labels, series) in &all.http {
            let text = label_text(labels, false, None);
            let buckets = pick(series);
            let mut cumulative = 0;
            for (bound, count) in Buckets::bounds().zip(&buckets.counts) {
                cumulative += count;
                let le = if bound.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    bound.to_string()
                };
                let _ = writeln!(out, "{name}_bucket{{{text},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "{name}_sum{{{text}}} {}",
                buckets.sum as f64 / sum_divisor
            );
            let _ = writeln!(out, "{name}_count{{{text}}} {cumulative}");
        }
    }
    type PickTcp = fn(&TcpSeries) -> u64;
    let families: [(&str, &str, PickTcp); 4] = [
        (
            "istio_tcp_connections_opened_total",
            "TCP connections opened.",
            |s| s.opened,
        ),
        (
            "istio_tcp_connections_closed_total",
            "TCP connections closed.",
            |s| s.closed,
        ),
        (
            "istio_tcp_received_bytes_total",
            "Bytes received from clients on TCP connections.",
            |s| s.received,
        ),
        (
            "istio_tcp_sent_bytes_total",
            "Bytes sent to clients on TCP connections.",
            |s| s.sent,
        ),
    ];
    for (name, help, pick) in families {
        header(out, name, "counter", help);
        for (labels, listener, series) in &all.tcp {
            let _ = writeln!(
                out,
                "{name}{{{}}} {}",
                label_text(labels, true, Some(listener)),
                pick(series)
            );
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn label_text(labels: &Labels, tcp: bool, listener: Option<&str>) -> String {
    let mut text = String::with_capacity(512);
    for (name, value) in labels.pairs(tcp) {
        if !text.is_empty() {
            text.push(',');
        }
        let _ = write!(text, "{name}=\"{}\"", super::exposition::escape(value));
    }
    if let Some(listener) = listener {
        let _ = write!(
            text,
            ",listener=\"{}\"",
            super::exposition::escape(listener)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{RequestProtocol, SeriesKey};

    fn snapshot() -> Snapshot {
        let config = config_schema::parse(
            r#"
            [[workloads]]
            name = "reviews-v2"
            namespace = "shop"
            addresses = ["127.0.0.2"]
            app = "reviews"
            version = "v2"

            [[clusters]]
            name = "reviews.shop.svc.cluster.local"
            endpoints = ["127.0.0.2:9080"]

            [[clusters]]
            name = "legacy"
            endpoints = ["127.0.0.9:80"]
            "#,
        )
        .expect("valid config");
        crate::snapshot::compile(&config, 1, 2, &Snapshot::empty()).expect("compiles")
    }

    #[test]
    fn rows_of_all_workers_sum_into_one_labelled_series() {
        let snapshot = snapshot();
        let cluster = &snapshot.clusters[0];
        let workload = cluster
            .endpoint_workloads
            .get("127.0.0.2:9080".parse().expect("address"))
            .cloned();
        let key = SeriesKey {
            destination_workload: workload.as_ref().map_or(0, |w| w.id),
            response_code: 200,
            grpc_status: NO_GRPC_STATUS,
            protocol: RequestProtocol::Http,
            ..SeriesKey::default()
        };
        for worker in 0..2 {
            let metrics = cluster
                .stats
                .slot(worker)
                .series
                .get(&key, || SeriesLabels {
                    destination_workload: workload.clone(),
                    ..SeriesLabels::default()
                });
            metrics.requests.add(3);
            metrics.duration.observe(Duration::from_millis(30));
            metrics.response_bytes.observe_bytes(7);
        }
        let all = series(&snapshot, None);
        assert_eq!(all.http.len(), 1, "{all:?}");
        let (labels, http) = &all.http[0];
        assert_eq!(http.requests, 6);
        assert_eq!(http.duration.count(), 2);
        assert_eq!(http.duration.sum, 60_000, "microseconds");
        assert_eq!(http.response_bytes.sum, 14);
        assert_eq!(labels.reporter, "destination");
        assert_eq!(labels.destination_workload, "reviews-v2");
        assert_eq!(labels.destination_app, "reviews");
        assert_eq!(labels.destination_version, "v2");
        assert_eq!(labels.destination_service_name, "reviews");
        assert_eq!(labels.destination_service_namespace, "shop");
        assert_eq!(labels.source_workload, UNKNOWN);
        assert_eq!(labels.response_code, "200");
        assert_eq!(labels.grpc_response_status, "");
        assert_eq!(labels.response_flags, "-");
        assert_eq!(labels.connection_security_policy, "none");
        assert!(all.tcp.is_empty());
    }

    #[test]
    fn service_names_come_from_kubernetes_shaped_cluster_names_only() {
        let snapshot = snapshot();
        let (service, name, namespace) = service_labels(Some(&snapshot.clusters[1]), None);
        assert_eq!(
            (service.as_str(), name.as_str(), namespace.as_str()),
            ("legacy", "legacy", UNKNOWN)
        );
        let (_, name, namespace) = service_labels(Some(&snapshot.clusters[0]), None);
        assert_eq!((name.as_str(), namespace.as_str()), ("reviews", "shop"));
    }

    #[test]
    fn the_source_namespace_falls_back_to_the_client_certificate() {
        let context = Context {
            fallback_source: Some("node"),
            node_principal: Some("spiffe://td/ns/mesh/sa/node"),
        };
        let row = SeriesLabels {
            key: SeriesKey {
                mutual_tls: true,
                ..SeriesKey::default()
            },
            source_principal: Some("spiffe://td/ns/web/sa/frontend".into()),
            ..SeriesLabels::default()
        };
        let labels = context.labels(&row, None);
        assert_eq!(
            labels.source_workload, "node",
            "[telemetry] source_workload"
        );
        assert_eq!(labels.source_workload_namespace, "web");
        assert_eq!(labels.source_principal, "spiffe://td/ns/web/sa/frontend");
        assert_eq!(labels.destination_principal, "spiffe://td/ns/mesh/sa/node");
        assert_eq!(labels.connection_security_policy, "mutual_tls");
        assert_eq!(labels.destination_service, UNKNOWN);
    }
}
