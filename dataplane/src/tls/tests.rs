//! Tests of the TLS adapter over real loopback sockets, on both drivers (`monoio::test_all`): a
//! handshake between the proxy's own client and server sides, bytes both ways through the
//! transport halves, reads abandoned mid-way losing nothing, close_notify, and the loading and
//! SNI rules of the configs. The certificate is the fixture that `tests/config_keys.rs` uses
//! (`sample.example`, self-signed).

use std::sync::Arc;
use std::time::Duration;

use config_schema::{
    ListenerProtocol, ListenerTlsSpec, SniCertificateSpec, TlsMode, TlsVersion, UpstreamProtocol,
};
use monoio::net::{TcpListener, TcpStream};

use super::config::{SniResolver, load_certified_key};
use super::transport::{self, Transport};
use super::*;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn server_spec(alpn: &[&str]) -> ListenerTlsSpec {
    ListenerTlsSpec {
        mode: TlsMode::Terminate,
        cert: Some(fixture("cert.pem")),
        key: Some(fixture("key.pem")),
        certificates: Vec::new(),
        min_version: TlsVersion::Tls12,
        client_ca: None,
        require_client_cert: false,
        allowed_spiffe_ids: Vec::new(),
        alpn: alpn.iter().map(|a| (*a).to_owned()).collect(),
        sni_routes: Default::default(),
    }
}

fn client_tls(protocol: UpstreamProtocol) -> ClientTls {
    let spec = config_schema::UpstreamTlsSpec {
        sni: Some("sample.example".to_owned()),
        ca: Some(fixture("ca.pem")),
        cert: None,
        key: None,
        expected_spiffe_ids: Vec::new(),
        alpn: Vec::new(),
    };
    ClientTls::from_spec(&spec, protocol, 2).expect("client config loads")
}

/// A connected pair after both handshakes: (server side, client side).
async fn pair(alpn: &[&str], carries: Carries) -> ((TlsStream, TlsInfo), (TlsStream, TlsInfo)) {
    let server_tls = ServerTls::from_spec(&server_spec(alpn), ListenerProtocol::Http)
        .expect("server config loads");
    let client = client_tls(UpstreamProtocol::Auto);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let accept = async {
        let (stream, _) = listener.accept().await.expect("accept");
        accept(stream, &server_tls, Duration::from_secs(10))
            .await
            .expect("server handshake")
    };
    let connect = async {
        let stream = TcpStream::connect_addr(address).await.expect("connect");
        super::connect(
            stream,
            &client,
            0,
            carries,
            address,
            Duration::from_secs(10),
        )
        .await
        .expect("client handshake")
    };
    monoio::join!(accept, connect)
}

#[monoio::test_all(timer_enabled = true)]
async fn handshake_negotiates_alpn_and_sni() {
    let ((_, server), (_, client)) = pair(&["h2", "http/1.1"], Carries::Http2).await;
    assert_eq!(server.sni.as_deref(), Some("sample.example"));
    assert!(server.is_h2());
    assert!(client.is_h2());
    assert_eq!(server.peer_principal, None);
    let ((_, server), _) = pair(&["h2", "http/1.1"], Carries::Http1).await;
    assert_eq!(server.alpn.as_deref(), Some(&b"http/1.1"[..]));
    // Opaque (L4) connections offer no ALPN.
    let ((_, server), (_, client)) = pair(&["h2", "http/1.1"], Carries::Opaque).await;
    assert_eq!(server.alpn, None);
    assert_eq!(client.alpn, None);
}

#[monoio::test_all(timer_enabled = true)]
async fn halves_carry_bytes_both_ways_and_close_notify_ends_the_stream() {
    let ((server, server_info), (client, client_info)) = pair(&["http/1.1"], Carries::Http1).await;
    let (mut server_read, mut server_write) =
        Transport::Tls(Box::new(server), Box::new(server_info)).split();
    let (mut client_read, mut client_write) =
        Transport::Tls(Box::new(client), Box::new(client_info)).split();
    // More than the plaintext send buffer, so writes wait for the peer to read.
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let send = async {
        let mut out = data.clone();
        client_write
            .write_vec(&mut out)
            .await
            .expect("client writes");
        client_write.shutdown().await.expect("close_notify");
    };
    let receive = async {
        let mut got = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(16 * 1024);
            let n = server_read
                .read_vec(&mut buf, 16 * 1024)
                .await
                .expect("read");
            if n == 0 {
                break got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    let ((), got) = monoio::join!(send, receive);
    assert!(got == data, "every byte arrives, in order");
    // The other direction still works after the client's close_notify (half-close).
    let mut reply = b"reply".to_vec();
    server_write
        .write_vec(&mut reply)
        .await
        .expect("server writes");
    let mut buf = Vec::with_capacity(64);
    let n = client_read
        .read_vec(&mut buf, 64)
        .await
        .expect("client reads");
    assert_eq!(&buf[..n], b"reply");
}

#[monoio::test_all(timer_enabled = true)]
async fn reads_given_up_mid_way_lose_no_byte() {
    let ((server, server_info), (client, client_info)) = pair(&["http/1.1"], Carries::Http1).await;
    let (server_read, _server_write) =
        Transport::Tls(Box::new(server), Box::new(server_info)).split();
    let (_client_read, mut client_write) =
        Transport::Tls(Box::new(client), Box::new(client_info)).split();
    let transport::ReadHalf::Tls(stream) = server_read else {
        panic!("a TLS transport splits into TLS halves");
    };
    // A read stopped before anything arrived returns the stop's error and leaves no bytes.
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b"kept");
    let stopped = transport::read_tls(&stream, &mut buf, async {
        std::io::Error::from(std::io::ErrorKind::TimedOut)
    })
    .await;
    assert_eq!(
        stopped.expect_err("stopped").kind(),
        std::io::ErrorKind::TimedOut
    );
    assert_eq!(buf, b"kept", "the buffer holds only what it held");
    // Bytes sent now; reads alternately dropped half-way (a timer firing) and completed.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut out = data.clone();
    client_write
        .write_vec(&mut out)
        .await
        .expect("client writes");
    let mut got = Vec::new();
    let mut round = 0u32;
    while got.len() < data.len() && round < 100_000 {
        round += 1;
        let mut buf = Vec::with_capacity(4096);
        if round.is_multiple_of(2) {
            // Dropped: the future is abandoned whether or not it had bytes ready.
            let read = transport::read_tls(&stream, &mut buf, std::future::pending());
            let _ = monoio::time::timeout(Duration::from_micros(1), read).await;
            assert!(buf.len() <= 4096);
            got.extend_from_slice(&buf);
            continue;
        }
        let n = transport::read_tls(&stream, &mut buf, std::future::pending())
            .await
            .expect("read");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got == data,
        "nothing lost or duplicated across abandoned reads"
    );
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let mut spec = server_spec(&[]);
    spec.certificates = vec![SniCertificateSpec {
        server_names: vec!["a.example".to_owned(), "*.b.example".to_owned()],
        cert: fixture("cert.pem"),
        key: fixture("key.pem"),
    }];
    assert!(ServerTls::from_spec(&spec, ListenerProtocol::Http).is_ok());
    let key = load_certified_key(&fixture("cert.pem"), &fixture("key.pem")).expect("loads");
    let resolver = SniResolver::for_tests(
        vec![("a.example".into(), Arc::clone(&key))],
        vec![(".b.example".into(), Arc::clone(&key))],
        None,
    );
    assert!(resolver.pick(Some("a.example")).is_some());
    assert!(resolver.pick(Some("A.Example.")).is_some());
    assert!(resolver.pick(Some("x.b.example")).is_some());
    assert!(resolver.pick(Some("b.example")).is_none());
    assert!(resolver.pick(Some("x.y.b.example")).is_none());
    assert!(resolver.pick(None).is_none());
    let with_default = SniResolver::for_tests(Vec::new(), Vec::new(), Some(key));
    assert!(with_default.pick(Some("anything.example")).is_some());
    assert!(with_default.pick(None).is_some());
}

#[test]
fn files_that_do_not_load_are_errors_at_their_key() {
    let mut spec = server_spec(&[]);
    spec.cert = Some(fixture("missing.pem"));
    let error = ServerTls::from_spec(&spec, ListenerProtocol::Http).expect_err("missing file");
    assert_eq!(error.at, "cert");
    let mut spec = server_spec(&[]);
    spec.key = Some(fixture("cert.pem"));
    let error =
        ServerTls::from_spec(&spec, ListenerProtocol::Http).expect_err("a certificate is no key");
    assert_eq!(error.at, "key");
    let mut spec = server_spec(&[]);
    spec.key = Some(fixture("other-key.pem"));
    let error = ServerTls::from_spec(&spec, ListenerProtocol::Http)
        .expect_err("a key of another certificate");
    assert_eq!(error.at, "key");
    assert!(error.message.contains("does not fit"), "{}", error.message);
    let mut spec = server_spec(&[]);
    spec.certificates = vec![SniCertificateSpec {
        server_names: vec!["a.example".to_owned()],
        cert: fixture("cert.pem"),
        key: fixture("nope.pem"),
    }];
    let error = ServerTls::from_spec(&spec, ListenerProtocol::Http).expect_err("missing key");
    assert_eq!(error.at, "certificates[0].key");
}

/// Which client verification each combination of listener keys gets (without an identity).
#[test]
fn listener_client_verification_follows_the_keys() {
    let mesh = Mesh::default();
    let build = |change: &dyn Fn(&mut ListenerTlsSpec)| {
        let mut spec = server_spec(&[]);
        change(&mut spec);
        ServerTls::build(&spec, ListenerProtocol::Http, &mesh)
    };
    // No client keys: no client certificate is asked for.
    let plain = build(&|_| {}).expect("loads");
    assert!(plain.client_auth.is_none());
    // `client_ca` alone: plain chain verification, whose refusals the transport counts.
    let ca = build(&|s| s.client_ca = Some(fixture("ca.pem"))).expect("loads");
    assert!(ca.client_auth.as_ref().is_some_and(|auth| !auth.spiffe));
    // With patterns: SPIFFE rules, the file as the patterns' domains' bundle.
    let spiffe = build(&|s| {
        s.client_ca = Some(fixture("ca.pem"));
        s.allowed_spiffe_ids = vec!["spiffe://cluster.local/ns/a/*".into()];
    })
    .expect("loads");
    assert!(spiffe.client_auth.as_ref().is_some_and(|auth| auth.spiffe));
    // `"*"` is any identity: the same as no pattern.
    let any = build(&|s| {
        s.client_ca = Some(fixture("ca.pem"));
        s.allowed_spiffe_ids = vec!["*".into()];
    })
    .expect("loads");
    assert!(any.client_auth.as_ref().is_some_and(|auth| !auth.spiffe));
    // A pattern that does not parse is an error at its element.
    let error = build(&|s| {
        s.client_ca = Some(fixture("ca.pem"));
        s.allowed_spiffe_ids = vec![
            "spiffe://cluster.local/ns/a/*".into(),
            "spiffe://cluster.local/ns/a/".into(),
        ];
    })
    .expect_err("a trailing / is no pattern");
    assert_eq!(error.at, "allowed_spiffe_ids[1]");
    // Patterns without a trust source: nothing to verify with.
    let error = build(&|s| s.allowed_spiffe_ids = vec!["spiffe://cluster.local/ns/a/*".into()])
        .expect_err("no trust source");
    assert_eq!(error.at, "client_ca");
    // Without a certificate and without an identity (validation refuses that config) nothing
    // turns client verification on by itself.
    let bare = build(&|s| {
        s.cert = None;
        s.key = None;
    });
    assert!(bare.is_ok_and(|tls| tls.client_auth.is_none()));
}

/// Upstream SPIFFE checks need a trust source and patterns that parse.
#[test]
fn cluster_verification_follows_the_keys() {
    let mesh = Mesh::default();
    let spec = |ca: Option<&str>, expected: &[&str]| config_schema::UpstreamTlsSpec {
        sni: None,
        ca: ca.map(fixture),
        cert: None,
        key: None,
        expected_spiffe_ids: expected.iter().map(|e| (*e).to_owned()).collect(),
        alpn: Vec::new(),
    };
    let build = |spec: &config_schema::UpstreamTlsSpec| {
        ClientTls::build(spec, UpstreamProtocol::Auto, 1, &mesh).map(drop)
    };
    assert!(build(&spec(Some("ca.pem"), &[])).is_ok());
    assert!(build(&spec(Some("ca.pem"), &["spiffe://cluster.local/ns/a/sa/b"])).is_ok());
    let error = build(&spec(Some("ca.pem"), &["cluster.local/ns/a"])).expect_err("bad pattern");
    assert_eq!(error.at, "expected_spiffe_ids[0]");
    let error = build(&spec(None, &["spiffe://cluster.local/ns/a/sa/b"])).expect_err("no trust");
    assert_eq!(error.at, "ca");
}
