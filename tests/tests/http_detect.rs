//! Protocol detection on an `auto` listener with an opaque fallback cluster: it cannot be used to
//! slip past strict HTTP parsing, routing and the header timeout, and it never loses a byte.
//!
//! The fallback cluster is a server that records every byte it receives. HTTP requests whose
//! first byte is followed by a pause longer than the 1 s detection window (1.5 s, 3 s) still get
//! the strict parser's answer (a request with both Content-Length and Transfer-Encoding is 400, a
//! valid one is routed); a request trickled a byte per second gets 408 at a short header timeout
//! and is routed under a long one; none of them reaches the fallback. A server-first protocol
//! (the fallback speaks first, the client is silent for more than the window) works end to end,
//! and non-HTTP bytes sent with pauses reach the fallback complete and in order. Every test runs
//! on io_uring and on epoll.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tests::client::connect;
use tests::http::{Client, HttpUpstream, Response};
use tests::upstream::{Recorded, Upstream};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    a_pause_of_1500ms_after_the_first_byte_still_gets_the_strict_parser,
    a_pause_of_3s_after_the_first_byte_still_gets_the_strict_parser,
    a_request_trickled_past_a_short_header_timeout_is_408,
    a_request_trickled_within_a_long_header_timeout_is_routed,
    a_server_first_protocol_on_the_fallback_works_end_to_end,
    non_http_bytes_sent_with_pauses_reach_the_fallback_complete_and_in_order,
);

/// The banner of the server-first fallback.
const BANNER: &[u8] = b"220 fallback.test ESMTP ready\r\n";
/// Its answer to each line.
const LINE_REPLY: &[u8] = b"250 ok\r\n";

/// An `auto` listener `auto` with `request_header_timeout` and fallback cluster `fallback`
/// (a recording server, speaking first when `banner` is not empty), and a route for every host
/// to `backend`, which answers `routed <path>`.
struct Setup {
    proxy: Proxy,
    backend: HttpUpstream,
    _fallback: Upstream,
    recorded: Recorded,
}

impl Setup {
    fn start(driver: Driver, header_timeout: &str, banner: &'static [u8]) -> Self {
        let backend = HttpUpstream::start(|request: &tests::http::Request| {
            Response::ok(format!("routed {}", request.path())).into()
        });
        let reply = if banner.is_empty() { b"" } else { LINE_REPLY };
        let (fallback, recorded) = Upstream::recording(banner, reply);
        let config = format!(
            r#"
[[listeners]]
name = "auto"
address = "127.0.0.1:0"
protocol = "auto"
cluster = "fallback"
request_header_timeout = "{header_timeout}"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "backend"

[[clusters]]
name = "backend"
endpoints = ["{backend}"]

[[clusters]]
name = "fallback"
endpoints = ["{fallback}"]
"#,
            backend = backend.address(),
            fallback = fallback.address(),
        );
        let proxy = Proxy::start(&config, driver, 2);
        Self {
            proxy,
            backend,
            _fallback: fallback,
            recorded,
        }
    }

    fn address(&self) -> SocketAddr {
        self.proxy.listener("auto")
    }

    /// What the fallback received, connection by connection, for messages.
    fn fallback_bytes(&self) -> String {
        let connections = self.recorded.connections();
        format!(
            "{} connection(s): {:?}",
            connections.len(),
            connections
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
        )
    }

    /// Nothing reached the fallback cluster: no connection, no byte.
    fn assert_fallback_untouched(&self) {
        assert!(
            self.recorded.connections().is_empty(),
            "the fallback cluster received {}",
            self.fallback_bytes()
        );
    }
}

/// Sends `first`, waits `pause`, sends `rest`, and reads one response.
fn paused_request(
    address: SocketAddr,
    first: &[u8],
    pause: Duration,
    rest: &[u8],
) -> std::io::Result<Response> {
    let mut client = Client::connect(address);
    client.send(first);
    std::thread::sleep(pause);
    client.send(rest);
    client.try_read_response("POST")
}

/// A pause longer than the detection window after the first byte of a request: a request with
/// both Content-Length and Transfer-Encoding is refused by the strict parser (400), a valid one
/// is routed, and nothing reaches the fallback.
fn paused_requests_get_the_strict_parser(driver: Driver, pause: Duration) {
    let setup = Setup::start(driver, "10s", b"");
    let address = setup.address();
    std::thread::scope(|scope| {
        let smuggle = scope.spawn(|| {
            paused_request(
                address,
                b"P",
                pause,
                b"OST /smuggle HTTP/1.1\r\nHost: d.test\r\nContent-Length: 5\r\n\
                  Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
        });
        let valid = scope.spawn(|| {
            paused_request(
                address,
                b"G",
                pause,
                b"ET /valid HTTP/1.1\r\nHost: d.test\r\nConnection: close\r\n\r\n",
            )
        });
        let smuggle = smuggle.join().expect("the CL+TE client");
        let valid = valid.join().expect("the valid client");
        let smuggle = smuggle.unwrap_or_else(|e| {
            panic!(
                "no answer to CL+TE after a {pause:?} pause ({e}); the fallback got {}",
                setup.fallback_bytes()
            )
        });
        assert_eq!(
            smuggle.status,
            400,
            "CL+TE after a {pause:?} pause: {}",
            smuggle.head_text()
        );
        let valid = valid.unwrap_or_else(|e| {
            panic!(
                "no answer to a valid request after a {pause:?} pause ({e}); the fallback got {}",
                setup.fallback_bytes()
            )
        });
        assert_eq!(valid.status, 200, "after a {pause:?} pause");
        assert_eq!(valid.text(), "routed /valid");
    });
    let requests = setup.backend.requests();
    assert!(
        requests.len() == 1 && requests[0].raw_head.starts_with(b"GET /valid HTTP/1.1\r\n"),
        "the backend got exactly the valid request, first byte included: {:?}",
        requests.iter().map(|r| r.head_text()).collect::<Vec<_>>()
    );
    setup.assert_fallback_untouched();
}

fn a_pause_of_1500ms_after_the_first_byte_still_gets_the_strict_parser(driver: Driver) {
    paused_requests_get_the_strict_parser(driver, Duration::from_millis(1500));
}

fn a_pause_of_3s_after_the_first_byte_still_gets_the_strict_parser(driver: Driver) {
    paused_requests_get_the_strict_parser(driver, Duration::from_secs(3));
}

/// Writes `bytes` one per second from a thread, stopping at the first failed write.
fn trickle(stream: &TcpStream, bytes: &'static [u8]) -> std::thread::JoinHandle<usize> {
    let mut writer = stream.try_clone().expect("clone the client socket");
    std::thread::spawn(move || {
        for (i, byte) in bytes.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            if writer.write_all(&[*byte]).is_err() {
                return i;
            }
        }
        bytes.len()
    })
}

/// A request trickled at one byte per second under a 2 s header timeout: the header timeout is
/// one deadline for the whole head, counted from the first byte, so the client gets 408 (or the
/// connection closes) before its head is complete; nothing reaches the backend or the fallback.
fn a_request_trickled_past_a_short_header_timeout_is_408(driver: Driver) {
    let setup = Setup::start(driver, "2s", b"");
    let mut stream = connect(setup.address());
    let request: &'static [u8] = b"GET /slow HTTP/1.1\r\nHost: d.test\r\n\r\n";
    let writer = trickle(&stream, request);
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().expect("the trickling writer");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "no answer and no close: {read:?} after {sent} bytes sent; the fallback got {}",
        setup.fallback_bytes()
    );
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408 "),
        "expected 408 or a close, got {text:?}; the fallback got {}",
        setup.fallback_bytes()
    );
    assert!(
        sent < request.len(),
        "the whole head was accepted ({sent} bytes trickled): {text:?}"
    );
    assert_eq!(
        setup.backend.request_count(),
        0,
        "nothing reached the backend"
    );
    setup.assert_fallback_untouched();
}

/// An HTTP/1.0 request trickled at one byte per second under a 60 s header timeout: each pause is
/// as long as the detection window, yet the request is routed, whole, and nothing reaches the
/// fallback.
fn a_request_trickled_within_a_long_header_timeout_is_routed(driver: Driver) {
    let setup = Setup::start(driver, "60s", b"");
    let mut stream = connect(setup.address());
    let request: &'static [u8] = b"GET /t HTTP/1.0\r\n\r\n";
    let writer = trickle(&stream, request);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a read timeout");
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let sent = writer.join().expect("the trickling writer");
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "{read:?}: {text:?}");
    assert_eq!(sent, request.len());
    assert!(
        text.starts_with("HTTP/1.1 200 ") && text.ends_with("routed /t"),
        "{text:?}"
    );
    let requests = setup.backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].target, "/t");
    setup.assert_fallback_untouched();
}

/// The fallback speaks first (an SMTP-like banner); the client sends nothing for longer than the
/// detection window, then gets the banner, and a command and its answer go through.
fn a_server_first_protocol_on_the_fallback_works_end_to_end(driver: Driver) {
    let setup = Setup::start(driver, "10s", BANNER);
    let mut stream = connect(setup.address());
    let mut banner = vec![0u8; BANNER.len()];
    stream
        .read_exact(&mut banner)
        .expect("the fallback's banner through the proxy");
    assert_eq!(banner, BANNER);
    stream.write_all(b"HELO client.test\r\n").expect("send");
    let mut reply = vec![0u8; LINE_REPLY.len()];
    stream
        .read_exact(&mut reply)
        .expect("the fallback's answer");
    assert_eq!(reply, LINE_REPLY);
    assert_eq!(
        setup.recorded.connections(),
        vec![b"HELO client.test\r\n".to_vec()]
    );
    assert_eq!(setup.backend.request_count(), 0);
}

/// Client-first non-HTTP bytes with pauses longer than the detection window, one stream starting
/// with token characters (as an SSH banner does) and one not (a TLS-like record): each reaches
/// the fallback complete and in order.
fn non_http_bytes_sent_with_pauses_reach_the_fallback_complete_and_in_order(driver: Driver) {
    let setup = Setup::start(driver, "10s", b"");
    let streams: [&[&[u8]]; 2] = [
        &[b"SSH-", b"2.0-OpenSSH_9.2\r\n", b"\x00\x00\x01\x0cbinary"],
        &[b"\x16", b"\x03\x01\x00\x05", b"hello"],
    ];
    std::thread::scope(|scope| {
        for pieces in streams {
            let address = setup.address();
            scope.spawn(move || {
                let mut stream = connect(address);
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(1200));
                    }
                    stream.write_all(piece).expect("send a piece");
                }
                stream
                    .shutdown(std::net::Shutdown::Write)
                    .expect("half-close");
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            });
        }
    });
    let mut expected: Vec<Vec<u8>> = streams.iter().map(|pieces| pieces.concat()).collect();
    expected.sort();
    let total: usize = expected.iter().map(Vec::len).sum();
    wait_until(PATIENCE, "every byte at the fallback", || {
        match setup.recorded.total_bytes() {
            n if n >= total => Ok(()),
            n => Err(format!(
                "{n} of {total} bytes: {:?}",
                setup.recorded.connections()
            )),
        }
    });
    let mut received = setup.recorded.connections();
    received.sort();
    assert_eq!(
        received, expected,
        "the fallback received exactly what was sent"
    );
    assert_eq!(setup.backend.request_count(), 0);
}
