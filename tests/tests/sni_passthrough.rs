//! TLS passthrough on tcp listeners, through the real binary on both drivers: the proxy reads the
//! ClientHello without terminating TLS and picks the cluster by its SNI.
//!
//! Three nginx backends serve HTTPS with their own certificates, issued by a test CA generated
//! here (rcgen): `backend-a` (for `api.example`), `backend-b` (for `*.internal.example` and one
//! deeper name) and `fallback` (the listener's default cluster; its certificate also names
//! 127.0.0.1, for clients that send no SNI). The proxy's config names no certificate or key: the
//! keys stay in the backends' directories. Clients (`openssl s_client`, curl, Python `ssl`)
//! verify the chain to the test CA and the host name, so a handshake that completes was made
//! with the backend itself, and the proxy only ever carried ciphertext. Which backend answered
//! shows twice: the certificate's subject and the body of `/whoami`.
//!
//! Two listeners share one config: `tls`, whose `cluster` is the default for connections no route
//! takes, and `strict`, which has none and so closes them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::client::{self, Closed, wait_closed};
use tests::http::{Nginx, curl};
use tests::upstream::Upstream;
use tests::wait::PATIENCE;
use tests::{Driver, Metrics, Proxy, both_drivers};

both_drivers!(
    exact_and_wildcard_names_reach_their_backend_verified_end_to_end,
    no_sni_unknown_sni_and_non_tls_bytes_go_to_the_default_cluster,
    without_a_default_cluster_unrouted_connections_are_closed,
    a_client_hello_written_byte_by_byte_is_routed,
    the_client_hellos_of_openssl_and_curl_are_forwarded_byte_for_byte,
    a_silent_client_is_closed_by_the_hello_timeout,
    megabytes_arrive_byte_exact,
    megabytes_arrive_byte_exact_through_splice,
    a_reload_that_changes_a_route_applies_to_new_connections,
    the_chosen_clusters_circuit_breaker_and_the_listener_limit_apply,
);

const MIB: usize = 1024 * 1024;

/// The SNI routes of the test config.
const ROUTES: &str = r#""api.example" = "a", "*.internal.example" = "b""#;

/// A certificate and its key, as PEM files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

/// The test CA and three nginx HTTPS backends with certificates it issued.
struct Backends {
    _pki: tempfile::TempDir,
    ca: PathBuf,
    a: Nginx,
    b: Nginx,
    fallback: Nginx,
}

impl Backends {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// `fill_a` adds files to backend A's document root.
    fn start_with(fill_a: impl Fn(&Path)) -> Self {
        let pki = tempfile::Builder::new()
            .prefix("ringmesh-pki-")
            .tempdir()
            .expect("create the PKI directory");
        let ca_key = rcgen::KeyPair::generate().expect("generate the CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringmesh test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("sign the CA");
        let ca_path = pki.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write the CA");

        let issue = |name: &str, sans: &[&str]| -> Identity {
            let key = rcgen::KeyPair::generate().expect("generate a key");
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            let mut params = rcgen::CertificateParams::new(sans).expect("leaf parameters");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca).expect("sign a leaf");
            let dir = pki.path().join(name);
            std::fs::create_dir_all(&dir).expect("create the backend's key directory");
            let identity = Identity {
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
            };
            std::fs::write(&identity.cert, cert.pem()).expect("write a certificate");
            std::fs::write(&identity.key, key.serialize_pem()).expect("write a key");
            identity
        };
        let whoami = |name: &str| format!("location = /whoami {{ return 200 \"{name}\\n\"; }}");
        let start = |name: &str, sans: &[&str], fill: &dyn Fn(&Path)| {
            let identity = issue(name, sans);
            Nginx::start_tls(&identity.cert, &identity.key, &whoami(name), fill)
        };
        let a = start("backend-a", &["api.example"], &fill_a);
        let b = start(
            "backend-b",
            &["*.internal.example", "deep.er.internal.example"],
            &|_| {},
        );
        let fallback = start("fallback", &["fallback.example", "127.0.0.1"], &|_| {});
        Self {
            _pki: pki,
            ca: ca_path,
            a,
            b,
            fallback,
        }
    }

    /// The proxy's config: `routes` on both listeners; `tls` defaults to `fallback`, `strict` has
    /// no default. No certificate or key appears in it.
    fn config(&self, routes: &str, prefix: &str) -> String {
        let config = format!(
            r#"{prefix}
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "fallback"
request_header_timeout = "5s"
tls = {{ mode = "passthrough", sni_routes = {{ {routes} }} }}

[[listeners]]
name = "strict"
address = "127.0.0.1:0"
protocol = "tcp"
request_header_timeout = "1s"
tls = {{ mode = "passthrough", sni_routes = {{ {routes} }} }}

[[clusters]]
name = "a"
endpoints = ["{a}"]

[[clusters]]
name = "b"
endpoints = ["{b}"]

[[clusters]]
name = "fallback"
endpoints = ["{fallback}"]
"#,
            a = self.a.address(),
            b = self.b.address(),
            fallback = self.fallback.address(),
        );
        assert!(
            !config.contains("key") && !config.contains(".pem"),
            "the proxy is given no certificate or key"
        );
        config
    }

    fn proxy(&self, driver: Driver) -> Proxy {
        Proxy::start(&self.config(ROUTES, ""), driver, 2)
    }
}

/// What `openssl s_client` saw.
#[derive(Debug)]
struct Handshake {
    /// The chain verified to the test CA (and the host name, when one was asked for).
    verified: bool,
    /// The peer certificate's common name.
    subject: String,
    /// The HTTP response body.
    body: String,
    /// Everything it printed, for failure messages.
    output: String,
}

/// `GET /whoami` over TLS through `address` with `openssl s_client`, sending `server_name` as
/// SNI (none when `None`) and verifying the chain against `ca` (and the name, `verify_name`).
fn s_client(
    address: SocketAddr,
    server_name: Option<&str>,
    verify_name: Option<&str>,
    ca: &Path,
) -> Handshake {
    let mut command = Command::new(tests::tool("openssl"));
    command
        .arg("s_client")
        .args(["-connect", &address.to_string()])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-brief", "-ign_eof"]);
    match server_name {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    if let Some(name) = verify_name {
        command.args(["-verify_hostname", name]);
    }
    let request = format!(
        "GET /whoami HTTP/1.0\r\nHost: {}\r\n\r\n",
        server_name.unwrap_or("127.0.0.1")
    );
    let (stdout, stderr) = run_with_input(command, request.as_bytes());
    let subject = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Peer certificate: CN = "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let body = stdout
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or_default();
    Handshake {
        verified: stderr.lines().any(|l| l.trim() == "Verification: OK"),
        subject,
        body,
        output: format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    }
}

/// Runs `command` with `input` on its standard input, within [`PATIENCE`]; returns what it
/// printed.
fn run_with_input(mut command: Command, input: &[u8]) -> (String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// `GET path` with curl over TLS, resolving `host` to the proxy, verifying against `ca`.
fn curl_get(address: SocketAddr, host: &str, path: &str, ca: &Path) -> tests::http::Curl {
    let port = address.port();
    let url = format!("https://{host}:{port}{path}");
    let resolve = format!("{host}:{port}:127.0.0.1");
    let mut args = vec!["--cacert".to_owned(), ca.display().to_string()];
    if host != "127.0.0.1" {
        args.extend(["--resolve".to_owned(), resolve]);
    }
    args.push(url);
    curl(args)
}

fn body(curl: &tests::http::Curl) -> String {
    assert!(
        curl.status.success(),
        "curl failed: {} {}",
        curl.status,
        curl.stderr
    );
    String::from_utf8_lossy(&curl.stdout).trim().to_owned()
}

/// Waits until the listener's metric `ringmesh_listener_sni_{name}_total` reaches `expected`.
fn wait_sni_metric(proxy: &Proxy, listener: &str, name: &str, expected: f64) {
    let metric = format!("ringmesh_listener_sni_{name}_total");
    tests::wait_until(
        PATIENCE,
        format!("{metric} of {listener} = {expected}"),
        || {
            let metrics: Metrics = proxy.metrics();
            let value = metrics.value(&metric, &[("listener", listener)]);
            if value == expected {
                Ok(())
            } else {
                Err(format!("{value}"))
            }
        },
    );
}

/// An exact name, a wildcard one label and two labels deep, and a name in capitals each reach
/// their backend, whose certificate the client verified end to end.
fn exact_and_wildcard_names_reach_their_backend_verified_end_to_end(driver: Driver) {
    let backends = Backends::start();
    let proxy = backends.proxy(driver);
    let tls = proxy.listener("tls");

    for (sni, expected) in [
        ("api.example", "backend-a"),
        ("x.internal.example", "backend-b"),
        ("deep.er.internal.example", "backend-b"),
    ] {
        let seen = s_client(tls, Some(sni), Some(sni), &backends.ca);
        assert!(seen.verified, "{sni}: not verified\n{}", seen.output);
        assert_eq!(seen.subject, expected, "{sni}\n{}", seen.output);
        assert_eq!(seen.body, expected, "{sni}\n{}", seen.output);
        // And with curl, which checks the chain and the name too.
        assert_eq!(
            body(&curl_get(tls, sni, "/whoami", &backends.ca)),
            expected,
            "{sni} with curl"
        );
    }
    // Case does not matter; the certificate still verifies (host names are case-insensitive).
    let seen = s_client(tls, Some("API.Example"), Some("api.example"), &backends.ca);
    assert!(seen.verified, "{}", seen.output);
    assert_eq!(seen.subject, "backend-a", "{}", seen.output);
    assert_eq!(seen.body, "backend-a", "{}", seen.output);
    let seen = s_client(
        tls,
        Some("X.INTERNAL.example"),
        Some("x.internal.example"),
        &backends.ca,
    );
    assert_eq!(seen.subject, "backend-b", "{}", seen.output);

    wait_sni_metric(&proxy, "tls", "routed", 8.0);
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_listener_sni_defaulted_total",
            &[("listener", "tls")]
        ),
        0.0
    );
}

/// No SNI, an SNI that no route names (the wildcard's own base name included: `*.x` stands for
/// at least one label in front of `x`), and bytes that are not TLS all go to the default cluster.
fn no_sni_unknown_sni_and_non_tls_bytes_go_to_the_default_cluster(driver: Driver) {
    let backends = Backends::start();
    let proxy = backends.proxy(driver);
    let tls = proxy.listener("tls");

    // No SNI: s_client without one, and curl to an IP address (which sends none). The fallback's
    // certificate names 127.0.0.1, so the chain and the address verify.
    let seen = s_client(tls, None, None, &backends.ca);
    assert!(seen.verified, "{}", seen.output);
    assert_eq!(seen.subject, "fallback", "{}", seen.output);
    assert_eq!(seen.body, "fallback", "{}", seen.output);
    assert_eq!(
        body(&curl_get(tls, "127.0.0.1", "/whoami", &backends.ca)),
        "fallback"
    );

    for sni in ["unknown.example", "internal.example", "api.example.evil"] {
        let seen = s_client(tls, Some(sni), None, &backends.ca);
        assert!(seen.verified, "{sni}: {}", seen.output);
        assert_eq!(seen.subject, "fallback", "{sni}: {}", seen.output);
        assert_eq!(seen.body, "fallback", "{sni}: {}", seen.output);
    }

    // Plain HTTP on the passthrough port reaches the fallback's TLS server, which says so.
    let mut stream = client::connect(tls);
    stream
        .write_all(b"GET /whoami HTTP/1.0\r\nHost: fallback.example\r\n\r\n")
        .expect("send plaintext");
    let answer = String::from_utf8_lossy(&client::read_to_end(&stream)).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 400")
            && answer.contains("plain HTTP request was sent to HTTPS port"),
        "{answer}"
    );

    wait_sni_metric(&proxy, "tls", "defaulted", 6.0);
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value("ringmesh_listener_sni_routed_total", &[("listener", "tls")]),
        0.0
    );
    // Istio's TCP metrics name the cluster each connection went to: here the default one.
    assert_eq!(
        metrics.sum(
            "istio_tcp_connections_opened_total",
            &[("listener", "tls"), ("destination_service", "fallback")]
        ),
        6.0
    );
}

/// On the listener without a default cluster, no SNI, an unknown SNI and non-TLS bytes are
/// closed; a routed name still works there.
fn without_a_default_cluster_unrouted_connections_are_closed(driver: Driver) {
    let backends = Backends::start();
    let proxy = backends.proxy(driver);
    let strict = proxy.listener("strict");

    for sni in [None, Some("unknown.example")] {
        let seen = s_client(strict, sni, None, &backends.ca);
        assert!(!seen.verified, "{sni:?}: {}", seen.output);
        assert!(
            seen.subject.is_empty() && seen.body.is_empty(),
            "{sni:?}: {}",
            seen.output
        );
    }
    let mut stream = client::connect(strict);
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("send plaintext");
    let closed = wait_closed(&mut stream, PATIENCE);
    assert!(matches!(closed, Closed::Eof | Closed::Reset));

    let seen = s_client(
        strict,
        Some("api.example"),
        Some("api.example"),
        &backends.ca,
    );
    assert!(seen.verified, "{}", seen.output);
    assert_eq!(seen.body, "backend-a", "{}", seen.output);

    wait_sni_metric(&proxy, "strict", "no_route", 3.0);
    wait_sni_metric(&proxy, "strict", "routed", 1.0);
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_listener_sni_defaulted_total",
            &[("listener", "strict")]
        ),
        0.0
    );
    // Nothing reached any backend for the closed connections.
    assert!(backends.fallback.access_log().is_empty());
}

/// A ClientHello that reaches the proxy one byte per TCP write (hundreds of segments and reads)
/// is put together, routed by its SNI, and forwarded whole: the handshake completes and verifies.
fn a_client_hello_written_byte_by_byte_is_routed(driver: Driver) {
    let backends = Backends::start();
    let proxy = backends.proxy(driver);
    let tls = proxy.listener("tls");
    let port = tls.port().to_string();
    let ca = backends.ca.display().to_string();
    for (sni, expected) in [
        ("api.example", "backend-a"),
        ("y.internal.example", "backend-b"),
    ] {
        let seen = tests::h2::run_json(
            "tls_trickle_client.py",
            &["127.0.0.1", &port, sni, &ca, "/whoami"],
            PATIENCE,
        );
        assert_eq!(seen["subject"], expected, "{seen}");
        assert_eq!(
            seen["body"].as_str().map(str::trim),
            Some(expected),
            "{seen}"
        );
    }
    wait_sni_metric(&proxy, "tls", "routed", 2.0);
}

/// Captures the ClientHello of a TLS client started by `client(port)` against a listener here
/// that never answers.
fn capture_client_hello(client: impl FnOnce(u16) -> Command) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the capture port");
    let port = listener.local_addr().expect("capture address").port();
    let mut child = client(port)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the client");
    let (mut stream, _) = listener.accept().expect("the client connects");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    let mut hello = Vec::new();
    let mut chunk = [0u8; 4096];
    // A whole handshake message: 5-byte record header, then the 4-byte handshake header says
    // how long the message is (the clients used here send it in one record).
    for _ in 0..1000 {
        if hello.len() >= 9 {
            let message =
                usize::from(hello[6]) << 16 | usize::from(hello[7]) << 8 | usize::from(hello[8]);
            if hello.len() >= 9 + message {
                break;
            }
        }
        let n = stream.read(&mut chunk).expect("read the ClientHello");
        assert!(n > 0, "the client closed before its ClientHello");
        hello.extend_from_slice(&chunk[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(hello.first(), Some(&22), "a TLS handshake record");
    hello
}

/// The ClientHellos of real openssl and curl clients, captured here, and one grown past a TLS
/// record, reach the upstream chosen by their SNI exactly as they were sent.
fn the_client_hellos_of_openssl_and_curl_are_forwarded_byte_for_byte(driver: Driver) {
    let (seen_tx, seen_rx) = mpsc::channel::<Vec<u8>>();
    let expected_len = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let recorder = {
        let expected_len = std::sync::Arc::clone(&expected_len);
        Upstream::spawn(move |mut stream, _| {
            let want = expected_len.load(std::sync::atomic::Ordering::Acquire);
            let mut got = vec![0u8; want];
            let _ = stream.set_read_timeout(Some(PATIENCE));
            if stream.read_exact(&mut got).is_ok() {
                let _ = seen_tx.send(got);
            }
        })
    };
    let config = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "tcp"
tls = {{ mode = "passthrough", sni_routes = {{ "*.recorded.example" = "recorder" }} }}

[[clusters]]
name = "recorder"
endpoints = ["{}"]
"#,
        recorder.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let tls = proxy.listener("tls");
    let openssl = |port: u16| {
        let mut c = Command::new(tests::tool("openssl"));
        c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "openssl.recorded.example"]);
        c
    };
    let curl = |port: u16| {
        let mut c = Command::new(tests::tool("curl"));
        c.args(["-sS", "--max-time", "20", "--resolve"])
            .arg(format!("Curl.Recorded.Example:{port}:127.0.0.1"))
            .arg(format!("https://Curl.Recorded.Example:{port}/"));
        c
    };
    let openssl_hello = capture_client_hello(openssl);
    // The same ClientHello grown past 16 KiB by a padding extension, so it spans two records and
    // several reads.
    let big = padded_into_records(&openssl_hello, 20_000);
    let hellos = [openssl_hello, capture_client_hello(curl), big];
    for hello in hellos {
        expected_len.store(hello.len(), std::sync::atomic::Ordering::Release);
        let mut stream = client::connect(tls);
        stream.write_all(&hello).expect("send the ClientHello");
        let seen = seen_rx
            .recv_timeout(PATIENCE)
            .expect("the recorder got the ClientHello");
        assert!(seen == hello, "the ClientHello arrived altered");
    }
    wait_sni_metric(&proxy, "tls", "routed", 3.0);
}

/// `hello` (one record holding one ClientHello) with a padding extension (RFC 7685) of `extra`
/// bytes added, sent as records of at most 16 KiB.
fn padded_into_records(hello: &[u8], extra: usize) -> Vec<u8> {
    let message = &hello[5..];
    // Walk to the extensions: handshake header, version, random, session id, suites,
    // compression.
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(message[at]);
    at += 2 + usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    at += 1 + usize::from(message[at]);
    let extensions = usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    let mut body = message[4..].to_vec();
    let length = u16::try_from(extensions + 4 + extra).expect("extensions fit in 64 KiB");
    body[at - 4..at - 2].copy_from_slice(&length.to_be_bytes());
    body.extend_from_slice(&21u16.to_be_bytes());
    body.extend_from_slice(&u16::try_from(extra).expect("padding fits").to_be_bytes());
    body.resize(body.len() + extra, 0);
    let mut whole = vec![1u8];
    whole.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes()[1..]);
    whole.extend_from_slice(&body);
    let mut wire = Vec::new();
    for record in whole.chunks(16 * 1024) {
        wire.extend_from_slice(&[22, 3, 1]);
        wire.extend_from_slice(&u16::try_from(record.len()).expect("a record").to_be_bytes());
        wire.extend_from_slice(record);
    }
    assert!(wire.len() > 16 * 1024 + 5, "more than one record");
    wire
}

/// A client that connects and says nothing is closed once the listener's
/// `request_header_timeout` passes without a whole ClientHello, with or without a default
/// cluster; so is one that stops halfway through its ClientHello.
fn a_silent_client_is_closed_by_the_hello_timeout(driver: Driver) {
    let backends = Backends::start();
    let config = backends.config(ROUTES, "").replace(
        "request_header_timeout = \"5s\"",
        "request_header_timeout = \"1s\"",
    );
    let proxy = Proxy::start(&config, driver, 2);
    for listener in ["tls", "strict"] {
        let mut silent = client::connect(proxy.listener(listener));
        let closed = wait_closed(&mut silent, PATIENCE);
        assert!(matches!(closed, Closed::Eof | Closed::Reset), "{listener}");
        // A record header that announces more than ever comes.
        let mut halfway = client::connect(proxy.listener(listener));
        halfway
            .write_all(&[22, 3, 1, 1, 0, 1, 0, 0])
            .expect("send part of a ClientHello");
        let closed = wait_closed(&mut halfway, PATIENCE);
        assert!(matches!(closed, Closed::Eof | Closed::Reset), "{listener}");
        wait_sni_metric(&proxy, listener, "timeouts", 2.0);
    }
    assert!(backends.fallback.access_log().is_empty());
}

/// Several megabytes down from backend A, routed by SNI, arrive byte for byte.
fn megabytes_arrive_byte_exact(driver: Driver) {
    megabytes(driver, "");
}

/// The same with `l4_copy = "splice"`.
fn megabytes_arrive_byte_exact_through_splice(driver: Driver) {
    megabytes(driver, "[runtime]\nl4_copy = \"splice\"\n");
}

fn megabytes(driver: Driver, prefix: &str) {
    let content = client::payload(8 * MIB, 7);
    let backends = {
        let content = content.clone();
        Backends::start_with(move |root| {
            std::fs::write(root.join("big.bin"), &content).expect("write the big file");
        })
    };
    let proxy = Proxy::start(&backends.config(ROUTES, prefix), driver, 2);
    let tls = proxy.listener("tls");
    let download = curl_get(tls, "api.example", "/big.bin", &backends.ca);
    assert!(download.status.success(), "curl: {}", download.stderr);
    assert_eq!(download.stdout.len(), content.len(), "bytes downloaded");
    assert!(download.stdout == content, "the download arrived altered");
    wait_sni_metric(&proxy, "tls", "routed", 1.0);
}

/// A reload that points `api.example` at backend B applies to the next connection.
fn a_reload_that_changes_a_route_applies_to_new_connections(driver: Driver) {
    let backends = Backends::start();
    let proxy = backends.proxy(driver);
    let tls = proxy.listener("tls");
    let seen = s_client(tls, Some("api.example"), None, &backends.ca);
    assert_eq!(seen.subject, "backend-a", "{}", seen.output);

    proxy.reload_with_sighup(&backends.config(r#""api.example" = "b""#, ""));
    let seen = s_client(tls, Some("api.example"), None, &backends.ca);
    // B's certificate does not name api.example, but its chain verifies: it is B that answered.
    assert!(seen.verified, "{}", seen.output);
    assert_eq!(seen.subject, "backend-b", "{}", seen.output);
    assert_eq!(seen.body, "backend-b", "{}", seen.output);
    // The wildcard route is gone with the reload: its names now go to the default.
    let seen = s_client(tls, Some("x.internal.example"), None, &backends.ca);
    assert_eq!(seen.subject, "fallback", "{}", seen.output);
}

/// A passthrough connection is an ordinary L4 connection of the cluster its SNI picked: that
/// cluster's circuit breaker (`max_connections = 1`) closes a second one while the first is open,
/// and admits the next once the first ended. The listener's own `max_connections` applies too.
fn the_chosen_clusters_circuit_breaker_and_the_listener_limit_apply(driver: Driver) {
    let hello = capture_client_hello(|port| {
        let mut c = Command::new(tests::tool("openssl"));
        c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "held.example"]);
        c
    });
    // Hold each connection until the proxy closes it.
    let holder = Upstream::spawn(|stream, _| {
        let _ = tests::upstream::read_all(&stream);
    });
    let free = Upstream::spawn(|stream, _| {
        let _ = tests::upstream::read_all(&stream);
    });
    let config = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "tcp"
tls = {{ mode = "passthrough", sni_routes = {{ "held.example" = "held" }} }}

[[listeners]]
name = "limited"
address = "127.0.0.1:0"
protocol = "tcp"
max_connections = 1
tls = {{ mode = "passthrough", sni_routes = {{ "held.example" = "free" }} }}

[[clusters]]
name = "held"
endpoints = ["{held}"]
circuit_breaker = {{ max_connections = 1 }}

[[clusters]]
name = "free"
endpoints = ["{free}"]
"#,
        held = holder.address(),
        free = free.address(),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let tls = proxy.listener("tls");
    let open = |hello: &[u8]| {
        let mut stream = client::connect(tls);
        stream.write_all(hello).expect("send the ClientHello");
        stream
    };

    let first = open(&hello);
    tests::wait_until(PATIENCE, "the first connection upstream", || {
        match holder.accepted() {
            1 => Ok(()),
            n => Err(format!("{n} accepted")),
        }
    });
    let mut second = open(&hello);
    let closed = wait_closed(&mut second, PATIENCE);
    assert!(matches!(closed, Closed::Eof | Closed::Reset));
    let overflows = proxy.metrics().sum(
        "ringmesh_cluster_circuit_breaker_overflow_total",
        &[("cluster", "held")],
    );
    assert_eq!(overflows, 1.0);
    assert_eq!(
        holder.accepted(),
        1,
        "the breaker kept the second one from the upstream"
    );

    drop(first);
    let mut later = Vec::new();
    tests::wait_until(PATIENCE, "a connection after the first ended", || {
        if holder.accepted() == 2 {
            return Ok(());
        }
        later.push(open(&hello));
        Err(format!("{} accepted", holder.accepted()))
    });
    // Routing comes before the breaker: every attempt was routed.
    wait_sni_metric(&proxy, "tls", "routed", 2.0 + later.len() as f64);

    // The listener's max_connections holds too: with one passthrough connection open, the next
    // is closed at accept, before its ClientHello is read.
    let limited = proxy.listener("limited");
    let mut first = client::connect(limited);
    first.write_all(&hello).expect("send the ClientHello");
    tests::wait_until(
        PATIENCE,
        "the limited listener's connection upstream",
        || match free.accepted() {
            1 => Ok(()),
            n => Err(format!("{n} accepted")),
        },
    );
    let mut refused = client::connect(limited);
    let _ = refused.write_all(&hello);
    let closed = wait_closed(&mut refused, PATIENCE);
    assert!(matches!(closed, Closed::Eof | Closed::Reset));
    proxy.wait_listener_counter("limited", "rejected", 1);
    assert_eq!(free.accepted(), 1);
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_listener_sni_routed_total",
            &[("listener", "limited")]
        ),
        1.0,
        "the refused connection was never read"
    );
    drop(first);
}
