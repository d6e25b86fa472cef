//! Upstream connections and misbehaving upstreams (`reliability-plan.md` A4 and A5): a
//! connection goes back to the pool only after a complete exchange with nothing left over, so a
//! truncated body, extra bytes after a response (at once or late) or a body on a bodiless
//! answer never reach the next request; a malformed response head is a 502 and its connection
//! is thrown away. Every test runs on io_uring and on epoll.

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::http::{
    Client, HttpUpstream, Reply, Request, Response, cluster, http_listener, request_bytes, route,
    virtual_host,
};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers};

both_drivers!(
    a_client_that_aborts_mid_body_never_leaves_half_a_request_on_a_pooled_connection,
    a_truncated_body_closes_the_client_and_never_poisons_the_next_request,
    extra_bytes_after_a_response_never_reach_the_next_request,
    bytes_arriving_on_an_idle_pooled_connection_never_reach_the_next_request,
    malformed_upstream_responses_are_502_and_the_connection_is_discarded,
);

/// A listener, one cluster `backend`, and a catch-all route with `route_extra` lines.
fn config(upstream: std::net::SocketAddr, route_extra: &str) -> String {
    [
        http_listener("web", ""),
        cluster("backend", &[upstream], ""),
        virtual_host(
            "default",
            &["*"],
            &route("all", &format!("cluster = \"backend\"\n{route_extra}")),
        ),
    ]
    .concat()
}

/// A normal answer naming the path and the upstream connection it was served on.
fn fresh(request: &Request) -> Reply {
    Response::ok(format!(
        "fresh {} on {}",
        request.path(),
        request.connection
    ))
    .into()
}

/// The upstream connection the request for `path` arrived on (the last such request).
fn connection_of(upstream: &HttpUpstream, path: &str) -> usize {
    upstream
        .requests()
        .iter()
        .rev()
        .find(|r| r.path() == path)
        .unwrap_or_else(|| panic!("no request for {path} reached the upstream"))
        .connection
}

/// A client sends half of a 1000-byte body and goes away. The upstream connection that carried
/// half a request cannot carry another (the upstream would read the next request as the rest of
/// the body), so the next request, on the same worker, goes out on a new connection and is
/// answered correctly.
fn a_client_that_aborts_mid_body_never_leaves_half_a_request_on_a_pooled_connection(
    driver: Driver,
) {
    let upstream = HttpUpstream::start(fresh);
    // One worker, so that both clients share one pool.
    let proxy = Proxy::start(&config(upstream.address(), ""), driver, 1);
    let address = proxy.listener("web");

    let mut aborting = Client::connect(address);
    aborting.send(b"POST /abort HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n");
    aborting.send(&[b'a'; 500]);
    tests::wait_until(
        PATIENCE,
        "the first half of the body at the upstream",
        || match upstream.bytes_received() {
            n if n >= 500 => Ok(()),
            n => Err(format!("{n} bytes")),
        },
    );
    drop(aborting);

    let mut next = Client::connect(address);
    let response = next.get("a.test", "/next");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.text(),
        "fresh /next on 1",
        "the next request must go out on a second upstream connection"
    );
    assert!(
        upstream.requests().iter().all(|r| r.path() != "/abort"),
        "the aborted request was completed at the upstream"
    );
}

/// A body cut short — the upstream closes, or stalls until the route timeout — cannot be
/// completed, so the client's connection is closed after what arrived; the next request goes
/// out on a new upstream connection and gets its own answer.
fn a_truncated_body_closes_the_client_and_never_poisons_the_next_request(driver: Driver) {
    let head_and_half = |path: &str| {
        let mut bytes = format!("HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-path: {path}\r\n\r\n")
            .into_bytes();
        bytes.extend_from_slice(&[b'h'; 50]);
        bytes
    };
    let upstream = HttpUpstream::start(move |request: &Request| match request.path() {
        "/cut-and-close" => Reply::RawThenClose(head_and_half("/cut-and-close")),
        "/cut-and-stall" => Reply::Raw(head_and_half("/cut-and-stall")),
        _ => fresh(request),
    });
    let proxy = Proxy::start(&config(upstream.address(), "timeout = \"1s\""), driver, 2);
    let address = proxy.listener("web");

    for cut in ["/cut-and-close", "/cut-and-stall"] {
        let mut client = Client::connect(address);
        client.send(&request_bytes("GET", cut, "t.test", &[], b""));
        let error = client
            .try_read_response("GET")
            .expect_err("a truncated body cannot be read whole");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "{cut}: {error}"
        );

        let mut next = Client::connect(address);
        let after = format!("/after{cut}");
        let response = next.get("t.test", &after);
        assert_eq!(response.status, 200, "{cut}");
        assert!(
            response.text().starts_with(&format!("fresh {after} on ")),
            "{cut}: {}",
            response.text()
        );
        assert_ne!(
            connection_of(&upstream, &after),
            connection_of(&upstream, cut),
            "{cut}: the connection of a truncated response was used again"
        );
    }
}

/// Bytes after a complete response in the same write (a second response nobody asked for),
/// a body after a 204, a body after the answer to HEAD: the client gets exactly the answer to
/// its request, and the next request goes out on a new upstream connection.
fn extra_bytes_after_a_response_never_reach_the_next_request(driver: Driver) {
    const POISON: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\npoisoned";
    let upstream = HttpUpstream::start(|request: &Request| match request.path() {
        "/extra" => Reply::Raw(
            format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello{POISON}").into_bytes(),
        ),
        "/no-content" => {
            Reply::Raw(format!("HTTP/1.1 204 No Content\r\n\r\n{POISON}").into_bytes())
        }
        "/head" => Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec()),
        _ => fresh(request),
    });
    let proxy = Proxy::start(&config(upstream.address(), ""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    for (method, path, status, body) in [
        ("GET", "/extra", 200, "hello"),
        ("GET", "/no-content", 204, ""),
        ("HEAD", "/head", 200, ""),
    ] {
        let response = client.request(&request_bytes(method, path, "x.test", &[], b""));
        assert_eq!(
            (response.status, response.text().as_str()),
            (status, body),
            "{path}"
        );
        let after = format!("/after{path}");
        let next = client.get("x.test", &after);
        assert!(
            next.text().starts_with(&format!("fresh {after} on ")),
            "{path}: the next request got {:?}",
            next.text()
        );
        assert_ne!(
            connection_of(&upstream, &after),
            connection_of(&upstream, path),
            "{path}: a connection with bytes left over went back to the pool"
        );
    }
}

/// The upstream answers completely, and only afterwards — while its connection sits idle in the
/// proxy's pool — sends a second, unsolicited response. The next request must not be answered
/// with it: the proxy has to notice the unread bytes and use another connection.
fn bytes_arriving_on_an_idle_pooled_connection_never_reach_the_next_request(driver: Driver) {
    let (written, poisoned) = mpsc::channel::<()>();
    let written = Arc::new(Mutex::new(written));
    let upstream = HttpUpstream::start(move |request: &Request| {
        if request.path() != "/then-poison" {
            return fresh(request);
        }
        let written = Arc::clone(&written);
        Reply::write(move |stream| {
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")?;
            // Late enough that the proxy has finished the exchange and pooled the connection.
            std::thread::sleep(Duration::from_millis(200));
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\npoisoned")?;
            let _ = written.lock().expect("signal").send(());
            Ok(())
        })
    });
    let proxy = Proxy::start(&config(upstream.address(), ""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let first = client.get("p.test", "/then-poison");
    assert_eq!(first.text(), "hello");
    poisoned
        .recv_timeout(PATIENCE)
        .expect("the upstream sent its unsolicited response");
    let next = client.get("p.test", "/next");
    assert!(
        next.text().starts_with("fresh /next on "),
        "the next request was answered with {:?}",
        next.text()
    );
    assert_ne!(
        connection_of(&upstream, "/next"),
        connection_of(&upstream, "/then-poison")
    );
}

/// Malformed response heads, each answered 502 (and counted as an upstream protocol error);
/// the connection they came on is never used again, and the client's connection, whose request
/// was complete, stays usable.
fn malformed_upstream_responses_are_502_and_the_connection_is_discarded(driver: Driver) {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "both Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "conflicting Content-Length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
        ),
        ("malformed Content-Length", b"HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello".to_vec()),
        ("negative Content-Length", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n".to_vec()),
        (
            "unsupported transfer coding",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhello".to_vec(),
        ),
        (
            "chunked not last",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        ("bare LF line endings", b"HTTP/1.1 200 OK\ncontent-length: 5\n\nhello".to_vec()),
        ("bare CR in a field", b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 0\r\n\r\n".to_vec()),
        ("NUL in a field", b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 0\r\n\r\n".to_vec()),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 0\r\n\r\n".to_vec()),
        (
            "space before the colon",
            b"HTTP/1.1 200 OK\r\ncontent-length : 5\r\n\r\nhello".to_vec(),
        ),
        ("status out of range", b"HTTP/1.1 999 Nope\r\ncontent-length: 0\r\n\r\n".to_vec()),
        ("two-digit status", b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n".to_vec()),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()),
        (
            "101 to a request that asked for no upgrade",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".to_vec(),
        ),
        (
            "head over 64 KiB",
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "b".repeat(70 * 1024))
                .into_bytes(),
        ),
    ];
    let answers: Arc<Vec<Vec<u8>>> =
        Arc::new(cases.iter().map(|(_, bytes)| bytes.clone()).collect());
    let upstream = {
        let answers = Arc::clone(&answers);
        HttpUpstream::start(move |request: &Request| {
            // "/bad/<i>" gets malformed answer i and the connection stays open: only the proxy
            // can decide not to use it again.
            match request
                .path()
                .strip_prefix("/bad/")
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => Reply::Raw(answers[i].clone()),
                None => fresh(request),
            }
        })
    };
    // A route timeout bounds a head that never completes: such a case fails with 504 instead
    // of hanging.
    let proxy = Proxy::start(&config(upstream.address(), "timeout = \"5s\""), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let mut failures = Vec::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        let bad = format!("/bad/{i}");
        let response = client.get("m.test", &bad);
        if response.status != 502 {
            failures.push(format!(
                "{name}: {} {}",
                response.status,
                response.text().trim()
            ));
        }
        if response.header("connection") == Some("close") {
            client = Client::connect(proxy.listener("web"));
        }
        let check = format!("/check/{i}");
        let next = client.get("m.test", &check);
        assert!(
            next.text().starts_with(&format!("fresh {check} on ")),
            "{name}: the next request got {:?}",
            next.text()
        );
        assert_ne!(
            connection_of(&upstream, &check),
            connection_of(&upstream, &bad),
            "{name}: the connection of a malformed response was used again"
        );
    }
    assert!(
        failures.is_empty(),
        "not answered 502:\n{}",
        failures.join("\n")
    );
    let errors = proxy.metrics().value(
        "ringmesh_cluster_upstream_protocol_errors_total",
        &[("cluster", "backend")],
    );
    assert_eq!(
        errors,
        cases.len() as f64,
        "upstream protocol errors counted"
    );
}
