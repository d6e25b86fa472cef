//! The access log through the real binary, on io_uring and on epoll: JSON and Envoy-style text
//! lines for HTTP/1.1, HTTP/2 and L4 connections (tcp listeners, TLS passthrough, mTLS tcp
//! listeners), every text operator rendered, Envoy's default format, the status filter and
//! sampling (0 and 100 % exact; 50 % only strictly between), and an unknown operator rejected at
//! its line. Logs go to files; a test that checks what is *not* logged stops the proxy first
//! (workers flush at drain), so absence is proven, not waited for.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tests::client::{self, connect};
use tests::http::{
    Client, HttpUpstream, Request, Response, access_log, cluster, curl, http_listener, route,
    virtual_host,
};
use tests::pki::Pki;
use tests::upstream::{Upstream, refused_address};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, run_ringmesh, tcp_listener, wait_until};

both_drivers!(
    json_lines_for_http1_http2_and_tcp,
    text_lines_render_every_operator,
    the_default_text_format_is_envoys,
    tls_passthrough_connections_are_logged_with_their_sni,
    an_mtls_tcp_listener_logs_the_client_identity,
    the_status_filter_keeps_only_matching_lines,
    sampling_0_and_100_are_exact_and_errors_skip_it,
    sampling_50_writes_some_but_not_all,
    an_auto_listener_logs_both_kinds_and_a_reload_switches_the_format,
    lines_carry_the_trace_id_of_the_request_and_of_an_l4_span,
    tcp_false_logs_http_requests_only,
);

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const NODE: &str = "spiffe://cluster.local/ns/mesh/sa/node";

/// `[telemetry.access_log]` writing to `path`, with `extra` lines in its table.
fn log_config(path: &Path, extra: &str) -> String {
    format!(
        "\n[telemetry.access_log]\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// The lines of the log at `path`, once it holds at least `at_least`.
fn text_lines(path: &Path, at_least: usize) -> Vec<String> {
    wait_until(
        PATIENCE,
        format!("{at_least} lines in {}", path.display()),
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= at_least {
                Ok(lines)
            } else {
                Err(format!("{} lines: {lines:?}", lines.len()))
            }
        },
    )
}

/// The lines of the log once the proxy has drained and exited (workers flush as they stop).
fn lines_after_exit(mut proxy: Proxy, path: &Path) -> Vec<String> {
    proxy.signal(Signal::SIGTERM);
    let status = proxy.wait_exit(PATIENCE);
    assert!(status.success(), "ringmesh exited with {status}");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends `upload` on a new connection to `address`, half-closes, and reads until the proxy
/// closes; returns what came back.
fn tcp_exchange(address: SocketAddr, upload: &[u8]) -> Vec<u8> {
    let stream = connect(address);
    client::exchange(&stream, upload)
}

/// Connects to `address`, sends a byte, and waits for the proxy to close the connection (it has
/// nowhere to send it).
fn closed_at_once(address: SocketAddr) {
    let mut stream = connect(address);
    let _ = stream.write_all(b"x");
    client::wait_closed(&mut stream, PATIENCE);
}

/// curl's status for `args` (0 when no HTTP answer came).
fn status(args: &[&str]) -> u16 {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    curl(&all).stdout_text().trim().parse().unwrap_or(0)
}

/// The one entry of `entries` for which `pick` holds.
fn only<'a>(entries: &'a [Value], what: &str, pick: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = entries.iter().filter(|e| pick(e)).collect();
    assert_eq!(found.len(), 1, "one entry for {what}: {entries:#?}");
    found[0]
}

/// An HTTP upstream answering `hello` (5 bytes) with `x-up: final`, and `/flaky...` with 503
/// and `x-up: first` the first time each path is asked for (a retry then gets the 200).
fn backend() -> HttpUpstream {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    HttpUpstream::start(move |request: &Request| {
        if request.target.starts_with("/flaky") {
            let mut seen = seen.lock().expect("the upstream's own lock");
            if !seen.contains(&request.target) {
                seen.push(request.target.clone());
                return Response::new(503)
                    .with_header("x-up", "first")
                    .with_body("again")
                    .into();
            }
        }
        Response::ok("hello").with_header("x-up", "final").into()
    })
}

/// An http listener `web` (routes: `/flaky` retried once on 5xx, `/ok`, and `/down` to a
/// refused endpoint; nothing else), tcp listeners `raw` (to an echo server) and `dead` (to a
/// `refused` port), and `log`.
fn mixed_config(backend: &HttpUpstream, echo: &Upstream, refused: SocketAddr, log: &str) -> String {
    let routes = [
        route(
            "retry",
            "match = { path_prefix = \"/flaky\" }\ncluster = \"backend\"\n\
             retries = { attempts = 1, retry_on = [\"5xx\"], backoff = \"5ms\" }",
        ),
        route(
            "ok",
            "match = { path_prefix = \"/ok\" }\ncluster = \"backend\"",
        ),
        route(
            "down",
            "match = { path_prefix = \"/down\" }\ncluster = \"refused\"",
        ),
    ]
    .concat();
    [
        http_listener("web", ""),
        cluster("backend", &[backend.address()], ""),
        cluster("refused", &[refused], ""),
        virtual_host("svc", &["*"], &routes),
        tcp_listener("raw", &[echo.address()], "", ""),
        tcp_listener("dead", &[refused], "", ""),
        log.to_owned(),
    ]
    .concat()
}

/// JSON: an HTTP/1.1 and an HTTP/2 request, a tcp connection that moves 5 bytes each way, one to
/// a refused upstream (`UF,URX`), and one an authorization policy denies (`RBAC`): one line
/// each, with the fields that apply.
fn json_lines_for_http1_http2_and_tcp(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let refused = refused_address();
    let config = [
        mixed_config(&upstream, &echo, refused, &log_config(&path, "")),
        tcp_listener("guarded", &[echo.address()], "", ""),
        r#"
[[authorization_policies]]
name = "no-loopback"
action = "deny"
listeners = ["guarded"]
rules = [{ from = [{ ip_blocks = ["127.0.0.0/8"] }] }]
"#
        .to_owned(),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let web = proxy.listener("web");
    let url = |p: &str| format!("http://{web}{p}");
    assert_eq!(
        status(&["--http1.1", "-H", "x-request-id: id-h1", &url("/ok/h1")]),
        200
    );
    assert_eq!(status(&["--http2-prior-knowledge", &url("/ok/h2")]), 200);
    assert_eq!(tcp_exchange(proxy.listener("raw"), b"hello"), b"hello");
    closed_at_once(proxy.listener("dead"));
    closed_at_once(proxy.listener("guarded"));

    let entries = access_log(&path, 5);
    let h1 = only(&entries, "/ok/h1", |e| e["path"] == "/ok/h1");
    assert_eq!(h1["protocol"], "HTTP/1.1", "{h1}");
    assert_eq!(h1["listener"], "web", "{h1}");
    assert_eq!(h1["status"], 200, "{h1}");
    assert_eq!(h1["route"], "ok", "{h1}");
    assert_eq!(h1["cluster"], "backend", "{h1}");
    assert_eq!(h1["upstream_host"], upstream.address().to_string(), "{h1}");
    assert_eq!(h1["bytes_sent"], 5, "{h1}");
    assert_eq!(h1["request_id"], "id-h1", "{h1}");
    assert_eq!(h1["response_flags"], "-", "{h1}");
    assert_eq!(h1["upstream_attempts"], 1, "{h1}");
    assert_eq!(h1["security_policy"], "none", "{h1}");
    let h2 = only(&entries, "/ok/h2", |e| e["path"] == "/ok/h2");
    assert_eq!(h2["protocol"], "HTTP/2", "{h2}");
    assert_eq!(h2["status"], 200, "{h2}");

    let raw = only(&entries, "raw", |e| e["listener"] == "raw");
    assert_eq!(raw["protocol"], "tcp", "{raw}");
    assert_eq!(raw["cluster"], "raw", "{raw}");
    assert_eq!(raw["bytes_received"], 5, "{raw}");
    assert_eq!(raw["bytes_sent"], 5, "{raw}");
    assert_eq!(raw["upstream_host"], echo.address().to_string(), "{raw}");
    assert_eq!(raw["upstream_attempts"], 1, "{raw}");
    assert_eq!(raw["response_flags"], "-", "{raw}");
    assert_eq!(raw["security_policy"], "none", "{raw}");
    assert!(raw["duration_ms"].is_number(), "{raw}");
    let downstream = raw["downstream_remote_address"]
        .as_str()
        .unwrap_or_default();
    assert!(downstream.starts_with("127.0.0.1:"), "{raw}");
    for absent in ["status", "method", "path", "route", "request_id"] {
        assert!(
            raw.get(absent).is_none(),
            "no {absent} on an L4 line: {raw}"
        );
    }

    let dead = only(&entries, "dead", |e| e["listener"] == "dead");
    assert_eq!(dead["response_flags"], "UF,URX", "{dead}");
    assert_eq!(dead["upstream_attempts"], 1, "{dead}");
    assert_eq!(dead["upstream_host"], refused.to_string(), "{dead}");
    assert_eq!(dead["bytes_sent"], 0, "{dead}");

    let guarded = only(&entries, "guarded", |e| e["listener"] == "guarded");
    assert_eq!(guarded["response_flags"], "RBAC", "{guarded}");
    assert_eq!(guarded["authz_policy"], "no-loopback", "{guarded}");
    assert_eq!(
        guarded["connection_termination_details"], "rbac_access_denied_matched_policy[no-loopback]",
        "{guarded}"
    );
    assert_eq!(guarded["upstream_attempts"], 0, "{guarded}");
    assert!(guarded["upstream_host"].is_null(), "{guarded}");
}

/// Every operator, `|`-separated, one format for all of HTTP/1.1 (a POST retried once:
/// attempt count 2), HTTP/2 and a tcp connection.
const EVERY_OPERATOR: &str = "%START_TIME%|%START_TIME(%Y-%m-%dT%H:%M:%S.%3f%z %s %Z)%|\
%REQ(:METHOD)%|%REQ(:PATH)%|%REQ(:AUTHORITY)%|%REQ(:SCHEME)%|%REQ(USER-AGENT)%|%REQ(X-CUSTOM):4%|\
%REQ(X-ABSENT?X-CUSTOM)%|%REQ(X-ABSENT)%|%REQ(X-REQUEST-ID)%|%PROTOCOL%|%RESPONSE_CODE%|\
%RESPONSE_FLAGS%|%BYTES_RECEIVED%|%BYTES_SENT%|%DURATION%|%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|\
%ROUTE_NAME%|%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|\
%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%|%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%|\
%DOWNSTREAM_PEER_URI_SAN%|%UPSTREAM_PEER_URI_SAN%|%REQUESTED_SERVER_NAME%|\
%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%CONNECTION_TERMINATION_DETAILS%|%TRACE_ID%|%RESP(X-UP)%|\
%RESP(X-NONE?X-UP):3%|%RESP(X-NONE)%";

fn text_lines_render_every_operator(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = log_config(
        &path,
        &format!("format = \"text\"\ntext_format = '{EVERY_OPERATOR}'"),
    );
    let proxy = Proxy::start(
        &mixed_config(&upstream, &echo, refused_address(), &log),
        driver,
        2,
    );
    let web = proxy.listener("web");
    assert_eq!(
        status(&[
            "--http1.1",
            "--data-binary",
            "payload",
            "-H",
            "Expect:",
            "-A",
            "ua-test/1",
            "-H",
            "X-Custom: abcdefgh",
            "-H",
            "x-request-id: id-text",
            &format!("http://{web}/flaky/text?q=1"),
        ]),
        200
    );
    assert_eq!(
        status(&[
            "--http2-prior-knowledge",
            "-H",
            "x-request-id: id-h2",
            &format!("http://{web}/ok/h2"),
        ]),
        200
    );
    assert_eq!(tcp_exchange(proxy.listener("raw"), b"hello"), b"hello");

    let lines = text_lines(&path, 3);
    let split: Vec<Vec<&str>> = lines.iter().map(|l| l.split('|').collect()).collect();
    for fields in &split {
        assert_eq!(fields.len(), 33, "33 operators: {fields:?}");
        assert!(
            fields[0].ends_with('Z') && fields[0].len() == 24,
            "{fields:?}"
        );
        // The same instant in the custom format: date, time and milliseconds agree.
        let custom = fields[1];
        assert_eq!(
            &custom[..23],
            &fields[0][..23],
            "custom time {custom:?} vs {:?}",
            fields[0]
        );
        assert!(custom[23..].starts_with("+0000 "), "{custom:?}");
        assert!(custom.ends_with(" UTC"), "{custom:?}");
        let epoch: u64 = custom[29..custom.len() - 4].parse().expect("epoch seconds");
        assert!(epoch > 1_700_000_000, "{custom:?}");
        assert!(fields[16].parse::<u64>().is_ok(), "duration: {fields:?}");
        // No mTLS and no tracing here.
        for i in [24, 25, 26, 28, 29] {
            assert_eq!(fields[i], "-", "field {i}: {fields:?}");
        }
        let direct = fields[22];
        assert!(direct.starts_with("127.0.0.1:"), "{fields:?}");
        assert_eq!(fields[20], direct, "{fields:?}");
        assert_eq!(fields[21], "127.0.0.1", "{fields:?}");
        assert_eq!(fields[23], "127.0.0.1", "{fields:?}");
    }
    let h1 = split
        .iter()
        .find(|f| f[11] == "HTTP/1.1")
        .unwrap_or_else(|| panic!("an HTTP/1.1 line: {lines:#?}"));
    let upstream_host = upstream.address().to_string();
    let web_authority = web.to_string();
    assert_eq!(
        h1[2..20],
        [
            "POST",
            "/flaky/text?q=1",
            web_authority.as_str(),
            "http",
            "ua-test/1",
            "abcd",
            "abcdefgh",
            "-",
            "id-text",
            "HTTP/1.1",
            "200",
            "-",
            "7",
            "5",
            h1[16],
            upstream_host.as_str(),
            "backend",
            "retry",
        ],
        "{h1:?}"
    );
    assert_eq!(h1[27], "2", "two attempts: {h1:?}");
    // The response the client got, not the retried one.
    assert_eq!(h1[30..], ["final", "fin", "-"], "{h1:?}");
    let h2 = split
        .iter()
        .find(|f| f[11] == "HTTP/2")
        .unwrap_or_else(|| panic!("an HTTP/2 line: {lines:#?}"));
    assert_eq!(h2[2..4], ["GET", "/ok/h2"], "{h2:?}");
    assert!(h2[6].starts_with("curl/"), "{h2:?}");
    assert_eq!(h2[7..10], ["-", "-", "-"], "{h2:?}");
    assert_eq!(h2[10], "id-h2", "{h2:?}");
    assert_eq!(h2[12], "200", "{h2:?}");
    assert_eq!(h2[19], "ok", "{h2:?}");
    assert_eq!(h2[27], "1", "{h2:?}");
    assert_eq!(h2[30..], ["final", "fin", "-"], "{h2:?}");
    let tcp = split
        .iter()
        .find(|f| f[11] == "-")
        .unwrap_or_else(|| panic!("an L4 line: {lines:#?}"));
    let echo_host = echo.address().to_string();
    assert_eq!(
        tcp[2..20],
        [
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "0",
            "-",
            "5",
            "5",
            tcp[16],
            echo_host.as_str(),
            "raw",
            "-",
        ],
        "{tcp:?}"
    );
    assert_eq!(tcp[27], "1", "{tcp:?}");
    assert_eq!(tcp[30..], ["-", "-", "-"], "{tcp:?}");
}

/// `format = "text"` alone writes Envoy's default format.
fn the_default_text_format_is_envoys(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = log_config(&path, "format = \"text\"");
    let proxy = Proxy::start(
        &mixed_config(&upstream, &echo, refused_address(), &log),
        driver,
        1,
    );
    let web = proxy.listener("web");
    assert_eq!(
        status(&[
            "--http1.1",
            "-A",
            "ua-default",
            "-H",
            "x-request-id: rid-1",
            "-H",
            "X-Forwarded-For: 10.1.2.3",
            &format!("http://{web}/ok/default"),
        ]),
        200
    );
    assert_eq!(tcp_exchange(proxy.listener("raw"), b"hi"), b"hi");
    let lines = text_lines(&path, 2);
    let http = lines
        .iter()
        .find(|l| l.contains("/ok/default"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    // `x-forwarded-for` as the client sent it, the user agent, the request id, the authority,
    // the upstream.
    let expected_tail = format!(
        "\"10.1.2.3\" \"ua-default\" \"rid-1\" \"{web}\" \"{}\"",
        upstream.address()
    );
    let rest = http.split_once("] ").map(|(_, r)| r).unwrap_or_default();
    let (request, rest) = rest.split_at(rest.find("\" ").map_or(0, |i| i + 2));
    assert_eq!(request, "\"GET /ok/default HTTP/1.1\" ", "{http}");
    let (counts, tail) = rest.split_once(" \"").unwrap_or_else(|| panic!("{http}"));
    let counts: Vec<&str> = counts.split(' ').collect();
    assert_eq!(counts.len(), 6, "{http}");
    assert_eq!(counts[..4], ["200", "-", "0", "5"], "{http}");
    assert!(counts[4].parse::<u64>().is_ok(), "duration in {http}");
    // %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%: the upstream sent none.
    assert_eq!(counts[5], "-", "{http}");
    assert_eq!(format!("\"{tail}"), expected_tail, "{http}");

    let tcp = lines
        .iter()
        .find(|l| l.contains("\"- - -\""))
        .unwrap_or_else(|| panic!("an L4 line: {lines:#?}"));
    let rest = tcp.split_once("] ").map(|(_, r)| r).unwrap_or_default();
    let (counts, tail) = rest["\"- - -\" ".len()..]
        .split_once(" \"")
        .unwrap_or_else(|| panic!("{tcp}"));
    let counts: Vec<&str> = counts.split(' ').collect();
    assert_eq!(counts.len(), 6, "{tcp}");
    assert_eq!(counts[..4], ["0", "-", "2", "2"], "{tcp}");
    assert_eq!(counts[5], "-", "{tcp}");
    assert_eq!(
        format!("\"{tail}"),
        format!("\"-\" \"-\" \"-\" \"-\" \"{}\"", echo.address()),
        "{tcp}"
    );
}

/// A passthrough listener: a ClientHello for a routed name goes to its cluster and is logged
/// with the SNI and the bytes; one for a name no route takes (and no default) is logged `NR`.
fn tls_passthrough_connections_are_logged_with_their_sni(driver: Driver) {
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let config = format!(
        r#"
[[listeners]]
name = "pass"
address = "127.0.0.1:0"
protocol = "tcp"
request_header_timeout = "5s"
tls = {{ mode = "passthrough", sni_routes = {{ "api.example" = "a" }} }}

[[clusters]]
name = "a"
endpoints = ["{echo}"]
{log}"#,
        echo = echo.address(),
        log = log_config(&path, ""),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let port = proxy.listener("pass").port();
    for name in ["api.example", "other.example"] {
        // The echo server sends the ClientHello back, which is no ServerHello: curl gives up.
        let out = curl([
            "-k",
            "--max-time",
            "10",
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/"),
        ]);
        assert!(!out.status.success(), "no TLS server behind the proxy");
    }
    let entries = access_log(&path, 2);
    let routed = only(&entries, "api.example", |e| {
        e["requested_server_name"] == "api.example"
    });
    assert_eq!(routed["listener"], "pass", "{routed}");
    assert_eq!(routed["protocol"], "tcp", "{routed}");
    assert_eq!(routed["cluster"], "a", "{routed}");
    assert_eq!(routed["response_flags"], "-", "{routed}");
    assert_eq!(
        routed["upstream_host"],
        echo.address().to_string(),
        "{routed}"
    );
    let hello = routed["bytes_received"].as_u64().unwrap_or_default();
    assert!(hello > 100, "the ClientHello's bytes: {routed}");
    assert!(
        routed["bytes_sent"].as_u64().unwrap_or_default() > 0,
        "the echo came back: {routed}"
    );
    let unrouted = only(&entries, "other.example", |e| {
        e["requested_server_name"] == "other.example"
    });
    assert_eq!(unrouted["response_flags"], "NR", "{unrouted}");
    assert_eq!(unrouted["cluster"], "", "{unrouted}");
    assert!(unrouted["upstream_host"].is_null(), "{unrouted}");
    assert!(
        unrouted["bytes_received"].as_u64().unwrap_or_default() > 100,
        "{unrouted}"
    );
}

/// A test CA, the proxy's certificate (`localhost`), a client SVID (`web`) and a server SVID
/// (`node`).
fn pki() -> Pki {
    let pki = Pki::new("access log test CA");
    pki.leaf("localhost", &["localhost"], None)
        .leaf("web", &[], Some(WEB))
        .leaf("node", &[], Some(NODE));
    pki
}

/// A tcp listener terminating mutual TLS, whose cluster originates TLS to a second proxy that
/// serves the `node` SVID (in front of an HTTP upstream): curl with the `web` SVID gets through,
/// and the connection's line names both SPIFFE IDs, the SNI and `mutual_tls` — as JSON, and
/// through the text operators.
fn an_mtls_tcp_listener_logs_the_client_identity(driver: Driver) {
    let pki = pki();
    let upstream = backend();
    let inner = format!(
        r#"
[[listeners]]
name = "inner"
address = "127.0.0.1:0"
protocol = "http"
[listeners.tls]
cert = "{cert}"
key = "{key}"
{routes}"#,
        cert = pki.p("node.crt"),
        key = pki.p("node.key"),
        routes = [
            virtual_host("all", &["*"], &route("all", "cluster = \"app\"")),
            cluster("app", &[upstream.address()], ""),
        ]
        .concat(),
    );
    let node = Proxy::start(&inner, driver, 1);
    for format in ["json", "text"] {
        let path = pki.path(&format!("{format}.log"));
        let extra = match format {
            "json" => String::new(),
            _ => "format = \"text\"\ntext_format = '%DOWNSTREAM_PEER_URI_SAN% \
                  %UPSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME% %UPSTREAM_CLUSTER% %PROTOCOL%'"
                .to_owned(),
        };
        let config = format!(
            r#"
[[listeners]]
name = "secure"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "node"
[listeners.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
require_client_cert = true

[[clusters]]
name = "node"
endpoints = ["{node}"]
[clusters.tls]
ca = "{ca}"
expected_spiffe_ids = ["{NODE}"]
{log}"#,
            cert = pki.p("localhost.crt"),
            key = pki.p("localhost.key"),
            ca = pki.p("ca.pem"),
            node = node.listener("inner"),
            log = log_config(&path, &extra),
        );
        let proxy = Proxy::start(&config, driver, 2);
        let port = proxy.listener("secure").port();
        let out = curl([
            "--http1.1",
            "--cacert",
            &pki.p("ca.pem"),
            "--cert",
            &pki.p("web.crt"),
            "--key",
            &pki.p("web.key"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/ok"),
        ]);
        assert_eq!(out.stdout_text(), "hello", "{}", out.stderr);
        if format == "json" {
            let entries = access_log(&path, 1);
            let entry = only(&entries, "secure", |e| e["listener"] == "secure");
            assert_eq!(entry["protocol"], "tcp", "{entry}");
            assert_eq!(entry["downstream_peer_principal"], WEB, "{entry}");
            assert_eq!(entry["upstream_peer_principal"], NODE, "{entry}");
            assert_eq!(entry["security_policy"], "mutual_tls", "{entry}");
            assert_eq!(entry["requested_server_name"], "localhost", "{entry}");
            assert_eq!(entry["cluster"], "node", "{entry}");
            assert!(
                entry["bytes_received"].as_u64().unwrap_or_default() > 0,
                "{entry}"
            );
        } else {
            let lines = text_lines(&path, 1);
            assert_eq!(lines, [format!("{WEB} {NODE} localhost node -")]);
        }
    }
}

/// `filter.status = [">=400"]`: of 200s, a 404 and a tcp connection (status 0), only the 404
/// is written.
fn the_status_filter_keeps_only_matching_lines(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = log_config(&path, "[telemetry.access_log.filter]\nstatus = [\">=400\"]");
    let proxy = Proxy::start(
        &mixed_config(&upstream, &echo, refused_address(), &log),
        driver,
        2,
    );
    let web = proxy.listener("web");
    for _ in 0..3 {
        assert_eq!(status(&[&format!("http://{web}/ok/fine")]), 200);
    }
    assert_eq!(tcp_exchange(proxy.listener("raw"), b"hi"), b"hi");
    assert_eq!(status(&[&format!("http://{web}/missing")]), 404);
    proxy.wait_listener_counter("raw", "closed", 1);
    let lines = lines_after_exit(proxy, &path);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let entry: Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(entry["path"], "/missing", "{entry}");
    assert_eq!(entry["status"], 404, "{entry}");
    assert_eq!(entry["response_flags"], "NR", "{entry}");
}

/// `tcp = false`: HTTP requests are logged, L4 connections are not (checked once the proxy has
/// exited, so the absence is proven).
fn tcp_false_logs_http_requests_only(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = log_config(&path, "tcp = false");
    let proxy = Proxy::start(
        &mixed_config(&upstream, &echo, refused_address(), &log),
        driver,
        2,
    );
    assert_eq!(
        status(&[&format!("http://{}/ok/h", proxy.listener("web"))]),
        200
    );
    assert_eq!(tcp_exchange(proxy.listener("raw"), b"hi"), b"hi");
    closed_at_once(proxy.listener("dead"));
    proxy.wait_listener_counter("raw", "closed", 1);
    proxy.wait_listener_counter("dead", "closed", 1);
    let lines = lines_after_exit(proxy, &path);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let entry: Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(entry["path"], "/ok/h", "{entry}");
}

/// With `[telemetry.tracing]` on, a request's line names the trace it belongs to: the client's
/// when a `traceparent` arrived (JSON `trace_id` and `%TRACE_ID%`), a new one when none did;
/// with `l4_spans`, a tcp connection's line names its span's trace. Without tracing there is
/// no `trace_id` key (the other tests).
fn lines_carry_the_trace_id_of_the_request_and_of_an_l4_span(driver: Driver) {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("json.log");
    let text = dir.path().join("text.log");
    let tracing = "\n[telemetry.tracing]\nsample_percent = 100.0\nl4_spans = true\n";
    let start = |path: &Path, extra: &str| {
        let log = log_config(path, extra);
        let config = mixed_config(&upstream, &echo, refused_address(), &log) + tracing;
        Proxy::start(&config, driver, 1)
    };
    let traceparent = format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01");

    let proxy = start(&json, "");
    let web = proxy.listener("web");
    let url = |p: &str| format!("http://{web}{p}");
    assert_eq!(status(&["-H", &traceparent, &url("/ok/continued")]), 200);
    assert_eq!(status(&[&url("/ok/new")]), 200);
    assert_eq!(tcp_exchange(proxy.listener("raw"), b"hi"), b"hi");
    let entries = access_log(&json, 3);
    let continued = only(&entries, "/ok/continued", |e| e["path"] == "/ok/continued");
    assert_eq!(continued["trace_id"], TRACE, "{continued}");
    let hex32 = |value: &Value| {
        value
            .as_str()
            .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let new = only(&entries, "/ok/new", |e| e["path"] == "/ok/new");
    assert!(hex32(&new["trace_id"]) && new["trace_id"] != TRACE, "{new}");
    let tcp = only(&entries, "raw", |e| e["listener"] == "raw");
    assert!(hex32(&tcp["trace_id"]), "{tcp}");
    drop(proxy);

    let proxy = start(
        &text,
        "format = \"text\"\ntext_format = \"%REQ(:PATH)% %TRACE_ID%\"",
    );
    let web = proxy.listener("web");
    assert_eq!(
        status(&["-H", &traceparent, &format!("http://{web}/ok/text")]),
        200
    );
    let lines = text_lines(&text, 1);
    assert_eq!(lines, [format!("/ok/text {TRACE}")]);
}

/// `sample_percent = 0` writes no ordinary line, but errors (a 502 `UF`, a tcp `UF,URX`)
/// still, unless `always_log_errors = false`; `sample_percent = 100` writes every line.
fn sampling_0_and_100_are_exact_and_errors_skip_it(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    for (extra, expected) in [
        ("sample_percent = 0.0", vec!["/down", "dead"]),
        ("sample_percent = 0.0\nalways_log_errors = false", vec![]),
        (
            "sample_percent = 100.0\nalways_log_errors = false",
            vec![
                "/ok/1", "/ok/2", "/ok/3", "/ok/4", "/ok/5", "raw", "/down", "dead",
            ],
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let log = log_config(&path, extra);
        let proxy = Proxy::start(
            &mixed_config(&upstream, &echo, refused_address(), &log),
            driver,
            2,
        );
        let web = proxy.listener("web");
        for i in 1..=5 {
            assert_eq!(status(&[&format!("http://{web}/ok/{i}")]), 200);
        }
        assert_eq!(tcp_exchange(proxy.listener("raw"), b"hi"), b"hi");
        assert_eq!(status(&[&format!("http://{web}/down")]), 502);
        closed_at_once(proxy.listener("dead"));
        proxy.wait_listener_counter("raw", "closed", 1);
        proxy.wait_listener_counter("dead", "closed", 1);
        let lines = lines_after_exit(proxy, &path);
        let mut seen: Vec<String> = lines
            .iter()
            .map(|line| {
                let entry: Value = serde_json::from_str(line).expect("JSON");
                match entry["path"].as_str() {
                    Some(path) => path.to_owned(),
                    None => entry["listener"].as_str().unwrap_or_default().to_owned(),
                }
            })
            .collect();
        seen.sort();
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        assert_eq!(seen, expected, "{extra}: {lines:#?}");
    }
}

/// `sample_percent = 50` over 200 requests on one connection writes some lines and not all
/// (the chance of either bound is 2^-199).
fn sampling_50_writes_some_but_not_all(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = log_config(&path, "sample_percent = 50.0");
    let proxy = Proxy::start(
        &mixed_config(&upstream, &echo, refused_address(), &log),
        driver,
        1,
    );
    let mut client = Client::connect(proxy.listener("web"));
    const REQUESTS: usize = 200;
    for _ in 0..REQUESTS {
        let response = client.request(b"GET /ok/sampled HTTP/1.1\r\nHost: svc\r\n\r\n");
        assert_eq!(response.status, 200);
    }
    drop(client);
    let lines = lines_after_exit(proxy, &path);
    assert!(
        !lines.is_empty() && lines.len() < REQUESTS,
        "{} of {REQUESTS} lines written",
        lines.len()
    );
}

/// An `auto` listener: an HTTP request and a connection of opaque bytes (which go to the
/// listener's `cluster`) get a line each; a reload to the text format (same file) applies to the
/// next ones.
fn an_auto_listener_logs_both_kinds_and_a_reload_switches_the_format(driver: Driver) {
    let upstream = backend();
    let echo = Upstream::echo();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let config = |log: &str| {
        format!(
            r#"
[[listeners]]
name = "auto"
address = "127.0.0.1:0"
protocol = "auto"
cluster = "opaque"
{routes}
[[clusters]]
name = "opaque"
endpoints = ["{echo}"]
{log}"#,
            routes = [
                cluster("backend", &[upstream.address()], ""),
                virtual_host("all", &["*"], &route("all", "cluster = \"backend\"")),
            ]
            .concat(),
            echo = echo.address(),
        )
    };
    let proxy = Proxy::start(&config(&log_config(&path, "")), driver, 1);
    let auto = proxy.listener("auto");
    let opaque = b"SSH-2.0-test\r\n";
    let traffic = |tag: &str| {
        assert_eq!(status(&[&format!("http://{auto}/ok/{tag}")]), 200);
        assert_eq!(tcp_exchange(auto, opaque), opaque);
    };
    traffic("json");
    let entries = access_log(&path, 2);
    let http = only(&entries, "HTTP", |e| e["path"] == "/ok/json");
    assert_eq!(http["listener"], "auto", "{http}");
    assert_eq!(http["cluster"], "backend", "{http}");
    let tcp = only(&entries, "opaque", |e| e["protocol"] == "tcp");
    assert_eq!(tcp["listener"], "auto", "{tcp}");
    assert_eq!(tcp["cluster"], "opaque", "{tcp}");
    assert_eq!(tcp["bytes_received"], opaque.len(), "{tcp}");
    assert_eq!(tcp["bytes_sent"], opaque.len(), "{tcp}");

    let text = "format = \"text\"\ntext_format = '%PROTOCOL% %REQ(:PATH)% %UPSTREAM_CLUSTER% %BYTES_RECEIVED%'";
    proxy.reload_with_sighup(&config(&log_config(&path, text)));
    traffic("text");
    let lines = text_lines(&path, 4);
    let mut text_lines: Vec<&str> = lines[2..].iter().map(String::as_str).collect();
    text_lines.sort_unstable();
    assert_eq!(
        text_lines,
        [
            format!("- - opaque {}", opaque.len()).as_str(),
            "HTTP/1.1 /ok/text backend 0"
        ],
        "{lines:#?}"
    );
}

/// An unknown operator (or a `%TRAILER(...)%`, which ringmesh cannot fill) is a config error at
/// the line of `text_format`, naming the operator; `validate` and start-up both refuse it.
#[test]
fn an_unknown_operator_is_rejected_at_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (operator, why) in [
        ("%NOT_AN_OPERATOR%", "unknown operator"),
        ("%TRAILER(GRPC-STATUS)%", "not supported yet"),
        ("%START_TIME(%Q)%", "unknown time specifier"),
    ] {
        let file = dir.path().join("bad.toml");
        let mut text = String::from(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
             [telemetry.access_log]\npath = \"stderr\"\nformat = \"text\"\n",
        );
        let line = text.lines().count() + 1;
        text.push_str(&format!("text_format = '[%START_TIME%] {operator}'\n"));
        let mut f = std::fs::File::create(&file).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        drop(f);
        let run = run_ringmesh([Path::new("validate"), &file], Duration::from_secs(30));
        assert!(!run.status.success(), "accepted {operator}");
        let expected = format!(":{line}:");
        let reported = run.stderr.lines().find(|l| {
            l.contains("telemetry.access_log.text_format")
                && l.contains(&expected)
                && l.contains(operator)
                && l.contains(why)
        });
        assert!(
            reported.is_some(),
            "{operator}: an error at line {line} naming it ({why}); stderr:\n{}",
            run.stderr
        );
    }
}

/// A status condition that is not one, and a percentage out of range, are errors at their line.
#[test]
fn bad_filter_and_sample_values_are_rejected_at_their_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (key, value, path, why) in [
        (
            "filter",
            "{ status = [\">=400\", \"=404\"] }",
            "telemetry.access_log.filter.status[1]",
            "expected 404, >=400",
        ),
        (
            "sample_percent",
            "120.0",
            "telemetry.access_log.sample_percent",
            "between 0 and 100",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        let text = format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n\
             [telemetry.access_log]\npath = \"stderr\"\n{key} = {value}\n"
        );
        let line = text.lines().count();
        std::fs::write(&file, text).expect("write the config");
        let run = run_ringmesh([Path::new("validate"), &file], Duration::from_secs(30));
        assert!(!run.status.success(), "accepted {key} = {value}");
        let reported = run
            .stderr
            .lines()
            .any(|l| l.contains(&format!(":{line}:")) && l.contains(path) && l.contains(why));
        assert!(
            reported,
            "{key}: an error at line {line} ({path}: {why}); stderr:\n{}",
            run.stderr
        );
    }
}

/// A log file that cannot be opened fails the start at the line of `path`.
#[test]
fn an_unopenable_log_file_fails_the_start_at_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.toml");
    let admin_file = dir.path().join("admin-address");
    let missing = dir.path().join("no-such-dir").join("access.log");
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\n\
         address = \"127.0.0.1:0\"\nprotocol = \"http\"\n\n[telemetry.access_log]\n\
         path = \"{}\"\n",
        missing.display()
    );
    let line = text.lines().count();
    std::fs::write(&file, text).expect("write the config");
    let run = run_ringmesh(
        [
            "--config".as_ref(),
            file.as_os_str(),
            "--io".as_ref(),
            "epoll".as_ref(),
            "--admin-address-path".as_ref(),
            admin_file.as_os_str(),
        ],
        Duration::from_secs(30),
    );
    assert!(!run.status.success(), "started without its log file");
    let reported = run.stderr.lines().any(|l| {
        l.contains(&format!(":{line}:"))
            && l.contains("telemetry.access_log.path")
            && l.contains("cannot open")
    });
    assert!(reported, "an error at line {line}; stderr:\n{}", run.stderr);
}
