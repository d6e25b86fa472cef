//! The cluster-side resilience policies through the real binary, on both drivers and every
//! protocol pair where the protocol matters:
//!
//! 1. **circuit breakers** — `max_requests` with a stalled first request: the next one is refused
//!    at once with 503, flag `UO` and `x-envoy-overloaded: true` (a gRPC client: trailers-only
//!    `UNAVAILABLE`); `max_pending_requests` with a first request stuck connecting, the same;
//!    `max_connections` on a tcp cluster closes the connection beyond the limit;
//!    the remaining-capacity gauges and overflow counters on `/stats/prometheus` and `/stats`.
//! 2. **outlier detection** — an endpoint answering 503 (of two) is ejected after
//!    `consecutive_5xx`, traffic goes to the other, and it returns after `base_ejection_time`,
//!    with a log line each way; a refusing endpoint is ejected for local-origin failures (HTTP
//!    and tcp clusters); `max_ejection_percent` keeps at least one ejectable and bounds the rest;
//!    the panic threshold sends traffic to all when too few are usable (and with 0, 503 `UH`);
//!    ejections and breaker counts survive a reload of an unchanged cluster; per-endpoint
//!    metrics and `/stats`.
//! 3. **active health checks** — an HTTP check (path, host) takes a stopped endpoint out (no
//!    failed request after it is marked) and puts it back when it is restarted on the same port;
//!    a TCP check takes a refusing endpoint of a tcp cluster out; `/stats` and the
//!    `ringmesh_endpoint_healthy` gauge show each endpoint's health.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tests::client::{Closed, connect, wait_closed};
use tests::exchange::{Answer, Call, Extra, Pair, Setup, call, hold};
use tests::h2::PyServer;
use tests::http::{access_log_config, cluster, http_listener, route, virtual_host};
use tests::upstream::{Blackhole, Upstream, refused_address};
use tests::wait::PATIENCE;
use tests::{Driver, Metrics, Proxy, both_drivers, exchange_pairs, tcp_listener, wait_until};

exchange_pairs!(
    breaker_max_requests_overflow_is_503_uo_at_once,
    breaker_max_pending_requests_overflow_is_503_uo,
    outlier_5xx_endpoint_is_ejected_and_returns,
    http_health_check_takes_a_stopped_endpoint_out_and_puts_it_back,
);
exchange_pairs!(@h2_clients breaker_overflow_grpc_is_unavailable);
both_drivers!(
    breaker_max_connections_closes_tcp_connections_beyond_the_limit,
    outlier_refusing_endpoint_is_ejected_for_local_origin_failures,
    outlier_refusing_endpoint_of_a_tcp_cluster_is_ejected,
    outlier_max_ejection_percent_keeps_at_least_one_ejectable,
    panic_threshold_uses_all_endpoints_and_zero_answers_uh,
    ejections_and_breaker_counts_survive_a_reload,
    tcp_health_check_takes_a_refusing_endpoint_out,
);

/// The host every routed request uses.
const HOST: &str = "svc.test";

/// Waits until the upstream has the request for `path`.
fn received(setup: &Setup, path: &str) {
    setup
        .upstream
        .wait_event("received", |w| w.get(5).map(String::as_str) == Some(path));
}

// === 1. Circuit breakers ===

/// `max_requests = 1` and a first request the upstream never answers: the second is refused at
/// once with 503, `x-envoy-overloaded: true` and flag `UO`; the gauge shows no request left and
/// the overflow is counted.
fn breaker_max_requests_overflow_is_503_uo_at_once(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            cluster: "circuit_breaker = { max_requests = 1 }",
            ..Extra::default()
        },
    );
    let _held = hold(pair, setup.address(), &Call::get(HOST, "/hold"));
    received(&setup, "/hold");

    let next = setup.call(pair, &Call::get(HOST, "/next"));
    assert_eq!(next.status, Some(503), "{next:?}");
    assert_eq!(
        next.header("x-envoy-overloaded"),
        Some("true"),
        "the overload is marked: {next:?}"
    );
    let entry = setup.log_entry("/next");
    assert_eq!(entry["response_flags"], "UO", "{entry}");
    assert_eq!(
        setup.upstream.count("received"),
        1,
        "the refused request never reached the upstream:\n{}",
        setup.upstream.stdout()
    );

    let metrics = setup.proxy.metrics();
    let labels = [("cluster", "backend"), ("resource", "requests")];
    assert_eq!(
        metrics.value("ringmesh_cluster_circuit_breaker_remaining", &labels),
        0.0
    );
    assert_eq!(
        metrics.value(
            "ringmesh_cluster_circuit_breaker_remaining",
            &[("cluster", "backend"), ("resource", "connections")]
        ),
        1023.0,
        "one connection open of the default 1024"
    );
    assert!(metrics.value("ringmesh_cluster_circuit_breaker_overflow_total", &labels) >= 1.0);
    let stats = setup.proxy.stats();
    let cluster = stats.0["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "backend"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        cluster["circuit_breaker"]["requests"]["remaining"], 0,
        "{cluster}"
    );
    assert_eq!(
        cluster["circuit_breaker"]["requests"]["limit"], 1,
        "{cluster}"
    );
}

/// `max_pending_requests = 1` and an endpoint whose connects hang: while the first request
/// waits for its connection, the next is refused at once with 503 `UO`.
fn breaker_max_pending_requests_overflow_is_503_uo(pair: Pair, driver: Driver) {
    let blackhole = Blackhole::new();
    let mesh = Mesh::start(
        driver,
        &[blackhole.address()],
        pair.cluster_protocol(),
        "connect_timeout = \"30s\"\ncircuit_breaker = { max_pending_requests = 1 }",
    );
    let _held = hold(
        pair,
        mesh.proxy.listener("main"),
        &Call::get(HOST, "/pending"),
    );
    let labels = [("cluster", "backend"), ("resource", "pending_requests")];
    wait_until(
        PATIENCE,
        "the first request to wait for its connection",
        || match mesh
            .proxy
            .metrics()
            .value("ringmesh_cluster_circuit_breaker_remaining", &labels)
        {
            0.0 => Ok(()),
            other => Err(format!("remaining = {other}")),
        },
    );
    let next = mesh.call(pair, "/next");
    assert_eq!(next.status, Some(503), "{next:?}");
    assert_eq!(next.header("x-envoy-overloaded"), Some("true"), "{next:?}");
    let entry = mesh.log_entry("/next");
    assert_eq!(entry["response_flags"], "UO", "{entry}");
}

/// The same with a gRPC request: trailers-only `grpc-status: 14` (UNAVAILABLE), flag `UO`.
fn breaker_overflow_grpc_is_unavailable(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            cluster: "circuit_breaker = { max_requests = 1 }",
            ..Extra::default()
        },
    );
    let _held = hold(pair, setup.address(), &Call::get(HOST, "/hold"));
    received(&setup, "/hold");

    let next = setup.call(pair, &Call::grpc(HOST, "/svc.Echo/Next"));
    assert_eq!(
        next.trailers_only_grpc_status().as_deref(),
        Ok("14"),
        "{next:?}"
    );
    let entry = setup.log_entry("/svc.Echo/Next");
    assert_eq!(entry["response_flags"], "UO", "{entry}");
}

/// A tcp cluster with `max_connections = 1`: a second client connection is closed at once while
/// the first is open (two workers: the limit holds across them), and one is admitted again after
/// the first closes.
fn breaker_max_connections_closes_tcp_connections_beyond_the_limit(driver: Driver) {
    let upstream = Upstream::echo();
    let config = tcp_listener(
        "db",
        &[upstream.address()],
        "",
        "circuit_breaker = { max_connections = 1 }",
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("db");

    let mut first = connect(address);
    first.write_all(b"ping").expect("write");
    let mut buffer = [0u8; 4];
    first.read_exact(&mut buffer).expect("echo on the first");
    assert_eq!(&buffer, b"ping");

    // Each new connection may land on either worker: all are refused while the first is open.
    for _ in 0..4 {
        let mut other = connect(address);
        let _ = other.write_all(b"x");
        let closed = wait_closed(&mut other, PATIENCE);
        assert!(matches!(closed, Closed::Eof | Closed::Reset));
    }
    let metrics = proxy.metrics();
    assert!(
        metrics.value(
            "ringmesh_cluster_circuit_breaker_overflow_total",
            &[("cluster", "db"), ("resource", "connections")]
        ) >= 4.0
    );

    drop(first);
    wait_until(
        PATIENCE,
        "a connection admitted once the first closed",
        || {
            let mut again = connect(address);
            again
                .set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            again.write_all(b"pong").map_err(|e| e.to_string())?;
            let mut buffer = [0u8; 4];
            again.read_exact(&mut buffer).map_err(|e| e.to_string())?;
            if &buffer == b"pong" {
                Ok(())
            } else {
                Err(format!("{buffer:?}"))
            }
        },
    );
}

// === 2. Outlier detection ===

/// A proxy with one worker, an `http` listener `main` routing everything to cluster `backend` on
/// `endpoints` (in `protocol`) with `cluster_extra`, and a JSON access log.
struct Mesh {
    proxy: Proxy,
    config: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn config(endpoints: &[SocketAddr], protocol: &str, cluster_extra: &str, log: &str) -> String {
        [
            log.to_owned(),
            http_listener("main", ""),
            cluster(
                "backend",
                endpoints,
                &format!("protocol = \"{protocol}\"\n{cluster_extra}"),
            ),
            virtual_host("all", &["*"], &route("all", "cluster = \"backend\"")),
        ]
        .concat()
    }

    fn start(
        driver: Driver,
        endpoints: &[SocketAddr],
        protocol: &str,
        cluster_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("access.log");
        let config = Self::config(endpoints, protocol, cluster_extra, &access_log_config(&log));
        let proxy = Proxy::start(&config, driver, 1);
        Self {
            proxy,
            config,
            log,
            _dir: dir,
        }
    }

    fn call(&self, pair: Pair, path: &str) -> Answer {
        call(pair, self.proxy.listener("main"), &Call::get(HOST, path))
    }

    fn log_entry(&self, path: &str) -> Value {
        wait_until(PATIENCE, format!("an access-log entry for {path}"), || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|entry| entry["path"] == path)
                .ok_or_else(|| format!("log so far:\n{text}"))
        })
    }
}

/// `ringmesh_endpoint_<name>` of `endpoint` in cluster `cluster`.
fn endpoint_metric(metrics: &Metrics, name: &str, cluster: &str, endpoint: SocketAddr) -> f64 {
    metrics.value(
        &format!("ringmesh_endpoint_{name}"),
        &[("cluster", cluster), ("endpoint", &endpoint.to_string())],
    )
}

/// The `/stats` entry of `endpoint` in cluster `cluster`.
fn endpoint_stats(proxy: &Proxy, cluster: &str, endpoint: SocketAddr) -> Value {
    let stats = proxy.stats();
    stats.0["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == cluster))
        .and_then(|c| c["endpoint_health"].as_array())
        .and_then(|e| e.iter().find(|e| e["address"] == endpoint.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint_health for {endpoint} in {}", stats.0))
}

/// Two endpoints, one answering 503 to everything: after three consecutive 503s it is ejected
/// (logged, `ringmesh_endpoint_ejected` 1, `/stats` says so), every request then goes to the
/// other, and after `base_ejection_time` it takes traffic again (and the sweep logs its return).
fn outlier_5xx_endpoint_is_ejected_and_returns(pair: Pair, driver: Driver) {
    let good = PyServer::start("h2_upstream.py", &["--name", "good"]);
    let bad = PyServer::start("h2_upstream.py", &["--name", "bad", "--status", "503"]);
    let mesh = Mesh::start(
        driver,
        &[good.address(), bad.address()],
        pair.cluster_protocol(),
        "outlier_detection = { consecutive_5xx = 3, base_ejection_time = \"4s\", interval = \"100ms\", max_ejection_percent = 50 }",
    );
    // Round robin over two endpoints: the sixth request at the latest is the third 503.
    let mut failures = 0;
    for i in 0..6 {
        let answer = mesh.call(pair, &format!("/warm/{i}"));
        if answer.header("x-upstream") == Some("bad") {
            assert_eq!(answer.status, Some(503), "{answer:?}");
            failures += 1;
        }
        if failures == 3 {
            break;
        }
    }
    assert_eq!(failures, 3, "the bad endpoint got its share");
    let metrics = mesh.proxy.metrics();
    assert_eq!(
        endpoint_metric(&metrics, "ejected", "backend", bad.address()),
        1.0
    );
    assert_eq!(
        endpoint_metric(&metrics, "ejections_total", "backend", bad.address()),
        1.0
    );
    assert_eq!(
        endpoint_metric(&metrics, "ejected", "backend", good.address()),
        0.0
    );
    let stats = endpoint_stats(&mesh.proxy, "backend", bad.address());
    assert_eq!(stats["ejected"], true, "{stats}");
    assert!(
        mesh.proxy
            .log()
            .contains("outlier detection: endpoint ejected"),
        "an ejection is logged:\n{}",
        mesh.proxy.log()
    );
    for i in 0..4 {
        let answer = mesh.call(pair, &format!("/ejected/{i}"));
        assert_eq!(
            answer.status,
            Some(200),
            "only the good endpoint answers: {answer:?}"
        );
        assert_eq!(answer.header("x-upstream"), Some("good"), "{answer:?}");
    }
    // Returned after the ejection time: the bad endpoint answers again.
    let mut n = 0;
    wait_until(
        PATIENCE,
        "the ejected endpoint to take traffic again",
        || {
            n += 1;
            let answer = mesh.call(pair, &format!("/back/{n}"));
            match answer.header("x-upstream") {
                Some("bad") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    wait_until(PATIENCE, "the return to be logged", || {
        let log = mesh.proxy.log();
        if log.contains("outlier detection: endpoint returned") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(
        endpoint_metric(&mesh.proxy.metrics(), "ejected", "backend", bad.address()),
        0.0
    );
}

/// A refused endpoint (of two) is ejected after two local-origin failures (each request still
/// gets its answer from the other endpoint, the checkout walking on): after that, no more connect
/// attempts go to it.
fn outlier_refusing_endpoint_is_ejected_for_local_origin_failures(driver: Driver) {
    let good = PyServer::start("h2_upstream.py", &["--name", "good"]);
    let refused = refused_address();
    let mesh = Mesh::start(
        driver,
        &[good.address(), refused],
        "h1",
        "outlier_detection = { consecutive_local_origin_failure = 2, base_ejection_time = \"60s\", max_ejection_percent = 50 }",
    );
    let mut n = 0;
    wait_until(PATIENCE, "the refusing endpoint to be ejected", || {
        n += 1;
        let answer = mesh.call(Pair::H1H1, &format!("/r/{n}"));
        assert_eq!(answer.status, Some(200), "{answer:?}");
        let metrics = mesh.proxy.metrics();
        match endpoint_metric(&metrics, "ejected", "backend", refused) {
            1.0 => Ok(()),
            other => Err(format!("ejected = {other}")),
        }
    });
    let failures = |m: &Metrics| {
        m.value(
            "ringmesh_cluster_upstream_connect_failures_total",
            &[("cluster", "backend")],
        )
    };
    let before = failures(&mesh.proxy.metrics());
    assert!(before >= 2.0);
    for i in 0..6 {
        let answer = mesh.call(Pair::H1H1, &format!("/after/{i}"));
        assert_eq!(answer.status, Some(200), "{answer:?}");
    }
    assert_eq!(
        failures(&mesh.proxy.metrics()),
        before,
        "no connect went to the ejected endpoint"
    );
}

/// The same for a tcp cluster: connect failures eject the refusing endpoint, and connections go
/// to the other one only.
fn outlier_refusing_endpoint_of_a_tcp_cluster_is_ejected(driver: Driver) {
    let upstream = Upstream::echo();
    let refused = refused_address();
    let config = tcp_listener(
        "db",
        &[refused, upstream.address()],
        "",
        "outlier_detection = { consecutive_local_origin_failure = 1, base_ejection_time = \"60s\", max_ejection_percent = 50 }",
    );
    let proxy = Proxy::start(&config, driver, 1);
    let address = proxy.listener("db");
    let echo_once = |message: &[u8]| {
        let mut stream = connect(address);
        stream.write_all(message).expect("write");
        let mut buffer = vec![0u8; message.len()];
        stream.read_exact(&mut buffer).expect("echo");
        assert_eq!(buffer, message);
    };
    wait_until(PATIENCE, "the refusing endpoint to be ejected", || {
        echo_once(b"ping");
        match endpoint_metric(&proxy.metrics(), "ejected", "db", refused) {
            1.0 => Ok(()),
            other => Err(format!("ejected = {other}")),
        }
    });
    let failures = |m: &Metrics| {
        m.value(
            "ringmesh_cluster_upstream_connect_failures_total",
            &[("cluster", "db")],
        )
    };
    let before = failures(&proxy.metrics());
    for _ in 0..6 {
        echo_once(b"pong");
    }
    assert_eq!(
        failures(&proxy.metrics()),
        before,
        "the ejected endpoint is skipped"
    );
}

/// Three endpoints that all answer 503, `consecutive_5xx = 1` and `max_ejection_percent = 0`:
/// exactly one is ejected (at least one is always ejectable), and the others keep answering.
fn outlier_max_ejection_percent_keeps_at_least_one_ejectable(driver: Driver) {
    let bad: Vec<PyServer> = (0..3)
        .map(|_| PyServer::start("h2_upstream.py", &["--name", "bad", "--status", "503"]))
        .collect();
    let addresses: Vec<SocketAddr> = bad.iter().map(PyServer::address).collect();
    let mesh = Mesh::start(
        driver,
        &addresses,
        "h1",
        "panic_threshold = 0\noutlier_detection = { consecutive_5xx = 1, base_ejection_time = \"60s\", max_ejection_percent = 0 }",
    );
    for i in 0..9 {
        let answer = mesh.call(Pair::H1H1, &format!("/p/{i}"));
        assert_eq!(answer.status, Some(503), "{answer:?}");
        assert_eq!(
            answer.header("x-upstream"),
            Some("bad"),
            "answered upstream: {answer:?}"
        );
    }
    let metrics = mesh.proxy.metrics();
    let ejected: f64 = addresses
        .iter()
        .map(|a| endpoint_metric(&metrics, "ejected", "backend", *a))
        .sum();
    assert_eq!(ejected, 1.0, "exactly one endpoint ejected");
}

/// Two endpoints answering 503, both ejectable: with the default panic threshold (50%) both are
/// ejected and then used anyway (panic mode: the answers still come from the upstreams); reloaded
/// with `panic_threshold = 0` (the ejections carry over), the proxy answers 503 `UH` itself.
fn panic_threshold_uses_all_endpoints_and_zero_answers_uh(driver: Driver) {
    let a = PyServer::start("h2_upstream.py", &["--name", "bad", "--status", "503"]);
    let b = PyServer::start("h2_upstream.py", &["--name", "bad", "--status", "503"]);
    let endpoints = [a.address(), b.address()];
    let outlier = "outlier_detection = { consecutive_5xx = 1, base_ejection_time = \"60s\", max_ejection_percent = 100 }";
    let mesh = Mesh::start(driver, &endpoints, "h1", outlier);
    for i in 0..4 {
        let answer = mesh.call(Pair::H1H1, &format!("/p/{i}"));
        assert_eq!(answer.header("x-upstream"), Some("bad"), "{answer:?}");
    }
    let metrics = mesh.proxy.metrics();
    for endpoint in endpoints {
        assert_eq!(
            endpoint_metric(&metrics, "ejected", "backend", endpoint),
            1.0
        );
    }
    let answer = mesh.call(Pair::H1H1, "/panic");
    assert_eq!(
        answer.header("x-upstream"),
        Some("bad"),
        "panic mode: {answer:?}"
    );

    let dir = mesh._dir.path().join("access.log");
    let config = Mesh::config(
        &endpoints,
        "h1",
        &format!("panic_threshold = 0\n{outlier}"),
        &access_log_config(&dir),
    );
    mesh.proxy.reload_with_sighup(&config);
    let answer = mesh.call(Pair::H1H1, "/no-panic");
    assert_eq!(answer.status, Some(503), "{answer:?}");
    assert_eq!(
        answer.header("x-upstream"),
        None,
        "answered by the proxy: {answer:?}"
    );
    let entry = mesh.log_entry("/no-panic");
    assert_eq!(entry["response_flags"], "UH", "{entry}");
}

/// A reload that leaves the cluster unchanged (a new route header elsewhere) keeps its ejections
/// and its circuit breaker's counts: the ejected endpoint stays out, and with `max_requests = 1`
/// held by a stalled request, the next is still refused.
fn ejections_and_breaker_counts_survive_a_reload(driver: Driver) {
    let good = PyServer::start("h2_upstream.py", &["--name", "good"]);
    let bad = PyServer::start("h2_upstream.py", &["--name", "bad", "--status", "503"]);
    let extra = "circuit_breaker = { max_requests = 1 }\noutlier_detection = { consecutive_5xx = 1, base_ejection_time = \"60s\", max_ejection_percent = 50 }";
    let mesh = Mesh::start(driver, &[good.address(), bad.address()], "h1", extra);
    let mut n = 0;
    wait_until(PATIENCE, "the bad endpoint to be ejected", || {
        n += 1;
        mesh.call(Pair::H1H1, &format!("/e/{n}"));
        match endpoint_metric(&mesh.proxy.metrics(), "ejected", "backend", bad.address()) {
            1.0 => Ok(()),
            other => Err(format!("ejected = {other}")),
        }
    });
    let _held = hold(
        Pair::H1H1,
        mesh.proxy.listener("main"),
        &Call::get(HOST, "/hold"),
    );
    good.wait_event("received", |w| {
        w.get(5).map(String::as_str) == Some("/hold")
    });

    let changed = mesh.config.replace(
        "cluster = \"backend\"",
        "cluster = \"backend\"\nresponse_headers.add = { \"x-reloaded\" = \"1\" }",
    );
    assert_ne!(changed, mesh.config);
    mesh.proxy.reload_with_sighup(&changed);

    let refused = mesh.call(Pair::H1H1, "/refused");
    assert_eq!(refused.status, Some(503), "{refused:?}");
    assert_eq!(
        refused.header("x-envoy-overloaded"),
        Some("true"),
        "{refused:?}"
    );
    let metrics = mesh.proxy.metrics();
    assert_eq!(
        endpoint_metric(&metrics, "ejected", "backend", bad.address()),
        1.0
    );
    assert_eq!(
        endpoint_metric(&metrics, "ejections_total", "backend", bad.address()),
        1.0
    );
    drop(_held);
    let mut n = 0;
    wait_until(
        PATIENCE,
        "the held request to end and free the breaker",
        || {
            n += 1;
            let answer = mesh.call(Pair::H1H1, &format!("/after/{n}"));
            match answer.status {
                Some(200) => Ok(answer),
                other => Err(format!("{other:?}")),
            }
        },
    );
    for i in 0..4 {
        let answer = mesh.call(Pair::H1H1, &format!("/still/{i}"));
        assert_eq!(
            answer.header("x-upstream"),
            Some("good"),
            "still ejected: {answer:?}"
        );
        assert_eq!(
            answer.header("x-reloaded"),
            Some("1"),
            "the new route applies: {answer:?}"
        );
    }
}

// === 3. Active health checks ===

/// Waits until `ringmesh_endpoint_healthy` of `endpoint` is `want`.
fn wait_healthy(proxy: &Proxy, cluster: &str, endpoint: SocketAddr, want: f64) {
    wait_until(
        PATIENCE,
        format!("{endpoint} healthy = {want}"),
        || match endpoint_metric(&proxy.metrics(), "healthy", cluster, endpoint) {
            v if v == want => Ok(()),
            other => Err(format!("healthy = {other}")),
        },
    );
}

/// Two endpoints with an HTTP health check on `/healthz` with `host = "health.test"`: both stay
/// healthy while they answer; one stopped is marked unhealthy, and from then on every request is
/// answered by the other (no 502); restarted on the same port it is marked healthy again and
/// takes traffic.
fn http_health_check_takes_a_stopped_endpoint_out_and_puts_it_back(pair: Pair, driver: Driver) {
    let a = PyServer::start("h2_upstream.py", &["--name", "a"]);
    let b = PyServer::start("h2_upstream.py", &["--name", "b"]);
    let (a_address, b_address) = (a.address(), b.address());
    let mesh = Mesh::start(
        driver,
        &[a_address, b_address],
        pair.cluster_protocol(),
        "health_check = { path = \"/healthz\", host = \"health.test\", interval = \"100ms\", timeout = \"1s\", unhealthy_threshold = 2, healthy_threshold = 2, jitter = \"20ms\" }",
    );
    let check = a.wait_event("received", |w| {
        w.get(5).map(String::as_str) == Some("/healthz")
    });
    assert_eq!(check[3], "HTTP/1.1", "the check speaks HTTP/1.1: {check:?}");
    assert_eq!(check[6], "health.test", "the check's Host: {check:?}");
    let metrics = mesh.proxy.metrics();
    assert_eq!(
        endpoint_metric(&metrics, "healthy", "backend", a_address),
        1.0
    );
    assert_eq!(
        endpoint_metric(&metrics, "healthy", "backend", b_address),
        1.0
    );
    for i in 0..2 {
        let answer = mesh.call(pair, &format!("/both/{i}"));
        assert_eq!(answer.status, Some(200), "{answer:?}");
    }

    drop(b);
    wait_healthy(&mesh.proxy, "backend", b_address, 0.0);
    let stats = endpoint_stats(&mesh.proxy, "backend", b_address);
    assert_eq!(stats["healthy"], false, "{stats}");
    assert!(
        stats["health_check_failures"].as_u64() >= Some(2),
        "{stats}"
    );
    for i in 0..4 {
        let answer = mesh.call(pair, &format!("/one/{i}"));
        assert_eq!(
            answer.status,
            Some(200),
            "no failure once marked: {answer:?}"
        );
        assert_eq!(answer.header("x-upstream"), Some("a"), "{answer:?}");
    }

    let port = b_address.port().to_string();
    let _b2 = PyServer::start("h2_upstream.py", &["--name", "b2", "--port", &port]);
    wait_healthy(&mesh.proxy, "backend", b_address, 1.0);
    assert_eq!(
        endpoint_stats(&mesh.proxy, "backend", b_address)["healthy"],
        true
    );
    let mut n = 0;
    wait_until(PATIENCE, "the restarted endpoint to take traffic", || {
        n += 1;
        let answer = mesh.call(pair, &format!("/back/{n}"));
        match answer.header("x-upstream") {
            Some("b2") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let log = mesh.proxy.log();
    assert!(log.contains("health check: endpoint unhealthy"), "{log}");
    assert!(log.contains("health check: endpoint healthy"), "{log}");
}

/// A tcp cluster with a TCP health check: the refusing endpoint is marked unhealthy, and then no
/// connection is attempted to it.
fn tcp_health_check_takes_a_refusing_endpoint_out(driver: Driver) {
    let upstream = Upstream::echo();
    let refused = refused_address();
    let config = tcp_listener(
        "db",
        &[refused, upstream.address()],
        "",
        "health_check = { kind = \"tcp\", interval = \"100ms\", unhealthy_threshold = 1 }",
    );
    let proxy = Proxy::start(&config, driver, 2);
    wait_healthy(&proxy, "db", refused, 0.0);
    assert_eq!(
        endpoint_metric(&proxy.metrics(), "healthy", "db", upstream.address()),
        1.0
    );
    let failures = |m: &Metrics| {
        m.value(
            "ringmesh_cluster_upstream_connect_failures_total",
            &[("cluster", "db")],
        )
    };
    let address = proxy.listener("db");
    for _ in 0..6 {
        let mut stream = connect(address);
        stream.write_all(b"ping").expect("write");
        let mut buffer = [0u8; 4];
        stream.read_exact(&mut buffer).expect("echo");
        assert_eq!(&buffer, b"ping");
    }
    assert_eq!(
        failures(&proxy.metrics()),
        0.0,
        "no connection went to the unhealthy endpoint"
    );
}
