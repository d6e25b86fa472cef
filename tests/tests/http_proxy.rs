//! HTTP/1.1 proxying behaviour a client and an upstream can observe: keep-alive on both sides
//! (curl in front, Debian's nginx behind), pipelined requests answered in order, `Expect:
//! 100-continue`, HEAD/204/304 without bodies, trailers both ways, hop-by-hop and
//! `Connection`-named headers stripped both ways, and the forwarding headers
//! (`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id`). Every test runs on io_uring and on
//! epoll.

use std::time::Duration;

use tests::http::message::Fields;
use tests::http::{
    Client, HttpUpstream, Nginx, Request, Response, cluster, curl, http_listener, request_bytes,
    route, virtual_host,
};
use tests::{Driver, Proxy, both_drivers};

both_drivers!(
    keep_alive_on_both_sides_with_curl_and_nginx,
    pipelined_requests_are_answered_in_order,
    expect_100_continue_is_answered_before_the_body,
    head_204_and_304_carry_no_body_and_keep_the_connection_in_step,
    trailers_pass_through_both_ways,
    hop_by_hop_and_connection_named_headers_are_stripped_both_ways,
    forwarding_headers_and_request_ids,
    http_10_clients_keep_alive_only_when_asked,
);

/// A listener `web`, a cluster `backend` of `upstream`, and one catch-all route to it.
fn simple_config(upstream: std::net::SocketAddr, listener_extra: &str) -> String {
    [
        http_listener("web", listener_extra),
        cluster("backend", &[upstream], ""),
        virtual_host("default", &["*"], &route("all", "cluster = \"backend\"")),
    ]
    .concat()
}

/// 10 curl runs of 20 requests each through the proxy to nginx: curl keeps each of its
/// connections for its 20 requests (the proxy accepts 10 connections for 200 requests), and the
/// proxy's pool keeps the upstream side warm: nginx sees at most one connection per worker.
fn keep_alive_on_both_sides_with_curl_and_nginx(driver: Driver) {
    const RUNS: usize = 10;
    const PER_RUN: usize = 20;
    let nginx = Nginx::start("location / { try_files /index.html =404; }", |root| {
        std::fs::write(root.join("index.html"), "hello from nginx\n").expect("write index.html");
    });
    let proxy = Proxy::start(&simple_config(nginx.address(), ""), driver, 2);
    let address = proxy.listener("web");

    for run in 0..RUNS {
        let url = format!("http://{address}/run{run}/page[1-{PER_RUN}]");
        let output = curl([
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}\\n",
            &url,
        ]);
        assert!(output.status.success(), "curl: {}", output.stderr);
        let lines: Vec<String> = output.stdout_text().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), PER_RUN, "{lines:?}");
        assert!(lines.iter().all(|l| l == "200 17"), "{lines:?}");
    }

    let log = nginx.wait_for_log(RUNS * PER_RUN);
    assert_eq!(log.len(), RUNS * PER_RUN);
    assert!(log.iter().all(|l| l.status == 200 && l.method == "GET"));
    let mut connections: Vec<u64> = log.iter().map(|l| l.connection).collect();
    connections.sort_unstable();
    connections.dedup();
    assert!(
        connections.len() <= proxy.workers(),
        "nginx saw {} connections for {} requests: {connections:?}",
        connections.len(),
        log.len()
    );
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_listener_connections_accepted_total",
            &[("listener", "web")]
        ),
        RUNS as f64,
        "curl reused its connection for all the requests of a run"
    );
    let backend = [("cluster", "backend")];
    assert_eq!(
        metrics.value("ringmesh_cluster_upstream_connections_total", &backend),
        connections.len() as f64
    );
    assert_eq!(
        metrics.value("ringmesh_cluster_pool_reuse_total", &backend),
        (RUNS * PER_RUN - connections.len()) as f64
    );
}

/// Three requests in one write — the first slow, the second with a body — come back in order,
/// each answer matching its request. A request after one that asks to close is never
/// forwarded.
fn pipelined_requests_are_answered_in_order(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        if request.path() == "/slow" {
            std::thread::sleep(Duration::from_millis(300));
        }
        Response::ok(format!(
            "{} {} {}",
            request.method,
            request.target,
            request.body.len()
        ))
        .into()
    });
    let proxy = Proxy::start(&simple_config(upstream.address(), ""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let mut pipeline = request_bytes("GET", "/slow", "p.test", &[], b"");
    pipeline.extend(request_bytes("POST", "/body", "p.test", &[], b"0123456789"));
    pipeline.extend(request_bytes("GET", "/fast?x=1", "p.test", &[], b""));
    client.send(&pipeline);
    for expected in ["GET /slow 0", "POST /body 10", "GET /fast?x=1 0"] {
        let response = client.read_response("GET");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), expected);
    }
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(seen, ["/slow", "/body", "/fast?x=1"]);

    // After `Connection: close` the proxy answers, closes, and drops what followed.
    let mut pipeline = request_bytes("GET", "/last", "p.test", &[("connection", "close")], b"");
    pipeline.extend(request_bytes("GET", "/never", "p.test", &[], b""));
    client.send(&pipeline);
    let last = client.read_response("GET");
    assert_eq!(last.text(), "GET /last 0");
    assert_eq!(last.header("connection"), Some("close"));
    client.expect_closed(Duration::from_secs(10));
    assert!(
        upstream.requests().iter().all(|r| r.path() != "/never"),
        "a request after Connection: close was forwarded"
    );
}

/// `Expect: 100-continue`: the proxy answers 100 before the client sends its body (the client
/// waits for it), forwards the body without the `Expect` field, and the final answer follows.
/// curl sees the same.
fn expect_100_continue_is_answered_before_the_body(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        Response::ok(format!("got {} bytes", request.body.len())).into()
    });
    let proxy = Proxy::start(&simple_config(upstream.address(), ""), driver, 2);
    let address = proxy.listener("web");
    let body = tests::client::payload(50_000, 31);

    let mut client = Client::connect(address);
    let head = request_bytes(
        "POST",
        "/upload",
        "e.test",
        &[
            ("expect", "100-continue"),
            ("content-length", &body.len().to_string()),
        ],
        b"",
    );
    client.send(&head);
    let interim = client.read_response("POST");
    assert_eq!(interim.status, 100, "the proxy answers Expect itself");
    client.send(&body);
    let response = client.read_response("POST");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), format!("got {} bytes", body.len()));
    let request = upstream.wait_for_requests(1).remove(0);
    assert!(request.body == body, "the body arrived altered");
    assert_eq!(request.header("expect"), None, "{}", request.head_text());

    // A client that does not wait and sends its body with the head (allowed; a classic source
    // of desync): one 100, one answer, the body forwarded once, and the connection in step.
    let mut eager = request_bytes(
        "POST",
        "/eager",
        "e.test",
        &[("expect", "100-continue"), ("content-length", "5")],
        b"",
    );
    eager.extend_from_slice(b"hello");
    eager.extend(request_bytes("GET", "/after", "e.test", &[], b""));
    client.send(&eager);
    assert_eq!(client.read_response("POST").status, 100);
    let answer = client.read_response("POST");
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "got 5 bytes")
    );
    let after = client.read_response("GET");
    assert_eq!((after.status, after.text().as_str()), (200, "got 0 bytes"));
    let seen = upstream.wait_for_requests(3);
    assert_eq!(seen[1].body, b"hello");
    assert_eq!(seen[2].path(), "/after");

    // curl waits for the 100 (up to a second) before sending; -i shows the interim answer.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &body).expect("write the body");
    let output = curl([
        "-i".to_owned(),
        "-H".to_owned(),
        "Expect: 100-continue".to_owned(),
        "--data-binary".to_owned(),
        format!("@{}", file.path().display()),
        format!("http://{address}/curl"),
    ]);
    assert!(
        output
            .stdout_text()
            .starts_with("HTTP/1.1 100 Continue\r\n"),
        "{}",
        output.stdout_text()
    );
    let response = output.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), format!("got {} bytes", body.len()));
}

/// On one connection: HEAD (with a `Content-Length` and with chunked framing), 204, and 304
/// answers have no body, their framing fields are kept for HEAD and 304, and the request after
/// each is answered correctly, so the framing never slips.
fn head_204_and_304_carry_no_body_and_keep_the_connection_in_step(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        let response = match request.path() {
            "/file" => Response::ok(vec![b'x'; 1000]),
            "/chunked" => Response::ok(vec![b'y'; 300]).chunked(),
            "/empty" => Response::new(204),
            "/cached" => Response::new(304)
                .with_header("content-length", "1000")
                .with_header("etag", "\"v1\""),
            other => Response::ok(format!("after {other}")),
        };
        response.into()
    });
    let proxy = Proxy::start(&simple_config(upstream.address(), ""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let head = client.request(&request_bytes("HEAD", "/file", "h.test", &[], b""));
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    assert!(head.body.is_empty());
    assert_eq!(client.get("h.test", "/one").text(), "after /one");

    let head = client.request(&request_bytes("HEAD", "/chunked", "h.test", &[], b""));
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(client.get("h.test", "/two").text(), "after /two");

    let empty = client.get("h.test", "/empty");
    assert_eq!(empty.status, 204);
    assert!(empty.body.is_empty());
    assert_eq!(empty.header("transfer-encoding"), None);
    assert_eq!(client.get("h.test", "/three").text(), "after /three");

    let cached = client.request(&request_bytes(
        "GET",
        "/cached",
        "h.test",
        &[("if-none-match", "\"v1\"")],
        b"",
    ));
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("content-length"), Some("1000"));
    assert_eq!(cached.header("etag"), Some("\"v1\""));
    assert!(cached.body.is_empty());
    assert_eq!(client.get("h.test", "/four").text(), "after /four");

    // A GET of the same resources returns the full bodies.
    assert_eq!(client.get("h.test", "/file").body.len(), 1000);
    assert_eq!(client.get("h.test", "/chunked").body.len(), 300);
}

/// Trailers of a chunked request reach the upstream; trailers of a chunked response reach the
/// client. An HTTP/1.0 client, which cannot read chunked framing, gets the body decoded and
/// delimited by the close.
fn trailers_pass_through_both_ways(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        Response::ok(format!("body of {}", request.path()))
            .with_trailer("x-checksum", "c0ffee")
            .with_trailer("x-status", "done")
            .into()
    });
    let proxy = Proxy::start(&simple_config(upstream.address(), ""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    client.send(
        b"POST /upload HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\nx-more: yes\r\n\r\n",
    );
    let response = client.read_response("POST");
    assert_eq!(response.status, 200);
    assert!(response.chunked, "{}", response.head_text());
    assert_eq!(response.text(), "body of /upload");
    let expected: Fields = vec![
        ("x-checksum".into(), "c0ffee".into()),
        ("x-status".into(), "done".into()),
    ];
    assert_eq!(response.trailers, expected);
    let request = upstream.wait_for_requests(1).remove(0);
    assert_eq!(request.body, b"hello world");
    assert_eq!(
        request.headers_named("transfer-encoding"),
        vec!["chunked"],
        "framing is re-emitted once, canonically:\n{}",
        request.head_text()
    );
    assert!(request.headers_named("content-length").is_empty());
    assert_eq!(request.header("trailer"), Some("x-sum"));
    let expected: Fields = vec![
        ("x-sum".into(), "42".into()),
        ("x-more".into(), "yes".into()),
    ];
    assert_eq!(request.trailers, expected);

    let mut old = Client::connect(proxy.listener("web"));
    old.send(b"GET /old HTTP/1.0\r\nHost: t.test\r\n\r\n");
    let response = old.read_response("GET");
    assert_eq!(response.status, 200);
    assert!(!response.chunked, "{}", response.head_text());
    assert_eq!(response.header("content-length"), None);
    assert_eq!(
        response.text(),
        "body of /old",
        "the body was read until the close"
    );
}

/// RFC 9110 §7.6.1: `Connection` and the fields it names, `Keep-Alive`, `Proxy-Connection`,
/// `TE` and a non-upgrade `Upgrade` never cross the proxy, in either direction — including the
/// Pingora CVE case `Connection: keep-alive, X-Internal-Auth`. The upstream's `Connection:
/// close` closes only the upstream connection: the client's stays open and the next request
/// goes out on a new upstream connection.
fn hop_by_hop_and_connection_named_headers_are_stripped_both_ways(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        let response = Response::ok("ok")
            .with_header("Connection", "X-Backend-Secret, Keep-Alive")
            .with_header("X-Backend-Secret", "internal")
            .with_header("Keep-Alive", "timeout=5, max=100")
            .with_header("Proxy-Connection", "keep-alive")
            .with_header("X-Fine", "yes");
        if request.path() == "/closing" {
            Response::ok("closing")
                .with_header("Connection", "close")
                .into()
        } else {
            response.into()
        }
    });
    let proxy = Proxy::start(&simple_config(upstream.address(), ""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let response = client.request(&request_bytes(
        "GET",
        "/hop",
        "hop.test",
        &[
            ("Connection", "keep-alive, X-Internal-Auth, x-other"),
            ("X-Internal-Auth", "secret"),
            ("X-Other", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("X-Fine", "yes"),
        ],
        b"",
    ));
    assert_eq!(response.status, 200);
    let request = upstream.wait_for_requests(1).remove(0);
    for name in [
        "x-internal-auth",
        "x-other",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            request.headers_named(name).is_empty(),
            "{name} reached the upstream:\n{}",
            request.head_text()
        );
    }
    for value in request.headers_named("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-internal-auth"),
            "{}",
            request.head_text()
        );
    }
    assert_eq!(request.header("x-fine"), Some("yes"));

    for name in ["x-backend-secret", "keep-alive", "proxy-connection"] {
        assert!(
            response.headers_named(name).is_empty(),
            "{name} reached the client:\n{}",
            response.head_text()
        );
    }
    assert!(
        response
            .headers_named("connection")
            .iter()
            .all(|v| !v.contains("X-Backend"))
    );
    assert_eq!(response.header("x-fine"), Some("yes"));

    // The upstream closes its side: the client's connection is not closed for it.
    let closing = client.get("hop.test", "/closing");
    assert_eq!(closing.text(), "closing");
    assert_eq!(
        closing.header("connection"),
        None,
        "{}",
        closing.head_text()
    );
    let after = client.get("hop.test", "/after");
    assert_eq!(after.status, 200);
    let requests = upstream.wait_for_requests(3);
    assert_eq!(requests[1].path(), "/closing");
    assert_eq!(requests[2].path(), "/after");
    assert_ne!(
        requests[2].connection, requests[1].connection,
        "a connection the upstream closed was used again"
    );
}

/// Whether `id` looks like a random (version 4) UUID.
fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && id
            .chars()
            .all(|c| c == '-' || (c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

/// `X-Forwarded-For` gets the client's address appended (several fields become one list);
/// `X-Forwarded-Proto` from an untrusted client is replaced by the real scheme, and kept behind
/// a listener that trusts one hop; `X-Request-Id` is generated (a UUID, fresh per request) when
/// missing or unusable and passed on unchanged otherwise — exactly one of each field upstream.
fn forwarding_headers_and_request_ids(driver: Driver) {
    let upstream = HttpUpstream::start(|_: &Request| Response::ok("ok").into());
    let config = [
        simple_config(upstream.address(), ""),
        http_listener("edge", "xff_trusted_hops = 1"),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);

    let mut client = Client::connect(proxy.listener("web"));
    let send = |client: &mut Client, fields: &[(&str, &str)]| -> Request {
        let before = upstream.request_count();
        let response = client.request(&request_bytes("GET", "/f", "fwd.test", fields, b""));
        assert_eq!(response.status, 200);
        upstream.wait_for_requests(before + 1).remove(before)
    };

    let plain = send(&mut client, &[]);
    assert_eq!(plain.headers_named("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(plain.headers_named("x-forwarded-proto"), vec!["http"]);
    let generated = plain.headers_named("x-request-id");
    assert_eq!(generated.len(), 1, "{}", plain.head_text());
    assert!(is_uuid_v4(generated[0]), "generated id {:?}", generated[0]);

    let again = send(&mut client, &[]);
    assert_ne!(
        again.header("x-request-id"),
        plain.header("x-request-id"),
        "ids are fresh"
    );

    let forwarded = send(
        &mut client,
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-Id", "req-123_abc"),
        ],
    );
    assert_eq!(
        forwarded.headers_named("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(
        forwarded.headers_named("x-forwarded-proto"),
        vec!["http"],
        "an untrusted client's scheme is not believed"
    );
    assert_eq!(forwarded.headers_named("x-request-id"), vec!["req-123_abc"]);

    let listed = send(
        &mut client,
        &[
            ("X-Forwarded-For", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
        ],
    );
    assert_eq!(
        listed.headers_named("x-forwarded-for"),
        vec!["198.51.100.1, 10.0.0.1, 10.0.0.2, 127.0.0.1"]
    );

    let unusable = send(&mut client, &[("X-Request-Id", "has spaces in it")]);
    let replaced = unusable.headers_named("x-request-id");
    assert_eq!(replaced.len(), 1);
    assert!(
        is_uuid_v4(replaced[0]),
        "unusable id replaced by {:?}",
        replaced[0]
    );
    let too_long = "a".repeat(200);
    let long = send(&mut client, &[("X-Request-Id", &too_long)]);
    assert!(long.header("x-request-id").is_some_and(is_uuid_v4));

    // An absolute-form target: its authority wins over Host (RFC 9112 §3.2.2), and the upstream
    // gets the origin form.
    let before = upstream.request_count();
    let response =
        client.request(b"GET http://abs.test/x?y=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n");
    assert_eq!(response.status, 200);
    let absolute = upstream.wait_for_requests(before + 1).remove(before);
    assert_eq!(absolute.target, "/x?y=1");
    assert_eq!(absolute.headers_named("host"), vec!["abs.test"]);

    let mut edge = Client::connect(proxy.listener("edge"));
    let trusted = send(&mut edge, &[("X-Forwarded-Proto", "https")]);
    assert_eq!(
        trusted.headers_named("x-forwarded-proto"),
        vec!["https"],
        "a trusted hop's scheme is kept"
    );
}

/// HTTP/1.0 clients: without `Connection: keep-alive` the connection closes after the answer;
/// with it, the answer says `connection: keep-alive` and the connection serves the next request;
/// without a Host, the upstream (spoken to in HTTP/1.1) gets the listener's address as Host.
fn http_10_clients_keep_alive_only_when_asked(driver: Driver) {
    let upstream = HttpUpstream::start(|request: &Request| {
        Response::ok(format!(
            "{} {} host={}",
            request.version,
            request.target,
            request.header("host").unwrap_or("-")
        ))
        .into()
    });
    let proxy = Proxy::start(&simple_config(upstream.address(), ""), driver, 2);
    let address = proxy.listener("web");

    let mut plain = Client::connect(address);
    plain.send(b"GET /a HTTP/1.0\r\nHost: old.test\r\n\r\n");
    let response = plain.read_response("GET");
    assert_eq!(response.text(), "HTTP/1.1 /a host=old.test");
    assert_eq!(response.header("connection"), Some("close"));
    plain.expect_closed(Duration::from_secs(10));

    let mut kept = Client::connect(address);
    for target in ["/b", "/c"] {
        kept.send(
            format!("GET {target} HTTP/1.0\r\nHost: old.test\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        );
        let response = kept.read_response("GET");
        assert_eq!(response.text(), format!("HTTP/1.1 {target} host=old.test"));
        assert_eq!(response.header("connection"), Some("keep-alive"));
    }

    let mut hostless = Client::connect(address);
    hostless.send(b"GET /d HTTP/1.0\r\n\r\n");
    let response = hostless.read_response("GET");
    assert_eq!(response.text(), format!("HTTP/1.1 /d host={address}"));
}
