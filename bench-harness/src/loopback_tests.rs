//! The generator against the built-in upstream and against small misbehaving servers, on real
//! loopback sockets (port 0), on both I/O drivers. These check behaviour (requests complete,
//! errors are counted, a stall is charged to the requests that waited for it, a missed rate is
//! refused), never speed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::load::{self, Mode, NoMonitor, Protocol, Verdict, tests::test_spec};
use crate::runtime::{self, Io};
use crate::upstream::{self, UpstreamAddrs, UpstreamSpec};

fn drivers() -> Vec<Io> {
    if runtime::uring_available() {
        vec![Io::Uring, Io::Epoll]
    } else {
        eprintln!("io_uring is not available here: testing epoll only");
        vec![Io::Epoll]
    }
}

fn start_upstream(io: Io) -> UpstreamAddrs {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    upstream::start(&UpstreamSpec {
        http: Some(any),
        h2: Some(any),
        echo: Some(any),
        threads: 1,
        cores: vec![],
        io,
        payload: 100,
        flap: None,
        https: None,
        https_mtls: None,
        tls: None,
    })
    .expect("upstream starts")
}

#[test]
fn every_protocol_completes_closed_loop() {
    for io in drivers() {
        let up = start_upstream(io);
        for (protocol, addr) in [
            (Protocol::Http1, up.http),
            (Protocol::H2, up.h2),
            (Protocol::Echo, up.echo),
        ] {
            let mut spec = test_spec(protocol, addr.expect("bound"));
            spec.io = io;
            let run = load::run(&spec, &mut NoMonitor).expect("runs");
            let r = &run.report;
            assert!(r.completed > 0, "{io:?} {protocol:?}: {r:?}");
            assert_eq!(r.errors.total(), 0, "{io:?} {protocol:?}: {:?}", r.errors);
            assert_eq!(r.verdict, Verdict::Valid, "{io:?} {protocol:?}");
            assert_eq!(run.latency.count(), r.completed);
            assert!(r.latency.is_some() && !r.curve.is_empty());
        }
    }
}

#[test]
fn request_bodies_and_large_responses() {
    for io in drivers() {
        let up = start_upstream(io);
        for (protocol, addr) in [(Protocol::Http1, up.http), (Protocol::H2, up.h2)] {
            let mut spec = test_spec(protocol, addr.expect("bound"));
            spec.io = io;
            spec.request_body = 3000;
            spec.path = "/payload/300000".into();
            spec.connections = 2;
            let run = load::run(&spec, &mut NoMonitor).expect("runs");
            assert!(run.report.completed > 0, "{io:?} {protocol:?}");
            assert_eq!(
                run.report.errors.total(),
                0,
                "{io:?} {protocol:?}: {:?}",
                run.report.errors
            );
        }
    }
}

#[test]
fn open_loop_counts_its_schedule() {
    for io in drivers() {
        let up = start_upstream(io);
        let mut spec = test_spec(Protocol::Http1, up.http.expect("bound"));
        spec.io = io;
        spec.mode = Mode::Open { rate: 400.0 };
        spec.duration = Duration::from_millis(500);
        let run = load::run(&spec, &mut NoMonitor).expect("runs");
        let r = &run.report;
        // 400 req/s for 0.5 s: exactly 200 intended in the window, whatever the timing.
        assert_eq!(r.scheduled, Some(200), "{io:?}");
        assert!(r.completed > 0 && r.completed <= 200, "{io:?}: {r:?}");
        assert_eq!(r.errors.total(), 0, "{io:?}");
        assert!(r.generator_lag.is_some() && r.uncorrected.is_some());
    }
}

/// A one-connection HTTP/1.1 server that answers request `i` after `delay(i)`.
fn slow_server(delay: fn(usize) -> Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        // Serve connections one after another (probe runs and reconnects included).
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_nodelay(true);
            let mut i = 0;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            'conn: loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    std::thread::sleep(delay(i));
                    i += 1;
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        break 'conn;
                    }
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    });
    addr
}

#[test]
fn a_stall_is_charged_to_the_requests_that_waited() {
    // One lane at 100 req/s; the 20th answer takes 300 ms. The ~30 requests scheduled during the
    // stall must show it (corrected), while the uncorrected view sees one slow request.
    for io in drivers() {
        let addr = slow_server(|i| {
            if i == 20 {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            }
        });
        let mut spec = test_spec(Protocol::Http1, addr);
        spec.io = io;
        spec.connections = 1;
        spec.warmup = Duration::ZERO;
        spec.duration = Duration::from_millis(1500);
        spec.mode = Mode::Open { rate: 100.0 };
        let run = load::run(&spec, &mut NoMonitor).expect("runs");
        let r = &run.report;
        let corrected = r.latency.expect("latency");
        let uncorrected = r.uncorrected.expect("uncorrected");
        assert!(corrected.max_us >= 250_000.0, "{io:?}: {corrected:?}");
        // ~30 of ~150 requests waited behind the stall: p90 of the corrected view shows it…
        assert!(corrected.p90_us >= 50_000.0, "{io:?}: {corrected:?}");
        // …while the naive view has one slow request, invisible at p90.
        assert!(uncorrected.p90_us < 50_000.0, "{io:?}: {uncorrected:?}");
    }
}

#[test]
fn a_missed_rate_is_refused() {
    // Every answer takes 20 ms, so one connection can do at most 50 req/s; ask for 200.
    for io in drivers() {
        let addr = slow_server(|_| Duration::from_millis(20));
        let mut spec = test_spec(Protocol::Http1, addr);
        spec.io = io;
        spec.connections = 1;
        spec.mode = Mode::Open { rate: 200.0 };
        spec.duration = Duration::from_millis(500);
        let run = load::run(&spec, &mut NoMonitor).expect("runs");
        match run.report.verdict {
            Verdict::RateShortfall { achieved, target } => {
                assert!(achieved < 0.97 * target, "{io:?}");
                assert_eq!(target, 200.0);
            }
            other => panic!("{io:?}: expected a rate shortfall, got {other:?}"),
        }
    }
}

#[test]
fn errors_are_counted_not_fatal() {
    // A server that answers 503: every request is a counted status error.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0
                        || conn
                            .write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    for io in drivers() {
        let mut spec = test_spec(Protocol::Http1, addr);
        spec.io = io;
        spec.connections = 1;
        let run = load::run(&spec, &mut NoMonitor).expect("runs");
        let r = &run.report;
        assert!(r.errors.status > 0, "{io:?}: {r:?}");
        assert_eq!(r.completed, 0);
        assert_eq!(r.verdict, Verdict::NoResponses);
    }
}

#[test]
fn connect_failure_is_an_error_not_a_hang() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let spec = test_spec(Protocol::Http1, ([127, 0, 0, 1], port).into());
    let err = load::run(&spec, &mut NoMonitor).expect_err("nothing listens");
    assert!(err.to_string().contains("cannot connect"), "{err:#}");
}

#[test]
fn upstream_handles_pipelining_and_chunked_bodies() {
    for io in drivers() {
        let up = start_upstream(io);
        let mut s = std::net::TcpStream::connect(up.http.expect("bound")).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(
            b"GET /payload/5 HTTP/1.1\r\nHost: x\r\n\r\n\
              POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /payload/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read until close");
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{io:?}: {text}");
        assert!(
            text.contains(
                "Content-Length: 5\r\nContent-Type: application/octet-stream\r\n\r\nxxxxxHTTP"
            ),
            "{text}"
        );
        assert!(
            text.contains("Content-Length: 100\r\n"),
            "default payload: {text}"
        );
        assert!(
            text.ends_with("Content-Length: 0\r\nContent-Type: application/octet-stream\r\n\r\n"),
            "{text}"
        );
    }
}

/// A flapping upstream fails requests (503, or a reset) in its down phases and serves them in its
/// up phases, and the timeline accounts for every request of the window.
#[test]
fn a_flapping_upstream_fails_only_some_requests() {
    use crate::load::TimelineSpec;
    use crate::upstream::{Flap, FlapMode};
    for io in drivers() {
        for mode in [FlapMode::Status503, FlapMode::Reset] {
            let flap = Flap {
                period: Duration::from_millis(400),
                down: Duration::from_millis(200),
                mode,
            };
            let up = upstream::start(&UpstreamSpec {
                http: Some(([127, 0, 0, 1], 0).into()),
                h2: None,
                echo: None,
                threads: 1,
                cores: vec![],
                io,
                payload: 64,
                flap: Some(flap),
                https: None,
                https_mtls: None,
                tls: None,
            })
            .expect("upstream starts");
            let mut spec = test_spec(Protocol::Http1, up.http.expect("bound"));
            spec.io = io;
            spec.mode = Mode::Open { rate: 400.0 };
            spec.duration = Duration::from_millis(800);
            let timeline = TimelineSpec {
                bucket: Duration::from_millis(100),
                align_to: Some(flap.period),
            };
            let run = load::run_timed(&spec, &mut NoMonitor, Some(timeline)).expect("runs");
            let r = &run.report;
            let e = &r.errors;
            assert!(r.completed > 0, "{io:?} {mode:?}: {r:?}");
            assert!(e.total() > 0, "{io:?} {mode:?}: nothing failed: {r:?}");
            match mode {
                FlapMode::Status503 => assert_eq!(e.total(), e.status, "{io:?}: {e:?}"),
                FlapMode::Reset => {
                    assert_eq!(e.status, 0, "{io:?}: {e:?}");
                    assert!(e.io > 0, "{io:?}: {e:?}");
                }
            }
            assert_eq!(run.timeline.len(), 8, "{io:?} {mode:?}");
            let ok: u64 = run.timeline.iter().map(|b| b.ok).sum();
            let failed: u64 = run.timeline.iter().map(|b| b.failed).sum();
            assert_eq!((ok, failed), (r.completed, e.total()), "{io:?} {mode:?}");
        }
    }
}

/// The ringmesh binary to run `flapping` against: a built one that accepts its config (a stale
/// build without retries or outlier detection rejects it), else `None`.
fn ringmesh_for_flapping() -> Option<std::path::PathBuf> {
    use crate::flapping::{Policies, Variant, ringmesh_config};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = ringmesh_config(
        Variant::Resilient,
        &["127.0.0.1:1".parse().expect("addr")],
        1,
        &Policies {
            attempts: 2,
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(1),
            interval: Duration::from_secs(1),
        },
    );
    let path = std::env::temp_dir().join(format!("rmb-flap-{}.toml", std::process::id()));
    std::fs::write(&path, config).ok()?;
    let found = ["target/release/ringmesh", "target/debug/ringmesh"]
        .iter()
        .map(|p| root.join(p))
        .find(|bin| {
            bin.is_file()
                && std::process::Command::new(bin)
                    .arg("validate")
                    .arg(&path)
                    .output()
                    .is_ok_and(|o| o.status.success())
        });
    let _ = std::fs::remove_file(&path);
    found
}

/// `flapping` end to end, small: both variants run through a real ringmesh and report curves and
/// counters. Needs a current ringmesh build (`scripts/test` builds every binary first).
#[test]
fn flapping_runs_both_variants_through_ringmesh() {
    use crate::flapping::{self, FlappingSpec, Policies, Variant};
    use crate::targets::TargetSettings;
    use crate::upstream::{Flap, FlapMode};
    let Some(ringmesh) = ringmesh_for_flapping() else {
        panic!(
            "no ringmesh build accepts the flapping config: run `cargo build -p dataplane` first"
        );
    };
    let dir = std::env::temp_dir().join(format!("rmb-flapping-{}", std::process::id()));
    let spec = FlappingSpec {
        flap: Flap {
            period: Duration::from_millis(1000),
            down: Duration::from_millis(400),
            mode: FlapMode::Status503,
        },
        endpoints: 3,
        rate: 300.0,
        connections: 4,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(200),
        bucket: Duration::from_millis(250),
        timeout: Duration::from_secs(2),
        payload: 64,
        policies: Policies {
            attempts: 2,
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_millis(500),
            max_ejection_time: Duration::from_millis(1000),
            interval: Duration::from_millis(200),
        },
        load_cores: vec![],
        io: Io::Auto,
        targets_settings: TargetSettings {
            ringmesh,
            nginx: "nginx".into(),
            haproxy: "haproxy".into(),
            workers: 1,
            cores: vec![],
            io: Io::Auto,
            dir: dir.join("targets"),
            tls: None,
        },
        out_dir: dir.clone(),
        command: "test".into(),
        progress: false,
    };
    let report = flapping::run(&spec).expect("runs");
    assert_eq!(report.variants.len(), 2);
    for v in &report.variants {
        assert_eq!(v.skipped, None, "{:?}", v.variant);
        assert_eq!(v.timeline.len(), 6, "{:?}", v.variant);
        let (ok, failed) = v
            .timeline
            .iter()
            .fold((0, 0), |(ok, failed), b| (ok + b.ok, failed + b.failed));
        assert_eq!((ok, failed), (v.ok, v.errors.total()), "{:?}", v.variant);
        assert!(v.ok > 0, "{:?}: {v:?}", v.variant);
    }
    let plain = &report.variants[0];
    assert_eq!(plain.variant, Variant::Plain);
    assert!(
        plain.errors.status > 0,
        "the flapping endpoint's 503s reach the client: {plain:?}"
    );
    let resilient = &report.variants[1];
    assert!(
        resilient.retries.is_some(),
        "retries are read from /stats/prometheus"
    );
    let html = crate::report::flapping::html(&report);
    assert!(html.contains("<svg") && !html.contains("NaN"), "{html}");
    assert!(crate::report::flapping::markdown(&report).contains("| retries + outlier detection |"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A blocking rustls HTTPS/1.1 server on its own threads (one per connection) that counts the
/// handshakes it completed: the other side of the generator's TLS client.
struct TlsServer {
    addr: SocketAddr,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn tls_server(pki: &crate::tls::Pki, client_ca: bool) -> TlsServer {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.files.cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(&pki.files.key).expect("key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&pki.files.ca).expect("ca") {
            roots.add(ca.expect("ca")).expect("root");
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = Arc::new(builder.with_single_cert(certs, key).expect("server config"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicU64::new(0));
    let counter = handshakes.clone();
    std::thread::spawn(move || {
        // Bounded: far more connections than any test here makes.
        for tcp in listener.incoming().take(100_000) {
            let Ok(mut tcp) = tcp else { continue };
            let (config, counter) = (config.clone(), counter.clone());
            std::thread::spawn(move || {
                let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        return;
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                        pending.drain(..end + 4);
                        let close = head.contains("connection: close");
                        let answer: &[u8] = if close {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                        };
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                        if close {
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                            return;
                        }
                    }
                }
            });
        }
    });
    TlsServer { addr, handshakes }
}

/// The generator speaks HTTPS/1.1: keep-alive (one handshake per connection) and a new
/// connection per request (one full handshake per request), with and without a client
/// certificate, and the probes report what was negotiated.
#[test]
fn the_generator_speaks_tls_keep_alive_and_one_handshake_per_request() {
    use std::sync::atomic::Ordering;
    let pki = crate::tls::Pki::generate(&std::env::temp_dir()).expect("pki");
    for mtls in [false, true] {
        let server = tls_server(&pki, mtls);
        let client = pki.client(mtls).expect("client");
        for io in drivers() {
            for per_request in [false, true] {
                let before = server.handshakes.load(Ordering::Relaxed);
                let mut spec = test_spec(Protocol::Http1, server.addr);
                spec.io = io;
                spec.payload = 5;
                spec.tls = Some(client.clone());
                spec.new_connection_per_request = per_request;
                let run = load::run(&spec, &mut NoMonitor).expect("runs");
                let r = &run.report;
                let what = format!("mtls {mtls}, {io:?}, new connection per request {per_request}");
                assert!(r.completed > 0, "{what}: {r:?}");
                assert_eq!(r.errors.total(), 0, "{what}: {:?}", r.errors);
                let handshakes = server.handshakes.load(Ordering::Relaxed) - before;
                if per_request {
                    assert!(handshakes > r.completed, "{what}: {handshakes} handshakes");
                } else {
                    assert_eq!(handshakes, spec.connections as u64, "{what}");
                }
            }
        }
        let negotiated = crate::tls::negotiated(server.addr, &client).expect("handshake");
        assert!(
            negotiated.starts_with("TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519, ALPN"),
            "{negotiated}"
        );
        let anonymous = pki.client(false).expect("client");
        assert_eq!(
            crate::tls::refuses_anonymous(server.addr, &anonymous),
            mtls,
            "mtls {mtls}"
        );
    }
}

/// The built-in upstream serves HTTPS/1.1 (direct in the TLS scenarios): keep-alive and one
/// handshake per request (full or resumed) through the generator, and its mTLS listener refuses a client without a
/// certificate.
#[test]
fn the_upstream_serves_https_and_requires_client_certificates_on_its_mtls_listener() {
    let pki = crate::tls::Pki::generate(&std::env::temp_dir()).expect("pki");
    for io in drivers() {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let up = upstream::start(&UpstreamSpec {
            http: None,
            h2: None,
            echo: None,
            threads: 1,
            cores: vec![],
            io,
            payload: 100,
            flap: None,
            https: Some(any),
            https_mtls: Some(any),
            tls: Some(upstream::UpstreamTls {
                cert: pki.files.cert.clone(),
                key: pki.files.key.clone(),
                client_ca: pki.files.ca.clone(),
            }),
        })
        .expect("upstream starts");
        for (mtls, addr) in [(false, up.https), (true, up.https_mtls)] {
            let addr = addr.expect("bound");
            let client = pki.client(mtls).expect("client");
            for (per_request, resuming) in [(false, false), (true, false), (true, true)] {
                let mut spec = test_spec(Protocol::Http1, addr);
                spec.io = io;
                spec.tls = Some(if resuming {
                    client.resuming()
                } else {
                    client.clone()
                });
                spec.new_connection_per_request = per_request;
                let run = load::run(&spec, &mut NoMonitor).expect("runs");
                let r = &run.report;
                assert!(r.completed > 0, "{io:?} mtls {mtls} {per_request}: {r:?}");
                assert_eq!(r.errors.total(), 0, "{io:?} mtls {mtls}: {:?}", r.errors);
            }
            assert!(crate::tls::resumes(addr, &client), "{io:?} mtls {mtls}");
            let anonymous = pki.client(false).expect("client");
            assert_eq!(
                crate::tls::refuses_anonymous(addr, &anonymous),
                mtls,
                "{io:?} mtls {mtls}"
            );
        }
    }
}
