//! mTLS with SPIFFE identities through the real binary, on both drivers, with real peers:
//! `openssl s_client` and curl presenting client certificates, a second ringmesh as a mesh peer,
//! grpcio with TLS channel credentials and a client certificate, and h2load over TLS during a
//! rotation. Certificates are made by each test: `rcgen` for the CAs and X.509-SVIDs, the
//! `openssl` CLI for what rcgen with ring cannot make (an RSA-1024 key, a SHA-1 signature).
//!
//! - **Negative matrix**: one proxy with a mesh listener (`[identity]`, no `cert`/`key`,
//!   `require_client_cert`, `allowed_spiffe_ids`); every bad client certificate is refused at the
//!   handshake, `ringmesh_tls_handshake_failures_total{reason}` counts it once under the right
//!   reason, and the proxy logs a WARN line naming the listener and the reason; the good SVID is
//!   accepted and proxied.
//! - **Mesh end to end**: client → ringmesh A (plain HTTP) → cluster with TLS and A's identity →
//!   ringmesh B (mesh mTLS listener with its own identity) → plain upstream; a cluster whose
//!   `expected_spiffe_ids` does not match B is a 502 `UF` counted as `unexpected_identity`.
//! - **gRPC**: grpcio with TLS channel credentials and a client SVID through a mesh listener.
//! - **Rotation under load**: h2load over TLS makes new connections at a fixed rate while the
//!   leaf is rewritten 10 times and the root once (old + new root, a leaf of the new root, the
//!   old root removed): no failed request, new handshakes present the new certificate, `/certs`
//!   and `ringmesh_cert_expiry_seconds` show its serial; an expired leaf and a missing key are
//!   refused, counted in `ringmesh_cert_reload_errors_total`, and the old leaf keeps serving.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tests::h2::{PyServer, run_json};
use tests::http::{HttpUpstream, access_log, access_log_config, curl};
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    bad_client_certificates_are_refused_at_the_handshake_with_their_reason,
    mesh_mtls_end_to_end_and_upstream_identities_are_checked,
    grpc_with_a_client_svid_through_a_mesh_listener,
    rotation_under_load_fails_no_request_and_serves_the_new_serial,
    a_reload_keeps_an_unchanged_identity_and_a_broken_one_fails_whole,
);

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const API: &str = "spiffe://cluster.local/ns/default/sa/api";
const PATIENCE: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(60);

/// A CA: rcgen's issuer and the PEM of its certificate and key.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign the CA"),
            key_pem,
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Signs `params` for a new key: (certificate PEM, key PEM).
    fn sign(&self, params: &CertificateParams) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// X.509-SVID parameters: the URI SANs given (and `localhost` as a DNS name, so that clients
/// that check host names accept the proxy), digitalSignature, both EKUs, not a CA.
fn svid(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("an IA5 URI")))
        .collect();
    params.subject_alt_names.push(SanType::DnsName(
        "localhost".try_into().expect("a DNS name"),
    ));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

/// A temporary directory of PEM files.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("ringmesh-mtls-")
                .tempdir()
                .expect("temp dir"),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes `text` to `name` atomically (write, then rename), as certificate managers do.
    fn write(&self, name: &str, text: &str) -> String {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write PEM");
        std::fs::rename(&tmp, self.path(name)).expect("rename PEM");
        self.p(name)
    }

    /// Writes a certificate and key as `name.crt` and `name.key`.
    fn pair(&self, name: &str, (cert, key): &(String, String)) -> (String, String) {
        (
            self.write(&format!("{name}.crt"), cert),
            self.write(&format!("{name}.key"), key),
        )
    }

    /// A leaf made by the `openssl` CLI, signed by `ca` with `digest`, for `newkey`
    /// (`openssl req -newkey`): `name.crt` and `name.key`.
    fn openssl_leaf(
        &self,
        ca: &Ca,
        name: &str,
        newkey: &[&str],
        digest: &str,
        uri: &str,
    ) -> (String, String) {
        let ca_pem = self.write(&format!("{name}-ca.pem"), &ca.pem());
        let ca_key = self.write(&format!("{name}-ca.key"), &ca.key_pem);
        let ext = self.write(
            &format!("{name}.ext"),
            &format!(
                "subjectAltName=URI:{uri}\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        );
        let (crt, key, csr) = (
            self.p(&format!("{name}.crt")),
            self.p(&format!("{name}.key")),
            self.p(&format!("{name}.csr")),
        );
        let mut req = vec![
            "req",
            "-new",
            "-nodes",
            "-subj",
            "/O=ringmesh-test",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-newkey",
        ];
        req.extend_from_slice(newkey);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "4242",
            "-days",
            "2",
            &format!("-{digest}"),
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        (crt, key)
    }
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new(tests::tool("openssl"))
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `[identity]` for `cluster.local` with `partner.example` federated.
fn identity(cert: &str, key: &str, bundle: &str, partner: Option<&str>) -> String {
    let mut text = format!(
        "\n[identity]\ntrust_domain = \"cluster.local\"\ncert = \"{cert}\"\nkey = \"{key}\"\nca_bundle = \"{bundle}\"\n"
    );
    if let Some(partner) = partner {
        text.push_str(&format!(
            "\n[[identity.trust_bundles]]\ntrust_domain = \"partner.example\"\nca = \"{partner}\"\n"
        ));
    }
    text
}

/// The config of [`mesh_proxy`].
fn mesh_config(upstream: SocketAddr, protocol: &str, tls_extra: &str, identity: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "mesh"
address = "127.0.0.1:0"
protocol = "http"
[listeners.tls]
{tls_extra}

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "app"

[[clusters]]
name = "app"
endpoints = ["{upstream}"]
protocol = "{protocol}"
{identity}
"#
    )
}

/// A proxy with one mesh listener `mesh` (TLS with the node identity; `tls_extra` in its
/// `[listeners.tls]`) routing everything to `upstream` (`protocol` of the cluster).
fn mesh_proxy(
    driver: Driver,
    upstream: SocketAddr,
    protocol: &str,
    tls_extra: &str,
    identity: &str,
) -> Proxy {
    let config = mesh_config(upstream, protocol, tls_extra, identity);
    Proxy::start(&config, driver, 2)
}

/// Runs `openssl s_client` against `address` with `args`, sending `input`; everything it printed.
fn s_client(address: SocketAddr, args: &[&str], input: &[u8]) -> String {
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
    while child.try_wait().expect("wait openssl").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("openssl output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn failures(proxy: &Proxy, reason: &str) -> f64 {
    proxy.metrics().sum(
        "ringmesh_tls_handshake_failures_total",
        &[("reason", reason)],
    )
}

/// Log lines of the transport's refusal for `reason`.
fn refusal_lines(proxy: &Proxy, reason: &str) -> usize {
    let needle = format!("reason=\"{reason}\"");
    proxy
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("TLS handshake refused"))
        .filter(|l| l.contains(&needle) && l.contains("listener=mesh"))
        .count()
}

fn bad_client_certificates_are_refused_at_the_handshake_with_their_reason(driver: Driver) {
    let dir = Dir::new();
    let local = Ca::new("cluster.local root");
    let partner = Ca::new("partner.example root");
    let rogue = Ca::new("rogue root");
    let bundle = dir.write("bundle.pem", &local.pem());
    let partner_bundle = dir.write("partner.pem", &partner.pem());
    let (node_crt, node_key) = dir.pair("node", &local.sign(&svid(&[API])));
    let app = HttpUpstream::named("app");
    let proxy = mesh_proxy(
        driver,
        app.address(),
        "h1",
        "require_client_cert = true\nallowed_spiffe_ids = [\"spiffe://cluster.local/ns/default/*\", \"spiffe://partner.example/ns/p/*\"]",
        &identity(&node_crt, &node_key, &bundle, Some(&partner_bundle)),
    );
    let address = proxy.listener("mesh");

    let with = |uris: &[&str], change: &dyn Fn(&mut CertificateParams)| {
        let mut params = svid(uris);
        // No DNS name on client certificates: only the URI SAN says who they are.
        params
            .subject_alt_names
            .retain(|san| matches!(san, SanType::URI(_)));
        change(&mut params);
        local.sign(&params)
    };
    let keep = |_: &mut CertificateParams| {};
    let mut cases: Vec<(&str, (String, String), &str)> = vec![
        (
            "wrong trust domain",
            with(&["spiffe://evil.example/ns/default/sa/web"], &keep),
            "wrong_trust_domain",
        ),
        (
            "a federated domain's ID signed by our CA",
            with(&["spiffe://partner.example/ns/p/sa/web"], &keep),
            "wrong_trust_domain",
        ),
        (
            "two URI SANs",
            with(&[WEB, "spiffe://cluster.local/ns/default/sa/db"], &keep),
            "multiple_uri_sans",
        ),
        (
            "no URI SAN",
            with(&[], &|p| {
                p.subject_alt_names = vec![SanType::DnsName(
                    "web.default.svc".try_into().expect("a DNS name"),
                )];
            }),
            "no_uri_san",
        ),
        (
            "a non-SPIFFE URI",
            with(&["https://cluster.local/ns/default/sa/web"], &keep),
            "not_spiffe",
        ),
        (
            "expired",
            with(&[WEB], &|p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            "expired",
        ),
        (
            "not yet valid",
            with(&[WEB], &|p| {
                p.not_before = rcgen::date_time_ymd(2100, 1, 1);
                p.not_after = rcgen::date_time_ymd(2101, 1, 1);
            }),
            "not_yet_valid",
        ),
        (
            "a CA as leaf",
            with(&[WEB], &|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }),
            "ca_as_leaf",
        ),
        (
            "keyUsage without digitalSignature",
            with(&[WEB], &|p| {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
            }),
            "no_digital_signature",
        ),
        (
            "untrusted root",
            rogue.sign(&svid(&[WEB])),
            "untrusted_root",
        ),
        (
            "an identity not in allowed_spiffe_ids",
            with(&["spiffe://cluster.local/ns/kube-system/sa/admin"], &keep),
            "unexpected_identity",
        ),
        (
            "a path with a trailing /",
            with(&["spiffe://cluster.local/ns/default/sa/web/"], &keep),
            "bad_spiffe_id",
        ),
        (
            "upper-case scheme",
            with(&["SPIFFE://cluster.local/ns/default/sa/web"], &keep),
            "bad_spiffe_id",
        ),
        (
            "an ID with a query",
            with(&["spiffe://cluster.local/ns/default/sa/web?x=1"], &keep),
            "bad_spiffe_id",
        ),
        (
            "a leaf with keyCertSign",
            with(&[WEB], &|p| {
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }),
            "leaf_can_sign",
        ),
    ];
    let mut files: Vec<(&str, (String, String), &str)> = cases
        .drain(..)
        .enumerate()
        .map(|(i, (name, pair, reason))| (name, dir.pair(&format!("bad{i}"), &pair), reason))
        .collect();
    files.push((
        "RSA-1024 key",
        dir.openssl_leaf(&local, "rsa1024", &["rsa:1024"], "sha256", WEB),
        "weak_key",
    ));
    files.push((
        "SHA-1 signature",
        dir.openssl_leaf(
            &local,
            "sha1",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "sha1",
            WEB,
        ),
        "weak_signature",
    ));
    assert!(files.len() >= 17, "the matrix has {} cases", files.len());

    let bundle_arg = bundle.clone();
    let request = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
    let mut expected: std::collections::BTreeMap<&str, usize> = Default::default();
    for (name, (crt, key), reason) in &files {
        let before = failures(&proxy, reason);
        // Security level 0: let openssl present weak keys and SHA-1 certificates, which is the
        // point of those cases.
        let text = s_client(
            address,
            &[
                "-cert",
                crt,
                "-key",
                key,
                "-CAfile",
                &bundle_arg,
                "-servername",
                "localhost",
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
            request,
        );
        assert!(!text.contains("HTTP/1.1 200"), "{name}: served:\n{text}");
        wait_until(PATIENCE, format!("{name}: counted as {reason}"), || {
            let now = failures(&proxy, reason);
            if now >= before + 1.0 {
                Ok(())
            } else {
                Err(format!("{reason} = {now}; openssl said:\n{text}"))
            }
        });
        *expected.entry(reason).or_default() += 1;
    }
    // No certificate at all: rustls refuses it, the transport counts it.
    let text = s_client(
        address,
        &["-CAfile", &bundle_arg, "-servername", "localhost"],
        request,
    );
    assert!(
        !text.contains("HTTP/1.1 200"),
        "no certificate: served:\n{text}"
    );
    wait_until(PATIENCE, "no certificate counted", || {
        match failures(&proxy, "no_certificate") {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("no_certificate = {n}")),
        }
    });
    *expected.entry("no_certificate").or_default() += 1;

    // Every refusal counted exactly once, under its reason, and logged with it.
    let metrics = proxy.metrics();
    let total: usize = expected.values().sum();
    assert_eq!(
        metrics.sum("ringmesh_tls_handshake_failures_total", &[]),
        total as f64,
        "each refusal is counted once"
    );
    for (reason, count) in &expected {
        assert_eq!(
            metrics.sum(
                "ringmesh_tls_handshake_failures_total",
                &[("reason", reason)]
            ),
            *count as f64,
            "{reason}"
        );
        wait_until(
            PATIENCE,
            format!("{count} log lines for {reason}"),
            || match refusal_lines(&proxy, reason) {
                n if n >= *count => Ok(()),
                n => Err(format!("{n} lines")),
            },
        );
    }
    assert!(
        app.request_count() == 0,
        "no bad client reached the upstream"
    );

    // The good SVID (and a federated one) is accepted and proxied.
    let good = dir.pair("good", &with(&[WEB], &keep));
    let federated = dir.pair(
        "federated",
        &partner.sign(&svid(&["spiffe://partner.example/ns/p/sa/q"])),
    );
    let port = address.port().to_string();
    for (crt, key) in [&good, &federated] {
        let out = curl([
            "-i",
            "--cert",
            crt.as_str(),
            "--key",
            key.as_str(),
            "--cacert",
            &bundle,
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/"),
        ]);
        let response = out.response();
        assert_eq!(response.status, 200, "{}", out.stderr);
        assert_eq!(response.body, b"app");
    }
    // The node presents its identity: the URI SAN of the node's SVID.
    let text = s_client(
        address,
        &[
            "-cert",
            &good.0,
            "-key",
            &good.1,
            "-CAfile",
            &bundle,
            "-servername",
            "localhost",
        ],
        b"",
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let certs = proxy.admin_get("/certs").body;
    assert!(certs.contains(API), "{certs}");
}

fn mesh_mtls_end_to_end_and_upstream_identities_are_checked(driver: Driver) {
    let dir = Dir::new();
    let local = Ca::new("cluster.local root");
    let bundle = dir.write("bundle.pem", &local.pem());
    let (a_crt, a_key) = dir.pair("a", &local.sign(&svid(&[WEB])));
    let (b_crt, b_key) = dir.pair("b", &local.sign(&svid(&[API])));
    let app = HttpUpstream::named("app");
    // B: a mesh listener that only lets `web` in.
    let b = mesh_proxy(
        driver,
        app.address(),
        "h1",
        &format!("require_client_cert = true\nallowed_spiffe_ids = [\"{WEB}\"]"),
        &identity(&b_crt, &b_key, &bundle, None),
    );
    let log = dir.path("a-access.log");
    // A: plain HTTP in, mesh mTLS out, as `web`.
    let config = format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "good"
match = {{ path_prefix = "/good" }}
cluster = "good"

[[virtual_hosts.routes]]
name = "h2"
match = {{ path_prefix = "/h2" }}
cluster = "h2"

[[virtual_hosts.routes]]
name = "bad"
match = {{ path_prefix = "/bad" }}
cluster = "bad"

[[clusters]]
name = "good"
endpoints = ["{b}"]
tls = {{ expected_spiffe_ids = ["{API}"] }}

[[clusters]]
name = "h2"
endpoints = ["{b}"]
protocol = "h2"
tls = {{ expected_spiffe_ids = ["spiffe://cluster.local/ns/default/*"] }}

[[clusters]]
name = "bad"
endpoints = ["{b}"]
tls = {{ expected_spiffe_ids = ["spiffe://cluster.local/ns/default/sa/not-api"] }}
{access}
{identity}
"#,
        b = b.listener("mesh"),
        access = access_log_config(&log),
        identity = identity(&a_crt, &a_key, &bundle, None),
    );
    let a = Proxy::start(&config, driver, 2);
    let main = a.listener("main");
    for path in ["/good", "/h2"] {
        let out = curl(["-i", &format!("http://{main}{path}")]);
        let response = out.response();
        assert_eq!(
            response.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.body, b"app", "{path}");
    }
    assert_eq!(app.request_count(), 2, "both went through B");
    let out = curl(["-i", &format!("http://{main}/bad")]);
    assert_eq!(
        out.response().status,
        502,
        "an unexpected upstream identity"
    );
    let entries = access_log(&log, 3);
    let bad = entries
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/bad")))
        .unwrap_or_else(|| panic!("no /bad entry in {entries:?}"));
    assert_eq!(bad["response_flags"], "UF", "{bad}");
    assert!(failures(&a, "unexpected_identity") >= 1.0);
    assert_eq!(
        app.request_count(),
        2,
        "nothing reached the upstream for /bad"
    );
    // B saw A's client identity: nothing refused there.
    assert_eq!(
        b.metrics()
            .sum("ringmesh_tls_handshake_failures_total", &[]),
        0.0
    );
}

fn grpc_with_a_client_svid_through_a_mesh_listener(driver: Driver) {
    let dir = Dir::new();
    let local = Ca::new("cluster.local root");
    let bundle = dir.write("bundle.pem", &local.pem());
    let (node_crt, node_key) = dir.pair("node", &local.sign(&svid(&[API])));
    let (client_crt, client_key) = dir.pair("client", &local.sign(&svid(&[WEB])));
    let server = PyServer::start("grpc_echo.py", &["server"]);
    let proxy = mesh_proxy(
        driver,
        server.address(),
        "h2",
        &format!("require_client_cert = true\nallowed_spiffe_ids = [\"{WEB}\"]"),
        &identity(&node_crt, &node_key, &bundle, None),
    );
    let port = proxy.listener("mesh").port().to_string();
    for scenario in ["unary", "bidi"] {
        let result = run_json(
            "grpc_echo.py",
            &[
                "client",
                &port,
                scenario,
                "--tls-ca",
                &bundle,
                "--tls-name",
                "localhost",
                "--tls-cert",
                &client_crt,
                "--tls-key",
                &client_key,
                "--count",
                "20",
            ],
            RUN,
        );
        assert_eq!(result["code"], "OK", "{scenario} over mTLS: {result}");
    }
    // Without the client certificate the channel never comes up.
    let result = run_json(
        "grpc_echo.py",
        &[
            "client",
            &port,
            "unary",
            "--tls-ca",
            &bundle,
            "--tls-name",
            "localhost",
            "--timeout",
            "5",
        ],
        RUN,
    );
    assert_ne!(result["code"], "OK", "no client certificate: {result}");
    assert!(failures(&proxy, "no_certificate") >= 1.0);
}

/// The serial `/certs` and the metrics show for a certificate made with `serial` bytes.
fn serial_text(serial: &[u8]) -> String {
    serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An SVID for `API` with serial `[0x11, step]`, signed by `ca`.
fn numbered_leaf(ca: &Ca, step: u8) -> ((String, String), Vec<u8>) {
    let serial = vec![0x11, step, 0x5a];
    let mut params = svid(&[API]);
    params.serial_number = Some(SerialNumber::from(serial.clone()));
    (ca.sign(&params), serial)
}

/// The PEM body of the leaf the proxy presents now, through a new handshake.
fn presented_leaf(address: SocketAddr, ca: &str) -> String {
    let text = s_client(
        address,
        &["-CAfile", ca, "-servername", "localhost", "-showcerts"],
        b"",
    );
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate shown:\n{text}"));
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("no certificate end:\n{text}"));
    text[start..end].to_owned()
}

/// Waits until new handshakes present `cert_pem` and `/certs` shows `serial`.
fn wait_for_leaf(proxy: &Proxy, ca: &str, cert_pem: &str, serial: &str) {
    let body = cert_pem
        .find("-----END CERTIFICATE-----")
        .map_or(cert_pem, |end| &cert_pem[..end]);
    wait_until(PATIENCE, format!("serial {serial} in force"), || {
        let certs = proxy.admin_get("/certs").body;
        if !certs.contains(serial) {
            return Err(format!("/certs: {certs}"));
        }
        let presented = presented_leaf(proxy.listener("mesh"), ca);
        let squeeze = |s: &str| s.split_whitespace().collect::<String>();
        if squeeze(&presented) == squeeze(body) {
            Ok(())
        } else {
            Err("handshakes present another certificate".into())
        }
    });
}

fn rotation_under_load_fails_no_request_and_serves_the_new_serial(driver: Driver) {
    let dir = Dir::new();
    let old_root = Ca::new("cluster.local root 1");
    let new_root = Ca::new("cluster.local root 2");
    let bundle = dir.write("bundle.pem", &old_root.pem());
    let (first, first_serial) = numbered_leaf(&old_root, 0);
    let (crt, key) = dir.pair("node", &first);
    // Clients trust both roots (they get the new bundle out of band, as a mesh would).
    let both = dir.write("both.pem", &(old_root.pem() + &new_root.pem()));
    let app = HttpUpstream::named("app");
    // PERMISSIVE: h2load has no client certificate; the listener still presents the identity.
    let proxy = mesh_proxy(
        driver,
        app.address(),
        "h1",
        "",
        &identity(&crt, &key, &bundle, None),
    );
    let address = proxy.listener("mesh");
    wait_for_leaf(&proxy, &both, &first.0, &serial_text(&first_serial));

    // Load: batches of h2load, each opening 20 connections at 10 per 100 ms (every connection a
    // new handshake), until the rotation is over.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let url = format!("https://127.0.0.1:{}/", address.port());
        std::thread::spawn(move || {
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) && results.len() < 200 {
                let output = Command::new(tests::tool("h2load"))
                    .args(["-n", "200", "-c", "20", "-m", "1"])
                    .args(["-r", "10", "--rate-period", "100ms"])
                    .arg(&url)
                    .output()
                    .expect("run h2load");
                results.push(format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            results
        })
    };

    let mut in_force = (first, first_serial);
    for step in 1..=11u8 {
        match step {
            // Root rotation: the bundle holds both roots ...
            6 => {
                dir.write("bundle.pem", &(old_root.pem() + &new_root.pem()));
                wait_until(PATIENCE, "both roots in the bundle", || {
                    let certs = proxy.admin_get("/certs").body;
                    if certs.contains("cluster.local root 2") {
                        Ok(())
                    } else {
                        Err(certs)
                    }
                });
            }
            // ... then the new root's leaves take over, and finally the old root goes.
            11 => {
                dir.write("bundle.pem", &new_root.pem());
                wait_until(PATIENCE, "the old root removed", || {
                    let certs = proxy.admin_get("/certs").body;
                    if certs.contains("cluster.local root 1") {
                        Err(certs)
                    } else {
                        Ok(())
                    }
                });
            }
            _ => {
                let root = if step < 6 { &old_root } else { &new_root };
                let (leaf, serial) = numbered_leaf(root, step);
                // Key first, then the certificate: the store takes a pair only once both fit.
                dir.write("node.key", &leaf.1);
                dir.write("node.crt", &leaf.0);
                wait_for_leaf(&proxy, &both, &leaf.0, &serial_text(&serial));
                in_force = (leaf, serial);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let results = load.join().expect("the load thread");
    assert!(
        results.len() >= 2,
        "load ran across the rotation: {} batches",
        results.len()
    );
    let mut succeeded = 0u64;
    for text in &results {
        let line = text
            .lines()
            .find(|l| l.starts_with("requests:"))
            .unwrap_or_else(|| panic!("no summary in h2load output:\n{text}"));
        assert!(
            line.contains(" 0 failed, 0 errored"),
            "a request failed during the rotation: {line}\n{text}"
        );
        succeeded += line
            .split(", ")
            .find_map(|part| part.strip_suffix(" succeeded"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(succeeded > 0, "h2load made requests");
    let serial = serial_text(&in_force.1);
    let metrics = proxy.metrics();
    assert!(
        metrics.sum(
            "ringmesh_cert_expiry_seconds",
            &[("cert", "identity"), ("serial", &serial)]
        ) > 0.0,
        "the new serial's expiry is exported"
    );

    // A bad new file keeps the old material serving and raises the error counter.
    let errors = |proxy: &Proxy| {
        proxy
            .metrics()
            .sum("ringmesh_cert_reload_errors_total", &[])
    };
    let before = errors(&proxy);
    let mut expired = svid(&[API]);
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = new_root.sign(&expired);
    dir.write("node.key", &expired.1);
    dir.write("node.crt", &expired.0);
    wait_until(PATIENCE, "the expired leaf refused", || {
        match errors(&proxy) {
            n if n > before => Ok(()),
            n => Err(format!("reload errors {n}")),
        }
    });
    wait_for_leaf(&proxy, &both, &in_force.0.0, &serial);
    // Unreadable: the key file is gone.
    let before = errors(&proxy);
    dir.write("node.crt", &in_force.0.0);
    std::fs::remove_file(dir.path("node.key")).expect("remove the key");
    wait_until(PATIENCE, "the missing key refused", || {
        match errors(&proxy) {
            n if n > before => Ok(()),
            n => Err(format!("reload errors {n}")),
        }
    });
    wait_for_leaf(&proxy, &both, &in_force.0.0, &serial);
    assert!(
        proxy.admin_get("/certs").body.contains("last_reload_error"),
        "/certs names the last error"
    );
}

fn a_reload_keeps_an_unchanged_identity_and_a_broken_one_fails_whole(driver: Driver) {
    let dir = Dir::new();
    let root = Ca::new("cluster.local root");
    let bundle = dir.write("bundle.pem", &root.pem());
    let (first, first_serial) = numbered_leaf(&root, 1);
    let (crt, key) = dir.pair("one", &first);
    let (second, second_serial) = numbered_leaf(&root, 2);
    let (crt2, key2) = dir.pair("two", &second);
    let app = HttpUpstream::named("app");
    let config = |crt: &str, key: &str| {
        mesh_config(app.address(), "h1", "", &identity(crt, key, &bundle, None))
    };
    let proxy = Proxy::start(&config(&crt, &key), driver, 2);
    let loads = |proxy: &Proxy| proxy.metrics().sum("ringmesh_cert_reloads_total", &[]);
    assert_eq!(loads(&proxy), 1.0, "the store is opened once at start");
    wait_for_leaf(&proxy, &bundle, &first.0, &serial_text(&first_serial));

    // The same section: the same store (nothing reopened), the same certificate.
    proxy.reload_with_sighup(&config(&crt, &key));
    assert_eq!(
        loads(&proxy),
        1.0,
        "an unchanged [identity] keeps its store"
    );
    wait_for_leaf(&proxy, &bundle, &first.0, &serial_text(&first_serial));

    // Another section: a new store, whose certificate new handshakes get at once.
    proxy.reload_with_sighup(&config(&crt2, &key2));
    assert_eq!(loads(&proxy), 2.0);
    wait_for_leaf(&proxy, &bundle, &second.0, &serial_text(&second_serial));

    // A section whose key does not fit its certificate fails the reload whole, at the key.
    let failed = |proxy: &Proxy| {
        proxy
            .metrics()
            .value("ringmesh_config_reload_failed_total", &[])
    };
    assert_eq!(failed(&proxy), 0.0);
    let broken = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        config(&crt, &key2)
    );
    std::fs::write(proxy.config_path(), broken).expect("rewrite the config");
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(PATIENCE, "the broken identity rejected", || {
        match failed(&proxy) {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("reload failures {n}")),
        }
    });
    assert!(
        proxy.log().contains("identity.key"),
        "the error names the key"
    );
    assert_eq!(proxy.generations().0, 3, "nothing was published");
    wait_for_leaf(&proxy, &bundle, &second.0, &serial_text(&second_serial));
    let port = proxy.listener("mesh").port().to_string();
    let out = curl([
        "-i",
        "--cacert",
        &bundle,
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/"),
    ]);
    assert_eq!(out.response().status, 200, "the old config keeps serving");
}
