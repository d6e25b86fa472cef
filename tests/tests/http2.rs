//! HTTP/2 through the proxy with real clients and peers: curl with prior knowledge and h2load on
//! `http` listeners, detection on `auto` listeners, HTTP/1.1 <-> HTTP/2 translation both ways with
//! streamed bodies and trailers, the per-core upstream HTTP/2 pool (multiplexing, saturation,
//! GOAWAY mid-load), and routing, weighted splits, load balancing, metrics and the access log for
//! HTTP/2 requests. Every test runs on io_uring and on epoll.
//!
//! The upstream is `tests/python/h2_upstream.py` (HTTP/2 and HTTP/1.1 on one port), which prints a
//! line per connection and per stream, so the tests count what really reached it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::client::connect;
use tests::h2::{PyServer, h2load, run, run_json};
use tests::upstream::Upstream;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

/// Time allowed for one client run (curl, the Python client, a short h2load run).
const RUN: Duration = Duration::from_secs(60);

both_drivers!(
    curl_with_prior_knowledge_reaches_an_h2_upstream,
    h2load_through_http_listener_to_h2_and_h1_upstreams,
    auto_listener_detects_h2c_http1_and_opaque_bytes,
    h1_client_to_h2_upstream_streams_body_and_trailers,
    h2_client_to_h1_upstream_streams_body_and_trailers,
    h2_client_to_h2_upstream_streams_both_ways_with_trailers,
    h2_client_reset_ends_a_waiting_h1_upstream_exchange,
    upstream_streams_are_multiplexed_on_few_connections,
    saturated_upstream_connections_make_the_pool_open_more,
    upstream_goaway_mid_load_is_retried_without_client_errors,
    routing_split_lb_metrics_and_access_log_work_for_http2,
);

fn h2_upstream(name: &str) -> PyServer {
    PyServer::start("h2_upstream.py", &["--name", name])
}

/// One `http` listener `main` routing everything to cluster `backend` (`protocol`), plus `extra`.
fn single_cluster(
    protocol: &str,
    upstream: SocketAddr,
    cluster_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "backend"

[[clusters]]
name = "backend"
endpoints = ["{upstream}"]
protocol = "{protocol}"
{cluster_extra}
{extra}
"#
    )
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let mut command = Command::new(tests::tool("curl"));
    command
        .args(["-s", "-S", "--noproxy", "*", "--max-time", "30", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(args);
    let output = run(command, RUN);
    assert!(
        output.status.success(),
        "curl {args:?}: {}\n{}",
        output.status,
        output.stderr
    );
    (
        std::fs::read_to_string(&headers).expect("curl wrote the headers"),
        std::fs::read(&body).unwrap_or_default(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn client(port: u16, args: &[&str]) -> Value {
    let port = port.to_string();
    let mut all = vec![port.as_str()];
    all.extend_from_slice(args);
    run_json("h2_client.py", &all, RUN)
}

fn pairs(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap_or_default().to_owned(),
                        p[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_pair(value: &Value, name: &str, expected: &str) -> bool {
    pairs(value).iter().any(|(n, v)| n == name && v == expected)
}

/// The request body `h2_client.py --body-size N` sends, for comparisons on this side.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i % 251) * 7 % 251) as u8).collect()
}

/// curl --http2-prior-knowledge on an `http` listener: a download and a 1 MiB upload arrive
/// intact over HTTP/2 to an HTTP/2 upstream, with the forwarding headers, and the access log and
/// `/stats` count them as HTTP/2.
fn curl_with_prior_knowledge_reaches_an_h2_upstream(driver: Driver) {
    let upstream = h2_upstream("h2");
    let log_dir = tempfile::tempdir().expect("temporary directory");
    let log = log_dir.path().join("access.log");
    let config = single_cluster(
        "h2",
        upstream.address(),
        "",
        &format!(
            "[telemetry.access_log]\npath = \"{}\"\n",
            log.to_str().expect("UTF-8 path")
        ),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let base = format!("http://{}", proxy.listener("main"));

    let (head, body) = curl(&["--http2-prior-knowledge", &format!("{base}/bytes/300000")]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert_eq!(header(&head, "x-upstream"), Some("h2"), "{head}");
    assert_eq!(body.len(), 300_000);
    assert!(body.chunks(10).all(|c| c == &b"0123456789"[..c.len()]));

    let upload_dir = tempfile::tempdir().expect("temporary directory");
    let upload = upload_dir.path().join("upload");
    let data = pattern(1 << 20);
    std::fs::write(&upload, &data).expect("write the upload");
    let (head, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "x-request-id: curl-upload-1",
        "--data-binary",
        &format!("@{}", upload.display()),
        &format!("{base}/headers?x=1"),
    ]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let seen: Value = serde_json::from_slice(&body).expect("/headers answers JSON");
    assert_eq!(seen["protocol"], "HTTP/2", "{seen}");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/headers?x=1");
    assert_eq!(seen["body_len"], 1 << 20);
    assert_eq!(
        seen["body_sha256"],
        sha256_hex(&data),
        "the upload arrived altered"
    );
    assert!(
        has_pair(&seen["headers"], "x-request-id", "curl-upload-1"),
        "{seen}"
    );
    assert!(
        has_pair(&seen["headers"], "x-forwarded-for", "127.0.0.1"),
        "{seen}"
    );
    assert!(
        has_pair(&seen["headers"], "x-forwarded-proto", "http"),
        "{seen}"
    );

    let entries = wait_until(PATIENCE, "two access-log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 2 {
            Ok(lines)
        } else {
            Err(text)
        }
    });
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        assert_eq!(entry["protocol"], "HTTP/2", "{entry}");
        assert_eq!(entry["status"], 200, "{entry}");
        assert_eq!(entry["cluster"], "backend", "{entry}");
        assert_eq!(
            entry["upstream_host"],
            upstream.address().to_string(),
            "{entry}"
        );
    }
    let upload_entry = entries
        .iter()
        .find(|e| e["method"] == "POST")
        .expect("the upload is logged");
    assert_eq!(upload_entry["bytes_received"], 1 << 20, "{upload_entry}");
    assert_eq!(
        upload_entry["request_id"], "curl-upload-1",
        "{upload_entry}"
    );
    let stats = proxy.stats();
    assert_eq!(
        stats.listener("main")["http2"]["streams"],
        2,
        "{:#}",
        stats.0
    );
}

fn sha256_hex(data: &[u8]) -> String {
    let mut command = Command::new(tests::python());
    command.args([
        "-c",
        "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
    ]);
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write to python");
    let output = child.wait_with_output().expect("python's output");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// h2load over HTTP/2 to an HTTP/2 upstream and to an HTTP/1.1 upstream, and over HTTP/1.1 to an
/// HTTP/2 upstream: every request answered 2xx. 200 concurrent streams fanned out over HTTP/1.1
/// reuse their upstream connections instead of closing and reopening them.
fn h2load_through_http_listener_to_h2_and_h1_upstreams(driver: Driver) {
    let h2 = h2_upstream("h2");
    let h1 = h2_upstream("h1");
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
name = "to-h1"
match = {{ path_prefix = "/h1" }}
rewrite = {{ prefix = "/" }}
cluster = "h1"

[[virtual_hosts.routes]]
name = "to-h2"
cluster = "h2"

[[clusters]]
name = "h2"
endpoints = ["{h2}"]
protocol = "h2"

[[clusters]]
name = "h1"
endpoints = ["{h1}"]
protocol = "h1"
"#,
        h2 = h2.address(),
        h1 = h1.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let base = format!("http://{}", proxy.listener("main"));

    let to_h2 = h2load(
        &[
            "-n",
            "1000",
            "-c",
            "4",
            "-m",
            "10",
            &format!("{base}/bytes/1000"),
        ],
        RUN,
    );
    to_h2.assert_all_ok(1000);
    let to_h1 = h2load(
        &[
            "-n",
            "2000",
            "-c",
            "10",
            "-m",
            "20",
            &format!("{base}/h1/bytes/1000"),
        ],
        RUN,
    );
    to_h1.assert_all_ok(2000);
    let h1_to_h2 = h2load(
        &[
            "--h1",
            "-n",
            "500",
            "-c",
            "4",
            &format!("{base}/bytes/1000"),
        ],
        RUN,
    );
    h1_to_h2.assert_all_ok(500);

    assert_eq!(h2.count("stream"), 1500, "HTTP/2 upstream streams");
    assert_eq!(h1.count("stream"), 2000, "HTTP/1.1 upstream requests");
    // At most one connection per stream in flight (10 × 20), however they spread over workers.
    assert!(
        h1.count("conn") <= 200,
        "{} upstream connections for 2000 requests, at most 200 at once",
        h1.count("conn")
    );
    assert!(
        h1.events("stream").iter().all(|w| w[2] == "0"),
        "the h1 cluster is spoken to in HTTP/1.1"
    );
    assert!(
        h2.events("stream").iter().all(|w| w[2] != "0"),
        "the h2 cluster is spoken to in HTTP/2"
    );
}

/// An `auto` listener with a fallback cluster: an HTTP/2 preface is served as HTTP/2, an HTTP/1
/// request line as HTTP/1.1, and anything else goes opaquely to the listener's cluster.
fn auto_listener_detects_h2c_http1_and_opaque_bytes(driver: Driver) {
    let h2 = h2_upstream("h2");
    let echo = Upstream::echo();
    let config = format!(
        r#"
[[listeners]]
name = "auto"
address = "127.0.0.1:0"
protocol = "auto"
cluster = "opaque"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "web"

[[clusters]]
name = "web"
endpoints = ["{h2}"]
protocol = "h2"

[[clusters]]
name = "opaque"
endpoints = ["{echo}"]
"#,
        h2 = h2.address(),
        echo = echo.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("auto");
    let url = format!("http://{address}/bytes/10");

    let (head, body) = curl(&["--http2-prior-knowledge", &url]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert_eq!(body, b"0123456789");
    let (head, body) = curl(&["--http1.1", &url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"0123456789");
    let result = client(address.port(), &["--path", "/bytes/5"]);
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body"], "01234");

    // A TLS ClientHello-like start: opaque, so it reaches the echo cluster unchanged.
    let mut stream = connect(address);
    let hello = b"\x16\x03\x01\x00\x05hello";
    stream.write_all(hello).expect("write opaque bytes");
    let mut back = [0u8; 10];
    stream.read_exact(&mut back).expect("the echo comes back");
    assert_eq!(&back, hello);

    assert_eq!(
        h2.count("stream"),
        3,
        "HTTP requests reached the h2 cluster"
    );
    assert_eq!(echo.accepted(), 1, "the opaque connection reached the echo");
    let stats = proxy.stats();
    assert_eq!(
        stats.listener("auto")["http2"]["streams"],
        2,
        "{:#}",
        stats.0
    );
}

/// A parsed HTTP/1.1 response with a chunked or sized body.
#[derive(Debug)]
struct H1Response {
    head: String,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn read_h1_response(stream: &mut std::net::TcpStream) -> H1Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).expect("read the response head");
        assert!(n > 0, "closed before the response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end..].to_vec();
    let mut fill = |rest: &mut Vec<u8>, want: usize| {
        while rest.len() < want {
            let n = stream.read(&mut chunk).expect("read the response body");
            assert!(n > 0, "closed in the response body");
            rest.extend_from_slice(&chunk[..n]);
        }
    };
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let want = rest.len() + 1;
                fill(&mut rest, want);
            };
            let line = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            rest.drain(..line_end + 2);
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                // Trailer fields, then an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        let want = rest.len() + 1;
                        fill(&mut rest, want);
                    };
                    let field = String::from_utf8_lossy(&rest[..end]).into_owned();
                    rest.drain(..end + 2);
                    if field.is_empty() {
                        break;
                    }
                    let (n, v) = field.split_once(':').expect("trailer field has a colon");
                    trailers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
                break;
            }
            fill(&mut rest, size + 2);
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
    } else if let Some(length) = header(&head, "content-length") {
        let length: usize = length.parse().expect("numeric content-length");
        fill(&mut rest, length);
        body = rest[..length].to_vec();
    }
    H1Response {
        head,
        body,
        trailers,
    }
}

/// An HTTP/1.1 client to an HTTP/2 upstream: a chunked upload with a trailer becomes DATA frames
/// and HTTP/2 trailers; the upstream's body and trailers come back chunked, trailers included;
/// the upstream sees a proper HTTP/2 request (authority from Host, no connection headers).
fn h1_client_to_h2_upstream_streams_body_and_trailers(driver: Driver) {
    let upstream = h2_upstream("h2");
    let proxy = Proxy::start(&single_cluster("h2", upstream.address(), "", ""), driver, 2);
    let mut stream = connect(proxy.listener("main"));

    let data = pattern(300_000);
    let mut request = b"POST /echo HTTP/1.1\r\nHost: h1.test\r\nTE: trailers\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for piece in data.chunks(70_000) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\nx-client-trailer: from-h1\r\n\r\n");
    stream.write_all(&request).expect("send the request");
    let response = read_h1_response(&mut stream);
    assert!(
        response.head.starts_with("HTTP/1.1 200"),
        "{}",
        response.head
    );
    assert!(
        response.body == data,
        "the echoed body differs ({} bytes)",
        response.body.len()
    );
    assert!(
        response
            .trailers
            .contains(&("x-echo-x-client-trailer".into(), "from-h1".into())),
        "the client's trailer reached the HTTP/2 upstream and came back: {:?}",
        response.trailers
    );
    assert!(
        response
            .trailers
            .contains(&("x-upstream-trailer".into(), "end".into())),
        "the upstream's trailer reached the HTTP/1.1 client: {:?}",
        response.trailers
    );

    // The same connection, keep-alive: what the upstream saw.
    stream
        .write_all(
            b"GET /headers HTTP/1.1\r\nHost: h1.test\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\nX-Custom: one\r\n\r\n",
        )
        .expect("send the second request");
    let response = read_h1_response(&mut stream);
    assert!(
        response.head.starts_with("HTTP/1.1 200"),
        "{}",
        response.head
    );
    let seen: Value = serde_json::from_slice(&response.body).expect("JSON");
    assert_eq!(seen["protocol"], "HTTP/2", "{seen}");
    assert_eq!(seen["authority"], "h1.test", "{seen}");
    assert!(has_pair(&seen["headers"], "x-custom", "one"), "{seen}");
    for name in ["connection", "keep-alive", "transfer-encoding", "host"] {
        assert!(
            pairs(&seen["headers"]).iter().all(|(n, _)| n != name),
            "{name} must not reach an HTTP/2 upstream: {seen}"
        );
    }
    assert_eq!(
        upstream.count("conn"),
        1,
        "both requests used one upstream connection"
    );
}

/// An HTTP/2 client to an HTTP/1.1 upstream: a 2 MiB body with trailers goes up chunked with
/// the trailers, and the chunked response's trailers come back as HTTP/2 trailers.
fn h2_client_to_h1_upstream_streams_body_and_trailers(driver: Driver) {
    let upstream = h2_upstream("h1");
    let proxy = Proxy::start(&single_cluster("h1", upstream.address(), "", ""), driver, 2);
    let port = proxy.listener("main").port();

    let result = client(
        port,
        &[
            "--method",
            "POST",
            "--path",
            "/echo",
            "--body-size",
            "2097152",
            "--trailer",
            "x-client-trailer:from-h2",
        ],
    );
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body_len"], 2_097_152, "{result}");
    assert_eq!(
        result["body_sha256"], result["request_sha256"],
        "body altered"
    );
    assert!(
        has_pair(&result["trailers"], "x-echo-x-client-trailer", "from-h2"),
        "the client's trailer reached the HTTP/1.1 upstream: {result}"
    );
    assert!(
        has_pair(&result["trailers"], "x-upstream-trailer", "end"),
        "the upstream's chunked trailer reached the HTTP/2 client: {result}"
    );
    assert_eq!(result["reset"], Value::Null, "{result}");

    let result = client(port, &["--path", "/headers", "--header", "x-custom:two"]);
    let seen: Value =
        serde_json::from_str(result["body"].as_str().expect("body text")).expect("JSON");
    assert_eq!(seen["protocol"], "HTTP/1.1", "{seen}");
    assert_eq!(seen["authority"], format!("127.0.0.1:{port}"), "{seen}");
    assert!(has_pair(&seen["headers"], "x-custom", "two"), "{seen}");
    assert_eq!(upstream.events("stream")[0][2], "0", "HTTP/1.1 upstream");
}

/// HTTP/2 to HTTP/2: a 3 MiB body and trailers both ways, and a full-duplex exchange in which
/// each chunk must come back before the next is sent, so neither body may be buffered whole.
fn h2_client_to_h2_upstream_streams_both_ways_with_trailers(driver: Driver) {
    let upstream = h2_upstream("h2");
    let proxy = Proxy::start(&single_cluster("h2", upstream.address(), "", ""), driver, 2);
    let port = proxy.listener("main").port();

    let result = client(
        port,
        &[
            "--method",
            "POST",
            "--path",
            "/echo",
            "--body-size",
            "3145728",
            "--trailer",
            "x-client-trailer:from-h2",
            "--trailer",
            "grpc-status-like:7",
        ],
    );
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body_len"], 3_145_728, "{result}");
    assert_eq!(
        result["body_sha256"], result["request_sha256"],
        "body altered"
    );
    assert!(
        has_pair(&result["trailers"], "x-echo-x-client-trailer", "from-h2")
            && has_pair(&result["trailers"], "x-echo-grpc-status-like", "7"),
        "the client's trailers reached the upstream: {result}"
    );
    assert!(
        has_pair(&result["trailers"], "x-upstream-trailer", "end"),
        "the upstream's trailers reached the client: {result}"
    );

    let result = client(
        port,
        &[
            "--method",
            "POST",
            "--path",
            "/stream",
            "--interactive",
            "50",
        ],
    );
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(
        result["echo_rounds"], 50,
        "each chunk came back before the next was sent: {result}"
    );
    assert!(
        has_pair(&result["trailers"], "x-upstream-trailer", "end"),
        "{result}"
    );
}

/// An HTTP/2 client resets its stream while the HTTP/1.1 upstream has sent the start of a body
/// and then nothing: the proxy notices the reset at once (not at the upstream's next byte) and
/// closes the upstream connection, which the upstream sees within a few seconds.
fn h2_client_reset_ends_a_waiting_h1_upstream_exchange(driver: Driver) {
    let upstream = h2_upstream("h1");
    let proxy = Proxy::start(&single_cluster("h1", upstream.address(), "", ""), driver, 2);
    let result = client(
        proxy.listener("main").port(),
        &["--path", "/drip", "--cancel-after-data"],
    );
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body"], "first", "{result}");
    let cancelled_at = result["cancelled_at"]
        .as_f64()
        .expect("the client cancelled");
    let gone = upstream.wait_event("gone", |_| true);
    let seen_at: f64 = gone[2].parse().expect("the upstream's time");
    let delay = Duration::from_secs_f64((seen_at - cancelled_at).max(0.0));
    eprintln!("client reset reached the HTTP/1.1 upstream after {delay:?}");
    assert!(
        delay <= Duration::from_secs(5),
        "the upstream connection closed {delay:?} after the client's reset"
    );
}

/// Per-connection figures the upstream printed when connections closed, or now for open ones:
/// `(connections, largest number of streams at once on one connection)`.
fn connection_figures(upstream: &PyServer) -> (usize, u64) {
    let max = upstream
        .events("close")
        .iter()
        .filter_map(|w| w.get(3)?.strip_prefix("max=")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (upstream.count("conn"), max)
}

/// 2,000 requests, up to 100 at once, reach the HTTP/2 upstream on a few multiplexed
/// connections, not one connection per request.
fn upstream_streams_are_multiplexed_on_few_connections(driver: Driver) {
    let upstream = h2_upstream("h2");
    let proxy = Proxy::start(&single_cluster("h2", upstream.address(), "", ""), driver, 2);
    let base = format!("http://{}", proxy.listener("main"));
    h2load(
        &[
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "25",
            &format!("{base}/delay/5"),
        ],
        RUN,
    )
    .assert_all_ok(2000);
    assert_eq!(upstream.count("stream"), 2000);
    drop(proxy); // closes the upstream connections, so that their figures are printed
    wait_until(PATIENCE, "the upstream connections to close", || {
        let (opened, _) = connection_figures(&upstream);
        let closed = upstream.count("close");
        if closed == opened {
            Ok(())
        } else {
            Err(format!("{closed} of {opened} closed"))
        }
    });
    let (connections, max) = connection_figures(&upstream);
    // Two workers with up to 100 streams each fit in one connection each (the default
    // max_streams_per_connection is 100); a pool that opened a connection per request would
    // show hundreds.
    assert!(
        connections <= 4,
        "{connections} upstream connections for 2,000 requests, 100 at a time"
    );
    assert!(max > 1, "streams were multiplexed (at most {max} at once)");
}

/// With `max_streams_per_connection = 4` and 20 slow requests at once on one worker, the pool
/// opens more connections, none carrying more than 4 streams at once.
fn saturated_upstream_connections_make_the_pool_open_more(driver: Driver) {
    let upstream = h2_upstream("h2");
    let config = single_cluster(
        "h2",
        upstream.address(),
        "pool = { max_streams_per_connection = 4 }",
        "",
    );
    let proxy = Proxy::start(&config, driver, 1);
    let base = format!("http://{}", proxy.listener("main"));
    h2load(
        &[
            "-n",
            "40",
            "-c",
            "1",
            "-m",
            "20",
            &format!("{base}/delay/300"),
        ],
        RUN,
    )
    .assert_all_ok(40);
    drop(proxy);
    wait_until(PATIENCE, "the upstream connections to close", || {
        let (opened, _) = connection_figures(&upstream);
        let closed = upstream.count("close");
        if closed == opened {
            Ok(())
        } else {
            Err(format!("{closed} of {opened} closed"))
        }
    });
    let (connections, max) = connection_figures(&upstream);
    assert!(
        connections >= 5,
        "20 streams at once, 4 per connection: at least 5 connections, saw {connections}"
    );
    assert!(max <= 4, "a connection carried {max} streams at once");
    assert!(
        connections <= 20,
        "{connections} connections for 20 concurrent streams"
    );
}

/// An upstream that sends GOAWAY after every 50 streams on a connection, leaving the streams that
/// were already on their way unprocessed (always at least the one that made it send the GOAWAY):
/// the proxy sends those again on a new connection, and clients see no error, whether they speak
/// HTTP/2 (GET and POST) or HTTP/1.1. The proxy retries a refused stream once; with at most 40
/// requests in flight, a retried stream is among the first 50 of its new connection, so no
/// stream is refused twice.
fn upstream_goaway_mid_load_is_retried_without_client_errors(driver: Driver) {
    let upstream = PyServer::start(
        "h2_upstream.py",
        &["--name", "goaway", "--goaway-after", "50"],
    );
    let proxy = Proxy::start(&single_cluster("h2", upstream.address(), "", ""), driver, 2);
    let base = format!("http://{}", proxy.listener("main"));
    let body_dir = tempfile::tempdir().expect("temporary directory");
    let body = body_dir.path().join("body");
    std::fs::write(&body, pattern(1024)).expect("write the POST body");

    h2load(
        &[
            "-n",
            "600",
            "-c",
            "4",
            "-m",
            "10",
            &format!("{base}/delay/5"),
        ],
        RUN,
    )
    .assert_all_ok(600);
    h2load(
        &[
            "-n",
            "300",
            "-c",
            "2",
            "-m",
            "10",
            "-d",
            body.to_str().expect("UTF-8 path"),
            &format!("{base}/echo"),
        ],
        RUN,
    )
    .assert_all_ok(300);
    h2load(
        &["--h1", "-n", "300", "-c", "4", &format!("{base}/delay/2")],
        RUN,
    )
    .assert_all_ok(300);

    let goaways = upstream.count("goaway");
    let refused = upstream.count("refused");
    assert!(
        goaways >= 10,
        "the upstream sent GOAWAY {goaways} times for 1,200 requests"
    );
    assert!(
        refused >= goaways,
        "each GOAWAY left at least one stream unprocessed ({refused} for {goaways} GOAWAYs)"
    );
    assert_eq!(
        upstream.count("stream"),
        1200,
        "every request was processed exactly once"
    );
}

/// Routing by `:authority` and path, a weighted split, round robin over three endpoints, direct
/// responses and redirects, route and cluster metrics in `/stats/prometheus`, and the access log,
/// all for HTTP/2 requests.
fn routing_split_lb_metrics_and_access_log_work_for_http2(driver: Driver) {
    let endpoints: Vec<PyServer> = (0..3).map(|i| h2_upstream(&format!("rr{i}"))).collect();
    let blue = h2_upstream("blue");
    let green = h2_upstream("green");
    let log_dir = tempfile::tempdir().expect("temporary directory");
    let log = log_dir.path().join("access.log");
    let rr: Vec<String> = endpoints
        .iter()
        .map(|e| format!("\"{}\"", e.address()))
        .collect();
    let config = format!(
        r#"
[telemetry]
source_workload = "h2-tests"

[telemetry.access_log]
path = "{log}"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "api"
domains = ["api.test"]

[[virtual_hosts.routes]]
name = "lb"
match = {{ path_prefix = "/lb" }}
rewrite = {{ prefix = "/" }}
cluster = "rr"

[[virtual_hosts.routes]]
name = "split"
match = {{ path_prefix = "/split" }}
rewrite = {{ prefix = "/" }}
weighted_clusters = [{{ cluster = "blue", weight = 80 }}, {{ cluster = "green", weight = 20 }}]

[[virtual_hosts.routes]]
name = "direct"
match = {{ path_exact = "/direct" }}
direct_response = {{ status = 203, body = "direct over h2" }}

[[virtual_hosts.routes]]
name = "moved"
match = {{ path_exact = "/old" }}
redirect = {{ path = "/new", status = 308 }}

[[clusters]]
name = "rr"
endpoints = [{rr}]
protocol = "h2"
lb_policy = "round_robin"

[[clusters]]
name = "blue"
endpoints = ["{blue}"]
protocol = "h2"

[[clusters]]
name = "green"
endpoints = ["{green}"]
protocol = "h2"
"#,
        log = log.to_str().expect("UTF-8 path"),
        rr = rr.join(", "),
        blue = blue.address(),
        green = green.address(),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("main");
    let url = |path: &str| format!("http://{address}{path}");
    let api = ["-H", ":authority: api.test"];

    let lb = h2load(
        &[
            &api[..],
            &["-n", "300", "-c", "2", "-m", "4", &url("/lb/bytes/3")],
        ]
        .concat(),
        RUN,
    );
    lb.assert_all_ok(300);
    let split = h2load(
        &[
            &api[..],
            &["-n", "500", "-c", "2", "-m", "4", &url("/split/bytes/3")],
        ]
        .concat(),
        RUN,
    );
    split.assert_all_ok(500);

    // Round robin: per worker, so each endpoint gets a third give or take a few.
    for (i, endpoint) in endpoints.iter().enumerate() {
        let n = endpoint.count("stream");
        assert!(
            (90..=110).contains(&n),
            "endpoint {i} got {n} of 300 round-robin requests"
        );
        assert!(
            endpoint.events("stream").iter().all(|w| w[4] == "/bytes/3"),
            "the prefix was rewritten"
        );
    }
    // 80/20 of 500: 400 expected, sigma ~9; the range is wide enough never to flake.
    let (b, g) = (blue.count("stream"), green.count("stream"));
    assert_eq!(b + g, 500);
    assert!((340..=460).contains(&b), "blue got {b} of 500 at weight 80");

    // Local answers over HTTP/2.
    let (head, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: api.test",
        &url("/direct"),
    ]);
    assert!(head.starts_with("HTTP/2 203"), "{head}");
    assert_eq!(body, b"direct over h2");
    let (head, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: api.test",
        &url("/old?q=1"),
    ]);
    assert!(head.starts_with("HTTP/2 308"), "{head}");
    assert!(
        header(&head, "location").is_some_and(|l| l.ends_with("/new?q=1")),
        "{head}"
    );
    let (head, _) = curl(&["--http2-prior-knowledge", &url("/lb/bytes/3")]);
    assert!(
        head.starts_with("HTTP/2 404"),
        "no virtual host for 127.0.0.1: {head}"
    );

    // Metrics.
    let metrics = proxy.metrics();
    let route_2xx = |route: &str| {
        metrics.value(
            "ringmesh_route_responses_total",
            &[("route", route), ("class", "2xx")],
        )
    };
    assert_eq!(route_2xx("lb"), 300.0);
    assert_eq!(route_2xx("split"), 500.0);
    let istio = |cluster: &str| {
        metrics.sum(
            "istio_requests_total",
            &[("destination_service", cluster), ("response_code", "200")],
        )
    };
    assert_eq!(istio("rr"), 300.0);
    assert_eq!(istio("blue"), b as f64);
    assert_eq!(istio("green"), g as f64);
    assert_eq!(
        metrics.value(
            "ringmesh_listener_http2_streams_total",
            &[("listener", "main")]
        ),
        803.0
    );

    // Access log: one HTTP/2 line per request.
    let entries = wait_until(PATIENCE, "803 access-log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 803 {
            Ok(lines)
        } else {
            Err(format!("{} lines", lines.len()))
        }
    });
    assert_eq!(entries.len(), 803);
    assert!(entries.iter().all(|e| e["protocol"] == "HTTP/2"));
    let count = |route: &str| entries.iter().filter(|e| e["route"] == route).count();
    assert_eq!(
        (count("lb"), count("split"), count("direct"), count("moved")),
        (300, 500, 1, 1)
    );
    let no_route = entries
        .iter()
        .find(|e| e["route"] == "")
        .expect("the unrouted request is logged");
    assert_eq!(no_route["status"], 404);
    assert_eq!(no_route["response_flags"], "NR");
    let green_entry = entries
        .iter()
        .find(|e| e["cluster"] == "green")
        .expect("a request went to green");
    assert_eq!(green_entry["authority"], "api.test");
    assert_eq!(green_entry["upstream_host"], green.address().to_string());
}
