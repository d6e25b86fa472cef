//! gRPC through the proxy with grpcio on both ends (`tests/python/grpc_echo.py`): unary and
//! streaming calls, status and trailing metadata, a 10,000-message bidirectional stream to a slow
//! consumer with the proxy's memory bounded, deadlines, client cancellation reaching the server,
//! and the proxy's own gRPC answers (trailers-only, with `grpc-status` 14, 12 and 4). Every test
//! runs on io_uring and on epoll.

use std::time::Duration;

use serde_json::Value;
use tests::h2::{MIB, PyServer, RssSampler, rss, run_json};
use tests::upstream::refused_address;
use tests::{Driver, Proxy, both_drivers};

/// Time allowed for one client run.
const RUN: Duration = Duration::from_secs(90);
/// The most the proxy's resident memory may grow while a bidirectional stream pushes 160 MiB at
/// a consumer that stops reading for a while: flow control must hold the data back upstream.
const MAX_RSS_GROWTH: u64 = 64 * MIB;
/// How soon a client's cancel must have reached the server. Generous: a behaviour bound on a
/// loaded machine, not a latency measurement.
const CANCEL_BOUND: Duration = Duration::from_secs(5);
/// The gRPC service's path prefix.
const SERVICE: &str = "/ringmesh.test.Echo";

both_drivers!(
    unary_and_streaming_calls_pass_through,
    error_status_details_and_trailing_metadata_reach_the_client,
    bidi_10k_messages_to_a_slow_consumer_keep_proxy_memory_bounded,
    deadline_expiry_is_reported_and_cancels_the_server_call,
    client_cancel_reaches_the_server,
    local_replies_are_trailers_only_with_grpc_status,
);

/// The proxy in front of a gRPC server: `SERVICE` routes to it; `/down.Service` to a refused
/// address; anything else has no route.
fn grpc_proxy(driver: Driver) -> (PyServer, Proxy) {
    let server = PyServer::start("grpc_echo.py", &["server"]);
    let down = refused_address();
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
name = "echo"
match = {{ path_prefix = "{SERVICE}" }}
cluster = "echo"

[[virtual_hosts.routes]]
name = "down"
match = {{ path_prefix = "/down.Service" }}
cluster = "down"

[[clusters]]
name = "echo"
endpoints = ["{echo}"]
protocol = "h2"

[[clusters]]
name = "down"
endpoints = ["{down}"]
protocol = "h2"
"#,
        echo = server.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    (server, proxy)
}

fn grpc_client(proxy: &Proxy, scenario: &str, args: &[&str]) -> Value {
    let port = proxy.listener("main").port().to_string();
    let mut all = vec!["client", port.as_str(), scenario];
    all.extend_from_slice(args);
    run_json("grpc_echo.py", &all, RUN)
}

fn unary_and_streaming_calls_pass_through(driver: Driver) {
    let (_server, proxy) = grpc_proxy(driver);

    let unary = grpc_client(&proxy, "unary", &["--size", "100000"]);
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["payload_match"], true, "{unary}");
    assert_eq!(unary["seq"], 7, "{unary}");
    assert_eq!(unary["initial_metadata"]["x-initial"], "yes", "{unary}");
    assert_eq!(
        unary["trailing_metadata"]["x-trailer"], "unary-done",
        "trailing metadata reached the client: {unary}"
    );
    assert_eq!(
        unary["trailing_metadata"]["x-client-echo"], "abc",
        "request metadata reached the server: {unary}"
    );

    let server_stream = grpc_client(
        &proxy,
        "server-stream",
        &["--count", "1000", "--size", "1024"],
    );
    assert_eq!(server_stream["code"], "OK", "{server_stream}");
    assert_eq!(server_stream["received"], 1000, "{server_stream}");
    assert_eq!(server_stream["in_order"], true, "{server_stream}");

    let client_stream = grpc_client(
        &proxy,
        "client-stream",
        &["--count", "1000", "--size", "1024"],
    );
    assert_eq!(client_stream["code"], "OK", "{client_stream}");
    assert_eq!(client_stream["count"], 1000, "{client_stream}");
    assert_eq!(client_stream["digest_match"], true, "{client_stream}");

    let stats = proxy.stats();
    assert_eq!(
        stats.listener("main")["http2"]["streams"],
        3,
        "{:#}",
        stats.0
    );
}

/// A server that aborts with INVALID_ARGUMENT and a message that needs percent-encoding (a
/// `%`, a non-ASCII character, quotes): code, message and trailing metadata arrive unchanged.
fn error_status_details_and_trailing_metadata_reach_the_client(driver: Driver) {
    let (_server, proxy) = grpc_proxy(driver);
    let fail = grpc_client(&proxy, "fail", &[]);
    assert_eq!(fail["code"], "INVALID_ARGUMENT", "{fail}");
    assert_eq!(fail["details"], fail["expected_details"], "{fail}");
    assert_eq!(
        fail["trailing_metadata"]["x-failure-detail"], "on purpose",
        "{fail}"
    );
}

/// 10,000 requests up and 10,000 answers of 16 KiB (160 MiB) down one bidirectional stream,
/// while the client stops reading for 2 s after the 100th answer: every message arrives in
/// order, and the proxy's resident memory grows by less than `MAX_RSS_GROWTH` because
/// flow control, not the proxy, holds back what the consumer does not read.
fn bidi_10k_messages_to_a_slow_consumer_keep_proxy_memory_bounded(driver: Driver) {
    let (server, proxy) = grpc_proxy(driver);
    // Warm up: the first call allocates the pools and buffers a steady proxy has.
    let warm = grpc_client(&proxy, "unary", &["--size", "1000"]);
    assert_eq!(warm["code"], "OK", "{warm}");
    let before = rss(proxy.pid());
    let sampler = RssSampler::start(proxy.pid());
    let bidi = grpc_client(
        &proxy,
        "bidi",
        &[
            "--count",
            "10000",
            "--size",
            "16384",
            "--stall-after",
            "100",
            "--stall",
            "2",
        ],
    );
    let peak = sampler.peak();
    assert_eq!(bidi["code"], "OK", "{bidi}");
    assert_eq!(bidi["received"], 10000, "{bidi}");
    assert_eq!(bidi["in_order"], true, "{bidi}");
    server.wait_event("bidi-done", |w| {
        w.get(1).map(String::as_str) == Some("10000")
    });
    let growth = peak.saturating_sub(before);
    eprintln!(
        "bidi 10k x 16 KiB, 2 s stall: proxy RSS {} KiB before, {} KiB peak, growth {} KiB",
        before / 1024,
        peak / 1024,
        growth / 1024
    );
    assert!(
        growth < MAX_RSS_GROWTH,
        "the proxy's RSS grew by {} MiB (from {} MiB to {} MiB) during the stream",
        growth / MIB,
        before / MIB,
        peak / MIB
    );
}

/// A call with a 500 ms deadline to a method that takes 5 s: the client gets DEADLINE_EXCEEDED
/// (the proxy enforces `grpc-timeout` too), and the server sees its call end early.
fn deadline_expiry_is_reported_and_cancels_the_server_call(driver: Driver) {
    let (server, proxy) = grpc_proxy(driver);
    let result = grpc_client(
        &proxy,
        "deadline",
        &["--sleep-ms", "5000", "--deadline-ms", "500"],
    );
    assert_eq!(result["code"], "DEADLINE_EXCEEDED", "{result}");
    assert!(
        result["elapsed"].as_f64().unwrap_or(f64::MAX) < 4.0,
        "the deadline ended the call well before the server's 5 s: {result}"
    );
    server.wait_event("cancelled", |w| {
        w.get(1).map(String::as_str) == Some("Sleep")
    });
}

/// The client cancels a server-streaming call after its first message: the server's context
/// turns inactive within `CANCEL_BOUND` (the proxy passes the RST_STREAM on).
fn client_cancel_reaches_the_server(driver: Driver) {
    let (server, proxy) = grpc_proxy(driver);
    let result = grpc_client(&proxy, "cancel", &["--sleep-ms", "20000"]);
    assert_eq!(result["first_seq"], 0, "{result}");
    assert_eq!(result["code"], "CANCELLED", "{result}");
    let cancelled_at = result["cancelled_at"].as_f64().expect("cancel time");
    let seen = server.wait_event("cancelled", |w| {
        w.get(1).map(String::as_str) == Some("SleepStream")
    });
    let seen_at: f64 = seen[2].parse().expect("the server's time");
    let delay = Duration::from_secs_f64((seen_at - cancelled_at).max(0.0));
    eprintln!("client cancel reached the server after {delay:?}");
    assert!(
        delay <= CANCEL_BOUND,
        "the server saw the cancel {delay:?} after the client sent it"
    );
}

/// Protobuf for `SleepRequest { ms: 5000 }` in a gRPC frame (uncompressed, 3 bytes).
const SLEEP_5S_FRAME: &str = "0000000003088827";

/// The proxy's own answers to gRPC requests are trailers-only responses (HTTP 200,
/// `content-type: application/grpc`, `grpc-status` in the one HEADERS frame, no body): 14
/// UNAVAILABLE when the upstream is down, 12 UNIMPLEMENTED when no route matches, 4
/// DEADLINE_EXCEEDED when `grpc-timeout` passes; grpcio clients read them as such.
fn local_replies_are_trailers_only_with_grpc_status(driver: Driver) {
    let (server, proxy) = grpc_proxy(driver);
    let port = proxy.listener("main").port().to_string();
    let raw = |path: &str, extra: &[&str]| {
        let mut args = vec![
            port.as_str(),
            "--method",
            "POST",
            "--path",
            path,
            "--header",
            "content-type:application/grpc",
            "--header",
            "te:trailers",
            "--body-hex",
            SLEEP_5S_FRAME,
        ];
        args.extend_from_slice(extra);
        run_json("h2_client.py", &args, RUN)
    };
    let header = |result: &Value, name: &str| -> Option<String> {
        result["headers"].as_array()?.iter().find_map(|pair| {
            (pair[0] == name).then(|| pair[1].as_str().unwrap_or_default().to_owned())
        })
    };
    for (path, extra, status) in [
        ("/down.Service/Call", &[][..], "14"),
        ("/nowhere.Service/Call", &[][..], "12"),
        (
            "/ringmesh.test.Echo/Sleep",
            &["--header", "grpc-timeout:300m"][..],
            "4",
        ),
    ] {
        let result = raw(path, extra);
        assert_eq!(result["status"], 200, "{path}: {result}");
        assert_eq!(
            header(&result, "grpc-status").as_deref(),
            Some(status),
            "{path}: {result}"
        );
        assert_eq!(
            header(&result, "content-type").as_deref(),
            Some("application/grpc"),
            "{path}: {result}"
        );
        assert!(
            header(&result, "grpc-message").is_some_and(|m| !m.is_empty()),
            "{path}: {result}"
        );
        assert_eq!(result["body_len"], 0, "trailers-only: no body: {result}");
        assert_eq!(
            result["trailers"],
            serde_json::json!([]),
            "trailers-only: one HEADERS frame: {result}"
        );
        assert_eq!(result["reset"], Value::Null, "{path}: {result}");
    }
    // The call the proxy gave up on was cancelled upstream.
    server.wait_event("cancelled", |w| {
        w.get(1).map(String::as_str) == Some("Sleep")
    });

    // grpcio reads the same answers as statuses.
    let unavailable = grpc_client(&proxy, "call", &["--method", "/down.Service/Call"]);
    assert_eq!(unavailable["code"], "UNAVAILABLE", "{unavailable}");
    let unimplemented = grpc_client(&proxy, "call", &["--method", "/nowhere.Service/Call"]);
    assert_eq!(unimplemented["code"], "UNIMPLEMENTED", "{unimplemented}");
    assert_eq!(unimplemented["details"], "no route", "{unimplemented}");
}
