//! Upgrade and CONNECT: a WebSocket echo through the proxy, and the gating rule (Pingora
//! CVE-2026-2833): bytes a client sends right after an Upgrade or CONNECT head stay in the proxy
//! until the upstream answers 101 (or 2xx to CONNECT); when it answers anything else they are
//! never forwarded as raw bytes. Every test runs on io_uring and on epoll.

use std::io::Write;
use std::net::Shutdown;
use std::sync::mpsc;
use std::time::Duration;

use tests::http::message::{Wire, read_request};
use tests::http::websocket::{self, BINARY, CLOSE, PING, PONG, TEXT, accept_key, frame};
use tests::http::{
    Client, HttpUpstream, Request, Response, cluster, http_listener, request_bytes, route,
    virtual_host,
};
use tests::upstream::Upstream;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers};

both_drivers!(
    websocket_echo_through_the_proxy,
    no_byte_after_an_upgrade_head_is_forwarded_before_101,
    upgrade_refused_with_200_never_forwards_the_trailing_bytes,
    connect_is_tunnelled_only_after_2xx,
    connect_refused_never_forwards_the_trailing_bytes,
);

/// How long an upstream watches for bytes that must not come before it answers.
const WATCH: Duration = Duration::from_millis(500);

fn config(routes: &str, clusters: &str) -> String {
    [
        http_listener("web", ""),
        clusters.to_owned(),
        routes.to_owned(),
    ]
    .concat()
}

fn one_route(upstream: std::net::SocketAddr) -> String {
    config(
        &virtual_host("default", &["*"], &route("all", "cluster = \"backend\"")),
        &cluster("backend", &[upstream], ""),
    )
}

/// A WebSocket echo server: checks the handshake, answers 101, then echoes data frames, answers
/// pings, and returns a close. Each handshake request is sent on `heads`.
fn websocket_server(heads: mpsc::Sender<Request>) -> Upstream {
    Upstream::spawn(move |stream, index| {
        let mut wire = Wire::new(stream);
        let Ok(Some(request)) = read_request(&mut wire, index, 0) else {
            return;
        };
        let key = request
            .header("sec-websocket-key")
            .unwrap_or_default()
            .to_owned();
        let _ = heads.send(request);
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        );
        if wire.write_all(answer.as_bytes()).is_err() {
            return;
        }
        loop {
            let Ok((opcode, payload)) = websocket::read_frame(&mut wire) else {
                return;
            };
            let reply = match opcode {
                PING => frame(PONG, &payload, None),
                CLOSE => {
                    let _ = wire.write_all(&frame(CLOSE, &payload, None));
                    let _ = wire.stream.shutdown(Shutdown::Write);
                    return;
                }
                other => frame(other, &payload, None),
            };
            if wire.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

/// A WebSocket session through the proxy: handshake (101 with the right accept key, the
/// upgrade fields passed on), a text message, a 100 KB binary message, a ping, and the closing
/// handshake, after which the connection ends.
fn websocket_echo_through_the_proxy(driver: Driver) {
    let (heads, handshakes) = mpsc::channel();
    let server = websocket_server(heads);
    let proxy = Proxy::start(&one_route(server.address()), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    client.send(&request_bytes(
        "GET",
        "/chat",
        "ws.test",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    ));
    let response = client.read_response("GET");
    assert_eq!(response.status, 101, "{}", response.head_text());
    assert_eq!(response.header("upgrade"), Some("websocket"));
    assert!(
        response
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade"))
    );
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some(accept_key(key).as_str())
    );
    let handshake = handshakes
        .recv_timeout(PATIENCE)
        .expect("the upstream got the handshake");
    assert_eq!(handshake.header("upgrade"), Some("websocket"));
    assert!(
        handshake
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade"))
    );
    assert_eq!(handshake.header("sec-websocket-key"), Some(key));
    assert_eq!(handshake.header("sec-websocket-version"), Some("13"));

    let mask = Some([0x37, 0xfa, 0x21, 0x3d]);
    let big = tests::client::payload(100_000, 41);
    for (opcode, payload, answer) in [
        (TEXT, b"Hello".to_vec(), TEXT),
        (BINARY, big, BINARY),
        (PING, b"are you there".to_vec(), PONG),
    ] {
        client.send(&frame(opcode, &payload, mask));
        let (got, echoed) = websocket::read_frame(client.wire()).expect("an echoed frame");
        assert_eq!(got, answer);
        assert!(echoed == payload, "frame {opcode} came back altered");
    }
    let status = 1000u16.to_be_bytes();
    client.send(&frame(CLOSE, &status, mask));
    let (got, payload) = websocket::read_frame(client.wire()).expect("the close answer");
    assert_eq!((got, payload.as_slice()), (CLOSE, &status[..]));
    client.expect_closed(PATIENCE);
}

/// An upstream for the gating tests: reads a head, watches for `WATCH` whether any byte follows
/// it (none may before it answers), answers `answer`, then echoes everything until the client's
/// FIN. Sends (head, bytes seen before answering, bytes after) on `observed`.
fn gated_echo(
    answer: &'static [u8],
    observed: mpsc::Sender<(Vec<u8>, Vec<u8>, Vec<u8>)>,
) -> Upstream {
    Upstream::spawn(move |stream, _| {
        let mut wire = Wire::new(stream);
        let Ok(Some(head)) = wire.read_head() else {
            return;
        };
        let _ = wire.stream.set_read_timeout(Some(WATCH));
        let _ = wire.fill();
        let early = std::mem::take(&mut wire.buf);
        let _ = wire.stream.set_read_timeout(Some(PATIENCE));
        if wire.write_all(answer).is_err() {
            return;
        }
        let mut after = Vec::new();
        while let Ok(n) = wire.fill() {
            if n == 0 {
                break;
            }
            let data = std::mem::take(&mut wire.buf);
            if wire.write_all(&data).is_err() {
                break;
            }
            after.extend_from_slice(&data);
        }
        let _ = wire.stream.shutdown(Shutdown::Write);
        let _ = observed.send((head, early, after));
    })
}

/// Reads from `client` until `expected` has arrived; returns it.
fn read_exactly(client: &mut Client, expected: &[u8]) {
    let wire = client.wire();
    while wire.buf.len() < expected.len() {
        let n = wire.fill().expect("read the tunnelled bytes");
        assert!(
            n > 0,
            "the tunnel closed after {:?}",
            String::from_utf8_lossy(&wire.buf)
        );
    }
    let got = wire.take(expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Bytes sent in the same write as an Upgrade head reach the upstream only after it answered
/// 101; then the tunnel carries them and everything after, both ways, and a FIN ends it.
fn no_byte_after_an_upgrade_head_is_forwarded_before_101(driver: Driver) {
    let (observed, observations) = mpsc::channel();
    let server = gated_echo(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw-echo\r\nConnection: Upgrade\r\n\r\n",
        observed,
    );
    let proxy = Proxy::start(&one_route(server.address()), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let mut bytes = request_bytes(
        "GET",
        "/upgrade",
        "u.test",
        &[("Upgrade", "raw-echo"), ("Connection", "upgrade")],
        b"",
    );
    bytes.extend_from_slice(b"EARLY-BYTES");
    client.send(&bytes);
    let response = client.read_response("GET");
    assert_eq!(response.status, 101, "{}", response.head_text());
    assert_eq!(response.header("upgrade"), Some("raw-echo"));
    read_exactly(&mut client, b"EARLY-BYTES");
    client.send(b"and more");
    read_exactly(&mut client, b"and more");
    client
        .wire()
        .stream
        .shutdown(Shutdown::Write)
        .expect("half-close the tunnel");

    let (head, early, after) = observations
        .recv_timeout(PATIENCE)
        .expect("the upstream's view");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("GET /upgrade HTTP/1.1\r\n"), "{head}");
    assert!(
        early.is_empty(),
        "the upstream got {:?} before answering 101",
        String::from_utf8_lossy(&early)
    );
    assert_eq!(after, b"EARLY-BYTESand more");
    client.expect_closed(PATIENCE);
}

/// The upstream answers an Upgrade request with 200: no tunnel. The WebSocket frame the client
/// sent after its head is not forwarded; the proxy reads it as the next request, refuses it
/// (400) and closes. The upstream got the request head and not one byte more.
fn upgrade_refused_with_200_never_forwards_the_trailing_bytes(driver: Driver) {
    let upstream = HttpUpstream::start(|_: &Request| Response::ok("no upgrade here").into());
    let proxy = Proxy::start(&one_route(upstream.address()), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let mut bytes = request_bytes(
        "GET",
        "/chat",
        "ws.test",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    );
    bytes.extend(frame(TEXT, b"hello", Some([1, 2, 3, 4])));
    client.send(&bytes);
    let refused = client.read_response("GET");
    assert_eq!(
        (refused.status, refused.text().as_str()),
        (200, "no upgrade here")
    );
    let next = client.read_response("GET");
    assert_eq!(
        next.status,
        400,
        "the frame is not a request: {}",
        next.text()
    );
    client.expect_closed(PATIENCE);

    let requests = upstream.wait_for_requests(1);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        upstream.bytes_received(),
        requests[0].raw_head.len(),
        "the upstream received bytes besides the request head"
    );
}

/// CONNECT: the bytes after the head wait for the upstream's 200, then the tunnel echoes them
/// and what follows; the upstream saw the CONNECT line unchanged.
fn connect_is_tunnelled_only_after_2xx(driver: Driver) {
    let (observed, observations) = mpsc::channel();
    let server = gated_echo(b"HTTP/1.1 200 Connection Established\r\n\r\n", observed);
    let proxy = Proxy::start(&one_route(server.address()), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    client.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\nEARLY");
    let response = client.read_response("CONNECT");
    assert_eq!(response.status, 200, "{}", response.head_text());
    read_exactly(&mut client, b"EARLY");
    let bulk = tests::client::payload(256 * 1024, 51);
    {
        // Sent from another thread while this one reads the echo, so neither side blocks.
        let mut writer = client
            .wire()
            .stream
            .try_clone()
            .expect("clone the client stream");
        let expected = bulk.clone();
        let sending = std::thread::spawn(move || writer.write_all(&bulk));
        read_exactly(&mut client, &expected);
        sending
            .join()
            .expect("sender")
            .expect("send through the tunnel");
    }
    client
        .wire()
        .stream
        .shutdown(Shutdown::Write)
        .expect("half-close the tunnel");

    let (head, early, after) = observations
        .recv_timeout(PATIENCE)
        .expect("the upstream's view");
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("CONNECT db.internal:5432 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        early.is_empty(),
        "the upstream got {:?} before answering 200",
        String::from_utf8_lossy(&early)
    );
    assert_eq!(&after[..5], b"EARLY");
    assert_eq!(after.len(), 5 + 256 * 1024);
    client.expect_closed(PATIENCE);
}

/// CONNECT answered 403: no tunnel, the bytes after the head are not forwarded (the proxy
/// refuses them as a request and closes), and the upstream got only the CONNECT head.
fn connect_refused_never_forwards_the_trailing_bytes(driver: Driver) {
    let upstream = HttpUpstream::start(|_: &Request| Response::new(403).with_body("no").into());
    let proxy = Proxy::start(&one_route(upstream.address()), driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    client.send(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x16\x03\x01\x00\x05hello");
    let refused = client.read_response("CONNECT");
    assert_eq!((refused.status, refused.text().as_str()), (403, "no"));
    let next = client.read_response("GET");
    assert_eq!(next.status, 400, "{}", next.text());
    client.expect_closed(PATIENCE);
    let requests = upstream.wait_for_requests(1);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "CONNECT");
    assert_eq!(upstream.bytes_received(), requests[0].raw_head.len());
}
