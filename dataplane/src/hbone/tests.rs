//! Tests of the HBONE client and server over real loopback sockets, on both drivers
//! (`monoio::test_all`). Certificates are made here with rcgen: a CA for the trust domain
//! `cluster.local` and SVIDs (one SPIFFE URI SAN) for a client and a server workload; the TLS
//! configs are plain rustls configs with the repo's provider and SPIFFE verifiers.
//!
//! The "workload" behind the server is a TCP listener of the test (an echo, or one scripted per
//! test); the handler connects to the CONNECT target, or refuses as the test says.

// Test fixtures made here, not values from a peer or a config file: unwrap states the test's
// assumption.
#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::client::{ConnectOptions, HbonePool, PoolKey};
use super::server::{ConnectHandler, Opened, Refusal, ServerOptions};
use super::*;
use crate::event::{Event, Signal};
use crate::identity::{
    DomainBundle, FixedTrust, IdentityMetrics, SpiffeClientVerifier, SpiffeIdPattern,
    SpiffeServerVerifier, TrustBundles,
};
use crate::tls::transport::Transport;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/apps/sa/server";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Bounds the tests' waits so a bug fails a test instead of hanging it; never a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

/// The test PKI: a CA and two SVIDs, as DER and PEM.
struct Pki {
    ca_pem: String,
    client: (Vec<CertificateDer<'static>>, String),
    server: (Vec<CertificateDer<'static>>, String),
    /// The client SVID in PEM, for the Python client.
    client_pem: String,
}

fn pki() -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cluster.local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, key).unwrap();
    let leaf = |id: &str| {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (vec![cert.der().clone()], key.serialize_pem(), cert.pem())
    };
    let (client, server) = (leaf(CLIENT_ID), leaf(SERVER_ID));
    Pki {
        ca_pem: ca.pem(),
        client: (client.0, client.1),
        server: (server.0, server.1),
        client_pem: client.2,
    }
}

impl Pki {
    fn trust(&self) -> Arc<FixedTrust> {
        let mut bundles = TrustBundles::new();
        bundles.insert(
            "cluster.local",
            DomainBundle::from_pem("test", self.ca_pem.as_bytes()).unwrap(),
        );
        Arc::new(FixedTrust(Arc::new(bundles)))
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let verifier = SpiffeClientVerifier::new(
            self.trust(),
            true,
            Vec::new(),
            Arc::new(IdentityMetrics::new()),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.server.0.clone(), key(&self.server.1))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A client config presenting the client SVID (or none), accepting only `SERVER_ID`.
    fn client_config(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let verifier = SpiffeServerVerifier::new(
            self.trust(),
            vec![SpiffeIdPattern::parse(SERVER_ID).unwrap()],
            Arc::new(IdentityMetrics::new()),
        );
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = if with_cert {
            builder
                .with_client_auth_cert(self.client.0.clone(), key(&self.client.1))
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn server_options() -> ServerOptions {
    ServerOptions::from_http2(&config_schema::Http2Spec::default(), PATIENCE)
}

/// What the test handler saw.
#[derive(Default)]
struct Seen {
    requests: RefCell<Vec<ConnectRequest>>,
    /// (from tunnel, into tunnel, ended cleanly) per ended stream.
    ended: RefCell<Vec<(u64, u64, bool)>>,
}

/// Connects the target, or refuses with `refuse`; its close signal is `close`.
struct TestHandler {
    refuse: Option<Refusal>,
    close: Rc<Signal>,
    seen: Rc<Seen>,
}

impl ConnectHandler for TestHandler {
    type Session = Rc<Signal>;

    async fn open(&self, request: &ConnectRequest) -> Result<Opened<Self::Session>, Refusal> {
        self.seen.requests.borrow_mut().push(request.clone());
        if let Some(refusal) = self.refuse {
            return Err(refusal);
        }
        let upstream = TcpStream::connect_addr(request.target)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        Ok(Opened {
            upstream,
            session: Rc::clone(&self.close),
        })
    }

    fn close_signal<'s>(&self, session: &'s Self::Session) -> Option<&'s Signal> {
        Some(session)
    }

    fn ended(&self, _: &ConnectRequest, _: Self::Session, outcome: &Outcome) {
        self.seen.ended.borrow_mut().push((
            outcome.from_tunnel,
            outcome.into_tunnel,
            outcome.ended.is_done(),
        ));
    }
}

/// A running tunnel server on 127.0.0.1.
struct Server {
    address: SocketAddr,
    seen: Rc<Seen>,
    close: Rc<Signal>,
    counters: Arc<HboneCounters>,
    handshake_failures: Rc<Cell<u32>>,
    /// The worker's drain, for the server.
    drain: Rc<Event>,
}

fn start_server(pki: &Pki, refuse: Option<Refusal>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Rc::new(Seen::default());
    let close = Rc::new(Signal::default());
    let handler = Rc::new(TestHandler {
        refuse,
        close: Rc::clone(&close),
        seen: Rc::clone(&seen),
    });
    let counters = Arc::new(HboneCounters::default());
    let handshake_failures = Rc::new(Cell::new(0));
    let config = pki.server_config();
    let drain = Event::new();
    let task_drain = Rc::clone(&drain);
    let (task_counters, failures) = (Arc::clone(&counters), Rc::clone(&handshake_failures));
    monoio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (config, handler) = (Arc::clone(&config), Rc::clone(&handler));
            let (counters, failures) = (Arc::clone(&task_counters), Rc::clone(&failures));
            let drain = Rc::clone(&task_drain);
            monoio::spawn(async move {
                let io = monoio::io::IntoPollIo::into_poll_io(stream).unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = crate::tls::TlsStream::new(io, conn);
                if tls.handshake().await.is_err() {
                    failures.set(failures.get() + 1);
                    return;
                }
                let info = crate::tls::TlsInfo::of(tls.connection());
                let transport = Transport::Tls(Box::new(tls), Box::new(info));
                server::serve(
                    transport,
                    LOCALHOST,
                    handler,
                    &server_options(),
                    counters,
                    &drain,
                )
                .await;
            });
        }
    });
    Server {
        address,
        seen,
        close,
        counters,
        handshake_failures,
        drain,
    }
}

/// An echo workload: every connection's bytes back, FIN for FIN.
fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    monoio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let (result, back) = read.read(buf).await;
                    buf = back;
                    match result {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let (result, back) = write.write_all(buf[..n].to_vec()).await;
                            drop(back);
                            if result.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

fn pool_key(address: SocketAddr) -> PoolKey {
    PoolKey {
        source: Rc::from(CLIENT_ID),
        address,
        server: Rc::from(SERVER_ID),
    }
}

fn options() -> ConnectOptions {
    ConnectOptions {
        mark: None,
        connect_timeout: PATIENCE,
    }
}

/// A connected pair standing for a pod's captured connection: (the app's end, ringmesh's end).
async fn app_connection() -> (TcpStream, Transport) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (app, accepted) = monoio::join!(TcpStream::connect_addr(address), listener.accept());
    (app.unwrap(), Transport::Plain(accepted.unwrap().0))
}

/// Reads until EOF.
async fn read_to_end(read: &mut (impl AsyncReadRent + ?Sized)) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let (result, back) = read.read(buf).await;
        buf = back;
        match result.unwrap() {
            0 => return all,
            n => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    monoio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {PATIENCE:?}"))
}

#[monoio::test_all(timer_enabled = true)]
async fn echo_through_a_tunnel_is_byte_exact_for_10_mib_each_way() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let counters = Arc::new(HboneCounters::default());
    let pool = HbonePool::new(Arc::clone(&counters));
    let tunnel = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(echo, Some("127.0.0.1:40000".parse().unwrap())),
            options(),
        )
        .await
        .unwrap();
    assert_eq!(tunnel.peer().as_str(), SERVER_ID);
    assert!(!tunnel.reused());
    let (app, local) = app_connection().await;
    let payload: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    let expected = payload.clone();
    let (mut read, mut write) = app.into_split();
    let send = async move {
        let (result, _) = write.write_all(payload).await;
        result.unwrap();
        write.shutdown().await.unwrap();
    };
    let (outcome, (), echoed) = within("the echo", async {
        monoio::join!(tunnel.copy(local, None), send, read_to_end(&mut read))
    })
    .await;
    assert!(echoed == expected, "the echo differs from what was sent");
    assert!(outcome.ended.is_done(), "{:?}", outcome.ended);
    assert_eq!(outcome.into_tunnel, 10 * 1024 * 1024);
    assert_eq!(outcome.from_tunnel, 10 * 1024 * 1024);
    assert_eq!(counters.outbound_opened.get(), 1);
    assert_eq!(counters.connections_opened.get(), 1);
    assert_eq!(counters.streams_active(), 0);
    assert_eq!(server.counters.inbound_opened.get(), 1);
}

#[monoio::test_all(timer_enabled = true)]
async fn half_close_passes_both_ways() {
    let pki = pki();
    let server = start_server(&pki, None);
    // A workload that answers only after the client's FIN, then ends its own side.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let workload = listener.local_addr().unwrap();
    let workload_task = monoio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_to_end(&mut stream).await;
        let (result, _) = stream.write_all(b"pong after your FIN".to_vec()).await;
        result.unwrap();
        stream.shutdown().await.unwrap();
        request
    });
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let tunnel = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(workload, None),
            options(),
        )
        .await
        .unwrap();
    let (app, local) = app_connection().await;
    let (mut read, mut write) = app.into_split();
    let app_side = async move {
        let (result, _) = write.write_all(b"ping".to_vec()).await;
        result.unwrap();
        write.shutdown().await.unwrap();
        read_to_end(&mut read).await
    };
    let (outcome, answer) = within("the exchange", async {
        monoio::join!(tunnel.copy(local, None), app_side)
    })
    .await;
    assert_eq!(answer, b"pong after your FIN");
    assert_eq!(within("the workload", workload_task).await, b"ping");
    assert!(outcome.ended.is_done(), "{:?}", outcome.ended);
    assert_eq!((outcome.into_tunnel, outcome.from_tunnel), (4, 19));
    within("the server's account", async {
        while server.seen.ended.borrow().is_empty() {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(*server.seen.ended.borrow(), vec![(4, 19, true)]);
}

#[monoio::test_all(timer_enabled = true)]
async fn forwarded_authority_and_context_reach_the_handler_exactly() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let mut request = ConnectRequest::new(echo, Some("10.1.2.3:45678".parse().unwrap()));
    request.baggage = Some("k8s.namespace.name=default,k8s.deployment.name=web".into());
    request.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let tunnel = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &request,
            options(),
        )
        .await
        .unwrap();
    let seen = server.seen.requests.borrow().clone();
    drop(tunnel);
    let mut expected = request.clone();
    expected.peer = Some(SpiffeId::parse(CLIENT_ID).unwrap());
    assert_eq!(seen, vec![expected]);
}

#[test]
fn forwarded_values_round_trip_with_ipv6_in_brackets() {
    let v6: SocketAddr = "[2001:db8::7]:8080".parse().unwrap();
    assert_eq!(forwarded_value(v6), "for=\"[2001:db8::7]:8080\"");
    assert_eq!(parse_forwarded(&forwarded_value(v6)), Some(v6));
    let v4: SocketAddr = "10.0.0.1:1234".parse().unwrap();
    assert_eq!(forwarded_value(v4), "for=\"10.0.0.1:1234\"");
    assert_eq!(
        parse_forwarded("for=10.0.0.1:1234;proto=http, for=1.1.1.1:1"),
        Some(v4)
    );
    assert_eq!(
        parse_forwarded("proto=http;For=\"10.0.0.1:1234\""),
        Some(v4)
    );
    assert_eq!(parse_forwarded("for=unknown"), None);
    assert_eq!(parse_forwarded("by=10.0.0.1:1234"), None);
}

/// Sends one request on a raw HTTP/2 connection to the server and returns the status.
async fn raw_status(pki: &Pki, server: SocketAddr, request: http::Request<()>) -> u16 {
    let (mut send, driver, _) =
        client::establish(&pool_key(server), &pki.client_config(true), None)
            .await
            .unwrap();
    monoio::spawn(async move {
        let _ = driver.await;
    });
    let (response, _stream) = send.send_request(request, false).unwrap();
    within("the answer", response)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[monoio::test_all(timer_enabled = true)]
async fn non_connect_and_foreign_targets_get_400() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let get = http::Request::builder()
        .method("GET")
        .uri(format!("https://{echo}/"))
        .body(())
        .unwrap();
    assert_eq!(raw_status(&pki, server.address, get).await, 400);
    let by_name = http::Request::builder()
        .method("CONNECT")
        .uri("localhost:80")
        .body(())
        .unwrap();
    assert_eq!(raw_status(&pki, server.address, by_name).await, 400);
    // A target whose IP is not the workload this tunnel connection was captured for.
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let foreign = SocketAddr::new("127.0.0.2".parse().unwrap(), echo.port());
    let refused = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(foreign, None),
            options(),
        )
        .await;
    assert!(
        matches!(refused, Err(HboneError::Status(400))),
        "{refused:?}"
    );
    assert_eq!(server.counters.inbound_refused.bad_request.get(), 3);
    assert!(server.seen.requests.borrow().is_empty());
}

#[monoio::test_all(timer_enabled = true)]
async fn handler_refusals_reach_the_client_with_their_status() {
    let pki = pki();
    let echo = start_echo();
    for (refusal, status) in [(Refusal::Unauthorized, 401), (Refusal::Unavailable, 503)] {
        let server = start_server(&pki, Some(refusal));
        let counters = Arc::new(HboneCounters::default());
        let pool = HbonePool::new(Arc::clone(&counters));
        let refused = pool
            .connect(
                &pool_key(server.address),
                &pki.client_config(true),
                &ConnectRequest::new(echo, None),
                options(),
            )
            .await;
        match refused {
            Err(HboneError::Status(got)) => assert_eq!(got, status),
            other => panic!("expected {status}, got {other:?}"),
        }
        let by_status = &counters.outbound_refused;
        assert_eq!(
            (by_status.unauthorized.get(), by_status.unavailable.get()),
            if status == 401 { (1, 0) } else { (0, 1) }
        );
    }
    // No listener at the target: the handler cannot connect, 503.
    let server = start_server(&pki, None);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let refused = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(nowhere, None),
            options(),
        )
        .await;
    assert!(
        matches!(refused, Err(HboneError::Status(503))),
        "{refused:?}"
    );
}

#[monoio::test_all(timer_enabled = true)]
async fn tunnels_share_connections_a_hundred_at_a_time() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let counters = Arc::new(HboneCounters::default());
    let pool = HbonePool::new(Arc::clone(&counters));
    let config = pki.client_config(true);
    let key = pool_key(server.address);
    let handles: Vec<_> = (0..150)
        .map(|_| {
            let (pool, config, key) = (pool.clone(), Arc::clone(&config), key.clone());
            monoio::spawn(async move {
                pool.connect(&key, &config, &ConnectRequest::new(echo, None), options())
                    .await
            })
        })
        .collect();
    let mut tunnels = Vec::new();
    for handle in handles {
        tunnels.push(within("a tunnel", handle).await.unwrap());
    }
    let mut streams = pool.streams(&key);
    streams.sort_unstable();
    assert_eq!(streams, vec![50, 100]);
    assert_eq!(counters.connections_opened.get(), 2);
    assert_eq!(counters.connections_reused.get(), 148);
    assert_eq!(server.counters.inbound_opened.get(), 150);
    drop(tunnels);
    // Freed slots are reused: the next tunnel opens no connection.
    let again = pool
        .connect(&key, &config, &ConnectRequest::new(echo, None), options())
        .await
        .unwrap();
    assert!(again.reused());
    assert_eq!(counters.connections_opened.get(), 2);
}

#[monoio::test_all(timer_enabled = true)]
async fn idle_connections_close() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let counters = Arc::new(HboneCounters::default());
    let pool = HbonePool::with_idle_timeout(Arc::clone(&counters), Duration::from_millis(50));
    let key = pool_key(server.address);
    let tunnel = pool
        .connect(
            &key,
            &pki.client_config(true),
            &ConnectRequest::new(echo, None),
            options(),
        )
        .await
        .unwrap();
    drop(tunnel);
    within("the idle close", async {
        while counters.connections_closed.get() == 0 {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(pool.connections(&key), 0);
    assert_eq!(counters.connections_active(), 0);
}

/// A workload that reports when its connection ends.
fn start_watched_workload() -> (SocketAddr, Rc<Cell<bool>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let closed = Rc::new(Cell::new(false));
    let flag = Rc::clone(&closed);
    monoio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        loop {
            let (result, back) = stream.read(buf).await;
            buf = back;
            if !matches!(result, Ok(n) if n > 0) {
                break;
            }
        }
        flag.set(true);
    });
    (address, closed)
}

async fn until(what: &str, flag: &Cell<bool>) {
    within(what, async {
        while !flag.get() {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[monoio::test_all(timer_enabled = true)]
async fn a_cancelled_stream_closes_the_upstream() {
    let pki = pki();
    let server = start_server(&pki, None);
    let (workload, closed) = start_watched_workload();
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let tunnel = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(workload, None),
            options(),
        )
        .await
        .unwrap();
    // Dropping an open stream resets it (CANCEL).
    drop(tunnel);
    until("the upstream's close", &closed).await;
    within("the server's account", async {
        while server.seen.ended.borrow().is_empty() {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(*server.seen.ended.borrow(), vec![(0, 0, false)]);
}

#[monoio::test_all(timer_enabled = true)]
async fn the_close_signal_resets_the_stream_and_closes_the_upstream() {
    let pki = pki();
    let server = start_server(&pki, None);
    let (workload, closed) = start_watched_workload();
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let tunnel = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(workload, None),
            options(),
        )
        .await
        .unwrap();
    let (app, local) = app_connection().await;
    let revoke = async {
        monoio::time::sleep(Duration::from_millis(20)).await;
        server.close.fire();
    };
    let (outcome, ()) = within("the revocation", async {
        monoio::join!(tunnel.copy(local, None), revoke)
    })
    .await;
    assert!(
        matches!(&outcome.ended, Ended::Tunnel(e) if e.reason() == Some(h2::Reason::CANCEL)),
        "{:?}",
        outcome.ended
    );
    until("the upstream's close", &closed).await;
    // The app's connection is closed too.
    let mut app = app;
    assert!(read_to_end(&mut app).await.is_empty());
}

#[monoio::test_all(timer_enabled = true)]
async fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let refused = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(false),
            &ConnectRequest::new(echo, None),
            options(),
        )
        .await;
    assert!(
        matches!(refused, Err(HboneError::Tls(_) | HboneError::Http2(_))),
        "{refused:?}"
    );
    within("the server's refusal", async {
        while server.handshake_failures.get() == 0 {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(server.seen.requests.borrow().is_empty());
}

#[monoio::test_all(timer_enabled = true)]
async fn a_server_with_another_identity_is_refused() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let mut key = pool_key(server.address);
    key.server = Rc::from("spiffe://cluster.local/ns/apps/sa/other");
    let refused = pool
        .connect(
            &key,
            &pki.client_config(true),
            &ConnectRequest::new(echo, None),
            options(),
        )
        .await;
    assert!(matches!(refused, Err(HboneError::Tls(_))), "{refused:?}");
}

/// A bare `h2` server that answers 200 to every CONNECT and holds the stream open, allowing
/// `max_streams` concurrent streams: what a client must respect when a server allows fewer than
/// a hundred.
fn start_small_server(pki: &Pki, max_streams: u32) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let config = pki.server_config();
    monoio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let config = Arc::clone(&config);
            monoio::spawn(async move {
                let io = monoio::io::IntoPollIo::into_poll_io(stream).unwrap();
                let mut tls =
                    crate::tls::TlsStream::new(io, rustls::ServerConnection::new(config).unwrap());
                if tls.handshake().await.is_err() {
                    return;
                }
                let io = crate::http::h2::io::H2Io::client(Transport::Tls(
                    Box::new(tls),
                    Box::default(),
                ))
                .unwrap();
                let mut h2 = h2::server::Builder::new()
                    .max_concurrent_streams(max_streams)
                    .handshake::<_, bytes::Bytes>(io)
                    .await
                    .unwrap();
                let mut held = Vec::new();
                while let Some(Ok((request, mut respond))) = h2.accept().await {
                    let ok = http::Response::builder().status(200).body(()).unwrap();
                    held.push((request, respond.send_response(ok, false).unwrap()));
                }
            });
        }
    });
    address
}

#[monoio::test_all(timer_enabled = true)]
async fn a_server_allowing_fewer_streams_gets_no_more() {
    let pki = pki();
    let server = start_small_server(&pki, 10);
    let counters = Arc::new(HboneCounters::default());
    let pool = HbonePool::new(Arc::clone(&counters));
    let key = pool_key(server);
    let config = pki.client_config(true);
    let target = SocketAddr::new(LOCALHOST, 9);
    let mut tunnels = Vec::new();
    for _ in 0..15 {
        let tunnel = pool
            .connect(&key, &config, &ConnectRequest::new(target, None), options())
            .await
            .unwrap();
        tunnels.push(tunnel);
    }
    let mut streams = pool.streams(&key);
    streams.sort_unstable();
    assert_eq!(streams, vec![5, 10]);
    assert_eq!(counters.connections_opened.get(), 2);
}

/// The interpreter with the `h2` package: `RINGMESH_PYTHON` (CI sets it), else the repository's
/// `.venv`, as the integration tests find it.
fn python() -> std::path::PathBuf {
    if let Some(python) = std::env::var_os("RINGMESH_PYTHON") {
        return python.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3");
    assert!(
        venv.is_file(),
        "no test virtualenv at {}: run `.ci/run`, or set RINGMESH_PYTHON to a python3 with `h2`",
        venv.display()
    );
    venv
}

/// A client the repo did not write: Python's `ssl` and `h2` packages, speaking HBONE as
/// ztunnel does.
const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys
import h2.connection, h2.config, h2.events

port, target, certs = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.check_hostname = False
ctx.load_verify_locations(certs + "/ca.pem")
ctx.load_cert_chain(certs + "/client.pem", certs + "/client.key")
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
stream = conn.get_next_available_stream_id()
conn.send_headers(stream, [(":method", "CONNECT"), (":authority", target),
                           ("forwarded", 'for="10.9.8.7:1234"')])
sock.sendall(conn.data_to_send())
status, echoed, sent, ended = None, b"", False, False
payload = b"hello through hbone " * 1000
while not ended:
    data = sock.recv(65536)
    if not data:
        break
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            status = dict(event.headers)[b":status"].decode()
            if status == "200" and not sent:
                conn.send_data(stream, payload, end_stream=True)
                sent = True
        elif isinstance(event, h2.events.DataReceived):
            echoed += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, stream)
        elif isinstance(event, h2.events.StreamEnded):
            ended = True
    sock.sendall(conn.data_to_send())
print(status, len(echoed), echoed == payload, ended)
"#;

#[monoio::test_all(timer_enabled = true)]
async fn python_h2_client_interoperates() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &pki.client_pem).unwrap();
    std::fs::write(dir.path().join("client.key"), &pki.client.1).unwrap();
    std::fs::write(dir.path().join("client.py"), PYTHON_CLIENT).unwrap();
    let mut command = std::process::Command::new(python());
    command
        .arg(dir.path().join("client.py"))
        .arg(server.address.port().to_string())
        .arg(echo.to_string())
        .arg(dir.path());
    // The client blocks; it runs on a thread of its own while this runtime serves it.
    let child = std::thread::spawn(move || command.output());
    within("the Python client", async {
        while !child.is_finished() {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let output = child.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "200 20000 True True");
    let seen = server.seen.requests.borrow();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, echo);
    assert_eq!(seen[0].source, Some("10.9.8.7:1234".parse().unwrap()));
    assert_eq!(seen[0].peer.as_ref().map(SpiffeId::as_str), Some(CLIENT_ID));
}

#[monoio::test_all(timer_enabled = true)]
async fn a_draining_server_finishes_open_tunnels_and_takes_no_new_ones() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let counters = Arc::new(HboneCounters::default());
    let pool = HbonePool::new(Arc::clone(&counters));
    let key = pool_key(server.address);
    let config = pki.client_config(true);
    let tunnel = pool
        .connect(&key, &config, &ConnectRequest::new(echo, None), options())
        .await
        .unwrap();
    server.drain.fire();
    // The open tunnel still carries bytes both ways to the end.
    let (app, local) = app_connection().await;
    let (mut read, mut write) = app.into_split();
    let app_side = async move {
        let (result, _) = write.write_all(b"still here".to_vec()).await;
        result.unwrap();
        write.shutdown().await.unwrap();
        read_to_end(&mut read).await
    };
    let (outcome, echoed) = within("the open tunnel", async {
        monoio::join!(tunnel.copy(local, None), app_side)
    })
    .await;
    assert_eq!(echoed, b"still here");
    assert!(outcome.ended.is_done(), "{:?}", outcome.ended);
    // The GOAWAY retired that connection: the next tunnel opens another.
    within("the GOAWAY", async {
        while counters.connections_closed.get() == 0 {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let next = pool
        .connect(&key, &config, &ConnectRequest::new(echo, None), options())
        .await
        .unwrap();
    assert!(!next.reused());
    assert_eq!(counters.connections_opened.get(), 2);
}

#[monoio::test_all(timer_enabled = true)]
async fn the_tunnel_socket_carries_the_mark() {
    let pki = pki();
    let server = start_server(&pki, None);
    let echo = start_echo();
    let pool = HbonePool::new(Arc::new(HboneCounters::default()));
    let marked = ConnectOptions {
        mark: Some(0x539),
        connect_timeout: PATIENCE,
    };
    let tunnel = pool
        .connect(
            &pool_key(server.address),
            &pki.client_config(true),
            &ConnectRequest::new(echo, None),
            marked,
        )
        .await;
    let tunnel = match tunnel {
        Err(HboneError::Connect(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: SO_MARK needs CAP_NET_ADMIN, which this test runs without");
            return;
        }
        other => other.unwrap(),
    };
    let ss = std::process::Command::new("ss")
        .args(["-tnHe", "dst", &server.address.to_string()])
        .output()
        .unwrap();
    let sockets = String::from_utf8_lossy(&ss.stdout);
    assert!(sockets.contains("fwmark:0x539"), "{sockets}");
    drop(tunnel);
    // A refused connect on a marked socket reports the refusal.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let refused = pool
        .connect(
            &pool_key(nowhere),
            &pki.client_config(true),
            &ConnectRequest::new(echo, None),
            marked,
        )
        .await;
    assert!(
        matches!(&refused, Err(HboneError::Connect(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
}
