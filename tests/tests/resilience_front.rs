//! The request-admission policies of issue 11 through the real binary, on io_uring and on epoll:
//! local rate limits (`listeners[].rate_limit`, `virtual_hosts[].rate_limit`,
//! `routes[].rate_limit`, with an optional `key`) and fault injection (`routes[].fault`).
//!
//! 1. **The limit holds for the process**: 100 requests/s (burst 100) with two workers and every
//!    request on one connection (so on one worker), offered at 300/s for 10 s by h2load over
//!    HTTP/1.1 and over HTTP/2: the admitted count is within ±10 % of 100 × 10 + 100.
//! 2. **Over the limit** a request gets 429 with `x-ratelimit-limit`, `x-ratelimit-remaining`
//!    and `x-ratelimit-reset`, and the access log says `RL`, on all four protocol pairs; a gRPC
//!    client (grpcio) gets `RESOURCE_EXHAUSTED`; the refusals are in `/stats/prometheus`.
//! 3. **Keys**: `key = "client_ip"` gives clients on 127.0.0.2 and 127.0.0.3 a bucket each;
//!    `key = { header = "x-user" }` one per header value; a virtual host's limit covers all its
//!    routes.
//! 4. **tcp listeners** limit new connections per second: over the limit a connection is closed
//!    at accept, counted in `connections_rejected_total` and `ringmesh_rate_limited_total`.
//! 5. **Fault abort** at 10 % over 2,000 requests aborts within a binomial 5-sigma bound of 200,
//!    with flag `FI` and `ringmesh_fault_aborts_total` equal to the aborts seen; a gRPC client
//!    gets the configured `grpc_status`, trailers-only.
//! 6. **Fault delay**: a delayed request takes at least the delay (behaviour, not speed), with
//!    flag `DI`; a delay does not count against the route timeout.
//! 7. **Header-gated fault**: only requests with the header are aborted.
//! 8. **Live on reload**: a limit added by a reload refuses the next request; removing it lets
//!    the next one through.
//!
//! Nothing asserts how fast anything went: counts are compared with the configured rate and with
//! statistical bounds, and the delay test only asserts a lower bound the proxy itself imposes.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::exchange::{Call, Extra, Pair, Setup};
use tests::h2::{H2load, PyServer, h2load, run_json};
use tests::http::{Client, cluster, http_listener, request_bytes, route, virtual_host};
use tests::upstream::Upstream;
use tests::{Driver, Proxy, both_drivers, exchange_pairs, tcp_listener};

both_drivers!(
    rate_limit_holds_for_the_process_over_one_http1_connection,
    rate_limit_holds_for_the_process_over_one_http2_connection,
    rate_limit_holds_for_the_process_with_connections_on_both_workers,
    grpc_clients_get_resource_exhausted_and_the_fault_grpc_status,
    client_ip_key_gives_each_client_its_own_bucket,
    header_key_and_virtual_host_limits,
    tcp_listener_limits_new_connections_per_second,
    reload_adds_and_removes_a_limit_for_the_next_request,
);
exchange_pairs!(
    over_the_limit_is_429_with_ratelimit_headers_and_flag_rl,
    fault_abort_at_10_percent_over_2000_requests,
    fault_delay_holds_the_request_and_is_flagged_di,
    header_gated_fault_hits_only_requests_with_the_header,
);
exchange_pairs!(@h2_clients an_http2_client_that_leaves_during_a_delay_is_not_forwarded);

/// Time allowed for one client run.
const RUN: Duration = Duration::from_secs(90);

// === 1. The limit holds for the process ===

/// The configured rate and burst, and how long the load runs.
const RATE: u64 = 100;
const BURST: u64 = 100;
const SECONDS: u64 = 10;

/// `h2_upstream.py` (HTTP/1.1 cluster) and a two-worker proxy whose only route, `limited`, allows
/// [`RATE`] requests/s with a burst of [`BURST`].
fn limited_proxy(driver: Driver) -> (Proxy, PyServer) {
    let upstream = PyServer::start("h2_upstream.py", &["--name", "primary"]);
    let config = [
        http_listener("main", ""),
        cluster("backend", &[upstream.address()], "protocol = \"h1\""),
        virtual_host(
            "all",
            &["*"],
            &route(
                "limited",
                &format!(
                    "cluster = \"backend\"\nrate_limit = {{ requests_per_second = {RATE}, burst = {BURST} }}"
                ),
            ),
        ),
    ]
    .concat();
    (Proxy::start(&config, driver, 2), upstream)
}

/// h2load arguments for one connection offering `rps` requests/s for `seconds` to `url`.
fn load_args(h2: bool, seconds: u64, rps: u64, url: &str) -> Vec<String> {
    let mut args: Vec<String> = ["-c", "1", "-m", "1", "-D"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend([seconds.to_string(), "--rps".into(), rps.to_string()]);
    if !h2 {
        args.push("--h1".into());
    }
    args.push(url.to_owned());
    args
}

/// Panics unless `admitted` is within ±10 % of `RATE × seconds + BURST`.
fn assert_admitted(admitted: u64, seconds: u64, output: &str) {
    let expected = RATE * seconds + BURST;
    let (low, high) = (expected * 9 / 10, expected * 11 / 10);
    assert!(
        (low..=high).contains(&admitted),
        "admitted {admitted}, expected {expected} ± 10 % ({low}..={high}); h2load:\n{output}"
    );
}

/// The limit loaded for [`SECONDS`] s at three times the rate over ONE connection (`h2` false:
/// HTTP/1.1) by h2load, so one worker serves everything: the admitted (2xx) count must be within
/// ±10 % of `RATE × SECONDS + BURST` (a limit split between the two workers would admit about
/// half), and the refusals are counted as the client saw them.
fn rate_limit_holds(driver: Driver, h2: bool) {
    let (proxy, _upstream) = limited_proxy(driver);
    let url = format!("http://{}/", proxy.listener("main"));
    let args = load_args(h2, SECONDS, RATE * 3, &url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h2load(&args, RUN);
    assert_admitted(run.status[0], SECONDS, &run.output);
    let refused = run.status[2];
    assert!(refused > 0, "the load exceeded the limit: {}", run.output);
    // Every request came over one connection, so one worker served them all.
    let accepted = proxy.stats().per_worker("main", "accepted");
    assert_eq!(
        accepted.iter().filter(|&&n| n > 0).count(),
        1,
        "one connection, one worker: {accepted:?}"
    );
    let metrics = proxy.metrics();
    let counted = metrics.value(
        "ringmesh_rate_limited_total",
        &[("scope", "route"), ("name", "limited")],
    );
    assert_eq!(
        counted as u64, refused,
        "refusals counted as the client saw them"
    );
}

/// The same limit with load on both workers: two h2load processes at once, pinned to CPU 0 and
/// CPU 1 (each listening socket takes the connections whose packets its CPU handles,
/// `SO_INCOMING_CPU`), each offering twice the rate over one connection for 5 s. Both workers
/// serve requests, and together they admit `RATE × 5 + BURST` ± 10 %: the bucket is one for
/// the process, not one per worker (which would admit about twice that).
fn rate_limit_holds_for_the_process_with_connections_on_both_workers(driver: Driver) {
    const SPREAD_SECONDS: u64 = 5;
    let (proxy, _upstream) = limited_proxy(driver);
    let url = format!("http://{}/", proxy.listener("main"));
    let runs: Vec<_> = ["0", "1"]
        .iter()
        .map(|cpu| {
            let mut command = Command::new(tests::tool("taskset"));
            command.args(["-c", cpu]).arg(tests::tool("h2load"));
            command.args(load_args(false, SPREAD_SECONDS, RATE * 2, &url));
            tests::h2::Background::start(command)
        })
        .collect();
    let outputs: Vec<_> = runs.into_iter().map(|run| run.finish(RUN)).collect();
    let parsed: Vec<H2load> = outputs.iter().map(|o| H2load::parse(&o.stdout)).collect();
    let all: String = parsed.iter().map(|p| p.output.as_str()).collect();
    let admitted: u64 = parsed.iter().map(|p| p.status[0]).sum();
    let accepted = proxy.stats().per_worker("main", "accepted");
    assert_eq!(accepted, [1, 1], "one connection on each worker");
    assert_admitted(admitted, SPREAD_SECONDS, &all);
}

fn rate_limit_holds_for_the_process_over_one_http1_connection(driver: Driver) {
    rate_limit_holds(driver, false);
}

fn rate_limit_holds_for_the_process_over_one_http2_connection(driver: Driver) {
    rate_limit_holds(driver, true);
}

// === 2. Over the limit ===

/// What curl saw for one request: status and the three rate-limit headers.
#[derive(Debug)]
struct Seen {
    status: u16,
    limit: String,
    remaining: String,
    reset: String,
}

/// Requests each of `urls` over one connection and returns what each got, in `urls` order:
/// HTTP/1.1 through curl (one request after the other, keep-alive), HTTP/2 (`h2`) through nghttp
/// (all at once, multiplexed: the order in which the proxy admits them is not fixed). `headers`
/// (`name: value`) go on every request; `curl_extra` are more curl arguments.
fn sequence(h2: bool, urls: &[String], headers: &[&str], curl_extra: &[&str]) -> Vec<Seen> {
    if h2 {
        return nghttp(urls, headers);
    }
    let mut command = Command::new(tests::tool("curl"));
    command.args(["-sS", "--noproxy", "*", "--max-time", "60", "--http1.1"]);
    command.args(curl_extra);
    for header in headers {
        command.args(["-H", header]);
    }
    command.args([
        "-w",
        "%{http_code}|%header{x-ratelimit-limit}|%header{x-ratelimit-remaining}|%header{x-ratelimit-reset}\\n",
    ]);
    for url in urls {
        command.args(["-o", "/dev/null", url]);
    }
    let output = command.output().expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let seen: Vec<Seen> = text
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split('|').collect();
            let part = |i: usize| parts.get(i).map_or_else(String::new, |p| p.to_string());
            Seen {
                status: parts.first().and_then(|s| s.parse().ok()).unwrap_or(0),
                limit: part(1),
                remaining: part(2),
                reset: part(3),
            }
        })
        .collect();
    assert_eq!(
        seen.len(),
        urls.len(),
        "curl: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    seen
}

/// `nghttp -v -n` (h2c with prior knowledge, one connection, the requests multiplexed): the
/// response headers of each stream, in `urls` order (stream ids ascend with the URLs).
fn nghttp(urls: &[String], headers: &[&str]) -> Vec<Seen> {
    let mut command = Command::new(tests::tool("nghttp"));
    command.args(["-v", "-n", "-t", "60"]);
    for header in headers {
        command.args(["-H", header]);
    }
    command.args(urls);
    let output = command.output().expect("run nghttp");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut streams: std::collections::BTreeMap<u32, Seen> = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.split_once("recv (stream_id=").map(|(_, r)| r) else {
            continue;
        };
        let Some((id, field)) = rest.split_once(") ") else {
            continue;
        };
        let Ok(id) = id.parse::<u32>() else {
            continue;
        };
        let Some((name, value)) = field.split_once(": ") else {
            continue;
        };
        let seen = streams.entry(id).or_insert_with(|| Seen {
            status: 0,
            limit: String::new(),
            remaining: String::new(),
            reset: String::new(),
        });
        match name {
            ":status" => seen.status = value.parse().unwrap_or(0),
            "x-ratelimit-limit" => seen.limit = value.to_owned(),
            "x-ratelimit-remaining" => seen.remaining = value.to_owned(),
            "x-ratelimit-reset" => seen.reset = value.to_owned(),
            _ => {}
        }
    }
    let seen: Vec<Seen> = streams.into_values().collect();
    assert_eq!(
        seen.len(),
        urls.len(),
        "nghttp: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    seen
}

/// How many of `seen` got `status`.
fn count(seen: &[Seen], status: u16) -> usize {
    seen.iter().filter(|s| s.status == status).count()
}

/// Statuses of `seen`.
fn statuses(seen: &[Seen]) -> Vec<u16> {
    seen.iter().map(|s| s.status).collect()
}

/// A route limited to 1 request/s with a burst of 2: of five requests in a row on one
/// connection (HTTP/2: at once) two pass and three — well within the second a token takes to
/// come back — get 429 with the headers; the access log flags exactly those `RL`.
fn over_the_limit_is_429_with_ratelimit_headers_and_flag_rl(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "rate_limit = { requests_per_second = 1, burst = 2 }",
            ..Extra::default()
        },
    );
    let urls: Vec<String> = (1..=5)
        .map(|i| format!("http://{}/r{i}", setup.address()))
        .collect();
    let seen = sequence(pair.h2_client(), &urls, &[], &[]);
    assert_eq!((count(&seen, 200), count(&seen, 429)), (2, 3), "{seen:?}");
    if !pair.h2_client() {
        // One after the other: the first two pass.
        assert_eq!(statuses(&seen)[..2], [200, 200], "{seen:?}");
    }
    for s in seen.iter().filter(|s| s.status == 429) {
        assert_eq!(s.limit, "1, 1;w=1;burst=2", "{seen:?}");
        assert_eq!(s.remaining, "0", "{seen:?}");
        assert_eq!(s.reset, "1", "{seen:?}");
    }
    for (i, s) in seen.iter().enumerate() {
        let entry = setup.log_entry(&format!("/r{}", i + 1));
        assert_eq!(entry["status"], s.status, "{entry}");
        let flags = if s.status == 429 { "RL" } else { "-" };
        assert_eq!(entry["response_flags"], flags, "{entry}");
    }
    let metrics = setup.proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_rate_limited_total",
            &[("scope", "route"), ("name", "all")]
        ),
        3.0
    );
}

// === gRPC ===

/// A gRPC proxy whose `Unary` method is limited to 1 call/s (burst 1) and whose `Fail`-free
/// `/aborted.Service` route aborts every call with gRPC status 9 and `/derived.Service` every
/// call with HTTP 503 (no `grpc_status`: derived, UNAVAILABLE). grpcio sees
/// `RESOURCE_EXHAUSTED` for the second of two calls in a row, and the configured statuses.
fn grpc_clients_get_resource_exhausted_and_the_fault_grpc_status(driver: Driver) {
    let server = PyServer::start("grpc_echo.py", &["server"]);
    let config = format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "limited"
match = {{ path_exact = "/ringmesh.test.Echo/Unary" }}
cluster = "echo"
rate_limit = {{ requests_per_second = 1, burst = 1 }}

[[virtual_hosts.routes]]
name = "aborted"
match = {{ path_prefix = "/aborted.Service" }}
cluster = "echo"
fault.abort = {{ percent = 100.0, status = 500, grpc_status = 9 }}

[[virtual_hosts.routes]]
name = "derived"
match = {{ path_prefix = "/derived.Service" }}
cluster = "echo"
fault.abort = {{ percent = 100.0, status = 503 }}

[[clusters]]
name = "echo"
endpoints = ["{echo}"]
protocol = "h2"
"#,
        echo = server.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let port = proxy.listener("main").port().to_string();
    let client = |method: &str, repeat: &str| -> Value {
        run_json(
            "grpc_echo.py",
            &[
                "client", &port, "call", "--method", method, "--repeat", repeat,
            ],
            RUN,
        )
    };
    let limited = client("/ringmesh.test.Echo/Unary", "3");
    assert_eq!(limited["codes"][0], "OK", "{limited}");
    assert_eq!(limited["codes"][1], "RESOURCE_EXHAUSTED", "{limited}");
    assert_eq!(limited["details"], "local_rate_limited", "{limited}");
    let aborted = client("/aborted.Service/Call", "1");
    assert_eq!(aborted["code"], "FAILED_PRECONDITION", "{aborted}");
    assert_eq!(aborted["details"], "fault filter abort", "{aborted}");
    let derived = client("/derived.Service/Call", "1");
    assert_eq!(derived["code"], "UNAVAILABLE", "{derived}");
    // Trailers-only: HTTP 200, grpc-status in the one HEADERS frame, no body.
    let raw = run_json(
        "h2_client.py",
        &[
            &port,
            "--method",
            "POST",
            "--path",
            "/aborted.Service/Call",
            "--header",
            "content-type:application/grpc",
            "--header",
            "te:trailers",
        ],
        RUN,
    );
    assert_eq!(raw["status"], 200, "{raw}");
    let grpc_status = raw["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|p| p[0] == "grpc-status"))
        .map(|p| p[1].clone());
    assert_eq!(grpc_status, Some(Value::from("9")), "{raw}");
    assert_eq!(raw["body_len"], 0, "{raw}");
    assert_eq!(raw["trailers"], serde_json::json!([]), "{raw}");
}

// === 3. Keys ===

/// `h2_upstream.py` (HTTP/1.1 cluster `backend`) and a two-worker proxy in front: `listener_lines`
/// in the listener `main`, `vhost_lines` in its one virtual host, then its `routes`.
fn keyed_proxy(
    driver: Driver,
    listener_lines: &str,
    vhost_lines: &str,
    routes: &str,
) -> (Proxy, PyServer) {
    let upstream = PyServer::start("h2_upstream.py", &["--name", "primary"]);
    let config = [
        http_listener("main", listener_lines),
        cluster("backend", &[upstream.address()], "protocol = \"h1\""),
        format!("\n[[virtual_hosts]]\nname = \"all\"\ndomains = [\"*\"]\n{vhost_lines}\n{routes}"),
    ]
    .concat();
    (Proxy::start(&config, driver, 2), upstream)
}

/// `key = "client_ip"`, 1 request/s, burst 2: a client on 127.0.0.2 is refused after two
/// requests while one on 127.0.0.3 still gets its own two; the refusals are per address.
fn client_ip_key_gives_each_client_its_own_bucket(driver: Driver) {
    let (proxy, _upstream) = keyed_proxy(
        driver,
        "",
        "",
        &route(
            "keyed",
            "cluster = \"backend\"\nrate_limit = { requests_per_second = 1, burst = 2, key = \"client_ip\" }",
        ),
    );
    let urls: Vec<String> = (1..=4)
        .map(|i| format!("http://{}/ip{i}", proxy.listener("main")))
        .collect();
    let first = sequence(false, &urls, &[], &["--interface", "127.0.0.2"]);
    assert_eq!(statuses(&first)[..3], [200, 200, 429], "{first:?}");
    let second = sequence(false, &urls, &[], &["--interface", "127.0.0.3"]);
    assert_eq!(statuses(&second)[..3], [200, 200, 429], "{second:?}");
}

/// `key = { header = "x-user" }` on a route: each user value has its own bucket. A virtual
/// host's limit (1/s, burst 3) covers all its routes together.
fn header_key_and_virtual_host_limits(driver: Driver) {
    let routes = [
        route(
            "per-user",
            "match.path_prefix = \"/user\"\ncluster = \"backend\"\nrate_limit = { requests_per_second = 1, burst = 1, key = { header = \"x-user\" } }",
        ),
        route("other", "cluster = \"backend\""),
    ]
    .concat();
    let (proxy, _upstream) = keyed_proxy(driver, "", "", &routes);
    let address = proxy.listener("main");
    let users = |user: &str| {
        let urls: Vec<String> = (1..=3)
            .map(|i| format!("http://{address}/user/{i}"))
            .collect();
        let header = format!("x-user: {user}");
        let seen = sequence(true, &urls, &[&header], &[]);
        (count(&seen, 200), count(&seen, 429))
    };
    // Burst 1: of three requests at once, one passes — for each user.
    assert_eq!(users("alice"), (1, 2));
    assert_eq!(users("bob"), (1, 2));
    // Another route is not limited.
    let others: Vec<String> = (1..=5).map(|i| format!("http://{address}/o{i}")).collect();
    assert_eq!(statuses(&sequence(false, &others, &[], &[])), [200; 5]);

    // A virtual host limit: 3 requests in a burst, whatever the route.
    let (proxy, _upstream) = keyed_proxy(
        driver,
        "",
        "rate_limit = { requests_per_second = 1, burst = 3 }",
        &[
            route("a", "match.path_prefix = \"/a\"\ncluster = \"backend\""),
            route("b", "cluster = \"backend\""),
        ]
        .concat(),
    );
    let address = proxy.listener("main");
    let urls: Vec<String> = ["/a/1", "/b/1", "/a/2", "/b/2"]
        .iter()
        .map(|p| format!("http://{address}{p}"))
        .collect();
    let seen = sequence(false, &urls, &[], &[]);
    assert_eq!(statuses(&seen), [200, 200, 200, 429], "{seen:?}");
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_rate_limited_total",
            &[("scope", "virtual_host"), ("name", "all")]
        ),
        1.0
    );

    // A listener limit on HTTP requests, across virtual hosts and routes.
    let (proxy, _upstream) = keyed_proxy(
        driver,
        "rate_limit = { requests_per_second = 1, burst = 2 }",
        "",
        &route("any", "cluster = \"backend\""),
    );
    let address = proxy.listener("main");
    let urls: Vec<String> = (1..=3).map(|i| format!("http://{address}/l{i}")).collect();
    let seen = sequence(true, &urls, &[], &[]);
    assert_eq!((count(&seen, 200), count(&seen, 429)), (2, 1), "{seen:?}");
}

// === 4. tcp listeners ===

/// A tcp listener limited to 1 connection/s, burst 2, in front of an echo server: of five
/// connections opened in a row the first two echo, the rest are closed at accept without a
/// byte, and both counters say so.
fn tcp_listener_limits_new_connections_per_second(driver: Driver) {
    let echo = Upstream::echo();
    let config = tcp_listener(
        "db",
        &[echo.address()],
        "rate_limit = { requests_per_second = 1, burst = 2 }",
        "",
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("db");
    let mut outcomes = Vec::new();
    let mut streams = Vec::new();
    for i in 0..5u8 {
        let mut stream = tests::client::connect(address);
        let message = [b'm', b'0' + i];
        outcomes.push(tests::client::try_echo(&mut stream, &message).is_ok());
        streams.push(stream);
    }
    assert_eq!(outcomes[..3], [true, true, false], "{outcomes:?}");
    let refused = outcomes.iter().filter(|ok| !**ok).count() as u64;
    proxy.wait_listener_counter("db", "rejected", refused);
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_rate_limited_total",
            &[("scope", "listener"), ("name", "db")]
        ) as u64,
        refused
    );
}

// === 5. Fault abort ===

/// 10 % abort with 503 over 2,000 requests on one connection (h2load): the 5xx count is within
/// 200 ± 67 (five binomial standard deviations, √(2000 · 0.1 · 0.9) ≈ 13.4), every other
/// request is a 200 from the upstream, and the counter equals the aborts h2load saw.
fn fault_abort_at_10_percent_over_2000_requests(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "fault.abort = { percent = 10.0, status = 503 }",
            ..Extra::default()
        },
    );
    let url = format!("http://{}/", setup.address());
    let mut args = vec!["-n", "2000", "-c", "1", "-m", "1"];
    if !pair.h2_client() {
        args.push("--h1");
    }
    args.push(&url);
    let run = h2load(&args, RUN);
    let aborted = run.status[3];
    assert_eq!(run.status[0] + aborted, 2000, "{}", run.output);
    assert!(
        (133..=267).contains(&aborted),
        "aborted {aborted} of 2000 at 10 %: {}",
        run.output
    );
    let metrics = setup.proxy.metrics();
    assert_eq!(
        metrics.value("ringmesh_fault_aborts_total", &[("route", "all")]) as u64,
        aborted
    );
    // An aborted request is answered by the proxy and flagged FI. At 10 %, 100 tries all
    // passing has probability 0.9^100 < 1e-4.
    let path = (0..100)
        .map(|i| format!("/try{i}"))
        .find(|path| setup.call(pair, &Call::get("svc.test", path)).status == Some(503))
        .expect("an abort in 100 tries at 10 %");
    let entry = setup.log_entry(&path);
    assert_eq!(entry["status"], 503, "{entry}");
    assert_eq!(entry["response_flags"], "FI", "{entry}");
}

// === 6. Fault delay ===

/// A 100 % delay of 600 ms with a route timeout of 400 ms: the request succeeds (the delay does
/// not count against the timeout), takes at least the delay, and is flagged `DI`. A route that
/// answers itself (a direct response) is delayed the same.
fn fault_delay_holds_the_request_and_is_flagged_di(pair: Pair, driver: Driver) {
    const DELAY: Duration = Duration::from_millis(600);
    let direct = virtual_host(
        "direct",
        &["direct.test"],
        &route(
            "direct",
            "direct_response = { status = 202, body = \"here\" }\nfault.delay = { percent = 100.0, fixed = \"600ms\" }",
        ),
    );
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "timeout = \"400ms\"\nfault.delay = { percent = 100.0, fixed = \"600ms\" }",
            more: &direct,
            ..Extra::default()
        },
    );
    for (host, path, status) in [
        ("svc.test", "/delayed", 200),
        ("direct.test", "/direct", 202),
    ] {
        let started = Instant::now();
        let answer = setup.call(pair, &Call::get(host, path));
        let took = started.elapsed();
        assert_eq!(answer.status, Some(status), "{answer:?}");
        assert!(took >= DELAY, "{path} took {took:?}, less than the delay");
        let entry = setup.log_entry(path);
        assert_eq!(entry["response_flags"], "DI", "{entry}");
    }
    let metrics = setup.proxy.metrics();
    for route in ["all", "direct"] {
        assert_eq!(
            metrics.value("ringmesh_fault_delays_total", &[("route", route)]),
            1.0
        );
    }
}

/// A 100 % delay of 2 s: an HTTP/2 client that gives up after 0.3 s (closes its connection)
/// ends the exchange during the delay, so the upstream never sees that request — shown by a
/// second request, sent after the first client left and delayed the same, reaching it alone.
fn an_http2_client_that_leaves_during_a_delay_is_not_forwarded(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "fault.delay = { fixed = \"2s\" }",
            ..Extra::default()
        },
    );
    let port = setup.address().port().to_string();
    let gave_up = run_json(
        "h2_client.py",
        &[&port, "--path", "/left", "--timeout", "0.3"],
        RUN,
    );
    assert_eq!(gave_up["error"], "timed out", "{gave_up}");
    assert_eq!(gave_up["status"], Value::Null, "{gave_up}");
    let after = setup.call(pair, &Call::get("svc.test", "/after"));
    assert_eq!(after.status, Some(200), "{after:?}");
    let paths: Vec<String> = setup
        .upstream
        .events("stream")
        .iter()
        .filter_map(|w| w.get(4).cloned())
        .collect();
    assert_eq!(paths, ["/after"], "{}", setup.upstream.stdout());
    let entry = setup.log_entry("/left");
    assert_eq!(entry["response_flags"], "DC,DI", "{entry}");
}

// === 7. Header-gated fault ===

/// Abort with 503 (no percentage: all requests, as in Istio), only for requests carrying
/// `x-chaos: on`: the others pass.
fn header_gated_fault_hits_only_requests_with_the_header(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "fault = { abort = { status = 503 }, headers = [{ name = \"x-chaos\", exact = \"on\" }] }",
            ..Extra::default()
        },
    );
    let plain = setup.call(pair, &Call::get("svc.test", "/plain"));
    assert_eq!(plain.status, Some(200), "{plain:?}");
    let other = setup.call(
        pair,
        &Call::get("svc.test", "/off").header("x-chaos", "off"),
    );
    assert_eq!(other.status, Some(200), "{other:?}");
    let chaos = setup.call(
        pair,
        &Call::get("svc.test", "/chaos").header("x-chaos", "on"),
    );
    assert_eq!(chaos.status, Some(503), "{chaos:?}");
    assert_eq!(setup.log_entry("/chaos")["response_flags"], "FI");
    assert_eq!(setup.log_entry("/plain")["response_flags"], "-");
}

// === 8. Reload ===

/// No limit; then a reload adds one (1/s, burst 5): on the same keep-alive connection the next
/// five requests pass and the sixth gets 429. A reload that changes the route but not its limit
/// keeps the bucket (carried over by route name): of five more requests at most the tokens that
/// came back during the reload pass — fewer than five, where a fresh bucket would pass all five.
/// A reload removing the limit lets the next requests through.
fn reload_adds_and_removes_a_limit_for_the_next_request(driver: Driver) {
    let upstream = PyServer::start("h2_upstream.py", &["--name", "primary"]);
    let config = |route_lines: &str| {
        [
            http_listener("main", ""),
            cluster("backend", &[upstream.address()], "protocol = \"h1\""),
            virtual_host(
                "all",
                &["*"],
                &route("all", &format!("cluster = \"backend\"\n{route_lines}")),
            ),
        ]
        .concat()
    };
    let proxy = Proxy::start(&config(""), driver, 2);
    let mut client = Client::connect(proxy.listener("main"));
    let mut get = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                client
                    .request(&request_bytes("GET", "/", "svc.test", &[], b""))
                    .status
            })
            .collect()
    };
    assert_eq!(get(3), [200; 3]);
    let limit = "rate_limit = { requests_per_second = 1, burst = 5 }";
    proxy.reload_with_sighup(&config(limit));
    assert_eq!(get(6), [200, 200, 200, 200, 200, 429]);
    proxy.reload_with_sighup(&config(&format!("{limit}\ntimeout = \"30s\"")));
    let after = get(5);
    let passed = after.iter().filter(|&&s| s == 200).count();
    assert!(passed < 5, "the bucket was carried over: {after:?}");
    assert!(after.iter().all(|&s| s == 200 || s == 429), "{after:?}");
    proxy.reload_with_sighup(&config(""));
    assert_eq!(get(3), [200; 3]);
}
