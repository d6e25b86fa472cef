//! TLS through the real binary, on both drivers, with real peers: curl, `openssl s_client`,
//! h2load, grpcio with TLS channel credentials, Python `ssl`, and nginx as a TLS upstream that
//! requires client certificates. Certificates are made by each test with `rcgen` (a CA, leaves
//! for `localhost`, `a.example`, `*.b.example`, a default, a client).
//!
//! - **Listeners**: the certificate follows the SNI (exact, wildcard, default for unknown names
//!   and for no SNI); ALPN picks HTTP/2 or HTTP/1.1; a `min_version = "1.3"` listener refuses a
//!   TLS 1.2 client; sessions resume (`openssl -sess_in`: "Reused") on TLS 1.3 and 1.2; gRPC over
//!   TLS; a tcp listener terminates TLS and copies the plaintext byte for byte; 20 MB each way
//!   over TLS; a client that never finishes its handshake is cut by the header timeout, and
//!   garbage instead of a ClientHello is closed, both counted as handshake errors.
//! - **Upstreams**: nginx with `ssl_verify_client on` answers a cluster that presents its client
//!   certificate, and refuses (HTTP 400 from nginx) one that does not; a cluster with the wrong
//!   CA fails its handshake (a 5xx from the proxy, counted); an `h2` cluster speaks HTTP/2 over
//!   TLS (ALPN h2; nginx reports `HTTP/2.0`); a tcp listener originates TLS to its cluster.
//! - **Config**: a key that does not fit its certificate fails the start with the TOML path; a
//!   reload presents new certificates to new handshakes, and a reload with a bad key fails and
//!   keeps the old material serving. The access log names the SNI (`requested_server_name`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tests::client::payload;
use tests::h2::{PyServer, run_json};
use tests::http::{HttpUpstream, Nginx, Reply, Response, curl};
use tests::upstream::Upstream;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    sni_picks_the_certificate_and_unknown_names_get_the_default,
    alpn_chooses_http2_or_http1,
    tls13_only_listener_refuses_a_tls12_client,
    sessions_resume_on_tls13_and_tls12,
    grpc_over_tls,
    tcp_listener_terminates_tls_and_copies_bytes_exactly,
    large_bodies_cross_tls_intact_both_ways,
    a_silent_client_is_cut_by_the_handshake_timeout,
    garbage_instead_of_a_client_hello_is_closed,
    upstream_tls_to_nginx_with_a_client_certificate,
    upstream_with_the_wrong_ca_fails_the_handshake,
    h2_cluster_speaks_http2_over_tls,
    the_access_log_names_the_sni,
    a_reload_rotates_certificates_and_a_bad_one_keeps_the_old_serving,
    tcp_listener_originates_tls_to_its_cluster,
);

/// Time allowed to a client run.
const RUN: Duration = Duration::from_secs(60);

/// Test PKI written to a temporary directory: a CA and leaves signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-tls-")
            .tempdir()
            .expect("temp dir");
        let pki = Self { dir };
        let ca = pki.ca("ca", "ringmesh test CA");
        pki.leaf(&ca, "localhost", &["localhost", "127.0.0.1"]);
        pki.leaf(&ca, "default", &["default.example"]);
        pki.leaf(&ca, "a", &["a.example"]);
        pki.leaf(&ca, "wild", &["*.b.example"]);
        pki.leaf(&ca, "client", &["client.example"]);
        let other = pki.ca("other-ca", "another CA");
        pki.leaf(&other, "other-localhost", &["localhost", "127.0.0.1"]);
        pki
    }

    fn ca(&self, name: &str, common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-sign the CA");
        std::fs::write(self.path(&format!("{name}.pem")), ca.pem()).expect("write CA");
        ca
    }

    fn leaf(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str, names: &[&str]) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name}-leaf"));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, ca).expect("sign the leaf");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn p(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

/// `[listeners.tls]` terminating with the default certificate `default`, plus per-SNI ones.
fn listener_tls(pki: &Pki, extra: &str) -> String {
    format!(
        r#"
[listeners.tls]
cert = "{default_crt}"
key = "{default_key}"
{extra}

[[listeners.tls.certificates]]
server_names = ["a.example"]
cert = "{a_crt}"
key = "{a_key}"

[[listeners.tls.certificates]]
server_names = ["localhost"]
cert = "{localhost_crt}"
key = "{localhost_key}"

[[listeners.tls.certificates]]
server_names = ["*.b.example"]
cert = "{wild_crt}"
key = "{wild_key}"
"#,
        default_crt = pki.p("default.crt"),
        default_key = pki.p("default.key"),
        a_crt = pki.p("a.crt"),
        a_key = pki.p("a.key"),
        localhost_crt = pki.p("localhost.crt"),
        localhost_key = pki.p("localhost.key"),
        wild_crt = pki.p("wild.crt"),
        wild_key = pki.p("wild.key"),
    )
}

/// A TLS `http` listener `tls` routing everything to cluster `app` at `upstream`.
fn tls_http_proxy(
    pki: &Pki,
    driver: Driver,
    upstream: SocketAddr,
    listener_extra: &str,
    tls_extra: &str,
) -> Proxy {
    tls_http_proxy_with(pki, driver, upstream, listener_extra, tls_extra, "")
}

/// [`tls_http_proxy`] with `more` appended to the config.
fn tls_http_proxy_with(
    pki: &Pki,
    driver: Driver,
    upstream: SocketAddr,
    listener_extra: &str,
    tls_extra: &str,
    more: &str,
) -> Proxy {
    let config = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "http"
{listener_extra}
{tls}

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "app"

[[clusters]]
name = "app"
endpoints = ["{upstream}"]
{more}
"#,
        tls = listener_tls(pki, tls_extra),
    );
    Proxy::start(&config, driver, 2)
}

/// Runs `openssl s_client` against `address` with `args`, sending `input`; returns its exit
/// success and everything it printed.
fn s_client(address: SocketAddr, args: &[&str], input: &[u8]) -> (bool, String) {
    let mut child = Command::new(tests::tool("openssl"))
        .arg("s_client")
        .arg("-connect")
        .arg(address.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let deadline = Instant::now() + RUN;
    loop {
        if child.try_wait().expect("wait openssl").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The subject line of the certificate `openssl s_client` was shown.
fn subject(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject in openssl output:\n{text}"))
        .to_owned()
}

fn named_upstream() -> HttpUpstream {
    HttpUpstream::named("app")
}

fn sni_picks_the_certificate_and_unknown_names_get_the_default(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let proxy = tls_http_proxy(&pki, driver, app.address(), "", "");
    let address = proxy.listener("tls");
    let cases = [
        (Some("a.example"), "a-leaf"),
        (Some("x.b.example"), "wild-leaf"),
        (Some("A.EXAMPLE"), "a-leaf"),
        (Some("unknown.example"), "default-leaf"),
        // One label only: `*.b.example` does not cover `x.y.b.example`.
        (Some("x.y.b.example"), "default-leaf"),
        (None, "default-leaf"),
    ];
    for (sni, expected) in cases {
        let mut args = vec!["-CAfile", "PLACEHOLDER"];
        let ca = pki.p("ca.pem");
        args[1] = &ca;
        match sni {
            Some(name) => args.extend(["-servername", name]),
            None => args.push("-noservername"),
        }
        let (_, text) = s_client(address, &args, b"");
        assert!(
            subject(&text).contains(expected),
            "SNI {sni:?}: expected {expected}, got {}",
            subject(&text)
        );
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "SNI {sni:?}: the chain verifies with the CA:\n{text}"
        );
    }
    // A request goes through with the certificate curl checks against the CA.
    let port = address.port().to_string();
    let out = curl([
        "-i",
        "--cacert",
        &pki.p("ca.pem"),
        "--resolve",
        &format!("a.example:{port}:127.0.0.1"),
        &format!("https://a.example:{port}/"),
    ]);
    let response = out.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"app");
    assert!(proxy.stats().listener_counter("tls", "accepted") >= 7);
}

fn alpn_chooses_http2_or_http1(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let proxy = tls_http_proxy(&pki, driver, app.address(), "", "");
    let address = proxy.listener("tls");
    let port = address.port().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl([
            flag,
            "--cacert",
            &pki.p("ca.pem"),
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ]);
        assert!(out.status.success(), "curl {flag}: {}", out.stderr);
        assert_eq!(out.stdout_text(), format!("{version} 200"), "curl {flag}");
    }
    for alpn in ["h2", "http/1.1"] {
        let ca = pki.p("ca.pem");
        let (_, text) = s_client(
            address,
            &["-CAfile", &ca, "-servername", "localhost", "-alpn", alpn],
            b"",
        );
        assert!(
            text.contains(&format!("ALPN protocol: {alpn}")),
            "openssl -alpn {alpn}:\n{text}"
        );
    }
    // h2load over TLS: many requests on HTTP/2 connections negotiated by ALPN.
    let output = Command::new(tests::tool("h2load"))
        .args(["-n", "200", "-c", "4", "-m", "4"])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("200 succeeded, 0 failed"),
        "h2load over TLS:\n{text}"
    );
    assert!(
        text.contains("ALPN: h2") || text.contains("Application protocol: h2"),
        "{text}"
    );
}

fn tls13_only_listener_refuses_a_tls12_client(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let proxy = tls_http_proxy(&pki, driver, app.address(), "", r#"min_version = "1.3""#);
    let address = proxy.listener("tls");
    let ca = pki.p("ca.pem");
    let base = ["-CAfile", ca.as_str(), "-servername", "a.example"];
    let (ok12, text12) = s_client(address, &[&base[..], &["-tls1_2"]].concat(), b"");
    assert!(
        !ok12 && text12.contains("Cipher is (NONE)") && text12.contains("alert protocol version"),
        "a TLS 1.2 client must be refused:\n{text12}"
    );
    let (_, text13) = s_client(address, &[&base[..], &["-tls1_3"]].concat(), b"");
    assert!(text13.contains("New, TLSv1.3"), "TLS 1.3 works:\n{text13}");
    wait_until(
        tests::wait::PATIENCE,
        "the refused handshake counted",
        || {
            let errors = handshake_errors(&proxy);
            if errors >= 1 {
                Ok(())
            } else {
                Err(format!("{errors} handshake errors"))
            }
        },
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.sum(
            "ringmesh_listener_tls_handshake_errors_total",
            &[("listener", "tls")]
        ) >= 1.0
    );
}

fn sessions_resume_on_tls13_and_tls12(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let proxy = tls_http_proxy(&pki, driver, app.address(), "", "");
    let address = proxy.listener("tls");
    let ca = pki.p("ca.pem");
    let request = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    for version in ["-tls1_3", "-tls1_2"] {
        let session = pki.p(&format!("session{version}.pem"));
        // -ign_eof: read the answer to the end rather than quit when the request is written.
        let base = [
            "-CAfile",
            ca.as_str(),
            "-servername",
            "a.example",
            version,
            "-ign_eof",
        ];
        // The first connection does a request, so a TLS 1.3 client reads the tickets that follow
        // the handshake before it saves the session.
        let (_, first) = s_client(
            address,
            &[&base[..], &["-sess_out", session.as_str()]].concat(),
            request,
        );
        assert!(first.contains("New, TLS"), "{version} first:\n{first}");
        assert!(first.contains("HTTP/1.1 200"), "{version} first:\n{first}");
        let (_, second) = s_client(
            address,
            &[&base[..], &["-sess_in", session.as_str()]].concat(),
            request,
        );
        assert!(
            second.contains("Reused, TLS"),
            "{version}: the second connection resumes:\n{second}"
        );
        assert!(
            second.contains("HTTP/1.1 200"),
            "{version} second:\n{second}"
        );
    }
}

fn grpc_over_tls(driver: Driver) {
    let pki = Pki::new();
    let server = PyServer::start("grpc_echo.py", &["server"]);
    let config = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "http"
{tls}

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "echo"
cluster = "echo"

[[clusters]]
name = "echo"
endpoints = ["{echo}"]
protocol = "h2"
"#,
        tls = listener_tls(&pki, ""),
        echo = server.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let port = proxy.listener("tls").port().to_string();
    let ca = pki.p("ca.pem");
    for scenario in ["unary", "server-stream", "bidi"] {
        let result = run_json(
            "grpc_echo.py",
            &[
                "client",
                &port,
                scenario,
                "--tls-ca",
                &ca,
                "--tls-name",
                "localhost",
                "--count",
                "50",
            ],
            RUN,
        );
        assert_eq!(result["code"], "OK", "{scenario} over TLS: {result}");
    }
}

/// Python's `ssl`: connect to `port` as `name` trusting `ca`, send `len` pattern bytes, half-close,
/// and print the SHA-256 of what came back and its length.
const PY_TLS_ECHO: &str = r#"
import hashlib, socket, ssl, sys, threading
port, ca, name, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
context = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", port), timeout=60)
conn = context.wrap_socket(raw, server_hostname=name)
data = bytes((i * 7 + 3) % 251 for i in range(size))
def send():
    conn.sendall(data)
threading.Thread(target=send).start()
got = bytearray()
while len(got) < size:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    got += chunk
print(len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), conn.version())
"#;

fn python_tls_echo(port: u16, ca: &str, name: &str, size: usize) -> String {
    let output = Command::new(tests::python())
        .args(["-c", PY_TLS_ECHO])
        .args([&port.to_string(), ca, name, &size.to_string()])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python TLS echo failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn tcp_listener_terminates_tls_and_copies_bytes_exactly(driver: Driver) {
    let pki = Pki::new();
    let echo = Upstream::echo();
    let config = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
{tls}

[[clusters]]
name = "echo"
endpoints = ["{echo}"]
"#,
        tls = listener_tls(&pki, ""),
        echo = echo.address()
    );
    let proxy = Proxy::start(&config, driver, 2);
    let size = 4 * 1024 * 1024 + 17;
    let line = python_tls_echo(
        proxy.listener("tls").port(),
        &pki.p("ca.pem"),
        "localhost",
        size,
    );
    assert_eq!(line, format!("{size} True TLSv1.3"));
    // A tcp listener does not offer ALPN by default: its bytes are copied, not spoken as HTTP.
    let ca = pki.p("ca.pem");
    let (_, text) = s_client(
        proxy.listener("tls"),
        &[
            "-CAfile",
            &ca,
            "-servername",
            "localhost",
            "-alpn",
            "h2,http/1.1",
        ],
        b"",
    );
    assert!(text.contains("No ALPN negotiated"), "{text}");
}

fn large_bodies_cross_tls_intact_both_ways(driver: Driver) {
    const SIZE: usize = 20 * 1024 * 1024;
    let pki = Pki::new();
    let expected = std::sync::Arc::new(payload(SIZE, 7));
    let check = std::sync::Arc::clone(&expected);
    let app = HttpUpstream::start(move |request| {
        if request.method == "POST" {
            let verdict = if request.body == *check {
                "intact"
            } else {
                "corrupt"
            };
            Reply::Send(Response::ok(format!("{verdict} {}", request.body.len())))
        } else {
            Reply::Send(Response::ok(check.to_vec()))
        }
    });
    let proxy = tls_http_proxy(&pki, driver, app.address(), "", "");
    let port = proxy.listener("tls").port().to_string();
    let file = pki.path("upload.bin");
    std::fs::write(&file, &*expected).expect("write the upload");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/big");
    for version in ["--http1.1", "--http2"] {
        let up = curl([
            version,
            "--cacert",
            &pki.p("ca.pem"),
            "--resolve",
            &resolve,
            "--data-binary",
            &format!("@{}", file.display()),
            &url,
        ]);
        assert!(up.status.success(), "{version} upload: {}", up.stderr);
        assert_eq!(
            up.stdout_text(),
            format!("intact {SIZE}"),
            "{version} upload"
        );
        let down = curl([
            version,
            "--cacert",
            &pki.p("ca.pem"),
            "--resolve",
            &resolve,
            &url,
        ]);
        assert!(down.status.success(), "{version} download: {}", down.stderr);
        assert!(
            down.stdout == *expected,
            "{version}: the download is intact"
        );
    }
}

/// Reads until the peer closes, at most `limit`; returns what arrived, or `None` if it did not
/// close in time.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(got),
        }
    }
    None
}

fn handshake_errors(proxy: &Proxy) -> u64 {
    proxy.stats().listener("tls")["tls"]["handshake_errors"]
        .as_u64()
        .unwrap_or(0)
}

fn a_silent_client_is_cut_by_the_handshake_timeout(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let proxy = tls_http_proxy(
        &pki,
        driver,
        app.address(),
        r#"request_header_timeout = "1s""#,
        "",
    );
    let mut silent = TcpStream::connect(proxy.listener("tls")).expect("connect");
    // Half a ClientHello record header, then nothing.
    silent.write_all(&[0x16, 0x03]).expect("write");
    let got = read_until_closed(&mut silent, Duration::from_secs(20))
        .expect("the proxy closes a connection whose handshake never finishes");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "nothing but an alert: {got:?}"
    );
    wait_until(
        tests::wait::PATIENCE,
        "the timed-out handshake counted",
        || match handshake_errors(&proxy) {
            0 => Err("no handshake error yet".to_owned()),
            _ => Ok(()),
        },
    );
}

fn garbage_instead_of_a_client_hello_is_closed(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let proxy = tls_http_proxy(&pki, driver, app.address(), "", "");
    let mut client = TcpStream::connect(proxy.listener("tls")).expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: plain\r\n\r\n")
        .expect("write");
    let got = read_until_closed(&mut client, Duration::from_secs(20))
        .expect("the proxy closes a connection that does not speak TLS");
    // At most a TLS alert record (content type 21) comes back, never an HTTP answer.
    assert!(
        got.is_empty() || got[0] == 0x15,
        "nothing but an alert: {got:?}"
    );
    wait_until(
        tests::wait::PATIENCE,
        "the failed handshake counted",
        || match handshake_errors(&proxy) {
            0 => Err("no handshake error yet".to_owned()),
            _ => Ok(()),
        },
    );
    // The listener serves on.
    let port = proxy.listener("tls").port().to_string();
    let out = curl([
        "--cacert",
        &pki.p("ca.pem"),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/"),
    ]);
    assert_eq!(out.stdout_text(), "app", "{}", out.stderr);
}

/// nginx over TLS with `localhost.crt` (HTTP/2 by ALPN too with `h2`), requiring client
/// certificates from the test CA, answering with the protocol and the client's subject.
fn tls_nginx(pki: &Pki, h2: bool) -> Nginx {
    let locations = format!(
        r#"
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{
            return 200 "nginx $server_protocol $ssl_client_s_dn $ssl_session_reused\n";
        }}
        # Every request on a new connection: a new handshake, which may resume the session.
        location /mtls/fresh {{
            keepalive_timeout 0;
            return 200 "nginx $server_protocol $ssl_client_s_dn $ssl_session_reused\n";
        }}
"#,
        ca = pki.p("ca.pem"),
    );
    let (cert, key) = (pki.path("localhost.crt"), pki.path("localhost.key"));
    if h2 {
        Nginx::start_tls_h2(&cert, &key, &locations, |_: &Path| {})
    } else {
        Nginx::start_tls(&cert, &key, &locations, |_: &Path| {})
    }
}

/// A plain `http` listener `main` with routes `/NAME` to cluster `NAME` for each of `clusters`
/// (TOML of `[[clusters]]` tables).
fn plain_proxy_to(driver: Driver, routes: &[&str], clusters: &str) -> Proxy {
    let mut config = String::from(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]
"#,
    );
    for route in routes {
        config.push_str(&format!(
            "\n[[virtual_hosts.routes]]\nname = \"{route}\"\nmatch = {{ path_prefix = \"/{route}\" }}\ncluster = \"{route}\"\n"
        ));
    }
    config.push_str(clusters);
    Proxy::start(&config, driver, 2)
}

fn upstream_tls_to_nginx_with_a_client_certificate(driver: Driver) {
    let pki = Pki::new();
    let nginx = tls_nginx(&pki, false);
    let clusters = format!(
        r#"
[[clusters]]
name = "mtls"
endpoints = ["{nginx}"]
[clusters.tls]
sni = "localhost"
ca = "{ca}"
cert = "{client_crt}"
key = "{client_key}"

[[clusters]]
name = "nocert"
endpoints = ["{nginx}"]
[clusters.tls]
sni = "localhost"
ca = "{ca}"

[[clusters]]
name = "byip"
endpoints = ["{nginx}"]
[clusters.tls]
ca = "{ca}"
cert = "{client_crt}"
key = "{client_key}"
"#,
        nginx = nginx.address(),
        ca = pki.p("ca.pem"),
        client_crt = pki.p("client.crt"),
        client_key = pki.p("client.key"),
    );
    let proxy = plain_proxy_to(driver, &["mtls", "nocert", "byip"], &clusters);
    let main = proxy.listener("main");
    // Several requests: the first connections' sessions resume later ones, and the pool reuses.
    for i in 0..5 {
        let out = curl(["-i", &format!("http://{main}/mtls/{i}")]);
        let response = out.response();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let body = String::from_utf8_lossy(&response.body).into_owned();
        assert!(
            body.starts_with("nginx HTTP/1.1 CN=client-leaf"),
            "nginx saw the client certificate: {body}"
        );
    }
    // New connections resume the worker's cached session (nginx: `$ssl_session_reused` = "r"):
    // at most one full handshake per worker.
    let mut resumed = 0;
    for i in 0..6 {
        let out = curl(["-i", &format!("http://{main}/mtls/fresh/{i}")]);
        let response = out.response();
        assert_eq!(response.status, 200);
        let body = String::from_utf8_lossy(&response.body).into_owned();
        if body.trim_end().ends_with(" r") {
            resumed += 1;
        }
    }
    assert!(
        resumed >= 6 - proxy.workers(),
        "{resumed} of 6 handshakes resumed"
    );
    // Without `sni`, nothing is sent as SNI and the certificate is verified for the endpoint's IP
    // address (the nginx certificate names 127.0.0.1).
    let out = curl(["-i", &format!("http://{main}/byip")]);
    let response = out.response();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    // Without a client certificate nginx completes the handshake and refuses the request itself.
    let out = curl(["-i", &format!("http://{main}/nocert")]);
    let response = out.response();
    assert_eq!(response.status, 400);
    assert!(
        String::from_utf8_lossy(&response.body).contains("No required SSL certificate was sent"),
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}

fn upstream_with_the_wrong_ca_fails_the_handshake(driver: Driver) {
    let pki = Pki::new();
    let nginx = tls_nginx(&pki, false);
    let clusters = format!(
        r#"
[[clusters]]
name = "wrongca"
endpoints = ["{nginx}"]
[clusters.tls]
sni = "localhost"
ca = "{other}"
cert = "{client_crt}"
key = "{client_key}"
"#,
        nginx = nginx.address(),
        other = pki.p("other-ca.pem"),
        client_crt = pki.p("client.crt"),
        client_key = pki.p("client.key"),
    );
    let proxy = plain_proxy_to(driver, &["wrongca"], &clusters);
    let out = curl(["-i", &format!("http://{}/wrongca", proxy.listener("main"))]);
    let response = out.response();
    assert_eq!(
        response.status, 502,
        "a failed upstream handshake is a 502 (UF)"
    );
    let errors = proxy
        .stats()
        .cluster_counter("wrongca", "upstream_tls_handshake_errors");
    assert!(errors >= 1, "the handshake failure is counted: {errors}");
    let metrics = proxy.metrics();
    assert!(
        metrics.sum(
            "ringmesh_cluster_upstream_tls_handshake_errors_total",
            &[("cluster", "wrongca")]
        ) >= 1.0
    );
    assert!(nginx.access_log().is_empty(), "nothing reached nginx");
}

fn h2_cluster_speaks_http2_over_tls(driver: Driver) {
    let pki = Pki::new();
    let nginx = tls_nginx(&pki, true);
    let clusters = format!(
        r#"
[[clusters]]
name = "h2tls"
endpoints = ["{nginx}"]
protocol = "h2"
[clusters.tls]
sni = "localhost"
ca = "{ca}"
cert = "{client_crt}"
key = "{client_key}"
"#,
        nginx = nginx.address(),
        ca = pki.p("ca.pem"),
        client_crt = pki.p("client.crt"),
        client_key = pki.p("client.key"),
    );
    let proxy = plain_proxy_to(driver, &["h2tls"], &clusters);
    for i in 0..3 {
        let out = curl([
            "-i",
            &format!("http://{}/h2tls/{i}", proxy.listener("main")),
        ]);
        let response = out.response();
        assert_eq!(response.status, 200);
        let body = String::from_utf8_lossy(&response.body).into_owned();
        assert!(
            body.starts_with("nginx HTTP/2.0 CN=client-leaf"),
            "ALPN h2 upstream: {body}"
        );
    }
}

fn tcp_listener_originates_tls_to_its_cluster(driver: Driver) {
    let pki = Pki::new();
    let nginx = tls_nginx(&pki, false);
    let config = format!(
        r#"
[[listeners]]
name = "tcp"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "nginx"

[[clusters]]
name = "nginx"
endpoints = ["{nginx}"]
[clusters.tls]
sni = "localhost"
ca = "{ca}"
cert = "{client_crt}"
key = "{client_key}"
"#,
        nginx = nginx.address(),
        ca = pki.p("ca.pem"),
        client_crt = pki.p("client.crt"),
        client_key = pki.p("client.key"),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let out = curl(["-i", &format!("http://{}/plain-in", proxy.listener("tcp"))]);
    let response = out.response();
    assert_eq!(response.status, 200);
    assert!(
        String::from_utf8_lossy(&response.body).starts_with("nginx HTTP/1.1 CN=client-leaf"),
        "{}",
        String::from_utf8_lossy(&response.body)
    );
}

#[test]
fn a_key_that_does_not_fit_its_certificate_is_a_config_error() {
    let pki = Pki::new();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"
[listeners.tls]
cert = "{crt}"
key = "{wrong_key}"

[[clusters]]
name = "c"
endpoints = ["127.0.0.1:9"]
"#,
        crt = pki.p("a.crt"),
        wrong_key = pki.p("default.key"),
    );
    let path = pki.path("bad.toml");
    std::fs::write(&path, config).expect("write config");
    let finished = tests::run_ringmesh(
        [
            "--config".to_owned(),
            path.display().to_string(),
            "--workers".into(),
            "1".into(),
        ],
        RUN,
    );
    assert!(!finished.status.success(), "the proxy must not start");
    assert!(
        finished.stderr.contains("listeners[0].tls.key")
            && finished.stderr.contains("does not fit"),
        "the error names the key: {}",
        finished.stderr
    );
}

fn the_access_log_names_the_sni(driver: Driver) {
    let pki = Pki::new();
    let app = named_upstream();
    let log = pki.path("access.log");
    let proxy = tls_http_proxy_with(
        &pki,
        driver,
        app.address(),
        "",
        "",
        &tests::http::access_log_config(&log),
    );
    let port = proxy.listener("tls").port().to_string();
    for (version, path) in [("--http1.1", "/h1"), ("--http2", "/h2")] {
        let out = curl([
            version,
            "--cacert",
            &pki.p("ca.pem"),
            "--resolve",
            &format!("x.b.example:{port}:127.0.0.1"),
            &format!("https://x.b.example:{port}{path}"),
        ]);
        assert_eq!(out.stdout_text(), "app", "{version}: {}", out.stderr);
    }
    let entries = tests::http::access_log(&log, 2);
    for path in ["/h1", "/h2"] {
        let entry = entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no access-log entry for {path}: {entries:?}"));
        assert_eq!(entry["requested_server_name"], "x.b.example", "{entry}");
    }
}

/// A TLS tcp listener whose certificate for `a.example` is `cert`/`key`, copying to `echo`.
fn rotating_config(pki: &Pki, echo: SocketAddr, cert: &str, key: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"

[listeners.tls]
cert = "{default_crt}"
key = "{default_key}"

[[listeners.tls.certificates]]
server_names = ["a.example"]
cert = "{cert}"
key = "{key}"

[[clusters]]
name = "echo"
endpoints = ["{echo}"]
"#,
        default_crt = pki.p("default.crt"),
        default_key = pki.p("default.key"),
        cert = pki.p(cert),
        key = pki.p(key),
    )
}

fn a_reload_rotates_certificates_and_a_bad_one_keeps_the_old_serving(driver: Driver) {
    let pki = Pki::new();
    let echo = Upstream::echo();
    let proxy = Proxy::start(
        &rotating_config(&pki, echo.address(), "a.crt", "a.key"),
        driver,
        2,
    );
    let address = proxy.listener("tls");
    let ca = pki.p("ca.pem");
    let presented = || {
        let (_, text) = s_client(address, &["-CAfile", &ca, "-servername", "a.example"], b"");
        subject(&text)
    };
    assert!(presented().contains("a-leaf"));
    // New material through a reload: new handshakes present it.
    let generation = proxy.reload_with_sighup(&rotating_config(
        &pki,
        echo.address(),
        "wild.crt",
        "wild.key",
    ));
    assert_eq!(generation, 2);
    assert!(presented().contains("wild-leaf"));
    // A key that does not fit its certificate: the reload fails at its TOML path, and the
    // material in force keeps serving.
    std::fs::write(
        proxy.config_path(),
        rotating_config(&pki, echo.address(), "a.crt", "default.key"),
    )
    .expect("rewrite the config");
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(tests::wait::PATIENCE, "the failed reload logged", || {
        let log = proxy.log();
        if log.contains("listeners[0].tls.certificates[0].key") && log.contains("does not fit") {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    assert_eq!(proxy.generations().0, 2);
    assert!(presented().contains("wild-leaf"));
}
