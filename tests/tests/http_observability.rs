//! What an operator sees of HTTP/1.1 traffic: local replies (404 no route, 502 connect failure,
//! 504 route timeout) with Envoy's response flags (NR, UF, UT) in the JSON
//! access log, whose every field is checked; and the Prometheus metrics — per-route responses by
//! status class and duration histograms, per-cluster upstream requests and pool reuse, and
//! Istio's `istio_requests_total`. Every test runs on io_uring and on epoll.

use serde_json::Value;
use tests::http::{
    Client, HttpUpstream, Request, Response, access_log, access_log_config, cluster, curl,
    http_listener, request_bytes, route, virtual_host,
};
use tests::upstream::refused_address;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    local_replies_and_their_flags_in_the_json_access_log,
    route_cluster_and_istio_metrics,
);

/// A request sent with curl, and what its answer and access-log entry must be.
struct Case {
    path: &'static str,
    host: &'static str,
    /// Extra curl arguments; `@BODY` stands for a 1000-byte body file.
    curl_args: &'static [&'static str],
    method: &'static str,
    status: u16,
    body: &'static str,
    flags: &'static str,
    route: &'static str,
    cluster: &'static str,
    /// The upstream the request went to (index into the upstreams' addresses), if any.
    upstream: Option<usize>,
    bytes_received: u64,
}

/// The entry whose `path` is `path`.
fn entry<'a>(entries: &'a [Value], path: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("no access-log entry for {path}: {entries:#?}"))
}

/// `2025-11-21T13:13:07.715Z`.
fn is_rfc3339_millis(time: &str) -> bool {
    let b = time.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && time
            .chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

/// Seven requests with curl: a proxied GET and POST, two without a route (unknown path, unknown
/// host), one to a cluster whose endpoint refuses, one to an upstream slower than the route
/// timeout, one to a cluster without endpoints. Each
/// gets the right status and body, local replies carry the request id, and each has one JSON
/// access-log line with every field right.
fn local_replies_and_their_flags_in_the_json_access_log(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        Response::ok(format!("proxied {}", request.body.len())).into()
    });
    let slow = HttpUpstream::start(|_: &Request| {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        Response::ok("too late").into()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let routes = [
        route(
            "ok-route",
            "match = { path_prefix = \"/ok\" }\ncluster = \"backend\"",
        ),
        route(
            "refused-route",
            "match = { path_prefix = \"/refused\" }\ncluster = \"refused\"",
        ),
        route(
            "slow-route",
            "match = { path_prefix = \"/slow\" }\ncluster = \"slow\"\ntimeout = \"300ms\"",
        ),
    ]
    .concat();
    let config = [
        access_log_config(&log_path),
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        cluster("refused", &[refused_address()], ""),
        cluster("slow", &[slow.address()], ""),
        virtual_host("svc", &["svc.test"], &routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("web");

    let body_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(body_file.path(), vec![b'p'; 1000]).expect("write the body");
    let body_arg = format!("@{}", body_file.path().display());
    let cases = [
        Case {
            path: "/ok/get",
            host: "svc.test",
            curl_args: &["-H", "X-Request-Id: id-ok"],
            method: "GET",
            status: 200,
            body: "proxied 0",
            flags: "-",
            route: "ok-route",
            cluster: "backend",
            upstream: Some(0),
            bytes_received: 0,
        },
        Case {
            path: "/ok/post",
            host: "svc.test",
            curl_args: &["--data-binary", "@BODY", "-H", "Expect:"],
            method: "POST",
            status: 200,
            body: "proxied 1000",
            flags: "-",
            route: "ok-route",
            cluster: "backend",
            upstream: Some(0),
            bytes_received: 1000,
        },
        Case {
            path: "/missing",
            host: "svc.test",
            curl_args: &[],
            method: "GET",
            status: 404,
            body: "no route\n",
            flags: "NR",
            route: "",
            cluster: "",
            upstream: None,
            bytes_received: 0,
        },
        Case {
            path: "/ok/get?other-host",
            host: "other.test",
            curl_args: &[],
            method: "GET",
            status: 404,
            body: "no route\n",
            flags: "NR",
            route: "",
            cluster: "",
            upstream: None,
            bytes_received: 0,
        },
        Case {
            path: "/refused/x",
            host: "svc.test",
            curl_args: &[],
            method: "GET",
            status: 502,
            body: "upstream connect error\n",
            flags: "UF",
            route: "refused-route",
            cluster: "refused",
            upstream: None,
            bytes_received: 0,
        },
        Case {
            path: "/slow/x",
            host: "svc.test",
            curl_args: &[],
            method: "GET",
            status: 504,
            body: "upstream request timeout\n",
            flags: "UT",
            route: "slow-route",
            cluster: "slow",
            upstream: Some(1),
            bytes_received: 0,
        },
    ];
    let mut ids = Vec::new();
    for case in &cases {
        let mut args = vec![
            "-i".to_owned(),
            "-H".to_owned(),
            format!("Host: {}", case.host),
            format!("http://{address}{}", case.path),
        ];
        args.extend(case.curl_args.iter().map(|a| {
            if *a == "@BODY" {
                body_arg.clone()
            } else {
                (*a).to_owned()
            }
        }));
        let response = curl(&args).response();
        assert_eq!(
            response.status,
            case.status,
            "{}: {}",
            case.path,
            response.text()
        );
        assert_eq!(response.text(), case.body, "{}", case.path);
        if case.status != 200 {
            assert!(
                response.header("x-request-id").is_some(),
                "{}: a local reply carries the request id",
                case.path
            );
        }
        ids.push(response.header("x-request-id").map(str::to_owned));
    }

    let entries = access_log(&log_path, cases.len());
    assert_eq!(entries.len(), cases.len(), "{entries:#?}");
    let upstream_hosts = [upstream.address().to_string(), slow.address().to_string()];
    for (case, sent_back) in cases.iter().zip(&ids) {
        let e = entry(&entries, case.path);
        let what = format!("{}: {e}", case.path);
        assert_eq!(e["method"], case.method, "{what}");
        assert_eq!(e["authority"], case.host, "{what}");
        assert_eq!(e["protocol"], "HTTP/1.1", "{what}");
        assert_eq!(e["status"], case.status, "{what}");
        assert_eq!(e["response_flags"], case.flags, "{what}");
        assert_eq!(e["route"], case.route, "{what}");
        assert_eq!(e["cluster"], case.cluster, "{what}");
        match case.upstream {
            Some(i) => assert_eq!(e["upstream_host"], upstream_hosts[i].as_str(), "{what}"),
            None => assert!(e["upstream_host"].is_null(), "{what}"),
        }
        assert_eq!(e["bytes_received"], case.bytes_received, "{what}");
        assert_eq!(e["bytes_sent"], case.body.len() as u64, "{what}");
        assert!(
            e["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{what}"
        );
        let time = e["time"].as_str().expect("time is a string");
        assert!(is_rfc3339_millis(time), "{what}");
        let remote = e["downstream_remote_address"]
            .as_str()
            .expect("remote address");
        assert!(remote.starts_with("127.0.0.1:"), "{what}");
        let id = e["request_id"].as_str().expect("request_id is a string");
        assert!(!id.is_empty(), "{what}");
        if let Some(sent_back) = sent_back {
            assert_eq!(
                id, sent_back,
                "{what}: the id in the log is the one the client got"
            );
        }
    }
    assert_eq!(entry(&entries, "/ok/get")["request_id"], "id-ok");

    let metrics = proxy.metrics();
    assert!(
        metrics.value(
            "ringmesh_cluster_upstream_connect_failures_total",
            &[("cluster", "refused")]
        ) >= 1.0
    );
}

/// Ten requests on one kept-alive connection: 5 answered 200, 3 answered 404 and 2 answered
/// 503 by the upstream. Route counters by class, route duration histograms, the cluster's
/// upstream requests, connections and pool reuse, and Istio's request count and duration all
/// say so.
fn route_cluster_and_istio_metrics(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        let status = match request.path() {
            "/missing" => 404,
            "/broken" => 503,
            _ => 200,
        };
        Response::new(status).with_body("x").into()
    });
    let routes = [
        route(
            "r-ok",
            "match = { path_prefix = \"/ok\" }\ncluster = \"backend\"",
        ),
        route(
            "r-missing",
            "match = { path_prefix = \"/missing\" }\ncluster = \"backend\"",
        ),
        route(
            "r-broken",
            "match = { path_prefix = \"/broken\" }\ncluster = \"backend\"",
        ),
    ]
    .concat();
    let config = [
        "[telemetry]\nsource_workload = \"tester\"\n".to_owned(),
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host("default", &["*"], &routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let mut client = Client::connect(proxy.listener("web"));
    for (path, count, status) in [("/ok", 5, 200), ("/missing", 3, 404), ("/broken", 2, 503)] {
        for _ in 0..count {
            let response = client.request(&request_bytes("GET", path, "m.test", &[], b""));
            assert_eq!(response.status, status);
        }
    }

    // A request is counted just after its answer is written: wait for the last one.
    let metrics = wait_until(PATIENCE, "route counters for all 10 requests", || {
        let metrics = proxy.metrics();
        let total = metrics.sum("ringmesh_route_responses_total", &[]);
        if total == 10.0 {
            Ok(metrics)
        } else {
            Err(format!("{total} counted"))
        }
    });
    for (route, class, count) in [
        ("r-ok", "2xx", 5.0),
        ("r-missing", "4xx", 3.0),
        ("r-broken", "5xx", 2.0),
    ] {
        assert_eq!(
            metrics.value(
                "ringmesh_route_responses_total",
                &[("route", route), ("class", class)]
            ),
            count,
            "{route} {class}"
        );
        assert_eq!(
            metrics.sum("ringmesh_route_responses_total", &[("route", route)]),
            count
        );
        let labels = [("route", route)];
        assert_eq!(
            metrics.value(
                "ringmesh_route_request_duration_milliseconds_count",
                &labels
            ),
            count
        );
        assert!(metrics.value("ringmesh_route_request_duration_milliseconds_sum", &labels) >= 0.0);
        let buckets: Vec<(f64, f64)> = metrics
            .matching(
                "ringmesh_route_request_duration_milliseconds_bucket",
                &labels,
            )
            .map(|s| {
                let le = s.labels["le"].parse::<f64>().expect("le is a number");
                (le, s.value)
            })
            .collect();
        assert!(buckets.len() > 2, "{route}: buckets {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{buckets:?}"
        );
        assert_eq!(
            buckets.last().map(|b| (b.0, b.1)),
            Some((f64::INFINITY, count))
        );
    }
    let backend = [("cluster", "backend")];
    assert_eq!(
        metrics.value("ringmesh_cluster_upstream_requests_total", &backend),
        10.0
    );
    assert_eq!(
        metrics.value("ringmesh_cluster_upstream_connections_total", &backend),
        1.0
    );
    assert_eq!(
        metrics.value("ringmesh_cluster_pool_reuse_total", &backend),
        9.0
    );
    assert_eq!(upstream.connections(), 1);
    for (code, count) in [("200", 5.0), ("404", 3.0), ("503", 2.0)] {
        let labels = [
            // A plaintext listener reports as the caller's side (Istio's outbound or gateway).
            ("reporter", "source"),
            ("source_workload", "tester"),
            ("destination_service", "backend"),
            ("response_code", code),
        ];
        assert_eq!(
            metrics.value("istio_requests_total", &labels),
            count,
            "{code}"
        );
    }
    // The duration histogram has a series per response code, as Istio's.
    assert_eq!(
        metrics.sum(
            "istio_request_duration_milliseconds_count",
            &[("destination_service", "backend")]
        ),
        10.0
    );
}
