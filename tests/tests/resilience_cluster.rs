//! The cluster-side resilience policies through the real binary, on both drivers and every
//! protocol pair where the protocol matters:
//!
//! 1. **circuit breakers** — `max_requests` with a stalled first request: the next one is refused
//!    at once with 503, flag `UO` and `x-envoy-overloaded: true` (a gRPC client: trailers-only
//!    `UNAVAILABLE`); `max_connections` on a tcp cluster closes the connection beyond the limit;
//!    the remaining-capacity gauges and overflow counters on `/stats/prometheus` and `/stats`.

use std::io::{Read, Write};
use std::time::Duration;

use tests::client::{Closed, connect, wait_closed};
use tests::exchange::{Call, Extra, Pair, Setup, hold};
use tests::upstream::Upstream;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, exchange_pairs, tcp_listener, wait_until};

exchange_pairs!(breaker_max_requests_overflow_is_503_uo_at_once);
exchange_pairs!(@h2_clients breaker_overflow_grpc_is_unavailable);
both_drivers!(breaker_max_connections_closes_tcp_connections_beyond_the_limit);

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
