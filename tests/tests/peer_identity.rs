//! The verified peer identity through the real binary, on both drivers: clients present X.509
//! SVIDs (made here with `rcgen`: one URI SAN `spiffe://cluster.local/ns/<ns>/sa/<sa>`) to mTLS
//! listeners (`[listeners.tls] client_ca`, `require_client_cert = true`), with curl
//! (`--cert/--key`, HTTP/1.1 and HTTP/2), `openssl s_client -cert/-key` and Python `ssl` (tcp).
//!
//! - **Authorization**: an ALLOW policy on `principals` admits its SVID and answers another one
//!   403 (`RBAC`), on HTTP/1.1 and HTTP/2; `namespaces` and `not_principals`; a tcp mTLS
//!   listener closes the wrong identity at connect, and the live re-check closes an open
//!   connection when a reload revokes its principal.
//! - **Routing**: `source_principals` sends two identities to two clusters.
//! - **Observability**: the access log names the principal and `mutual_tls`;
//!   `istio_requests_total` carries `source_principal` and `connection_security_policy`, and on
//!   a mesh listener (`[identity]`) the node's SVID as `destination_principal`; `istio_tcp_*` on
//!   a listener that requires client certificates says `mutual_tls`; a proxy whose `h1` and `h2`
//!   TLS clusters reach another proxy's SVID logs it as `upstream_peer_principal`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::http::{HttpUpstream, access_log, access_log_config, curl};
use tests::pki::Pki;
use tests::upstream::Upstream;
use tests::{Driver, Proxy, both_drivers};

both_drivers!(
    an_allow_on_a_principal_admits_its_svid_and_refuses_another_on_both_protocols,
    namespaces_and_not_principals_match_the_verified_identity,
    routes_on_source_principals_send_two_identities_to_two_clusters,
    the_access_log_and_istio_metrics_carry_the_peer_identity,
    on_a_mesh_listener_the_destination_principal_is_the_node_identity,
    the_access_log_names_the_upstream_peer_principal_on_h1_and_h2_clusters,
    a_tcp_mtls_listener_closes_the_wrong_identity_and_a_reload_revokes_an_open_one,
);

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/web";
const NODE: &str = "spiffe://cluster.local/ns/mesh/sa/node";

/// A CA, the proxy's server certificate (`localhost`) and client SVIDs signed by the CA:
/// `web`, `api`, `ops` (the IDs above) and `plain` (a client certificate without a URI SAN).
fn pki() -> Pki {
    let pki = Pki::new("peer identity test CA");
    pki.leaf("localhost", &["localhost", "127.0.0.1"], None)
        .leaf("web", &[], Some(WEB))
        .leaf("api", &[], Some(API))
        .leaf("ops", &[], Some(OPS))
        .leaf("node", &[], Some(NODE))
        .leaf("plain", &["client.example"], None);
    pki
}

/// `[listeners.tls]` requiring a client certificate from the CA.
fn mtls(pki: &Pki) -> String {
    format!(
        r#"
[listeners.tls]
cert = "{}"
key = "{}"
client_ca = "{}"
require_client_cert = true
"#,
        pki.p("localhost.crt"),
        pki.p("localhost.key"),
        pki.p("ca.pem"),
    )
}

/// An mTLS `http` listener `mesh` routing to cluster `app` at `upstream` (or the routes in
/// `routes`), with `extra` appended.
fn http_config(pki: &Pki, clusters: &[(&str, SocketAddr)], routes: &str, extra: &str) -> String {
    let clusters: String = clusters
        .iter()
        .map(|(name, address)| {
            format!("\n[[clusters]]\nname = \"{name}\"\nendpoints = [\"{address}\"]\n")
        })
        .collect();
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "mesh"
address = "127.0.0.1:0"
protocol = "http"
{tls}

[[virtual_hosts]]
name = "all"
domains = ["*"]
{routes}
{clusters}
{extra}
"#,
        tls = mtls(pki),
    )
}

const ROUTE_ALL_TO_APP: &str = r#"
[[virtual_hosts.routes]]
name = "all"
cluster = "app"
"#;

/// The status of a GET to `path` on `address` with client certificate `client` (`None`: no
/// certificate) over `version` (`--http1.1` or `--http2`); 0 when curl got no HTTP answer.
fn status_as(
    pki: &Pki,
    address: SocketAddr,
    client: Option<&str>,
    version: &str,
    path: &str,
) -> u16 {
    body_as(pki, address, client, version, path).0
}

/// Status and body, as [`status_as`].
fn body_as(
    pki: &Pki,
    address: SocketAddr,
    client: Option<&str>,
    version: &str,
    path: &str,
) -> (u16, String) {
    let port = address.port();
    let ca = pki.p("ca.pem");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}{path}");
    let mut args: Vec<String> = vec![
        version.into(),
        "--cacert".into(),
        ca,
        "--resolve".into(),
        resolve,
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(client) = client {
        args.extend([
            "--cert".into(),
            pki.p(&format!("{client}.crt")),
            "--key".into(),
            pki.p(&format!("{client}.key")),
        ]);
    }
    args.push(url);
    let out = curl(&args);
    let text = out.stdout_text();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn an_allow_on_a_principal_admits_its_svid_and_refuses_another_on_both_protocols(driver: Driver) {
    let pki = pki();
    let app = HttpUpstream::named("app");
    let log = pki.path("access.log");
    let config = http_config(
        &pki,
        &[("app", app.address())],
        ROUTE_ALL_TO_APP,
        &format!(
            "{}{}",
            access_log_config(&log),
            r#"
[[authorization_policies]]
name = "only-web"
action = "allow"
rules = [{ from = [{ principals = ["cluster.local/ns/shop/sa/web"] }] }]
"#
        ),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("mesh");
    for version in ["--http1.1", "--http2"] {
        assert_eq!(
            body_as(&pki, address, Some("web"), version, "/ok"),
            (200, "app".to_owned()),
            "{version}: the allowed SVID"
        );
        assert_eq!(
            status_as(&pki, address, Some("api"), version, "/denied"),
            403,
            "{version}: another SVID of the CA"
        );
        assert_eq!(
            status_as(&pki, address, Some("plain"), version, "/plain"),
            403,
            "{version}: a verified certificate without a SPIFFE ID has no principal"
        );
        assert_eq!(
            status_as(&pki, address, None, version, "/none"),
            0,
            "{version}: no client certificate: refused at the handshake"
        );
    }
    // openssl s_client with the allowed and a refused SVID, a raw HTTP/1.1 request each.
    for (client, want) in [("web", "HTTP/1.1 200"), ("api", "HTTP/1.1 403")] {
        let text = s_client(
            &pki,
            address,
            client,
            b"GET /s_client HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        assert!(text.contains(want), "s_client as {client}:\n{text}");
    }
    let entries = access_log(&log, 8);
    let denied: Vec<_> = entries.iter().filter(|e| e["path"] == "/denied").collect();
    assert_eq!(denied.len(), 2, "{entries:?}");
    for entry in denied {
        assert_eq!(entry["status"], 403, "{entry}");
        assert_eq!(entry["response_flags"], "RBAC", "{entry}");
        assert_eq!(entry["downstream_peer_principal"], API, "{entry}");
    }
}

/// Runs `openssl s_client` with client certificate `client` against `address`, sending `input`
/// and waiting for the server to close; returns everything it printed.
fn s_client(pki: &Pki, address: SocketAddr, client: &str, input: &[u8]) -> String {
    let mut child = Command::new(tests::tool("openssl"))
        .arg("s_client")
        .arg("-connect")
        .arg(address.to_string())
        .args(["-servername", "localhost", "-ign_eof", "-CAfile"])
        .arg(pki.p("ca.pem"))
        .arg("-cert")
        .arg(pki.p(&format!("{client}.crt")))
        .arg("-key")
        .arg(pki.p(&format!("{client}.key")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
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

fn namespaces_and_not_principals_match_the_verified_identity(driver: Driver) {
    let pki = pki();
    let app = HttpUpstream::named("app");
    let config = http_config(
        &pki,
        &[("app", app.address())],
        ROUTE_ALL_TO_APP,
        r#"
[[authorization_policies]]
name = "shop-only"
action = "allow"
rules = [{ from = [{ namespaces = ["shop"] }] }]

[[authorization_policies]]
name = "not-api-on-admin"
action = "deny"
rules = [{ from = [{ not_principals = ["cluster.local/ns/shop/sa/web"] }], to = [{ paths = ["/admin*"] }] }]

[[authorization_policies]]
name = "sni-checked"
action = "deny"
rules = [{ to = [{ paths = ["/sni"] }], when = [{ key = "connection.sni", values = ["localhost"] }] }]
"#,
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("mesh");
    for version in ["--http1.1", "--http2"] {
        let cases = [
            ("web", "/x", 200),
            ("api", "/x", 200),
            ("ops", "/x", 403),
            ("plain", "/x", 403),
            ("web", "/admin", 200),
            ("api", "/admin", 403),
            // `connection.sni` reaches HTTP authorization: curl sends `localhost`.
            ("web", "/sni", 403),
        ];
        for (client, path, want) in cases {
            assert_eq!(
                status_as(&pki, address, Some(client), version, path),
                want,
                "{version} {client} {path}"
            );
        }
    }
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.sum("ringmesh_authz_denied_total", &[("policy", "sni-checked")]),
        2.0
    );
}

fn routes_on_source_principals_send_two_identities_to_two_clusters(driver: Driver) {
    let pki = pki();
    let web = HttpUpstream::named("web-backend");
    let api = HttpUpstream::named("api-backend");
    let other = HttpUpstream::named("other-backend");
    let routes = r#"
[[virtual_hosts.routes]]
name = "from-web"
cluster = "web"
[virtual_hosts.routes.match]
path_prefix = "/"
source_principals = ["cluster.local/ns/shop/sa/web"]

[[virtual_hosts.routes]]
name = "from-api"
cluster = "api"
[virtual_hosts.routes.match]
path_prefix = "/"
source_principals = ["spiffe://cluster.local/ns/shop/*", "*/sa/api"]

[[virtual_hosts.routes]]
name = "rest"
cluster = "other"
"#;
    let config = http_config(
        &pki,
        &[
            ("web", web.address()),
            ("api", api.address()),
            ("other", other.address()),
        ],
        routes,
        "",
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("mesh");
    for version in ["--http1.1", "--http2"] {
        let cases = [
            ("web", "web-backend"),
            ("api", "api-backend"),
            ("ops", "other-backend"),
            ("plain", "other-backend"),
        ];
        for (client, backend) in cases {
            assert_eq!(
                body_as(&pki, address, Some(client), version, "/r"),
                (200, backend.to_owned()),
                "{version} {client}"
            );
        }
    }
}

fn the_access_log_and_istio_metrics_carry_the_peer_identity(driver: Driver) {
    let pki = pki();
    let app = HttpUpstream::named("app");
    let log = pki.path("access.log");
    let config = http_config(
        &pki,
        &[("app", app.address())],
        ROUTE_ALL_TO_APP,
        &access_log_config(&log),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("mesh");
    for version in ["--http1.1", "--http2"] {
        assert_eq!(status_as(&pki, address, Some("web"), version, "/web"), 200);
        assert_eq!(status_as(&pki, address, Some("api"), version, "/api"), 200);
        assert_eq!(
            status_as(&pki, address, Some("plain"), version, "/plain"),
            200
        );
    }
    let entries = access_log(&log, 6);
    for (path, principal) in [("/web", WEB), ("/api", API)] {
        let found: Vec<_> = entries.iter().filter(|e| e["path"] == path).collect();
        assert_eq!(found.len(), 2, "{path}: {entries:?}");
        for entry in found {
            assert_eq!(entry["downstream_peer_principal"], principal, "{entry}");
            assert_eq!(entry["security_policy"], "mutual_tls", "{entry}");
            assert_eq!(entry["requested_server_name"], "localhost", "{entry}");
        }
    }
    for entry in entries.iter().filter(|e| e["path"] == "/plain") {
        assert!(entry.get("downstream_peer_principal").is_none(), "{entry}");
        assert_eq!(entry["security_policy"], "mutual_tls", "{entry}");
    }
    let metrics = proxy.metrics();
    for principal in [WEB, API, "unknown"] {
        assert_eq!(
            metrics.value(
                "istio_requests_total",
                &[
                    ("destination_service", "app"),
                    ("response_code", "200"),
                    ("source_principal", principal),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ),
            2.0,
            "{principal}"
        );
    }
    // Nothing here was plaintext: no `none` series with a count.
    assert_eq!(
        metrics.sum(
            "istio_requests_total",
            &[
                ("destination_service", "app"),
                ("connection_security_policy", "none")
            ],
        ),
        0.0
    );
}

/// A mesh listener (`[identity]`, no certificate of its own, `require_client_cert`): the node's
/// SVID is its certificate and the SPIFFE verifier checks clients; `istio_requests_total` names
/// the node as `destination_principal` and the client as `source_principal`.
fn on_a_mesh_listener_the_destination_principal_is_the_node_identity(driver: Driver) {
    let pki = pki();
    let app = HttpUpstream::named("app");
    let log = pki.path("access.log");
    let config = format!(
        r#"
[identity]
trust_domain = "cluster.local"
cert = "{node_crt}"
key = "{node_key}"
ca_bundle = "{ca}"

[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "mesh"
address = "127.0.0.1:0"
protocol = "http"
[listeners.tls]
require_client_cert = true

[[virtual_hosts]]
name = "all"
domains = ["*"]
{ROUTE_ALL_TO_APP}

[[clusters]]
name = "app"
endpoints = ["{app}"]
{log}
"#,
        node_crt = pki.p("node.crt"),
        node_key = pki.p("node.key"),
        ca = pki.p("ca.pem"),
        app = app.address(),
        log = access_log_config(&log),
    );
    let proxy = Proxy::start(&config, driver, 2);
    let port = proxy.listener("mesh").port();
    for version in ["--http1.1", "--http2"] {
        // The node's SVID names no host: the client checks the chain, not a DNS name (-k), and
        // presents its own SVID.
        let out = curl([
            version,
            "-k",
            "--cert",
            &pki.p("web.crt"),
            "--key",
            &pki.p("web.key"),
            &format!("https://127.0.0.1:{port}/mesh"),
        ]);
        assert_eq!(out.stdout_text(), "app", "{version}: {}", out.stderr);
    }
    let entries = access_log(&log, 2);
    for entry in &entries {
        assert_eq!(entry["downstream_peer_principal"], WEB, "{entry}");
        assert_eq!(entry["security_policy"], "mutual_tls", "{entry}");
    }
    assert_eq!(
        proxy.metrics().value(
            "istio_requests_total",
            &[
                ("destination_service", "app"),
                ("response_code", "200"),
                ("source_principal", WEB),
                ("destination_principal", NODE),
                ("connection_security_policy", "mutual_tls"),
            ],
        ),
        2.0
    );
}

/// Proxy B serves its SVID (`NODE`) on a TLS listener; proxy A's clusters (`h1` and `h2`) reach
/// it with `expected_spiffe_ids`: A's access log names B's identity as `upstream_peer_principal`
/// on both cluster protocols, and its plaintext client as `security_policy` `none`.
fn the_access_log_names_the_upstream_peer_principal_on_h1_and_h2_clusters(driver: Driver) {
    let pki = pki();
    let app = HttpUpstream::named("app");
    let inner = format!(
        r#"
[[listeners]]
name = "inner"
address = "127.0.0.1:0"
protocol = "http"
[listeners.tls]
cert = "{node_crt}"
key = "{node_key}"

[[virtual_hosts]]
name = "all"
domains = ["*"]
{ROUTE_ALL_TO_APP}

[[clusters]]
name = "app"
endpoints = ["{app}"]
"#,
        node_crt = pki.p("node.crt"),
        node_key = pki.p("node.key"),
        app = app.address(),
    );
    let b = Proxy::start(&inner, driver, 1);
    let log = pki.path("access.log");
    let mut clusters = String::new();
    for protocol in ["h1", "h2"] {
        clusters.push_str(&format!(
            r#"
[[clusters]]
name = "b-{protocol}"
endpoints = ["{b}"]
protocol = "{protocol}"
[clusters.tls]
ca = "{ca}"
expected_spiffe_ids = ["{NODE}"]
"#,
            b = b.listener("inner"),
            ca = pki.p("ca.pem"),
        ));
    }
    let front = format!(
        r#"
[[listeners]]
name = "front"
address = "127.0.0.1:0"
protocol = "http"

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "h1"
cluster = "b-h1"
match = {{ path_prefix = "/h1" }}

[[virtual_hosts.routes]]
name = "h2"
cluster = "b-h2"
match = {{ path_prefix = "/h2" }}
{clusters}
{log}
"#,
        log = access_log_config(&log),
    );
    let a = Proxy::start(&front, driver, 2);
    let port = a.listener("front").port();
    for path in ["/h1", "/h2"] {
        let out = curl([format!("http://127.0.0.1:{port}{path}")]);
        assert_eq!(out.stdout_text(), "app", "{path}: {}", out.stderr);
    }
    let entries = access_log(&log, 2);
    for path in ["/h1", "/h2"] {
        let entry = entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no entry for {path}: {entries:?}"));
        assert_eq!(entry["upstream_peer_principal"], NODE, "{entry}");
        assert_eq!(entry["security_policy"], "none", "{entry}");
        assert!(entry.get("downstream_peer_principal").is_none(), "{entry}");
    }
    // The front proxy reports as the source (a plaintext listener): the upstream's verified
    // SPIFFE ID is the destination principal, and the call left over mutual TLS.
    let metrics = a.metrics();
    for cluster in ["b-h1", "b-h2"] {
        assert_eq!(
            metrics.value(
                "istio_requests_total",
                &[
                    ("destination_service", cluster),
                    ("reporter", "source"),
                    ("destination_principal", NODE),
                    ("source_principal", "unknown"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ),
            1.0,
            "{cluster}"
        );
    }
}

/// A Python `ssl` client with SVID `client` on the tcp listener at `address`: it sends `hello`,
/// prints `echoed` once the echo is back (or `closed` if the proxy closed first), then on a
/// line on stdin waits up to 3 s and prints `closed` if the connection ended, else `open`.
fn tls_client(
    pki: &Pki,
    address: SocketAddr,
    client: &str,
) -> (Child, BufReader<std::process::ChildStdout>) {
    const SCRIPT: &str = r#"
import socket, ssl, sys
host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
def ended(s):
    try:
        return s.recv(100) == b""
    except socket.timeout:
        return False
    except (OSError, ssl.SSLError):
        return True
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="localhost")
s.settimeout(10)
try:
    s.sendall(b"hello")
    got = b""
    while len(got) < 5:
        more = s.recv(5 - len(got))
        if not more:
            break
        got += more
    print("echoed" if got == b"hello" else "closed", flush=True)
except (OSError, ssl.SSLError):
    print("closed", flush=True)
sys.stdin.readline()
s.settimeout(3)
print("closed" if ended(s) else "open", flush=True)
"#;
    let mut child = Command::new(tests::python())
        .args([
            "-c",
            SCRIPT,
            "127.0.0.1",
            &address.port().to_string(),
            &pki.p("ca.pem"),
            &pki.p(&format!("{client}.crt")),
            &pki.p(&format!("{client}.key")),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run python");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    (child, stdout)
}

fn line(stdout: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read the client's output");
    line.trim().to_owned()
}

/// The client's verdict after being told to look (`closed` or `open`).
fn finish(mut child: Child, mut stdout: BufReader<std::process::ChildStdout>) -> String {
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(b"go\n");
    }
    let verdict = line(&mut stdout);
    let _ = child.wait();
    verdict
}

fn tcp_config(pki: &Pki, echo: SocketAddr, principals: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "db"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
{tls}

[[clusters]]
name = "echo"
endpoints = ["{echo}"]

[[authorization_policies]]
name = "db-clients"
action = "allow"
listeners = ["db"]
rules = [{{ from = [{{ principals = [{principals}] }}] }}]
"#,
        tls = mtls(pki),
    )
}

fn a_tcp_mtls_listener_closes_the_wrong_identity_and_a_reload_revokes_an_open_one(driver: Driver) {
    let pki = pki();
    let echo = Upstream::echo();
    let both = r#""cluster.local/ns/shop/sa/web", "cluster.local/ns/shop/sa/api""#;
    let proxy = Proxy::start(&tcp_config(&pki, echo.address(), both), driver, 2);
    let address = proxy.listener("db");
    // The wrong identity is closed at connect, before anything reaches the echo server.
    let (child, mut out) = tls_client(&pki, address, "ops");
    assert_eq!(line(&mut out), "closed", "ops is not a db client");
    assert_eq!(finish(child, out), "closed");
    // Two allowed identities hold open connections; a reload revokes one of them.
    let (web, mut web_out) = tls_client(&pki, address, "web");
    assert_eq!(line(&mut web_out), "echoed");
    let (api, mut api_out) = tls_client(&pki, address, "api");
    assert_eq!(line(&mut api_out), "echoed");
    proxy.reload_with_sighup(&tcp_config(
        &pki,
        echo.address(),
        r#""cluster.local/ns/shop/sa/api""#,
    ));
    assert_eq!(
        finish(web, web_out),
        "closed",
        "web's principal was revoked"
    );
    assert_eq!(finish(api, api_out), "open", "api's principal still passes");
    assert_eq!(proxy.stats().listener_counter("db", "authz_revoked"), 1);
    // A listener that requires verified client certificates reports its connections as mTLS,
    // by the client's SPIFFE ID. The refused connection (ops) never reached the upstream: it is
    // counted by ringmesh_authz_denied_total, not as an opened Istio TCP connection.
    let metrics = proxy.metrics();
    for principal in [WEB, API] {
        assert_eq!(
            metrics.sum(
                "istio_tcp_connections_opened_total",
                &[
                    ("listener", "db"),
                    ("source_principal", principal),
                    ("connection_security_policy", "mutual_tls")
                ],
            ),
            1.0,
            "{principal}"
        );
    }
    // And a new connection from web is refused.
    let (child, mut out) = tls_client(&pki, address, "web");
    assert_eq!(line(&mut out), "closed");
    assert_eq!(finish(child, out), "closed");
}
