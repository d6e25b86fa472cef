//! Istio's standard metrics through the binary: a real Prometheus (the Debian package) scrapes
//! `/stats/prometheus` and answers PromQL over a known traffic pattern; the label values come
//! from a verified client certificate, the `[[workloads]]` table and the listener's reporter; TCP
//! connections carry the same labels; past the series bound requests count in the `other` row;
//! a gRPC upstream's status reaches `grpc_response_status`. Every test runs on io_uring and on
//! epoll.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tests::admin::Metrics;
use tests::h2::{PyServer, run_json};
use tests::http::{Client, HttpUpstream, Request, Response, curl, request_bytes};
use tests::pki::Pki;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    prometheus_computes_the_request_rate_and_the_median_latency,
    client_certificate_and_workload_table_fill_the_labels,
    tcp_connections_carry_the_workload_labels,
    past_the_series_bound_requests_count_in_the_other_row,
    grpc_status_of_a_grpc_upstream_is_a_label,
);

/// The client's SPIFFE ID in the mTLS test.
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// Most series a worker keeps per cluster (`stats::MAX_SERIES`).
const MAX_SERIES: usize = 128;

/// The upstream's fixed delay in the Prometheus test: every request lands in Istio's
/// (250 ms, 500 ms] duration bucket, with 200 ms to spare for a loaded machine.
const DELAY: Duration = Duration::from_millis(300);

/// `istio_requests_total` over the requests of one label set must be exact: a wait for the last
/// request to be counted (a request is counted just after its answer is written).
fn wait_requests(proxy: &Proxy, labels: &[(&str, &str)], expected: f64) -> Metrics {
    wait_until(
        PATIENCE,
        format!("istio_requests_total{labels:?} = {expected}"),
        || {
            let metrics = proxy.metrics();
            let total = metrics.sum("istio_requests_total", labels);
            if total == expected {
                Ok(metrics)
            } else {
                Err(format!("{total}"))
            }
        },
    )
}

// === A real Prometheus ===

/// A Prometheus server scraping one target every second, its storage in a temp dir.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` scraping `target`'s `/stats/prometheus`. It cannot bind
    /// port 0, so a free port is picked (bind and release); should another process take it
    /// first, Prometheus exits and another port is tried.
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ringmesh\n    metrics_path: /stats/prometheus\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = Command::new(tests::tool("prometheus"))
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus");
            let deadline = Instant::now() + PATIENCE;
            let ready = loop {
                if child.try_wait().ok().flatten().is_some() {
                    break false;
                }
                if http_get(address, "/-/ready").is_ok_and(|(status, _)| status == 200) {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("prometheus at {address} not ready within {PATIENCE:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if ready {
                return Self {
                    child,
                    address,
                    _dir: dir,
                };
            }
        }
        panic!("prometheus could not bind a free port in 5 tries");
    }

    /// An instant PromQL query at `time` (Unix seconds): the result vector.
    fn query(&self, promql: &str, time: f64) -> Vec<Value> {
        let path = format!(
            "/api/v1/query?query={}&time={time:.3}",
            percent_encode(promql)
        );
        let (status, body) = http_get(self.address, &path).expect("query prometheus");
        let json: Value = serde_json::from_str(&body).expect("prometheus answers JSON");
        assert_eq!(status, 200, "{promql}: {json}");
        assert_eq!(json["status"], "success", "{promql}: {json}");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query that yields one sample, with the sample's timestamp.
    fn scalar(&self, promql: &str, time: f64) -> Option<(f64, f64)> {
        let result = self.query(promql, time);
        let sample = result.first()?;
        let at = sample["value"][0].as_f64()?;
        let value = sample["value"][1].as_str()?.parse().ok()?;
        Some((at, value))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// `GET path` over HTTP/1.0 (so the answer is not chunked): status and body.
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, body.to_owned()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request, then Prometheus scrapes for a while (so that a 30 s window holds about 30
/// samples before the traffic), then 20 more requests through 4 clients at once to an upstream
/// that answers after a fixed 300 ms.
///
/// - `sum(rate(istio_requests_total{response_code="200"}[30s]))` at a time whose window holds the
///   samples before and after the 20 requests: the increase in the window is exactly 20, and
///   Prometheus only extrapolates it to the window's edges (by at most ~1.1 scrape intervals at
///   each end of ~28 s of samples), so the rate lies in [20/30, 22/30].
/// - `histogram_quantile(0.5, ...)` over `istio_request_duration_milliseconds_bucket`: every
///   request is in the (250, 500] bucket, so the median lies there, and with Prometheus'
///   linear interpolation inside the bucket is exactly its middle, 375.
fn prometheus_computes_the_request_rate_and_the_median_latency(driver: Driver) {
    let upstream = HttpUpstream::start(|_: &Request| {
        std::thread::sleep(DELAY);
        Response::ok("slow").into()
    });
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "web"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]
routes = [{{ name = "all", cluster = "slow" }}]

[[clusters]]
name = "slow"
endpoints = ["{}"]
"#,
        upstream.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let web = proxy.listener("web");
    let ok = [("destination_service", "slow"), ("response_code", "200")];
    let mut client = Client::connect(web);
    assert_eq!(client.get("m.test", "/").status, 200);
    wait_requests(&proxy, &ok, 1.0);

    let prometheus = Prometheus::start(proxy.admin_address());
    let total = r#"sum(istio_requests_total{response_code="200"})"#;
    // Scrapes for ~28 s before the traffic: the rate's window then holds a long run of samples.
    let first = wait_until(
        PATIENCE,
        "prometheus scraped the warm-up request",
        || match prometheus.scalar(total, now()) {
            Some((at, 1.0)) => Ok(at),
            other => Err(format!("{other:?}")),
        },
    );
    while now() < first + 27.0 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = prometheus
        .scalar(total, now())
        .expect("a sample before the traffic");
    assert_eq!(before.1, 1.0);

    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(web);
                for _ in 0..5 {
                    assert_eq!(client.get("m.test", "/").status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    let exposed = wait_requests(&proxy, &ok, 21.0);
    // Every request is in the (250, 500] bucket.
    let bucket = |le: &str| {
        exposed.sum(
            "istio_request_duration_milliseconds_bucket",
            &[("destination_service", "slow"), ("le", le)],
        )
    };
    assert_eq!(bucket("250"), 0.0, "no request faster than the delay");
    assert_eq!(
        bucket("500"),
        21.0,
        "every request within 200 ms of the delay"
    );

    let after = wait_until(
        PATIENCE,
        "prometheus scraped all 21 requests",
        || match prometheus.scalar(total, now()) {
            Some((at, 21.0)) => Ok(at),
            other => Err(format!("{other:?}")),
        },
    );
    // A time whose 30 s window holds the last sample before the traffic and the first after.
    let at = after + 1.0;
    assert!(
        at - 30.0 < before.0,
        "the traffic took too long for one window"
    );
    let (_, rate) = prometheus
        .scalar(
            r#"sum(rate(istio_requests_total{response_code="200"}[30s]))"#,
            at,
        )
        .expect("a rate");
    assert!(
        (20.0 / 30.0..=22.0 / 30.0).contains(&rate),
        "rate {rate}: 20 requests in a 30 s window"
    );
    let (_, median) = prometheus
        .scalar(
            r#"histogram_quantile(0.5, sum by (le) (rate(istio_request_duration_milliseconds_bucket{response_code="200"}[30s])))"#,
            at,
        )
        .expect("a median");
    assert!(
        (median - 375.0).abs() < 1e-6,
        "median {median}: the middle of the (250, 500] bucket"
    );
}

// === Labels ===

/// A CA, a server certificate and the `web` client SVID, written to a temp dir.
fn pki() -> Pki {
    let pki = Pki::new("istio metrics test CA");
    pki.leaf("server", &["localhost"], None)
        .leaf("web", &[], Some(WEB));
    pki
}

/// `web-v1` (app web, version v1) calls from 127.0.0.3; `api-v2` (app api, version v2) is the
/// upstream at 127.0.0.1; 127.0.0.4 is no workload. The cluster is named like a Kubernetes
/// service (`api.shop.svc.cluster.local`).
const WORKLOADS: &str = r#"
[[workloads]]
name = "web-v1"
namespace = "shop"
addresses = ["127.0.0.3"]
app = "web"
version = "v1"

[[workloads]]
name = "api-v2"
namespace = "shop"
addresses = ["127.0.0.1", "::1"]
app = "api"
version = "v2"
"#;

/// Three listeners onto one cluster: `mesh` requires the client's SVID (reports as the
/// destination by default), `out` is plaintext (reports as the source by default), `gate` is
/// plaintext with `reporter = "destination"`. Each label is checked on each.
fn client_certificate_and_workload_table_fill_the_labels(driver: Driver) {
    let pki = pki();
    let upstream = HttpUpstream::named("api");
    let config = format!(
        r#"
{WORKLOADS}
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "mesh"
address = "127.0.0.1:0"
protocol = "http"
[listeners.tls]
cert = "{server_crt}"
key = "{server_key}"
client_ca = "{ca}"
require_client_cert = true

[[listeners]]
name = "out"
address = "127.0.0.1:0"
protocol = "http"

[[listeners]]
name = "gate"
address = "127.0.0.1:0"
protocol = "http"
reporter = "destination"

[[virtual_hosts]]
name = "all"
domains = ["*"]
routes = [{{ name = "all", cluster = "api.shop.svc.cluster.local" }}]

[[clusters]]
name = "api.shop.svc.cluster.local"
endpoints = ["{upstream}"]
"#,
        server_crt = pki.p("server.crt"),
        server_key = pki.p("server.key"),
        ca = pki.p("ca.pem"),
        upstream = upstream.address(),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let port = |name: &str| proxy.listener(name).port();
    for version in ["--http1.1", "--http2"] {
        let out = curl([
            version,
            "-k",
            "--interface",
            "127.0.0.3",
            "--cert",
            &pki.p("web.crt"),
            "--key",
            &pki.p("web.key"),
            &format!("https://127.0.0.1:{}/mesh", port("mesh")),
        ]);
        assert_eq!(out.stdout_text(), "api", "{version}: {}", out.stderr);
    }
    let body = "b".repeat(100);
    for args in [vec![], vec!["--data-binary", body.as_str()]] {
        let mut all = vec!["--interface", "127.0.0.3"];
        all.extend(args);
        let url = format!("http://127.0.0.1:{}/out", port("out"));
        all.push(&url);
        assert_eq!(curl(all).stdout_text(), "api");
    }
    let url = format!("http://127.0.0.1:{}/out", port("out"));
    assert_eq!(
        curl(["--interface", "127.0.0.4", url.as_str()]).stdout_text(),
        "api"
    );
    let url = format!("http://127.0.0.1:{}/gate", port("gate"));
    assert_eq!(
        curl(["--interface", "127.0.0.3", url.as_str()]).stdout_text(),
        "api"
    );
    let metrics = wait_requests(
        &proxy,
        &[("destination_service", "api.shop.svc.cluster.local")],
        6.0,
    );

    let destination = [
        ("destination_workload", "api-v2"),
        ("destination_workload_namespace", "shop"),
        ("destination_app", "api"),
        ("destination_version", "v2"),
        ("destination_service", "api.shop.svc.cluster.local"),
        ("destination_service_name", "api"),
        ("destination_service_namespace", "shop"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
    ];
    let web = [
        ("source_workload", "web-v1"),
        ("source_workload_namespace", "shop"),
        ("source_app", "web"),
        ("source_version", "v1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        destination.iter().chain(extra).copied().collect()
    };
    // mesh: the verified SVID is the source principal, the connection mutual TLS.
    let mesh = with(
        &[
            ("reporter", "destination"),
            ("source_principal", WEB),
            ("destination_principal", "unknown"),
            ("connection_security_policy", "mutual_tls"),
        ]
        .into_iter()
        .chain(web)
        .collect::<Vec<_>>(),
    );
    assert_eq!(
        metrics.value("istio_requests_total", &mesh),
        2.0,
        "{mesh:?}"
    );
    // out: the caller's side, plaintext both ways.
    let out = with(
        &[
            ("reporter", "source"),
            ("source_principal", "unknown"),
            ("destination_principal", "unknown"),
            ("connection_security_policy", "none"),
        ]
        .into_iter()
        .chain(web)
        .collect::<Vec<_>>(),
    );
    assert_eq!(metrics.value("istio_requests_total", &out), 2.0, "{out:?}");
    // Request and response body sizes: a GET (0 bytes) and a POST of 100; "api" twice.
    assert_eq!(metrics.value("istio_request_bytes_sum", &out), 100.0);
    assert_eq!(metrics.value("istio_response_bytes_sum", &out), 6.0);
    let le = |name: &str, bound: &'static str| {
        let labels: Vec<_> = out.iter().copied().chain([("le", bound)]).collect();
        metrics.value(name, &labels)
    };
    assert_eq!(le("istio_request_bytes_bucket", "0.5"), 1.0, "the GET");
    assert_eq!(le("istio_request_bytes_bucket", "50"), 1.0);
    assert_eq!(le("istio_request_bytes_bucket", "100"), 2.0, "the POST");
    assert_eq!(le("istio_response_bytes_bucket", "1"), 0.0);
    assert_eq!(le("istio_response_bytes_bucket", "5"), 2.0);
    // From an address the table does not name: unknown source labels.
    let unknown = with(&[
        ("reporter", "source"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", "unknown"),
        ("source_app", "unknown"),
        ("source_version", "unknown"),
        ("source_principal", "unknown"),
    ]);
    assert_eq!(metrics.value("istio_requests_total", &unknown), 1.0);
    // gate: a plaintext listener told to report as the destination.
    let gate = with(
        &[
            ("reporter", "destination"),
            ("source_principal", "unknown"),
            ("connection_security_policy", "none"),
        ]
        .into_iter()
        .chain(web)
        .collect::<Vec<_>>(),
    );
    assert_eq!(
        metrics.value("istio_requests_total", &gate),
        1.0,
        "{gate:?}"
    );
    assert_eq!(
        metrics.sum(
            "istio_request_duration_milliseconds_count",
            &[("destination_service", "api.shop.svc.cluster.local")]
        ),
        6.0
    );
}

/// An echo server on 127.0.0.2 (the `db-0` workload): every connection's bytes come back.
fn echo_on_127_0_0_2() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let address = listener.local_addr().expect("address");
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (address, thread)
}

/// Three connections from `loader` (127.0.0.3) through a tcp listener to `db-0` (127.0.0.2),
/// 1000 bytes each way: `istio_tcp_*` carry the workloads, the cluster, `reporter="source"`
/// (a plaintext listener), `request_protocol="tcp"`, and count exactly. Then a reload changes
/// db-0's version, and the next connection carries the new one.
fn tcp_connections_carry_the_workload_labels(driver: Driver) {
    let (echo, _thread) = echo_on_127_0_0_2();
    let config = format!(
        r#"
[[workloads]]
name = "loader"
namespace = "batch"
addresses = ["127.0.0.3"]
app = "loader"

[[workloads]]
name = "db-0"
namespace = "data"
addresses = ["127.0.0.2"]
app = "db"
version = "15"

[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "db"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "db"

[[clusters]]
name = "db"
endpoints = ["{echo}"]
"#
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("db");
    let script = format!(
        "import socket\n\
         for _ in range(3):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}), timeout=10, source_address=('127.0.0.3', 0))\n\
         \x20   s.sendall(b'x' * 1000)\n\
         \x20   got = b''\n\
         \x20   while len(got) < 1000:\n\
         \x20       chunk = s.recv(4096)\n\
         \x20       if not chunk: break\n\
         \x20       got += chunk\n\
         \x20   s.shutdown(socket.SHUT_WR)\n\
         \x20   assert s.recv(1) == b''\n\
         \x20   s.close()\n\
         \x20   assert len(got) == 1000, len(got)\n\
         print('done')\n",
        port = address.port()
    );
    let out = Command::new(tests::python())
        .args(["-c", &script])
        .output()
        .expect("run python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "done",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels = [
        ("listener", "db"),
        ("reporter", "source"),
        ("source_workload", "loader"),
        ("source_workload_namespace", "batch"),
        ("source_app", "loader"),
        ("source_version", "unknown"),
        ("source_principal", "unknown"),
        ("destination_workload", "db-0"),
        ("destination_workload_namespace", "data"),
        ("destination_app", "db"),
        ("destination_version", "15"),
        ("destination_service", "db"),
        ("destination_service_name", "db"),
        ("destination_service_namespace", "data"),
        ("destination_principal", "unknown"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "none"),
    ];
    let metrics = wait_until(PATIENCE, "3 TCP connections closed", || {
        let metrics = proxy.metrics();
        let closed = metrics.sum("istio_tcp_connections_closed_total", &labels);
        if closed == 3.0 {
            Ok(metrics)
        } else {
            Err(format!("{closed}"))
        }
    });
    for (name, expected) in [
        ("istio_tcp_connections_opened_total", 3.0),
        ("istio_tcp_received_bytes_total", 3000.0),
        ("istio_tcp_sent_bytes_total", 3000.0),
    ] {
        assert_eq!(metrics.sum(name, &labels), expected, "{name}");
        assert_eq!(
            metrics.sum(name, &[("listener", "db")]),
            expected,
            "{name}: nothing elsewhere"
        );
    }
    // Istio's TCP metrics have no response code.
    assert!(
        metrics
            .matching("istio_tcp_connections_opened_total", &[])
            .all(|s| !s.labels.contains_key("response_code"))
    );

    // The table is reloadable: after a reload that gives db-0 another version, new connections
    // carry it, and the old series keeps what it counted.
    proxy.reload_with_sighup(&config.replace("version = \"15\"", "version = \"16\""));
    let out = Command::new(tests::python())
        .args(["-c", &script.replace("range(3)", "range(1)")])
        .output()
        .expect("run python");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    let reloaded: Vec<_> = labels
        .iter()
        .map(|&(k, v)| {
            if k == "destination_version" {
                (k, "16")
            } else {
                (k, v)
            }
        })
        .collect();
    let metrics = wait_until(PATIENCE, "the connection after the reload closed", || {
        let metrics = proxy.metrics();
        let closed = metrics.sum("istio_tcp_connections_closed_total", &reloaded);
        if closed == 1.0 {
            Ok(metrics)
        } else {
            Err(format!("{closed}"))
        }
    });
    assert_eq!(
        metrics.sum("istio_tcp_received_bytes_total", &reloaded),
        1000.0
    );
    assert_eq!(
        metrics.sum("istio_tcp_connections_opened_total", &labels),
        3.0
    );
}

/// One worker, 150 requests with 150 different status codes: the first `MAX_SERIES` have a series
/// each, the other 22 count in the cluster's `other` series; nothing is lost.
fn past_the_series_bound_requests_count_in_the_other_row(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        let code = request
            .path()
            .trim_start_matches('/')
            .parse()
            .unwrap_or(500);
        Response::new(code).with_body("x").into()
    });
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "web"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]
routes = [{{ name = "all", cluster = "codes" }}]

[[clusters]]
name = "codes"
endpoints = ["{}"]
"#,
        upstream.address()
    );
    let proxy = Proxy::start(&config, driver, 1);
    let web = proxy.listener("web");
    for code in 400..550 {
        let mut client = Client::connect(web);
        let response = client.request(&request_bytes(
            "GET",
            &format!("/{code}"),
            "m.test",
            &[],
            b"",
        ));
        assert_eq!(response.status, code);
    }
    let service = [("destination_service", "codes")];
    let metrics = wait_requests(&proxy, &service, 150.0);
    let rows: Vec<_> = metrics.matching("istio_requests_total", &service).collect();
    assert_eq!(
        rows.len(),
        MAX_SERIES + 1,
        "the bound, then one `other` row"
    );
    let other: Vec<_> = rows
        .iter()
        .filter(|s| s.labels.get("response_code").map(String::as_str) == Some("other"))
        .collect();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].value, (150 - MAX_SERIES) as f64);
    for label in [
        "source_workload",
        "source_principal",
        "destination_workload",
        "response_flags",
        "connection_security_policy",
    ] {
        assert_eq!(other[0].labels[label], "other", "{label}");
    }
    assert!(
        rows.iter()
            .filter(|s| s.labels["response_code"] != "other")
            .all(|s| s.value == 1.0)
    );
    assert_eq!(
        metrics.value(
            "istio_request_duration_milliseconds_count",
            &[("destination_service", "codes"), ("response_code", "other")]
        ),
        (150 - MAX_SERIES) as f64
    );
}

/// grpcio through the proxy to a grpcio server: a call that succeeds counts under
/// `grpc_response_status="0"`, one the server fails with INVALID_ARGUMENT under `"3"`, both
/// with `request_protocol="grpc"` and HTTP status 200.
fn grpc_status_of_a_grpc_upstream_is_a_label(driver: Driver) {
    let server = PyServer::start("grpc_echo.py", &["server"]);
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]
routes = [{{ name = "echo", cluster = "echo" }}]

[[clusters]]
name = "echo"
endpoints = ["{}"]
protocol = "h2"
"#,
        server.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let port = proxy.listener("main").port().to_string();
    let run = |scenario: &str| -> Value {
        run_json(
            "grpc_echo.py",
            &["client", &port, scenario],
            Duration::from_secs(60),
        )
    };
    assert_eq!(run("unary")["code"], "OK");
    assert_eq!(run("fail")["code"], "INVALID_ARGUMENT");
    let grpc = [
        ("destination_service", "echo"),
        ("request_protocol", "grpc"),
    ];
    let metrics = wait_requests(&proxy, &grpc, 2.0);
    for status in ["0", "3"] {
        let labels: Vec<_> = grpc
            .iter()
            .copied()
            .chain([("grpc_response_status", status), ("response_code", "200")])
            .collect();
        assert_eq!(
            metrics.value("istio_requests_total", &labels),
            1.0,
            "{status}"
        );
    }
}
