//! The strict HTTP/1.1 framing policy against a smuggling corpus over raw sockets
//! (`reliability-plan.md` §3.2 and test A1): every ambiguous or malformed request is refused
//! with its status, the connection is closed with nothing after that one response (no second,
//! desynchronised answer), and the upstream receives zero bytes — not a head, not a body byte.
//! Runs on io_uring and on epoll.

use std::time::Duration;

use tests::http::{
    Client, HttpUpstream, Request, Response, cluster, http_listener, route, virtual_host,
};
use tests::{Driver, Proxy, both_drivers};

both_drivers!(smuggling_corpus_is_refused_and_nothing_reaches_the_upstream);

/// How long a refused connection may take to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// One case: a name, the raw bytes sent in one write, and the status expected.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        status,
    }
}

fn corpus() -> Vec<Case> {
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: s\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: s\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: s\r\n\r\n", "a".repeat(9000));
    vec![
        // Content-Length and Transfer-Encoding together, either order.
        case(
            "CL then TE",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE then CL",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
        // Content-Length variants.
        case(
            "duplicate CL, different values",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        ),
        case(
            "duplicate CL, same value",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
        case(
            "CL list",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 0, 44\r\n\r\n",
            400,
        ),
        case(
            "CL with a plus sign",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: +5\r\n\r\nhello",
            400,
        ),
        case(
            "negative CL",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        case(
            "hex CL",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 0x5\r\n\r\nhello",
            400,
        ),
        case(
            "CL with a space inside",
            "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 1 0\r\n\r\n0123456789",
            400,
        ),
        // Transfer-Encoding variants.
        case(
            "TE xchunked",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE chunked, gzip",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE chunked, chunked",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE chunked in two fields",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE gzip, chunked (unsupported coding)",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        case(
            "TE with a space before the colon",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE through obs-fold",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE with a vertical tab",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        case(
            "TE in HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        // Line endings and characters in the head.
        case(
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: s\r\nX-Folded: a\r\n b\r\n\r\n",
            400,
        ),
        case(
            "NUL in a value",
            "GET / HTTP/1.1\r\nHost: s\r\nX-A: a\0b\r\n\r\n",
            400,
        ),
        case(
            "bare CR in a value",
            "GET / HTTP/1.1\r\nHost: s\r\nX-A: a\rb\r\n\r\n",
            400,
        ),
        case(
            "bare LF ending a field",
            "GET / HTTP/1.1\r\nHost: s\nX-A: b\r\n\r\n",
            400,
        ),
        case(
            "bare LF ending the request line",
            "GET / HTTP/1.1\nHost: s\r\n\r\n",
            400,
        ),
        case("bare LF head", "GET / HTTP/1.1\nHost: s\n\n", 400),
        case(
            "control character in a value",
            "GET / HTTP/1.1\r\nHost: s\r\nX-A: a\x01b\r\n\r\n",
            400,
        ),
        case(
            "field without a colon",
            "GET / HTTP/1.1\r\nHost: s\r\nX-No-Colon\r\n\r\n",
            400,
        ),
        case(
            "space in a field name",
            "GET / HTTP/1.1\r\nHost: s\r\nX Bad: v\r\n\r\n",
            400,
        ),
        case(
            "empty field name",
            "GET / HTTP/1.1\r\nHost: s\r\n: v\r\n\r\n",
            400,
        ),
        // Host.
        case(
            "missing Host in HTTP/1.1",
            "GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
            400,
        ),
        case(
            "duplicate Host",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
        ),
        case("malformed Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        case(
            "duplicate Connection",
            "GET / HTTP/1.1\r\nHost: s\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            400,
        ),
        // Request targets.
        case(
            "fragment in the target",
            "GET /a#b HTTP/1.1\r\nHost: s\r\n\r\n",
            400,
        ),
        case(
            "userinfo in an absolute target",
            "GET http://user@s/ HTTP/1.1\r\nHost: s\r\n\r\n",
            400,
        ),
        case(
            "asterisk outside OPTIONS",
            "GET * HTTP/1.1\r\nHost: s\r\n\r\n",
            400,
        ),
        case(
            "CONNECT without a port",
            "CONNECT s HTTP/1.1\r\nHost: s\r\n\r\n",
            400,
        ),
        case(
            "unsupported HTTP version",
            "GET / HTTP/1.2\r\nHost: s\r\n\r\n",
            505,
        ),
        // Chunked bodies.
        case(
            "chunk size overflow",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
            400,
        ),
        case(
            "negative chunk size",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
            400,
        ),
        case(
            "0x chunk size",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        case(
            "bare LF after a chunk size",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            400,
        ),
        case(
            "bare LF in a chunk extension",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\nhello\r\n0\r\n\r\n",
            400,
        ),
        case(
            "bare LF after chunk data",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
            400,
        ),
        case(
            "chunk data longer than its size",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        case(
            "NUL in a trailer",
            "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\0b\r\n\r\n",
            400,
        ),
        // Limits.
        case("request line too long", long_line, 414),
        case("head too large", huge_header, 431),
        case("too many fields", many_headers, 431),
        case(
            "unsupported Expect",
            "POST / HTTP/1.1\r\nHost: s\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
            417,
        ),
        case(
            "Content-Length over the route's body limit",
            "POST /limited HTTP/1.1\r\nHost: s\r\nContent-Length: 5000\r\n\r\n",
            413,
        ),
        case(
            "chunked body over the route's body limit",
            format!(
                "POST /limited HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
                "b".repeat(0x800)
            ),
            413,
        ),
    ]
}

/// Each case on its own connection, its bytes in one write: the expected status, then the
/// connection closes with nothing more; the upstream never receives a byte. A valid request at
/// the end proves the upstream was reachable all along, and that it then received exactly that
/// request and nothing else.
fn smuggling_corpus_is_refused_and_nothing_reaches_the_upstream(driver: Driver) {
    let upstream = HttpUpstream::start(|_: &Request| Response::ok("reached").into());
    let routes = [
        route(
            "limited",
            "match = { path_prefix = \"/limited\" }\ncluster = \"backend\"\nmax_request_body = \"1KiB\"",
        ),
        route("all", "cluster = \"backend\""),
    ]
    .concat();
    let config = [
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host("default", &["*"], &routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("web");

    let cases = corpus();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    for case in &cases {
        let mut client = Client::connect(address);
        // The proxy may refuse and close before reading everything (414, 431): a failed write
        // is fine as long as the answer arrives.
        let _ = client.wire().write_all(&case.bytes);
        let method = if case.bytes.starts_with(b"POST") {
            "POST"
        } else {
            "GET"
        };
        let response = client
            .try_read_response(method)
            .unwrap_or_else(|e| panic!("{}: no response: {e}", case.name));
        assert_eq!(
            response.status,
            case.status,
            "{}: {}",
            case.name,
            response.text()
        );
        assert_eq!(
            response.header("connection"),
            Some("close"),
            "{}: a refusal announces the close",
            case.name
        );
        client.expect_closed(CLOSE_WITHIN);
        assert_eq!(
            upstream.bytes_received(),
            0,
            "{}: the upstream received bytes: {:?}",
            case.name,
            upstream
                .requests()
                .iter()
                .map(Request::head_text)
                .collect::<Vec<_>>()
        );
    }

    // The barrier: a valid request reaches the upstream, and it is all the upstream ever got.
    let mut client = Client::connect(address);
    let response = client.get("s", "/valid");
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "reached")
    );
    let requests = upstream.wait_for_requests(1);
    assert_eq!(
        requests.len(),
        1,
        "{:?}",
        requests.iter().map(Request::head_text).collect::<Vec<_>>()
    );
    assert_eq!(requests[0].target, "/valid");
    assert_eq!(
        upstream.bytes_received(),
        requests[0].raw_head.len(),
        "bytes received besides the valid request"
    );
}
