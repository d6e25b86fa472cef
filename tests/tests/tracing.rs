//! Distributed tracing through the real binary, with a real OTLP receiver: a Python collector
//! (`tests/python/otlp_tracing.py receiver`) decodes every export with the reference
//! `opentelemetry-proto` package and prints the spans, which the tests read.
//!
//! - Requests over HTTP/1.1 (raw socket), HTTP/2 (curl, prior knowledge) and gRPC (grpcio) keep
//!   the client's trace: the proxy's server span is the child of the client's span, each
//!   upstream attempt is a client span, child of the server span, and the upstream sees a
//!   `traceparent` whose parent is that client span. Retries are separate client spans with
//!   their attempt number.
//! - B3 in, B3 out; a malformed `traceparent` is replaced, never forwarded.
//! - A reload turns tracing on (headers pass through untouched before).
//! - L4 connections are spans with `l4_spans`.
//! - On an mTLS listener the server span names the client's verified SPIFFE ID.
//! - Export to a stopped collector drops and counts spans while requests keep succeeding.
//!
//! Every test runs on io_uring and on epoll.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tests::h2::{PyServer, run_json};
use tests::pki::Pki;
use tests::upstream::{Upstream, refused_address};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    spans_link_client_proxy_and_upstream_over_http1_http2_and_grpc,
    retries_are_separate_client_spans,
    b3_in_b3_out_and_malformed_context_is_replaced,
    a_reload_turns_tracing_on,
    l4_connections_are_spans_when_enabled,
    the_server_span_names_the_clients_verified_spiffe_id,
    export_to_a_stopped_collector_drops_and_counts_without_stalling_requests,
);

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An HTTP/1.1 upstream that answers each request with the trace headers it received, one
/// `name: value` line each, in its body. `/flaky` answers 503 to every other request (the
/// first, third...).
fn trace_echo() -> Upstream {
    let flaky = Arc::new(AtomicUsize::new(0));
    Upstream::spawn(move |mut stream, _| {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let path = lines
                .next()
                .and_then(|line| line.split(' ').nth(1))
                .unwrap_or_default()
                .to_owned();
            let mut body = String::new();
            for line in lines {
                let name = line
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if name == "traceparent"
                    || name == "tracestate"
                    || name == "b3"
                    || name.starts_with("x-b3-")
                    || name == "x-envoy-attempt-count"
                {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            let status =
                if path == "/flaky" && flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// The trace headers in a [`trace_echo`] body, by lower-case name.
fn seen(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

/// (trace id, parent span id, flags) of a `traceparent`.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent: {value:?}");
    assert_eq!(parts[0], "00", "{value:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The collector.
fn receiver() -> PyServer {
    PyServer::start("otlp_tracing.py", &["receiver"])
}

/// Every span the collector has received.
fn spans(collector: &PyServer) -> Vec<Value> {
    collector
        .stdout()
        .lines()
        .filter_map(|line| line.strip_prefix("span "))
        .map(|json| serde_json::from_str(json).expect("the receiver prints JSON"))
        .collect()
}

/// Waits until the collector has at least `count` spans of trace `trace_id`, and returns them.
fn trace_spans(collector: &PyServer, trace_id: &str, count: usize) -> Vec<Value> {
    wait_until(
        PATIENCE,
        format!("{count} spans of trace {trace_id}"),
        || {
            let found: Vec<Value> = spans(collector)
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if found.len() >= count {
                Ok(found)
            } else {
                Err(format!("{found:#?}"))
            }
        },
    )
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

fn of_kind(spans: &[Value], kind: i64) -> Vec<&Value> {
    spans.iter().filter(|s| s["kind"] == kind).collect()
}

/// The listener "main" with routes `/echo` and `/flaky` (which retries) to the HTTP/1.1 trace
/// echo, `/ringmesh.test.Trace` to a gRPC server; tracing as `tracing` says.
fn config(echo: SocketAddr, grpc: SocketAddr, tracing: &str) -> String {
    format!(
        r#"
{tracing}

[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "grpc"
match = {{ path_prefix = "/ringmesh.test.Trace" }}
cluster = "grpc"

[[virtual_hosts.routes]]
name = "flaky"
match = {{ path_exact = "/flaky" }}
cluster = "web"
retries = {{ attempts = 2, retry_on = ["5xx"], backoff = "1ms" }}

[[virtual_hosts.routes]]
name = "echo"
match = {{ path_prefix = "/" }}
cluster = "web"

[[clusters]]
name = "web"
endpoints = ["{echo}"]

[[clusters]]
name = "grpc"
endpoints = ["{grpc}"]
protocol = "h2"
"#
    )
}

/// `[telemetry.tracing]` exporting to `collector`, batches sent within 100 ms.
fn tracing_to(collector: SocketAddr, sample_percent: f64) -> String {
    format!(
        "[telemetry.tracing]\nsample_percent = {sample_percent:?}\notlp_endpoint = \"{collector}\"\n\
         service_name = \"edge-proxy\"\nbatch_timeout = \"100ms\"\nbatch_size = 64\n"
    )
}

/// An HTTP/1.1 GET with `headers` (each `name: value`); returns (status, body).
fn get(proxy: &Proxy, path: &str, headers: &[&str]) -> (u16, String) {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n");
    for header in headers {
        raw.push_str(header);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    let response = tests::admin::request(proxy.listener("main"), &raw).expect("a response");
    (response.status, response.body)
}

fn spans_link_client_proxy_and_upstream_over_http1_http2_and_grpc(driver: Driver) {
    let collector = receiver();
    let echo = trace_echo();
    let grpc = PyServer::start("otlp_tracing.py", &["grpc-server"]);
    // 0 %: only the client's sampled flag gets these requests traced.
    let proxy = Proxy::start(
        &config(
            echo.address(),
            grpc.address(),
            &tracing_to(collector.address(), 0.0),
        ),
        driver,
        2,
    );

    // HTTP/1.1.
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, body) = get(
        &proxy,
        "/echo?q=1",
        &[&format!("traceparent: {client}"), "tracestate: vendor=kept"],
    );
    assert_eq!(status, 200, "{body}");
    let upstream_saw = seen(&body);
    let (trace, parent, flags) = traceparent(&upstream_saw["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (CLIENT_TRACE, "01"));
    assert_ne!(
        parent, CLIENT_SPAN,
        "the upstream's parent is the proxy's span"
    );
    assert_eq!(
        upstream_saw["tracestate"], "vendor=kept",
        "tracestate goes on"
    );
    let found = trace_spans(&collector, CLIENT_TRACE, 2);
    let server = of_kind(&found, SERVER);
    let client_spans = of_kind(&found, CLIENT);
    assert_eq!((server.len(), client_spans.len()), (1, 1), "{found:#?}");
    let (server, attempt) = (server[0], client_spans[0]);
    assert_eq!(server["parent_span_id"], CLIENT_SPAN, "{server}");
    assert_eq!(attempt["parent_span_id"], server["span_id"], "{attempt}");
    assert_eq!(
        attempt["span_id"],
        parent.as_str(),
        "the upstream saw the client span"
    );
    assert_eq!(server["name"], "GET echo");
    let attributes = &server["attributes"];
    assert_eq!(attributes["http.request.method"], "GET");
    assert_eq!(attributes["http.route"], "echo");
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(attributes["url.path"], "/echo");
    assert_eq!(attributes["server.address"], "shop.example");
    assert_eq!(attributes["client.address"], "127.0.0.1");
    assert_eq!(attributes["network.peer.address"], "127.0.0.1");
    assert_eq!(attributes["network.protocol.version"], "1.1");
    assert_eq!(attributes["ringmesh.upstream.cluster"], "web");
    assert_eq!(
        attributes["ringmesh.upstream.endpoint"],
        echo.address().to_string()
    );
    assert_eq!(server["status"], 0, "a 200 leaves the status unset");
    assert_eq!(attempt["attributes"]["ringmesh.attempt"], 1);
    assert_eq!(attempt["attributes"]["server.port"], echo.address().port());
    assert_eq!(server["resource"]["service.name"], "edge-proxy");
    assert!(
        server["resource"]["service.version"].is_string(),
        "{server}"
    );
    assert!(server["resource"]["host.name"].is_string(), "{server}");
    assert!(
        server["start"].as_u64() <= attempt["start"].as_u64(),
        "{server} {attempt}"
    );
    assert!(
        attempt["end"].as_u64() <= server["end"].as_u64(),
        "{server} {attempt}"
    );

    // HTTP/2 (cleartext, prior knowledge).
    let trace2 = "11111111111111111111111111111111";
    let url = format!("http://{}/echo", proxy.listener("main"));
    let output = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "20", "-H"])
        .arg(format!("traceparent: 00-{trace2}-{CLIENT_SPAN}-01"))
        .arg(&url)
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "curl: {body} {:?}", output.stderr);
    let (trace, parent, _) = traceparent(&seen(&body)["traceparent"]);
    assert_eq!(trace, trace2);
    let found = trace_spans(&collector, trace2, 2);
    let server = of_kind(&found, SERVER)[0];
    let attempt = of_kind(&found, CLIENT)[0];
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(server["attributes"]["network.protocol.version"], "2");
    assert_eq!(attempt["parent_span_id"], server["span_id"]);
    assert_eq!(attempt["span_id"], parent.as_str());

    // gRPC, to an HTTP/2 upstream.
    let trace3 = "22222222222222222222222222222222";
    let port = proxy.listener("main").port().to_string();
    let call = run_json(
        "otlp_tracing.py",
        &[
            "grpc-client",
            &port,
            &format!("00-{trace3}-{CLIENT_SPAN}-01"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(call["code"], "OK", "{call}");
    let (trace, parent, _) = traceparent(call["seen"].as_str().unwrap_or_default());
    assert_eq!(trace, trace3);
    let found = trace_spans(&collector, trace3, 2);
    let server = of_kind(&found, SERVER)[0];
    let attempt = of_kind(&found, CLIENT)[0];
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(server["attributes"]["http.route"], "grpc");
    assert_eq!(server["attributes"]["http.request.method"], "POST");
    assert_eq!(server["attributes"]["rpc.system"], "grpc");
    assert_eq!(server["attributes"]["rpc.grpc.status_code"], 0);
    assert_eq!(attempt["parent_span_id"], server["span_id"]);
    assert_eq!(attempt["span_id"], parent.as_str());
    assert_eq!(attempt["attributes"]["network.protocol.version"], "2");
    assert_eq!(attempt["attributes"]["ringmesh.upstream.cluster"], "grpc");

    // A request without a context, at 0 %: a new trace, not sampled, and the upstream is told.
    let (_, body) = get(&proxy, "/echo", &[]);
    let (trace, _, flags) = traceparent(&seen(&body)["traceparent"]);
    assert_eq!(flags, "00");
    assert_ne!(trace, "0".repeat(32));

    let stats = proxy.stats();
    let tracing = &stats.0["tracing"];
    assert_eq!(tracing["enabled"], true);
    // Three sampled requests of two spans each; the unsampled one started two more.
    assert_eq!(tracing["spans_sampled"], 6, "{tracing}");
    assert_eq!(tracing["spans_started"], 8, "{tracing}");
    wait_until(PATIENCE, "6 spans exported", || {
        let metrics = proxy.metrics();
        let exported = metrics.value("ringmesh_tracing_spans_exported_total", &[]);
        if exported >= 6.0 {
            Ok(())
        } else {
            Err(format!("{exported}"))
        }
    });
}

fn retries_are_separate_client_spans(driver: Driver) {
    let collector = receiver();
    let echo = trace_echo();
    let proxy = Proxy::start(
        &config(
            echo.address(),
            refused_address(),
            &tracing_to(collector.address(), 100.0),
        ),
        driver,
        1,
    );
    let trace = "33333333333333333333333333333333";
    let (status, body) = get(
        &proxy,
        "/flaky",
        &[&format!("traceparent: 00-{trace}-{CLIENT_SPAN}-01")],
    );
    assert_eq!(status, 200, "the retry succeeded: {body}");
    let upstream_saw = seen(&body);
    assert_eq!(upstream_saw["x-envoy-attempt-count"], "2");
    let (_, parent, _) = traceparent(&upstream_saw["traceparent"]);
    let found = trace_spans(&collector, trace, 3);
    let server = of_kind(&found, SERVER);
    assert_eq!(server.len(), 1, "{found:#?}");
    let server = server[0];
    let mut attempts = of_kind(&found, CLIENT);
    attempts.sort_by_key(|s| s["attributes"]["ringmesh.attempt"].as_u64());
    assert_eq!(attempts.len(), 2, "{found:#?}");
    for (number, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["parent_span_id"], server["span_id"], "{attempt}");
        assert_eq!(attempt["attributes"]["ringmesh.attempt"], number + 1);
    }
    assert_ne!(attempts[0]["span_id"], attempts[1]["span_id"]);
    assert_eq!(attempts[0]["attributes"]["http.response.status_code"], 503);
    assert_eq!(attempts[0]["status"], 2, "a 503 attempt is an error");
    assert_eq!(attempts[1]["attributes"]["http.response.status_code"], 200);
    assert_eq!(attempts[1]["attributes"]["http.request.resend_count"], 1);
    assert_eq!(
        attempts[1]["span_id"],
        parent.as_str(),
        "the answering attempt's span is the parent the upstream saw"
    );
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
}

fn b3_in_b3_out_and_malformed_context_is_replaced(driver: Driver) {
    let collector = receiver();
    let echo = trace_echo();
    let proxy = Proxy::start(
        &config(
            echo.address(),
            refused_address(),
            &tracing_to(collector.address(), 100.0),
        ),
        driver,
        1,
    );
    // Single-header B3 in: B3 out, nothing else.
    let trace = "44444444444444444444444444444444";
    let (_, body) = get(&proxy, "/echo", &[&format!("b3: {trace}-{CLIENT_SPAN}-1")]);
    let upstream_saw = seen(&body);
    assert!(
        !upstream_saw.contains_key("traceparent"),
        "{upstream_saw:?}"
    );
    let b3: Vec<&str> = upstream_saw["b3"].split('-').collect();
    assert_eq!((b3[0], b3[2]), (trace, "1"), "{upstream_saw:?}");
    let found = trace_spans(&collector, trace, 2);
    let server = of_kind(&found, SERVER)[0];
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(b3[3], server["span_id"], "B3's parent is the server span");
    assert_eq!(of_kind(&found, CLIENT)[0]["span_id"], b3[1]);

    // Multi-header B3 in: multi-header B3 out.
    let trace = "55555555555555555555555555555555";
    let (_, body) = get(
        &proxy,
        "/echo",
        &[
            &format!("X-B3-TraceId: {trace}"),
            &format!("X-B3-SpanId: {CLIENT_SPAN}"),
            "X-B3-Sampled: 1",
        ],
    );
    let upstream_saw = seen(&body);
    assert_eq!(upstream_saw["x-b3-traceid"], trace, "{upstream_saw:?}");
    assert_eq!(upstream_saw["x-b3-sampled"], "1");
    assert_ne!(upstream_saw["x-b3-spanid"], CLIENT_SPAN);
    trace_spans(&collector, trace, 2);

    // A malformed traceparent (upper case) with a tracestate: replaced by a new trace, the
    // tracestate dropped with it.
    let bad = format!("00-{}-{CLIENT_SPAN}-01", CLIENT_TRACE.to_uppercase());
    let (_, body) = get(
        &proxy,
        "/echo",
        &[&format!("traceparent: {bad}"), "tracestate: vendor=stale"],
    );
    let upstream_saw = seen(&body);
    let (trace, _, flags) = traceparent(&upstream_saw["traceparent"]);
    assert_ne!(
        trace.to_uppercase(),
        CLIENT_TRACE.to_uppercase(),
        "{upstream_saw:?}"
    );
    assert_eq!(flags, "01", "100 %: sampled");
    assert!(!upstream_saw.contains_key("tracestate"), "{upstream_saw:?}");
    let found = trace_spans(&collector, &trace, 2);
    assert_eq!(
        of_kind(&found, SERVER)[0]["parent_span_id"],
        "",
        "a new trace has no parent"
    );
}

fn a_reload_turns_tracing_on(driver: Driver) {
    let collector = receiver();
    let echo = trace_echo();
    let grpc = refused_address();
    let proxy = Proxy::start(&config(echo.address(), grpc, ""), driver, 2);
    let client = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let header = format!("traceparent: {client}");
    let (_, body) = get(&proxy, "/echo", &[&header]);
    assert_eq!(
        seen(&body)["traceparent"],
        client,
        "without tracing, headers pass through"
    );
    assert_eq!(proxy.stats().0["tracing"]["enabled"], false);

    proxy.reload_with_sighup(&config(
        echo.address(),
        grpc,
        &tracing_to(collector.address(), 0.0),
    ));
    let (_, body) = get(&proxy, "/echo", &[&header]);
    let (trace, parent, _) = traceparent(&seen(&body)["traceparent"]);
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(parent, CLIENT_SPAN);
    let found = trace_spans(&collector, CLIENT_TRACE, 2);
    assert_eq!(of_kind(&found, CLIENT)[0]["span_id"], parent.as_str());

    // And off again: passing through.
    proxy.reload_with_sighup(&config(echo.address(), grpc, ""));
    let (_, body) = get(&proxy, "/echo", &[&header]);
    assert_eq!(seen(&body)["traceparent"], client);
}

fn l4_connections_are_spans_when_enabled(driver: Driver) {
    let collector = receiver();
    let echo = Upstream::echo();
    let config = format!(
        "{}l4_spans = true\n\n{}",
        tracing_to(collector.address(), 100.0),
        tests::tcp_listener("db", &[echo.address()], "", "")
    );
    let proxy = Proxy::start(&config, driver, 1);
    let mut stream = TcpStream::connect(proxy.listener("db")).expect("connect");
    tests::client::echo(&mut stream, b"ping");
    drop(stream);
    let span = wait_until(PATIENCE, "an L4 span", || {
        spans(&collector)
            .into_iter()
            .find(|s| s["name"] == "tcp db")
            .ok_or_else(|| collector.stdout())
    });
    assert_eq!(span["kind"], SERVER, "{span}");
    assert_eq!(span["attributes"]["ringmesh.listener"], "db");
    assert_eq!(span["attributes"]["network.transport"], "tcp");
    assert_eq!(span["attributes"]["client.address"], "127.0.0.1");
}

fn export_to_a_stopped_collector_drops_and_counts_without_stalling_requests(driver: Driver) {
    let echo = trace_echo();
    let collector = receiver();
    // A small queue, small batches: a dead collector fills it at once.
    let tracing = format!(
        "[telemetry.tracing]\nsample_percent = 100.0\notlp_endpoint = \"{}\"\n\
         batch_timeout = \"10ms\"\nbatch_size = 2\nqueue_size = 4\n",
        collector.address()
    );
    let proxy = Proxy::start(
        &config(echo.address(), refused_address(), &tracing),
        driver,
        2,
    );
    let metric = |proxy: &Proxy, name: &str| proxy.metrics().value(name, &[]);
    // While the collector runs, spans arrive.
    let (status, _) = get(&proxy, "/echo", &[]);
    assert_eq!(status, 200);
    wait_until(PATIENCE, "the first spans exported", || {
        let exported = metric(&proxy, "ringmesh_tracing_spans_exported_total");
        if exported >= 2.0 {
            Ok(())
        } else {
            Err(format!("{exported}"))
        }
    });
    // The collector stops: exports fail, are retried, and spans are dropped and counted, while
    // every request still succeeds.
    drop(collector);
    let mut served = 0;
    wait_until(PATIENCE, "spans dropped while requests succeed", || {
        for _ in 0..20 {
            let (status, body) = get(&proxy, "/echo", &[]);
            assert_eq!(status, 200, "a request failed while export fails: {body}");
            served += 1;
        }
        let failures = metric(&proxy, "ringmesh_tracing_export_failures_total");
        let dropped = metric(&proxy, "ringmesh_tracing_spans_dropped_total");
        if dropped > 0.0 && failures > 0.0 {
            Ok(())
        } else {
            Err(format!(
                "dropped {dropped}, failures {failures}, {served} served"
            ))
        }
    });
    let dropped = |proxy: &Proxy| metric(proxy, "ringmesh_tracing_spans_dropped_total");
    // The counter keeps rising while requests keep succeeding.
    let before = dropped(&proxy);
    wait_until(PATIENCE, "the drop counter to rise further", || {
        for _ in 0..20 {
            let (status, _) = get(&proxy, "/echo", &[]);
            assert_eq!(status, 200);
        }
        let now = dropped(&proxy);
        if now > before {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    });
    let stats = proxy.stats();
    let tracing = &stats.0["tracing"];
    assert!(tracing["export_retries"].as_u64() > Some(0), "{tracing}");
    assert!(
        tracing["spans_sampled"].as_u64() >= tracing["spans_dropped"].as_u64(),
        "{tracing}"
    );
}

/// The client SVID of [`the_server_span_names_the_clients_verified_spiffe_id`].
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn the_server_span_names_the_clients_verified_spiffe_id(driver: Driver) {
    let collector = receiver();
    let echo = trace_echo();
    // A CA, the proxy's certificate (`localhost`) and a client SVID (`web`, URI SAN [`WEB`]).
    let pki = Pki::new("tracing test CA");
    pki.leaf("localhost", &["localhost"], None)
        .leaf("web", &[], Some(WEB));
    let file = |name: &str| pki.p(name);
    let config = format!(
        r#"
{tracing}

[[listeners]]
name = "mesh"
address = "127.0.0.1:0"
protocol = "http"

[listeners.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
require_client_cert = true

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "web"

[[clusters]]
name = "web"
endpoints = ["{echo}"]
"#,
        tracing = tracing_to(collector.address(), 100.0),
        cert = file("localhost.crt"),
        key = file("localhost.key"),
        ca = file("ca.pem"),
        echo = echo.address(),
    );
    let proxy = Proxy::start(&config, driver, 1);
    let port = proxy.listener("mesh").port();
    let trace = "66666666666666666666666666666666";
    let output = Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "20", "--cacert"])
        .arg(file("ca.pem"))
        .args([
            "--cert",
            &file("web.crt"),
            "--key",
            &file("web.key"),
            "--resolve",
        ])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("-H")
        .arg(format!("traceparent: 00-{trace}-{CLIENT_SPAN}-01"))
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl: {:?}", output);
    let found = trace_spans(&collector, trace, 2);
    let server = of_kind(&found, SERVER)[0];
    assert_eq!(
        server["attributes"]["ringmesh.downstream.principal"], WEB,
        "{server}"
    );
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
}
