//! The L4 (opaque TCP) proxy over real sockets: byte-exact transfers, half-close, many concurrent
//! connections spread over workers, endpoint fallback, least-request balancing of open
//! connections, connect and idle timeouts, the connection limit, and upstreams that refuse or
//! reset. Every test runs on io_uring and on epoll.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tests::client::{self, Closed, connect, payload};
use tests::upstream::{self, Blackhole, Upstream};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, tcp_listener};

const MIB: usize = 1024 * 1024;

both_drivers!(
    megabyte_both_ways_arrives_byte_exact,
    megabyte_both_ways_arrives_byte_exact_through_splice,
    client_half_close_keeps_the_download_open,
    upstream_half_close_keeps_the_upload_open,
    two_hundred_concurrent_connections_reach_every_worker,
    first_endpoint_refused_falls_through_to_the_next,
    connect_timeout_falls_through_to_the_next_endpoint,
    least_request_sends_new_connections_to_the_endpoint_with_fewer_open,
    connect_timeout_with_no_reachable_endpoint_closes_the_client,
    idle_connections_are_closed_and_active_ones_kept,
    max_connections_closes_the_excess_and_recovers,
    refused_and_resetting_upstreams_never_take_a_worker_down,
);

/// 1 MiB from the client to the upstream and a different 1 MiB back, at the same time: both
/// arrive byte for byte, and the byte counters say so.
fn megabyte_both_ways_arrives_byte_exact(driver: Driver) {
    megabyte_both_ways(driver, "");
}

/// The same with `l4_copy = "splice"`: the bytes go socket to pipe to socket.
fn megabyte_both_ways_arrives_byte_exact_through_splice(driver: Driver) {
    megabyte_both_ways(driver, "[runtime]\nl4_copy = \"splice\"\n");
}

fn megabyte_both_ways(driver: Driver, prefix: &str) {
    let upload = payload(MIB, 1);
    let download = Arc::new(payload(MIB, 2));
    let (server, recordings) = Upstream::send_and_record(Arc::clone(&download));
    let proxy = Proxy::start(
        &format!(
            "{prefix}{}",
            tcp_listener("bulk", &[server.address()], "", "")
        ),
        driver,
        2,
    );

    let stream = connect(proxy.listener("bulk"));
    let received = client::exchange(&stream, &upload);
    let (_, recorded) = recordings
        .recv_timeout(PATIENCE)
        .expect("the upstream saw the connection end");

    assert_eq!(received.len(), MIB, "bytes downloaded");
    assert!(received == *download, "the download arrived altered");
    assert_eq!(recorded.len(), MIB, "bytes uploaded");
    assert!(recorded == upload, "the upload arrived altered");
    proxy.wait_listener_counter("bulk", "closed", 1);
    let stats = proxy.stats();
    assert_eq!(stats.listener_counter("bulk", "bytes_received"), MIB as u64);
    assert_eq!(stats.listener_counter("bulk", "bytes_sent"), MIB as u64);
}

/// The client sends, then half-closes; the upstream sees the FIN, and only then answers. The
/// answer must still reach the client through its half-closed connection.
fn client_half_close_keeps_the_download_open(driver: Driver) {
    let request = payload(256 * 1024, 3);
    let reply = payload(256 * 1024, 4);
    let (recordings, recorded) = std::sync::mpsc::channel();
    let server = {
        let reply = reply.clone();
        Upstream::spawn(move |mut stream, _| {
            // Everything until the client's FIN, then the reply, then our own FIN.
            let received = upstream::read_all(&stream);
            let _ = recordings.send(received);
            let _ = stream.write_all(&reply);
            let _ = stream.shutdown(Shutdown::Write);
        })
    };
    let proxy = Proxy::start(
        &tcp_listener("half", &[server.address()], "", ""),
        driver,
        2,
    );

    let mut stream = connect(proxy.listener("half"));
    stream.write_all(&request).expect("send the request");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let seen = recorded
        .recv_timeout(PATIENCE)
        .expect("the upstream saw the FIN");
    assert!(
        seen == request,
        "the upstream got {} bytes, not the request",
        seen.len()
    );
    let answer = client::read_to_end(&stream);
    assert_eq!(
        answer.len(),
        reply.len(),
        "reply length after the client's FIN"
    );
    assert!(answer == reply, "the reply arrived altered");
}

/// The upstream sends and half-closes first; the client sees the end of the download but can
/// still upload, and the upstream receives it.
fn upstream_half_close_keeps_the_upload_open(driver: Driver) {
    let greeting = payload(256 * 1024, 5);
    let late_upload = payload(256 * 1024, 6);
    let (recordings, recorded) = std::sync::mpsc::channel();
    let server = {
        let greeting = greeting.clone();
        Upstream::spawn(move |mut stream, _| {
            let _ = stream.write_all(&greeting);
            let _ = stream.shutdown(Shutdown::Write);
            let _ = recordings.send(upstream::read_all(&stream));
        })
    };
    let proxy = Proxy::start(
        &tcp_listener("half", &[server.address()], "", ""),
        driver,
        2,
    );

    let mut stream = connect(proxy.listener("half"));
    let downloaded = client::read_to_end(&stream);
    assert!(
        downloaded == greeting,
        "got {} bytes, not the greeting",
        downloaded.len()
    );
    // The download has ended; the upload must still go through.
    stream
        .write_all(&late_upload)
        .expect("upload after the upstream's FIN");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let seen = recorded
        .recv_timeout(PATIENCE)
        .expect("the upstream saw our FIN");
    assert_eq!(
        seen.len(),
        late_upload.len(),
        "bytes uploaded after the upstream's FIN"
    );
    assert!(seen == late_upload, "the late upload arrived altered");
    proxy.wait_listener_counter("half", "closed", 1);
}

/// 200 connections open at once, made from client threads pinned to each core: every worker
/// accepts some, and (Linux >= 6.2, `SO_INCOMING_CPU`) exactly those made from its own core.
fn two_hundred_concurrent_connections_reach_every_worker(driver: Driver) {
    const CONNECTIONS: usize = 200;
    let cores = client::cores();
    if cores.len() < 2 {
        eprintln!(
            "skipped: this machine has {} core(s); spreading needs two",
            cores.len()
        );
        return;
    }
    let echo = Upstream::echo();
    let proxy = Proxy::start(
        &tcp_listener("spread", &[echo.address()], "", ""),
        driver,
        cores.len(),
    );
    let address = proxy.listener("spread");
    let per_core = CONNECTIONS.div_ceil(cores.len());

    // Each pinned thread opens its connections, checks one echo on each, and hands them back
    // open, so that all of them are open together when the counters are read.
    let opened = client::on_each_core(|core| {
        (0..per_core)
            .map(|i| {
                let mut stream = connect(address);
                client::echo(
                    &mut stream,
                    format!("core {core} connection {i}").as_bytes(),
                );
                stream
            })
            .collect::<Vec<_>>()
    });
    let total: usize = opened.iter().map(|(_, streams)| streams.len()).sum();
    assert!(total >= CONNECTIONS);

    let stats = proxy.stats();
    assert_eq!(
        stats.listener_counter("spread", "active"),
        total as u64,
        "open at once"
    );
    let accepted = stats.per_worker("spread", "accepted");
    assert_eq!(
        accepted.iter().sum::<u64>(),
        total as u64,
        "per-worker accepted: {accepted:?}"
    );
    assert!(
        accepted.iter().all(|&n| n > 0),
        "every worker must accept some connections; per worker: {accepted:?}"
    );
    // The Prometheus view of the same counters agrees.
    let metrics = proxy.metrics();
    for (worker, &n) in accepted.iter().enumerate() {
        let exposed = metrics.value(
            "ringmesh_worker_connections_accepted_total",
            &[("listener", "spread"), ("worker", &worker.to_string())],
        );
        assert_eq!(exposed, n as f64, "worker {worker} in /stats/prometheus");
    }
    if tests::kernel_at_least(6, 2) {
        for worker in stats.workers() {
            let core = worker.core.expect("workers are pinned by default");
            let from_core = opened
                .iter()
                .find(|(c, _)| *c == core)
                .map_or(0, |(_, streams)| streams.len());
            assert_eq!(
                accepted[worker.id], from_core as u64,
                "worker {} on core {core} should accept exactly the connections made from core \
                 {core} (SO_INCOMING_CPU); per worker: {accepted:?}",
                worker.id
            );
        }
    } else {
        eprintln!("kernel older than 6.2: not checking that connections stay on their core");
    }

    drop(opened);
    proxy.wait_listener_counter("spread", "closed", total as u64);
    assert_eq!(
        echo.accepted(),
        total,
        "one upstream connection per downstream one"
    );
}

/// A cluster whose first endpoint refuses: every connection still reaches the second one.
fn first_endpoint_refused_falls_through_to_the_next(driver: Driver) {
    falls_through(
        driver,
        upstream::refused_address(),
        "",
        "upstream_connect_failures",
        "upstream_connect_timeouts",
    );
}

/// A cluster whose first endpoint never answers: after `connect_timeout` the proxy moves on and
/// the connection works.
fn connect_timeout_falls_through_to_the_next_endpoint(driver: Driver) {
    let hole = Blackhole::new();
    falls_through(
        driver,
        hole.address(),
        "connect_timeout = \"300ms\"",
        "upstream_connect_timeouts",
        "upstream_connect_failures",
    );
}

/// Proxies through a cluster `[dead, echo]` on one worker: every connection is served, round
/// robin tries `dead` at least once, and those attempts are counted as `counted`, never as
/// `not_counted` (a timeout is not a refusal, nor the reverse).
fn falls_through(
    driver: Driver,
    dead: SocketAddr,
    cluster_extra: &str,
    counted: &str,
    not_counted: &str,
) {
    const CONNECTIONS: usize = 4;
    let echo = Upstream::echo();
    let config = tcp_listener("fallback", &[dead, echo.address()], "", cluster_extra);
    let proxy = Proxy::start(&config, driver, 1);
    for i in 0..CONNECTIONS {
        let mut stream = connect(proxy.listener("fallback"));
        client::echo(&mut stream, format!("attempt {i}").as_bytes());
    }
    let stats = proxy.stats();
    let clusters = &stats.0["clusters"];
    assert_eq!(
        stats.cluster_counter("fallback", "upstream_connections"),
        CONNECTIONS as u64
    );
    assert!(
        stats.cluster_counter("fallback", counted) >= 1,
        "round robin must have tried {dead} and counted it in {counted}: {clusters:#}"
    );
    assert_eq!(
        stats.cluster_counter("fallback", not_counted),
        0,
        "nothing counts in {not_counted}: {clusters:#}"
    );
    assert_eq!(echo.accepted(), CONNECTIONS);
}

/// `least_request` on a tcp listener counts the connections open on each endpoint: with one
/// endpoint still holding its connections and the other's closed, every new connection goes to
/// the other, until both hold as many again. Round robin or random would send some to the busy
/// one. One worker, because the counts are per worker.
fn least_request_sends_new_connections_to_the_endpoint_with_fewer_open(driver: Driver) {
    // Each upstream names itself with one byte, then holds the connection until the client's FIN.
    let tagged = |tag: u8| {
        Upstream::spawn(move |mut stream, _| {
            if stream.write_all(&[tag]).is_ok() {
                let _ = upstream::read_all(&stream);
                let _ = stream.shutdown(Shutdown::Write);
            }
        })
    };
    let (busy, idle) = (tagged(b'B'), tagged(b'I'));
    let proxy = Proxy::start(
        &tcp_listener(
            "lr",
            &[busy.address(), idle.address()],
            "",
            "lb_policy = \"least_request\"",
        ),
        driver,
        1,
    );
    let address = proxy.listener("lr");
    // One at a time: once the tag arrived, the proxy has counted the connection on its endpoint.
    let open = |n: usize| -> Vec<(u8, TcpStream)> {
        (0..n)
            .map(|_| {
                let mut stream = connect(address);
                let mut tag = [0u8; 1];
                stream
                    .read_exact(&mut tag)
                    .expect("the upstream's name through the proxy");
                (tag[0], stream)
            })
            .collect()
    };
    let count = |connections: &[(u8, TcpStream)], tag: u8| {
        connections.iter().filter(|(t, _)| *t == tag).count()
    };

    // Equal counts after every second connection, whichever endpoint wins the ties.
    let first = open(8);
    assert_eq!(
        (count(&first, b'B'), count(&first, b'I')),
        (4, 4),
        "the first 8 connections split evenly"
    );
    // The connections on `idle` end; those on `busy` stay open.
    let (held, ended): (Vec<_>, Vec<_>) = first.into_iter().partition(|(tag, _)| *tag == b'B');
    drop(ended);
    proxy.wait_listener_counter("lr", "closed", 4);

    let next = open(4);
    assert_eq!(
        count(&next, b'I'),
        4,
        "with 4 connections open on one endpoint and none on the other, the next 4 go to the other"
    );
    let last = open(2);
    assert_eq!(
        (count(&last, b'B'), count(&last, b'I')),
        (1, 1),
        "at 4 and 4 again, the next two split"
    );
    drop((held, next, last));
    proxy.wait_listener_counter("lr", "closed", 14);
}

/// With only an unreachable endpoint, the client's connection is closed once the connect times
/// out, rather than left hanging.
fn connect_timeout_with_no_reachable_endpoint_closes_the_client(driver: Driver) {
    let hole = Blackhole::new();
    let config = tcp_listener(
        "nowhere",
        &[hole.address()],
        "",
        "connect_timeout = \"300ms\"",
    );
    let proxy = Proxy::start(&config, driver, 1);
    let mut stream = connect(proxy.listener("nowhere"));
    stream.write_all(b"hello?").expect("the proxy accepted");
    client::wait_closed(&mut stream, PATIENCE);
    let stats = proxy.stats();
    assert_eq!(
        stats.cluster_counter("nowhere", "upstream_connect_timeouts"),
        1
    );
    assert_eq!(stats.cluster_counter("nowhere", "upstream_connections"), 0);
    proxy.wait_listener_counter("nowhere", "closed", 1);
}

/// A connection with no traffic for `idle_timeout` is closed; one that keeps talking is not.
fn idle_connections_are_closed_and_active_ones_kept(driver: Driver) {
    let echo = Upstream::echo();
    let proxy = Proxy::start(
        &tcp_listener("idle", &[echo.address()], "idle_timeout = \"1s\"", ""),
        driver,
        2,
    );
    let mut quiet = connect(proxy.listener("idle"));
    client::echo(&mut quiet, b"then silence");
    let mut chatty = connect(proxy.listener("idle"));
    // Talk every 100 ms for 3 idle timeouts: never idle long enough to be closed.
    for i in 0..30 {
        client::echo(&mut chatty, format!("still here {i}").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = client::wait_closed(&mut quiet, PATIENCE);
    assert_eq!(closed, Closed::Eof, "the idle connection ends with a FIN");
    assert_eq!(
        proxy.stats().listener_counter("idle", "idle_timeouts"),
        1,
        "only the quiet connection timed out"
    );
    client::echo(&mut chatty, b"and now silence");
    client::wait_closed(&mut chatty, PATIENCE);
    proxy.wait_listener_counter("idle", "idle_timeouts", 2);
}

/// With `max_connections = 3`, a fourth connection is closed at once and counted as rejected;
/// once one of the three ends, a new one is served again.
fn max_connections_closes_the_excess_and_recovers(driver: Driver) {
    let echo = Upstream::echo();
    let proxy = Proxy::start(
        &tcp_listener("limited", &[echo.address()], "max_connections = 3", ""),
        driver,
        2,
    );
    let address = proxy.listener("limited");
    let mut open: Vec<_> = (0..3)
        .map(|i| {
            let mut stream = connect(address);
            client::echo(&mut stream, format!("connection {i}").as_bytes());
            stream
        })
        .collect();

    let mut excess = connect(address);
    let _ = excess.write_all(b"let me in");
    client::wait_closed(&mut excess, PATIENCE);
    let stats = proxy.stats();
    assert_eq!(stats.listener_counter("limited", "rejected"), 1);
    assert_eq!(stats.listener_counter("limited", "active"), 3);
    assert_eq!(
        echo.accepted(),
        3,
        "a rejected connection never reaches the upstream"
    );
    // The three admitted connections are unaffected.
    for (i, stream) in open.iter_mut().enumerate() {
        client::echo(stream, format!("still served {i}").as_bytes());
    }

    drop(open.pop());
    proxy.wait_listener_counter("limited", "active", 2);
    let mut again = connect(address);
    client::echo(&mut again, b"room again");
    assert_eq!(proxy.stats().listener_counter("limited", "rejected"), 1);
}

/// Upstreams that refuse, reset at once, or reset mid-transfer: each client connection is closed,
/// and afterwards every worker still accepts and proxies, and the admin API answers.
fn refused_and_resetting_upstreams_never_take_a_worker_down(driver: Driver) {
    const PER_CORE: usize = 10;
    let echo = Upstream::echo();
    let resets = Upstream::reset_on_accept();
    let mid_resets = Upstream::reset_after_first_read();
    let config = [
        tcp_listener("refused", &[upstream::refused_address()], "", ""),
        tcp_listener("reset", &[resets.address()], "", ""),
        tcp_listener("reset-mid", &[mid_resets.address()], "", ""),
        tcp_listener("ok", &[echo.address()], "", ""),
    ]
    .concat();
    let workers = client::cores().len().max(1);
    let mut proxy = Proxy::start(&config, driver, workers);

    let bad = ["refused", "reset", "reset-mid"];
    let bad_addresses: Vec<SocketAddr> = bad.iter().map(|name| proxy.listener(name)).collect();
    client::on_each_core(|_| {
        for &address in &bad_addresses {
            for _ in 0..PER_CORE {
                let mut stream = connect(address);
                // Enough to be mid-transfer when the reset comes; the write may fail if the
                // proxy has closed already. Either way the proxy must close the connection.
                let _ = stream.write_all(&payload(64 * 1024, 7));
                client::wait_closed(&mut stream, PATIENCE);
            }
        }
    });
    let attempts = (PER_CORE * client::cores().len().max(1)) as u64;
    for name in bad {
        proxy.wait_listener_counter(name, "closed", attempts);
    }
    let stats = proxy.stats();
    assert_eq!(
        stats.cluster_counter("refused", "upstream_connect_failures"),
        attempts
    );
    for name in bad {
        let accepted = stats.per_worker(name, "accepted");
        assert!(
            accepted.iter().all(|&n| n > 0),
            "the bad traffic should reach every worker; {name} per worker: {accepted:?}"
        );
    }

    // Every worker is alive: each one accepts and proxies on the healthy listener.
    let ok = proxy.listener("ok");
    client::on_each_core(|core| {
        for i in 0..PER_CORE {
            let mut stream = connect(ok);
            client::echo(
                &mut stream,
                format!("core {core} after the resets {i}").as_bytes(),
            );
        }
    });
    let accepted = proxy.stats().per_worker("ok", "accepted");
    assert!(
        accepted.iter().all(|&n| n > 0),
        "every worker must still accept after upstream failures; per worker: {accepted:?}"
    );
    let health = proxy.admin_get("/healthz");
    assert_eq!(health.status, 200);
    assert!(proxy.is_running(), "the process survived");
}
