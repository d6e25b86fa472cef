//! The HTTP exchange, specified once and checked on all four (client protocol × cluster
//! protocol) pairs: HTTP/1.1 or HTTP/2 (h2c, prior knowledge) clients, toward `protocol = "h1"`
//! or `"h2"` clusters, each on io_uring and on epoll (`name::{h1_h1,h1_h2,h2_h1,h2_h2}::{uring,
//! epoll}`). The behaviour is the same on every pair:
//!
//! 1. a stale pooled connection (closed under the next request, or, toward HTTP/2, refusing the
//!    next stream) costs the client nothing: an idempotent request is sent again, once, on a
//!    fresh connection;
//! 2. a full pool answers 503 with `x-envoy-overloaded: true` and flag `UO` (gRPC: trailers-only
//!    `grpc-status: 14`);
//! 3. the route timeout is a deadline for the whole exchange: a silent upstream is 504 `UT` (gRPC
//!    `grpc-status: 4`), and a response body still trickling at the deadline is cut off (the
//!    HTTP/1.1 client's connection closes, the HTTP/2 client's stream is reset) and the upstream
//!    request is abandoned;
//! 4. a mirror gets a small body complete, with the `-shadow` host, in the shadow cluster's
//!    protocol; a body over the mirror cap (1 MiB) sends the shadow nothing at all;
//! 5. local replies (no route, direct response, redirect) come in the client's protocol; a gRPC
//!    request without a route gets trailers-only `grpc-status: 12`;
//! 6. gRPC deadlines: a `grpc-timeout` shorter than the route timeout is DEADLINE_EXCEEDED, and
//!    the upstream is told no more time than is left.
//!
//! The upstream is `tests/python/h2_upstream.py` (HTTP/2 and HTTP/1.1 on one port, one event
//! line per connection, request and abandoned response), so every assertion is on what really
//! reached it. One worker, so that consecutive requests share one per-core pool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tests::exchange::{Answer, Call, Pair, call, hold};
use tests::h2::PyServer;
use tests::http::route;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, exchange_pairs, wait_until};

exchange_pairs!(
    stale_connection_closed_under_the_next_request_is_retried_once,
    full_pool_is_503_overloaded_with_flag_uo,
    route_timeout_on_a_silent_upstream_is_504_with_flag_ut,
    route_timeout_cuts_off_a_trickling_response_body,
    mirror_gets_a_small_body_complete_with_the_shadow_host,
    mirror_over_the_cap_sends_the_shadow_nothing,
    local_replies_come_in_the_client_protocol,
);
exchange_pairs!(@h2_clusters stale_connection_refusing_the_next_stream_is_retried_once);
exchange_pairs!(
    @h2_clients
    full_pool_grpc_is_trailers_only_unavailable,
    route_timeout_grpc_is_trailers_only_deadline_exceeded,
    no_route_grpc_is_trailers_only_unimplemented,
);
exchange_pairs!(
    @h2_h2
    grpc_timeout_shorter_than_the_route_is_deadline_exceeded,
    grpc_timeout_sent_upstream_is_what_is_left_of_the_route_timeout,
);

/// The host every routed request uses.
const HOST: &str = "svc.test";
/// Pool limits that one request fills, on either cluster protocol.
const ONE_SLOT: &str = "pool = { max_connections_per_endpoint = 1, max_idle_per_endpoint = 1, max_streams_per_connection = 1 }";
/// The mirror cap.
const MIB: usize = 1024 * 1024;

/// A proxy with one worker, an `http` listener `main`, a virtual host for `svc.test` and
/// `mirror.test` with `routes`, cluster `backend` (the pair's protocol) on an `h2_upstream.py`,
/// `extra` more config, and a JSON access log.
struct Setup {
    proxy: Proxy,
    upstream: PyServer,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start(pair: Pair, driver: Driver, cluster_extra: &str, routes: &str, extra: &str) -> Self {
        let upstream = PyServer::start("h2_upstream.py", &["--name", "primary"]);
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("access.log");
        let config = format!(
            r#"
[telemetry.access_log]
path = "{log}"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "svc"
domains = ["{HOST}", "mirror.test"]
{routes}

[[clusters]]
name = "backend"
endpoints = ["{address}"]
protocol = "{protocol}"
{cluster_extra}
{extra}
"#,
            log = log.display(),
            address = upstream.address(),
            protocol = pair.cluster_protocol(),
        );
        let proxy = Proxy::start(&config, driver, 1);
        Self {
            proxy,
            upstream,
            log,
            _dir: dir,
        }
    }

    /// The catch-all route to `backend`, with `lines` added.
    fn routed(pair: Pair, driver: Driver, cluster_extra: &str, lines: &str) -> Self {
        let routes = route("all", &format!("cluster = \"backend\"\n{lines}"));
        Self::start(pair, driver, cluster_extra, &routes, "")
    }

    fn address(&self) -> SocketAddr {
        self.proxy.listener("main")
    }

    /// One plain request, so that the upstream connection exists before a request whose deadline
    /// is short: the deadline then bounds the wait for the answer, not for a connection.
    fn warm_up(&self, pair: Pair) {
        let warm = self.call(pair, &Call::get(HOST, "/warm"));
        assert_eq!(warm.status, Some(200), "warm-up: {warm:?}");
    }

    fn call(&self, pair: Pair, request: &Call) -> Answer {
        call(pair, self.address(), request)
    }

    /// The access-log entry whose path is `path` (waits for it).
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

/// Waits for `upstream`'s `received` line for `path`; returns its words.
fn received(upstream: &PyServer, path: &str) -> Vec<String> {
    upstream.wait_event("received", |w| w.get(5).map(String::as_str) == Some(path))
}

/// `grpc-timeout` as a duration.
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// === 1. Stale pooled connections ===

/// The upstream answers `path` on a connection's first request; on the next request on the same
/// connection it misbehaves as `event` says. The proxy must send that request again on a fresh
/// connection, once, and the client gets 200 from it.
fn stale_connection_is_retried(pair: Pair, driver: Driver, path: &str, event: &str) {
    let setup = Setup::routed(pair, driver, "", "");
    let first = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(first.status, Some(200), "first request: {first:?}");
    assert_eq!(first.header("x-upstream-conn"), Some("0"), "{first:?}");

    let second = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(
        second.status,
        Some(200),
        "the request on the stale connection was not retried: {second:?}\nupstream:\n{}",
        setup.upstream.stdout()
    );
    assert!(second.complete, "{second:?}");
    assert_eq!(
        second.header("x-upstream-conn"),
        Some("1"),
        "answered on the fresh connection: {second:?}"
    );
    assert_eq!(
        setup.upstream.count(event),
        1,
        "the stale connection was tried once:\n{}",
        setup.upstream.stdout()
    );
    assert_eq!(
        setup.upstream.count("conn"),
        2,
        "one fresh connection for the retry, no more:\n{}",
        setup.upstream.stdout()
    );
}

/// HTTP/1.1 cluster: the connection is closed when the next request arrives on it. HTTP/2
/// cluster: the TCP connection is closed when the next HEADERS arrive.
fn stale_connection_closed_under_the_next_request_is_retried_once(pair: Pair, driver: Driver) {
    stale_connection_is_retried(pair, driver, "/close-if-reused", "dropped");
}

/// HTTP/2 cluster: the next stream on the connection is reset with REFUSED_STREAM (the upstream
/// provably did not process it).
fn stale_connection_refusing_the_next_stream_is_retried_once(pair: Pair, driver: Driver) {
    stale_connection_is_retried(pair, driver, "/refuse-if-reused", "refused-stream");
}

// === 2. Full pool ===

/// One connection and one stream per endpoint, held by a request the upstream never answers:
/// the next request is refused at once with 503, `x-envoy-overloaded: true` and flag `UO`.
fn full_pool_is_503_overloaded_with_flag_uo(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, ONE_SLOT, "");
    let _held = hold(pair, setup.address(), &Call::get(HOST, "/hold"));
    received(&setup.upstream, "/hold");

    let next = setup.call(pair, &Call::get(HOST, "/next"));
    assert_eq!(next.status, Some(503), "{next:?}");
    let entry = setup.log_entry("/next");
    assert_eq!(entry["response_flags"], "UO", "{entry}");
    assert_eq!(entry["status"], 503, "{entry}");
    assert_eq!(
        next.header("x-envoy-overloaded"),
        Some("true"),
        "the overload is marked: {next:?}"
    );
}

/// The same with a gRPC request: trailers-only `grpc-status: 14` (UNAVAILABLE), flag `UO`.
fn full_pool_grpc_is_trailers_only_unavailable(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, ONE_SLOT, "");
    let _held = hold(pair, setup.address(), &Call::get(HOST, "/hold"));
    received(&setup.upstream, "/hold");

    let next = setup.call(pair, &Call::grpc(HOST, "/svc.Echo/Next"));
    assert_eq!(
        next.trailers_only_grpc_status().as_deref(),
        Ok("14"),
        "{next:?}"
    );
    let entry = setup.log_entry("/svc.Echo/Next");
    assert_eq!(entry["response_flags"], "UO", "{entry}");
}

// === 3. The route timeout bounds the whole exchange ===

/// `timeout = "1s"` and an upstream that never answers: 504 and flag `UT`.
fn route_timeout_on_a_silent_upstream_is_504_with_flag_ut(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, "", "timeout = \"1s\"");
    let answer = setup.call(pair, &Call::get(HOST, "/hold"));
    assert_eq!(answer.status, Some(504), "{answer:?}");
    let entry = setup.log_entry("/hold");
    assert_eq!(entry["response_flags"], "UT", "{entry}");
}

/// The same with a gRPC request: trailers-only `grpc-status: 4` (DEADLINE_EXCEEDED), flag `UT`.
fn route_timeout_grpc_is_trailers_only_deadline_exceeded(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, "", "timeout = \"1s\"");
    let answer = setup.call(pair, &Call::grpc(HOST, "/hold"));
    assert_eq!(
        answer.trailers_only_grpc_status().as_deref(),
        Ok("4"),
        "{answer:?}"
    );
    let entry = setup.log_entry("/hold");
    assert_eq!(entry["response_flags"], "UT", "{entry}");
}

/// `timeout = "1s"` and an upstream that sends its response head at once, then its 100-byte
/// body one byte every 200 ms: the client gets the head and then the response is cut off before
/// the body completes (HTTP/1.1: the connection closes; HTTP/2: RST_STREAM), and the upstream
/// sees its request abandoned (its connection closed, or its stream reset).
fn route_timeout_cuts_off_a_trickling_response_body(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, "", "timeout = \"1s\"");
    let answer = setup.call(pair, &Call::get(HOST, "/trickle/100/200"));
    assert_eq!(answer.status, Some(200), "the head arrives: {answer:?}");
    assert!(
        !answer.complete && answer.body_len < 100,
        "the body must be cut off at the route timeout, got {} of 100 bytes, complete: {}",
        answer.body_len,
        answer.complete
    );
    let abort = answer.abort.clone().unwrap_or_default();
    if pair.h2_client() {
        assert!(abort.starts_with("RST_STREAM"), "{answer:?}");
    } else {
        assert!(abort == "closed" || abort == "reset", "{answer:?}");
    }
    let conn = answer
        .header("x-upstream-conn")
        .expect("the upstream's head reached the client")
        .to_owned();
    wait_until(
        PATIENCE,
        "the upstream to see its response abandoned",
        || {
            let stopped = setup
                .upstream
                .events("trickle-stopped")
                .iter()
                .any(|w| w[1] == conn);
            let closed = setup.upstream.events("close").iter().any(|w| w[1] == conn);
            if stopped || closed {
                Ok(())
            } else {
                Err(setup.upstream.stdout())
            }
        },
    );
    assert_eq!(
        setup.upstream.count("trickle-done"),
        0,
        "the upstream sent its whole body:\n{}",
        setup.upstream.stdout()
    );
}

// === 4. Mirroring ===

fn mirrored(pair: Pair, driver: Driver) -> (Setup, PyServer) {
    let shadow = PyServer::start("h2_upstream.py", &["--name", "shadow"]);
    let shadow_cluster = format!(
        "\n[[clusters]]\nname = \"shadow\"\nendpoints = [\"{}\"]\nprotocol = \"{}\"\n",
        shadow.address(),
        pair.cluster_protocol()
    );
    let routes = route(
        "mirrored",
        "cluster = \"backend\"\nmirror = { cluster = \"shadow\", percent = 100 }",
    );
    let setup = Setup::start(pair, driver, "", &routes, &shadow_cluster);
    (setup, shadow)
}

/// A 10 KiB body: the shadow receives the whole body, with `Host` (`:authority`)
/// `mirror.test-shadow`, in the shadow cluster's protocol.
fn mirror_gets_a_small_body_complete_with_the_shadow_host(pair: Pair, driver: Driver) {
    let (setup, shadow) = mirrored(pair, driver);
    let answer = setup.call(pair, &Call::post("mirror.test", "/mirror", 10 * 1024));
    assert_eq!(answer.status, Some(200), "{answer:?}");
    let primary = received(&setup.upstream, "/mirror");
    assert_eq!(primary[7], "10240", "the primary's body: {primary:?}");
    let copy = received(&shadow, "/mirror");
    assert_eq!(copy[3], pair.upstream_protocol(), "protocol: {copy:?}");
    assert_eq!(copy[4], "POST", "{copy:?}");
    assert_eq!(copy[6], "mirror.test-shadow", "host: {copy:?}");
    assert_eq!(copy[7], "10240", "the mirrored body: {copy:?}");
}

/// A 2 MiB body is over the 1 MiB mirror cap: the primary gets all of it, and the shadow gets
/// nothing, not even a connection. (A 10 KiB request sent afterwards is the marker: once its
/// copy has reached the shadow, a copy of the first request would have too.)
fn mirror_over_the_cap_sends_the_shadow_nothing(pair: Pair, driver: Driver) {
    let (setup, shadow) = mirrored(pair, driver);
    let big = setup.call(pair, &Call::post("mirror.test", "/big", 2 * MIB));
    assert_eq!(big.status, Some(200), "{big:?}");
    let primary = received(&setup.upstream, "/big");
    assert_eq!(
        primary[7],
        (2 * MIB).to_string(),
        "the primary's body: {primary:?}"
    );

    let marker = setup.call(pair, &Call::post("mirror.test", "/marker", 10 * 1024));
    assert_eq!(marker.status, Some(200), "{marker:?}");
    wait_until(PATIENCE, "the marker's copy at the shadow", || {
        let arrived = shadow
            .events("received")
            .iter()
            .any(|w| w.get(5).map(String::as_str) == Some("/marker"));
        if arrived {
            Ok(())
        } else {
            Err(format!(
                "(the marker was not mirrored, so absence cannot be judged) shadow:\n{}",
                shadow.stdout()
            ))
        }
    });
    let others: Vec<Vec<String>> = shadow
        .events("stream")
        .into_iter()
        .filter(|w| w.get(4).map(String::as_str) != Some("/marker"))
        .collect();
    assert!(
        others.is_empty() && shadow.count("conn") == 1,
        "the shadow saw more than the marker (a copy of the over-cap request):\n{}",
        shadow.stdout()
    );
}

// === 5. Local replies ===

/// No route (404, `text/plain` body, `x-request-id`), a direct response and a redirect, each
/// answered by the proxy in the client's protocol, the same on every pair.
fn local_replies_come_in_the_client_protocol(pair: Pair, driver: Driver) {
    let routes = [
        route(
            "direct",
            "match = { path_exact = \"/direct\" }\ndirect_response = { status = 200, body = \"pong\\n\" }",
        ),
        route(
            "old",
            "match = { path_exact = \"/old\" }\nredirect = { status = 301, path = \"/new\" }",
        ),
        route(
            "up",
            "match = { path_prefix = \"/up\" }\ncluster = \"backend\"",
        ),
    ]
    .concat();
    let setup = Setup::start(pair, driver, "", &routes, "");

    let none = setup.call(pair, &Call::get("nowhere.test", "/x"));
    assert_eq!(none.status, Some(404), "{none:?}");
    assert!(
        none.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{none:?}"
    );
    assert_eq!(none.text(), "no route\n", "{none:?}");
    assert!(
        none.header("x-request-id").is_some_and(|id| !id.is_empty()),
        "{none:?}"
    );
    assert!(none.complete, "{none:?}");

    let direct = setup.call(pair, &Call::get(HOST, "/direct"));
    assert_eq!(direct.status, Some(200), "{direct:?}");
    assert_eq!(direct.text(), "pong\n", "{direct:?}");
    assert!(direct.complete, "{direct:?}");

    let redirect = setup.call(pair, &Call::get(HOST, "/old"));
    assert_eq!(redirect.status, Some(301), "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some("http://svc.test/new"),
        "{redirect:?}"
    );
    assert!(redirect.complete, "{redirect:?}");
    assert_eq!(
        setup.upstream.count("conn"),
        0,
        "nothing reached the upstream"
    );
}

/// A gRPC request without a route: trailers-only `grpc-status: 12` (UNIMPLEMENTED, today's
/// mapping of 404 in `grpc::status_for_http`).
fn no_route_grpc_is_trailers_only_unimplemented(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, "", "");
    let answer = setup.call(pair, &Call::grpc("nowhere.test", "/nowhere.Svc/Call"));
    assert_eq!(
        answer.trailers_only_grpc_status().as_deref(),
        Ok("12"),
        "{answer:?}"
    );
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
}

// === 6. gRPC deadlines ===

/// `grpc-timeout: 200m` under a 10 s route timeout, to an upstream that never answers:
/// DEADLINE_EXCEEDED, and the upstream was told at most 200 ms.
fn grpc_timeout_shorter_than_the_route_is_deadline_exceeded(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, "", "timeout = \"10s\"");
    setup.warm_up(pair);
    let answer = setup.call(
        pair,
        &Call::grpc(HOST, "/hold").header("grpc-timeout", "200m"),
    );
    assert_eq!(
        answer.trailers_only_grpc_status().as_deref(),
        Ok("4"),
        "{answer:?}"
    );
    let seen = received(&setup.upstream, "/hold");
    let sent = grpc_timeout(&seen[8]);
    assert!(
        sent.is_some_and(|t| t <= Duration::from_millis(200)),
        "the upstream was told grpc-timeout {:?}, more than the client's 200m or none",
        seen[8]
    );
}

/// `grpc-timeout: 10S` under a 1 s route timeout: the deadline is the route's, and the upstream
/// is told at most the 1 s that is left, not the client's 10 s.
fn grpc_timeout_sent_upstream_is_what_is_left_of_the_route_timeout(pair: Pair, driver: Driver) {
    let setup = Setup::routed(pair, driver, "", "timeout = \"1s\"");
    setup.warm_up(pair);
    let answer = setup.call(
        pair,
        &Call::grpc(HOST, "/hold").header("grpc-timeout", "10S"),
    );
    assert_eq!(
        answer.trailers_only_grpc_status().as_deref(),
        Ok("4"),
        "{answer:?}"
    );
    let seen = received(&setup.upstream, "/hold");
    let sent = grpc_timeout(&seen[8]);
    assert!(
        sent.is_some_and(|t| t <= Duration::from_secs(1)),
        "the upstream was told grpc-timeout {:?}, more than the 1 s left of the route timeout",
        seen[8]
    );
}
