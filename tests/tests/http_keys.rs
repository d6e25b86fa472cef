//! Config keys that used to be partly ignored and are now acted on, proven through the real
//! binary on io_uring and on epoll:
//!
//! 1. **`listeners[].xff_trusted_hops`**: consistent hashing on `source_ip` (`ring_hash` and
//!    `maglev` over four endpoints) hashes the client address that `X-Forwarded-For` names with
//!    that many trusted proxies in front — the last entry with 1, the one before it with 2 — and
//!    the peer's address with 0 (or when the header has too few entries); all requests of a test
//!    come over one TCP connection, so only the header can spread them. A client's
//!    `X-Forwarded-Proto` is replaced by `http` with 0 trusted hops and kept with 1.
//! 2. **`listeners[].idle_timeout` on HTTP/2 connections**: an h2c connection idle after a
//!    request gets GOAWAY(NO_ERROR) and is closed; one whose stream runs longer than the timeout
//!    is left alone until the stream has completed; an HTTP/1.1 keep-alive connection is closed
//!    when idle, as before. The listener's `idle_timeouts` counter counts both kinds of close.
//! 3. **`clusters[].pool.idle_timeout` on HTTP/2 upstream connections**: the upstream sees its
//!    idle connection closed, and the next request opens a new one; also when another cluster has
//!    a longer pool timeout. A reload that removes the endpoint closes its idle HTTP/2 connection
//!    at once.
//! 4. **`routes[].timeout` over a request body that trickles**: 504 with flag `UT`, and the
//!    upstream loses the request (HTTP/1.1 cluster: the connection is closed; HTTP/2: the stream
//!    is reset), on all four (client protocol × cluster protocol) pairs.
//! 5. **`listeners[].stream_idle_timeout`**: a silent upstream is 504 with flag `SI`; a response
//!    that goes quiet mid-body is cut off (HTTP/1.1: the connection closes; HTTP/2: RST_STREAM);
//!    a response that keeps moving, slowly, for longer than the timeout completes; on all four
//!    pairs.
//!
//! Waits are bounded; nothing here asserts how long anything took, only what happened: closed or
//! not, which endpoint, which status and flag. The timeouts under test are 1 s and the proxy
//! checks them at most a second late, so a close is awaited for [`CLOSE_BOUND`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tests::exchange::{Call, Extra, Pair, Setup, call};
use tests::h2::{PyServer, watch_connection_end};
use tests::http::{
    Client, HttpUpstream, Request, Response, cluster, http_listener, request_bytes, route,
    virtual_host,
};
use tests::upstream::refused_address;
use tests::{Driver, Proxy, both_drivers, exchange_pairs, wait_until};

both_drivers!(
    xff_with_one_trusted_hop_hashes_on_the_last_entry,
    xff_with_no_trusted_hop_is_ignored_for_hashing,
    xff_with_two_trusted_hops_hashes_on_the_entry_before_the_last,
    x_forwarded_proto_is_replaced_without_trusted_hops_and_kept_with_one,
    http2_connection_idle_after_a_request_gets_goaway_and_is_closed,
    http2_connection_is_not_closed_while_a_long_stream_runs,
    http1_keep_alive_connection_idle_is_closed,
    http1_idle_close_is_counted_like_http2,
    http2_upstream_connection_idle_for_the_pool_timeout_is_closed,
    http2_upstream_pool_timeout_holds_beside_a_cluster_with_a_longer_one,
    reload_removing_the_endpoint_closes_its_idle_http2_upstream_connection,
);
exchange_pairs!(
    route_timeout_on_a_trickling_request_body_is_504_with_flag_ut,
    stream_idle_timeout_on_a_silent_upstream_is_504_with_flag_si,
    stream_idle_timeout_cuts_off_a_response_that_goes_quiet_mid_body,
    stream_idle_timeout_spares_a_response_that_keeps_moving,
);

/// The host every routed request uses.
const HOST: &str = "svc.test";
/// How long a test waits for the proxy to close something whose 1 s timeout has passed: the
/// proxy checks idle connections and streams about once a second, so this is a generous bound
/// for a loaded two-core machine, not a latency measurement.
const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// A one-second timeout, as a TOML value.
const ONE_SECOND: &str = "\"1s\"";

/// Waits at most [`CLOSE_BOUND`] for `check`.
fn soon<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    wait_until(CLOSE_BOUND, what, check)
}

// === 1. xff_trusted_hops ===

/// The hashing clusters, each reached through its own virtual host.
const POLICIES: [(&str, &str); 2] = [("ring_hash", "ring.test"), ("maglev", "maglev.test")];
/// Endpoints behind each hashing cluster.
const ENDPOINTS: usize = 4;
/// Distinct addresses sent per spreading check.
const SPREAD: u32 = 20;

/// Four upstreams answering with their names (`e0`...`e3`), and a proxy whose listener `web`
/// trusts `hops` proxies in front and routes `ring.test` to a `ring_hash` cluster and
/// `maglev.test` to a `maglev` cluster over those four, both hashing on `source_ip`.
fn hashing(driver: Driver, hops: u32) -> (Proxy, Vec<HttpUpstream>) {
    let upstreams: Vec<HttpUpstream> = (0..ENDPOINTS)
        .map(|i| HttpUpstream::named(&format!("e{i}")))
        .collect();
    let addresses: Vec<SocketAddr> = upstreams.iter().map(HttpUpstream::address).collect();
    let mut config = http_listener("web", &format!("xff_trusted_hops = {hops}"));
    for (policy, host) in POLICIES {
        config += &cluster(
            policy,
            &addresses,
            &format!("lb_policy = \"{policy}\"\nhash_policy = {{ source_ip = true }}"),
        );
        config += &virtual_host(
            policy,
            &[host],
            &route(policy, &format!("cluster = \"{policy}\"")),
        );
    }
    (Proxy::start(&config, driver, 2), upstreams)
}

/// The endpoint that answers `GET /` to `host` with `X-Forwarded-For: xff` (none: no such
/// field), on `client`'s connection.
fn endpoint(client: &mut Client, host: &str, xff: Option<&str>) -> String {
    let fields: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
    let response = client.request(&request_bytes("GET", "/", host, &fields, b""));
    assert_eq!(
        response.status,
        200,
        "{host} with x-forwarded-for {xff:?}: {}",
        response.head_text()
    );
    response.text()
}

/// The endpoints that answer `host` for each of `xffs`, on one connection.
fn endpoints(client: &mut Client, host: &str, xffs: &[String]) -> BTreeSet<String> {
    xffs.iter()
        .map(|xff| endpoint(client, host, Some(xff)))
        .collect()
}

/// `X-Forwarded-For` values `format(i)` for i in 1..=SPREAD.
fn spread(format: impl Fn(u32) -> String) -> Vec<String> {
    (1..=SPREAD).map(format).collect()
}

/// One trusted hop: the last entry is the client. Requests whose last entry is the same go to
/// one endpoint whatever the entries before it say; 20 different last entries, all over one TCP
/// connection, reach more than one endpoint. An HTTP/2 client's requests are hashed the same
/// way as an HTTP/1.1 client's.
fn xff_with_one_trusted_hop_hashes_on_the_last_entry(driver: Driver) {
    let (proxy, _upstreams) = hashing(driver, 1);
    let address = proxy.listener("web");
    let mut client = Client::connect(address);
    for (policy, host) in POLICIES {
        let fixed = "10.0.0.1, 198.51.100.7";
        let same = endpoints(&mut client, host, &vec![fixed.to_owned(); 5]);
        assert_eq!(same.len(), 1, "{policy}: one X-Forwarded-For, {same:?}");
        let first_varies = endpoints(
            &mut client,
            host,
            &spread(|i| format!("192.0.2.{i}, 198.51.100.7")),
        );
        assert_eq!(
            first_varies, same,
            "{policy}: only the last entry counts with one trusted hop"
        );
        // Different last entries: more than one endpoint. Two of them that send an HTTP/1.1
        // client's requests to different endpoints do the same over HTTP/2.
        let by_h1: Vec<(String, String)> = spread(|i| format!("10.0.0.1, 198.51.100.{i}"))
            .into_iter()
            .map(|xff| {
                let answered = endpoint(&mut client, host, Some(&xff));
                (xff, answered)
            })
            .collect();
        let first = &by_h1[0];
        let Some(other) = by_h1.iter().find(|(_, e)| *e != first.1) else {
            panic!(
                "{policy}: {SPREAD} different last entries all went to {}",
                first.1
            );
        };
        for (xff, expected) in [first, other] {
            let answer = call(
                Pair::H2H1,
                address,
                &Call::get(host, "/").header("x-forwarded-for", xff),
            );
            assert_eq!(answer.status, Some(200), "{answer:?}");
            assert_eq!(
                &answer.text(),
                expected,
                "{policy}: HTTP/2 with x-forwarded-for {xff}"
            );
        }
    }
}

/// No trusted hop: the header is ignored. Requests with 20 different last entries (and any
/// other entries) all go where the peer's address sends a request without the header.
fn xff_with_no_trusted_hop_is_ignored_for_hashing(driver: Driver) {
    let (proxy, _upstreams) = hashing(driver, 0);
    let mut client = Client::connect(proxy.listener("web"));
    for (policy, host) in POLICIES {
        let peer = endpoint(&mut client, host, None);
        for xffs in [
            spread(|i| format!("10.0.0.1, 198.51.100.{i}")),
            spread(|i| format!("192.0.2.{i}")),
        ] {
            let used = endpoints(&mut client, host, &xffs);
            assert_eq!(
                used,
                BTreeSet::from([peer.clone()]),
                "{policy}: the peer's endpoint is {peer}; {xffs:?} went to {used:?}"
            );
        }
    }
}

/// Two trusted hops: the entry before the last is the client. Varying only the last entry keeps
/// one endpoint; varying the one before it spreads over several. A header with one entry has too
/// few for two hops: those requests hash like the peer's.
fn xff_with_two_trusted_hops_hashes_on_the_entry_before_the_last(driver: Driver) {
    let (proxy, _upstreams) = hashing(driver, 2);
    let mut client = Client::connect(proxy.listener("web"));
    for (policy, host) in POLICIES {
        let last_varies = endpoints(
            &mut client,
            host,
            &spread(|i| format!("10.0.0.1, 198.51.100.{i}")),
        );
        assert_eq!(
            last_varies.len(),
            1,
            "{policy}: the last entry must not count with two trusted hops: {last_varies:?}"
        );
        let client_varies = endpoints(
            &mut client,
            host,
            &spread(|i| format!("203.0.113.{i}, 198.51.100.7")),
        );
        assert!(
            client_varies.len() > 1,
            "{policy}: {SPREAD} different entries before the last all went to {client_varies:?}"
        );
        let peer = endpoint(&mut client, host, None);
        let too_short = endpoints(&mut client, host, &spread(|i| format!("198.51.100.{i}")));
        assert_eq!(
            too_short,
            BTreeSet::from([peer.clone()]),
            "{policy}: one entry is too few for two hops; the peer's endpoint is {peer}"
        );
    }
}

/// A client sends `X-Forwarded-Proto: https`. With no trusted hop the upstream receives only
/// `http` (what the client spoke to the proxy); with one trusted hop it receives the client's
/// `https`. For HTTP/1.1 and HTTP/2 clients.
fn x_forwarded_proto_is_replaced_without_trusted_hops_and_kept_with_one(driver: Driver) {
    for hops in [0, 1] {
        let upstream = HttpUpstream::start(|_: &Request| Response::ok("ok").into());
        let config = [
            http_listener("web", &format!("xff_trusted_hops = {hops}")),
            cluster("backend", &[upstream.address()], ""),
            virtual_host("all", &["*"], &route("all", "cluster = \"backend\"")),
        ]
        .concat();
        let proxy = Proxy::start(&config, driver, 2);
        let expected = if hops == 0 { "http" } else { "https" };
        for (n, pair) in [Pair::H1H1, Pair::H2H1].into_iter().enumerate() {
            let answer = call(
                pair,
                proxy.listener("web"),
                &Call::get(HOST, &format!("/proto/{n}"))
                    .header("x-forwarded-proto", "https")
                    .header("x-forwarded-for", "198.51.100.7"),
            );
            assert_eq!(answer.status, Some(200), "{answer:?}");
            let requests = upstream.wait_for_requests(n + 1);
            let request = &requests[n];
            assert_eq!(
                request.headers_named("x-forwarded-proto"),
                vec![expected],
                "xff_trusted_hops = {hops}, {pair:?}: the upstream received\n{}",
                request.head_text()
            );
        }
    }
}

// === 2. listeners[].idle_timeout on HTTP/2 connections ===

/// An `h2_upstream.py` behind a listener `main` with `idle_timeout = "1s"`.
fn idle_listener(driver: Driver) -> Setup {
    let listener = format!("idle_timeout = {ONE_SECOND}");
    Setup::start(
        Pair::H2H1,
        driver,
        Extra {
            listener: &listener,
            ..Extra::default()
        },
    )
}

/// One request on an h2c connection, then nothing: the stream completes with 200, then the
/// proxy sends GOAWAY(NO_ERROR) and closes the connection, and counts an idle timeout.
fn http2_connection_idle_after_a_request_gets_goaway_and_is_closed(driver: Driver) {
    let setup = idle_listener(driver);
    let end = watch_connection_end(setup.address().port(), &["/first"], CLOSE_BOUND);
    assert_eq!(
        end.events.first().map(String::as_str),
        Some("response 1 200"),
        "{end:?}"
    );
    let ended = end.position("end 1").expect("the stream completed");
    let goaway = end
        .position("goaway")
        .unwrap_or_else(|| panic!("no GOAWAY within {CLOSE_BOUND:?} of the response: {end:?}"));
    assert!(goaway > ended, "{end:?}");
    assert!(
        end.events[goaway].starts_with("goaway 0 "),
        "GOAWAY with NO_ERROR: {end:?}"
    );
    assert!(
        end.closed.is_some(),
        "the connection was not closed within {CLOSE_BOUND:?} of the response: {end:?}"
    );
    setup
        .proxy
        .wait_listener_counter("main", "idle_timeouts", 1);
}

/// A request whose response takes 3 s (three idle timeouts): the connection is neither sent
/// GOAWAY nor closed while it runs, and the stream completes with 200; once it is idle, the
/// connection is closed.
fn http2_connection_is_not_closed_while_a_long_stream_runs(driver: Driver) {
    let setup = idle_listener(driver);
    let end = watch_connection_end(setup.address().port(), &["/delay/3000"], CLOSE_BOUND);
    let ended = end.position("end 1").unwrap_or_else(|| {
        panic!("the long stream did not complete: {end:?}");
    });
    assert_eq!(
        end.events[..ended],
        ["response 1 200"],
        "nothing but the response before the stream completed: {end:?}"
    );
    assert!(
        end.position("goaway").is_some() && end.closed.is_some(),
        "once idle, the connection is closed: {end:?}"
    );
    let served = setup.upstream.events("received");
    assert_eq!(served.len(), 1, "{served:?}");
}

/// HTTP/1.1 keep-alive: a connection idle after a response is closed.
fn http1_keep_alive_connection_idle_is_closed(driver: Driver) {
    let setup = idle_listener(driver);
    let mut client = Client::connect(setup.address());
    let response = client.get(HOST, "/first");
    assert_eq!(response.status, 200, "{}", response.head_text());
    client.expect_closed(CLOSE_BOUND);
}

/// The listener's `idle_timeouts` counter ("connections closed by the idle timeout") counts an
/// idle HTTP/1.1 keep-alive connection it closed, as it counts an HTTP/2 one (above).
fn http1_idle_close_is_counted_like_http2(driver: Driver) {
    let setup = idle_listener(driver);
    let mut client = Client::connect(setup.address());
    let response = client.get(HOST, "/first");
    assert_eq!(response.status, 200, "{}", response.head_text());
    client.expect_closed(CLOSE_BOUND);
    setup
        .proxy
        .wait_listener_counter("main", "idle_timeouts", 1);
}

// === 3. clusters[].pool.idle_timeout on HTTP/2 upstream connections ===

/// `pool = { idle_timeout = "1s" }` on an HTTP/2 cluster: after a request, the upstream sees its
/// connection closed by the proxy; the next request opens a new connection and succeeds.
fn pool_timeout_closes_the_idle_connection(setup: &Setup) {
    let pair = Pair::H1H2;
    let first = setup.call(pair, &Call::get(HOST, "/first"));
    assert_eq!(first.status, Some(200), "{first:?}");
    assert_eq!(first.header("x-upstream-conn"), Some("0"), "{first:?}");
    soon("the upstream to see its idle connection closed", || {
        if setup.upstream.events("close").iter().any(|w| w[1] == "0") {
            Ok(())
        } else {
            Err(setup.upstream.stdout())
        }
    });
    let second = setup.call(pair, &Call::get(HOST, "/second"));
    assert_eq!(second.status, Some(200), "{second:?}");
    assert_eq!(
        second.header("x-upstream-conn"),
        Some("1"),
        "a new connection: {second:?}"
    );
    assert_eq!(
        setup.upstream.count("conn"),
        2,
        "{}",
        setup.upstream.stdout()
    );
}

fn http2_upstream_connection_idle_for_the_pool_timeout_is_closed(driver: Driver) {
    let cluster = format!("pool = {{ idle_timeout = {ONE_SECOND} }}");
    let setup = Setup::start(
        Pair::H1H2,
        driver,
        Extra {
            cluster: &cluster,
            ..Extra::default()
        },
    );
    pool_timeout_closes_the_idle_connection(&setup);
}

/// The same with another cluster in the config whose pool keeps idle connections for the
/// default minute: each cluster's own timeout applies to its connections.
fn http2_upstream_pool_timeout_holds_beside_a_cluster_with_a_longer_one(driver: Driver) {
    let cluster_lines = format!("pool = {{ idle_timeout = {ONE_SECOND} }}");
    let other = cluster("other", &[refused_address()], "protocol = \"h2\"");
    let setup = Setup::start(
        Pair::H1H2,
        driver,
        Extra {
            cluster: &cluster_lines,
            more: &other,
            ..Extra::default()
        },
    );
    pool_timeout_closes_the_idle_connection(&setup);
}

/// An HTTP/2 cluster (default pool timeout, a minute) on endpoint `primary`; after a request its
/// connection sits idle in the pool. A SIGHUP reload that replaces the endpoint by `secondary`
/// closes that connection at once (`primary` sees it closed), and the next request goes to
/// `secondary`.
fn reload_removing_the_endpoint_closes_its_idle_http2_upstream_connection(driver: Driver) {
    let pair = Pair::H1H2;
    let setup = Setup::start(pair, driver, Extra::default());
    let secondary = PyServer::start("h2_upstream.py", &["--name", "secondary"]);
    let first = setup.call(pair, &Call::get(HOST, "/first"));
    assert_eq!(first.status, Some(200), "{first:?}");
    assert_eq!(first.header("x-upstream"), Some("primary"), "{first:?}");
    assert_eq!(
        setup.upstream.count("close"),
        0,
        "{}",
        setup.upstream.stdout()
    );

    let replaced = setup.config.replace(
        &setup.upstream.address().to_string(),
        &secondary.address().to_string(),
    );
    assert_ne!(replaced, setup.config);
    setup.proxy.reload_with_sighup(&replaced);
    soon(
        "the removed endpoint to see its idle connection closed",
        || {
            if setup.upstream.events("close").iter().any(|w| w[1] == "0") {
                Ok(())
            } else {
                Err(setup.upstream.stdout())
            }
        },
    );
    let second = setup.call(pair, &Call::get(HOST, "/second"));
    assert_eq!(second.status, Some(200), "{second:?}");
    assert_eq!(second.header("x-upstream"), Some("secondary"), "{second:?}");
}

// === 4. routes[].timeout over a trickling request body ===

/// `timeout = "1s"` on the route; the client sends its head, then a 100-byte body one byte every
/// 200 ms (20 s in all). It gets 504, logged with flag `UT`, and the upstream, which had the head
/// and part of the body, loses the request: an HTTP/1.1 cluster's connection is closed, an
/// HTTP/2 cluster's stream is reset. The request never completes there.
fn route_timeout_on_a_trickling_request_body_is_504_with_flag_ut(pair: Pair, driver: Driver) {
    let route = format!("timeout = {ONE_SECOND}");
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: &route,
            ..Extra::default()
        },
    );
    let answer = setup.call(
        pair,
        &Call::post(HOST, "/upload", 100).paced(Duration::from_millis(200)),
    );
    assert_eq!(answer.status, Some(504), "{answer:?}");
    let entry = setup.log_entry("/upload");
    assert_eq!(entry["response_flags"], "UT", "{entry}");
    assert_eq!(entry["status"], 504, "{entry}");
    let lost = if pair.h2_cluster() { "reset" } else { "close" };
    soon(&format!("the upstream to see `{lost} 0`"), || {
        if setup.upstream.events(lost).iter().any(|w| w[1] == "0") {
            Ok(())
        } else {
            Err(setup.upstream.stdout())
        }
    });
    assert_eq!(
        setup.upstream.count("received"),
        0,
        "the request completed upstream:\n{}",
        setup.upstream.stdout()
    );
}

// === 5. listeners[].stream_idle_timeout ===

/// A [`Setup`] whose listener has `stream_idle_timeout = "1s"` and whose route has no timeout.
fn stream_idle(pair: Pair, driver: Driver) -> Setup {
    let listener = format!("stream_idle_timeout = {ONE_SECOND}");
    Setup::start(
        pair,
        driver,
        Extra {
            listener: &listener,
            ..Extra::default()
        },
    )
}

/// The upstream takes the request and never answers: 504 with flag `SI`, and the upstream sees
/// the request abandoned.
fn stream_idle_timeout_on_a_silent_upstream_is_504_with_flag_si(pair: Pair, driver: Driver) {
    let setup = stream_idle(pair, driver);
    let answer = setup.call(pair, &Call::get(HOST, "/hold"));
    assert_eq!(answer.status, Some(504), "{answer:?}");
    let entry = setup.log_entry("/hold");
    assert_eq!(entry["response_flags"], "SI", "{entry}");
    assert_eq!(entry["status"], 504, "{entry}");
    setup.wait_abandoned("0", "reset");
}

/// The upstream sends its head (`content-length: 100`) and 10 body bytes, then nothing: the
/// client gets the head and at most those bytes, then the response is cut off (HTTP/1.1: the
/// connection closes; HTTP/2: RST_STREAM); the log says `SI`, and the upstream sees the client
/// side go away.
fn stream_idle_timeout_cuts_off_a_response_that_goes_quiet_mid_body(pair: Pair, driver: Driver) {
    let setup = stream_idle(pair, driver);
    let answer = setup.call(pair, &Call::get(HOST, "/stall/100/10"));
    assert_eq!(answer.status, Some(200), "the head arrives: {answer:?}");
    assert!(
        !answer.complete && answer.body_len <= 10,
        "the body must be cut off: {answer:?}"
    );
    let abort = answer.abort.clone().unwrap_or_default();
    if pair.h2_client() {
        assert!(abort.starts_with("RST_STREAM"), "{answer:?}");
    } else {
        assert!(abort == "closed" || abort == "reset", "{answer:?}");
    }
    let entry = setup.log_entry("/stall/100/10");
    assert_eq!(entry["response_flags"], "SI", "{entry}");
    setup.wait_abandoned("0", "stall-gone");
}

/// The upstream sends its head, then a 10-byte body one byte every 300 ms (3 s in all, three
/// stream idle timeouts, but never 1 s without a byte): the response completes, whole, with no
/// flag.
fn stream_idle_timeout_spares_a_response_that_keeps_moving(pair: Pair, driver: Driver) {
    let setup = stream_idle(pair, driver);
    let answer = setup.call(pair, &Call::get(HOST, "/trickle/10/300"));
    assert_eq!(answer.status, Some(200), "{answer:?}");
    assert!(
        answer.complete && answer.body_len == 10,
        "the whole body: {answer:?}"
    );
    let entry = setup.log_entry("/trickle/10/300");
    assert_eq!(entry["response_flags"], "-", "no flag: {entry}");
    assert_eq!(
        setup.upstream.count("trickle-stopped"),
        0,
        "{}",
        setup.upstream.stdout()
    );
}
