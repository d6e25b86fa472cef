//! Node mode end to end (issue 13, "Must show"): two nodes × two pods in network namespaces
//! ([`Testbed`]), one ringmesh per node namespace with its capture rules applied
//! (`ringmesh node rules --apply`), and unmodified clients and servers in the pods.
//!
//! - curl, h2load (h2c to nginx), a grpcio client and iperf3 in pod A1 reach servers in pod B1
//!   through both nodes' ringmesh, in HBONE tunnels (node A counts outbound tunnels, node B
//!   inbound ones); the same in tproxy capture mode.
//! - The link between the nodes carries only TCP to port 15008, and a capture of it holds none of
//!   the request's or the response's markers; B1 sees A1's address as its peer.
//! - A deny policy (`listeners = ["inbound"]`) on node B for A1's principal refuses A1 and counts
//!   it, while A2 (another account) passes.
//! - Plaintext from outside the mesh (node A's own namespace, which is not captured) reaches B1
//!   through node B's inbound listener while B1 is PERMISSIVE, and is refused and counted when
//!   it is STRICT by `[node] mode`, by `namespace_modes` or by the workload's `mode`.
//! - A service VIP is balanced over an endpoint on each node; same-node traffic is served
//!   without a tunnel and keeps the source pod's address.
//! - SIGKILL of node B's ringmesh leaves node A's same-node connection working, and new
//!   connections to B1 succeed once B is restarted.
//! - A reload of node B that denies A1 closes A1's open tunnelled connection (live re-check).
//!
//! The servers and most clients are sockets the test itself opens inside the pods
//! (`netns::bind`, `netns::connect`); ringmesh's admin API is on a Unix socket (the test cannot
//! reach a node namespace's loopback). Needs root and curl, h2load, nginx, iperf3, tcpdump and
//! the test virtualenv (grpcio). Fixed ports are fine: every listener is in a namespace the test
//! just made. No test asserts a duration or a rate; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tests::netns::{self, Testbed};
use tests::pki::Pki;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, ringmesh_bin, wait_until};

const TRUST_DOMAIN: &str = "cluster.local";
/// The Kubernetes namespace of every workload.
const K8S_NS: &str = "shop";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The pods' HTTP/1.1 server (the VIP's target port).
const WHO_PORT: u16 = 8080;
/// nginx, h2c.
const H2_PORT: u16 = 8081;
const ECHO_PORT: u16 = 9000;
const GRPC_PORT: u16 = 50051;
const IPERF_PORT: u16 = 5201;
/// Connect, read and write timeout of the test's own sockets.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

both_drivers!(
    pod_traffic_crosses_nodes_in_hbone_tunnels,
    the_link_carries_only_tls_on_15008_and_b1_sees_a1,
    tproxy_capture_carries_pod_traffic,
    a_denied_identity_is_refused_and_counted,
    plaintext_inbound_is_served_when_permissive_and_refused_when_strict,
    a_service_vip_is_balanced_over_both_nodes_and_same_node_needs_no_tunnel,
    killing_node_b_keeps_node_a_flows_and_new_connections_succeed_once_back,
    a_reload_that_denies_closes_the_open_tunnel,
);

/// `a1`, `a2`, `b1`, `b2`: the workload (and service account) of pod `pod` of node `node`.
fn pod_name(node: usize, pod: usize) -> String {
    format!("{}{}", ["a", "b"][node], pod + 1)
}

fn node_name(node: usize) -> String {
    format!("node-{}", ["a", "b"][node])
}

/// A1's principal as authorization policies write it.
fn principal(workload: &str) -> String {
    format!("{TRUST_DOMAIN}/ns/{K8S_NS}/sa/{workload}")
}

/// What differs between the tests' node configs.
#[derive(Debug, Clone)]
struct Settings {
    capture: &'static str,
    /// Lines added to node B's `[node]` section (`mode = "strict"`, `namespace_modes = ...`).
    node_b_lines: String,
    /// Workload B1's `mode`, when set.
    b1_mode: Option<&'static str>,
    /// Tables appended to node B's config (`[[authorization_policies]]`).
    node_b_tables: String,
}

impl Settings {
    fn redirect() -> Self {
        Settings {
            capture: "redirect",
            node_b_lines: String::new(),
            b1_mode: None,
            node_b_tables: String::new(),
        }
    }
}

/// A deny policy for `workload`'s principal, for node-mode inbound traffic.
fn deny(workload: &str) -> String {
    format!(
        "\n[[authorization_policies]]\nname = \"deny-{workload}\"\naction = \"deny\"\n\
         listeners = [\"inbound\"]\nrules = [{{ from = [{{ principals = [\"{}\"] }}] }}]\n",
        principal(workload)
    )
}

/// Node `node`'s config: the `[node]` listeners, `[identity]` with the node's SVID and one per
/// local service account, every pod as a workload (its own service account) and the service
/// `web` (the VIP, port 80 → 8080 of B1 and A2).
fn node_config(pki: &Pki, node: usize, settings: &Settings) -> String {
    let mut text = format!(
        "[node]\nname = \"{name}\"\noutbound = \"0.0.0.0:15001\"\ninbound = \"0.0.0.0:15006\"\n\
         hbone = \"0.0.0.0:15008\"\ncapture = \"{capture}\"\n{extra}\n\
         [identity]\ntrust_domain = \"{TRUST_DOMAIN}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         ca_bundle = \"{ca}\"\n",
        name = node_name(node),
        capture = settings.capture,
        extra = if node == 1 {
            settings.node_b_lines.as_str()
        } else {
            ""
        },
        cert = pki.p(&format!("{}.crt", node_name(node))),
        key = pki.p(&format!("{}.key", node_name(node))),
        ca = pki.p("ca.pem"),
    );
    for pod in 0..2 {
        let sa = pod_name(node, pod);
        text.push_str(&format!(
            "\n[[identity.service_accounts]]\nnamespace = \"{K8S_NS}\"\nservice_account = \"{sa}\"\n\
             cert = \"{}\"\nkey = \"{}\"\n",
            pki.p(&format!("sa-{sa}.crt")),
            pki.p(&format!("sa-{sa}.key")),
        ));
    }
    text.push_str(&format!(
        "\n[[services]]\nname = \"web\"\nnamespace = \"{K8S_NS}\"\naddresses = [\"{VIP}\"]\n\
         ports = [{{ port = 80, target_port = {WHO_PORT} }}]\nworkloads = [\"b1\", \"a2\"]\n"
    ));
    for n in 0..2 {
        for p in 0..2 {
            let name = pod_name(n, p);
            let mode = match (name.as_str(), settings.b1_mode) {
                ("b1", Some(mode)) => format!("mode = \"{mode}\"\n"),
                _ => String::new(),
            };
            text.push_str(&format!(
                "\n[[workloads]]\nname = \"{name}\"\nnamespace = \"{K8S_NS}\"\n\
                 addresses = [\"10.{}.0.{}\"]\nnode = \"{}\"\nservice_account = \"{name}\"\n{mode}",
                n + 1,
                p + 11,
                node_name(n),
            ));
        }
    }
    if node == 1 {
        text.push_str(&settings.node_b_tables);
    }
    text
}

/// Two nodes with two pods each and a ringmesh per node. Fields drop in order: the proxies
/// first, then the test bed (its namespaces), then the certificates.
struct Mesh {
    nodes: Vec<Proxy>,
    /// Servers started in the pods, killed and reaped when the mesh drops.
    children: std::cell::RefCell<Vec<Child>>,
    bed: Testbed,
    pki: Pki,
    driver: Driver,
}

impl Mesh {
    fn new(driver: Driver, settings: &Settings) -> Mesh {
        let mut mesh = Mesh::bare(driver);
        for node in 0..2 {
            let proxy = mesh.start_node(node, settings);
            mesh.nodes.push(proxy);
        }
        mesh
    }

    /// The test bed and certificates without ringmesh or capture: the direct veth path.
    fn bare(driver: Driver) -> Mesh {
        let bed = Testbed::new(2, 2).expect("testbed");
        let pki = Pki::new("mesh-ca");
        for node in 0..2 {
            let name = node_name(node);
            pki.leaf(
                &name,
                &[name.as_str()],
                Some(&format!(
                    "spiffe://{TRUST_DOMAIN}/ns/ringmesh-system/sa/{name}"
                )),
            );
            for pod in 0..2 {
                let sa = pod_name(node, pod);
                pki.leaf(
                    &format!("sa-{sa}"),
                    &[],
                    Some(&format!("spiffe://{TRUST_DOMAIN}/ns/{K8S_NS}/sa/{sa}")),
                );
            }
        }
        Mesh {
            nodes: Vec::new(),
            children: std::cell::RefCell::new(Vec::new()),
            bed,
            pki,
            driver,
        }
    }

    /// Starts ringmesh in node `node`'s namespace and applies its capture rules there.
    fn start_node(&self, node: usize, settings: &Settings) -> Proxy {
        let ns = self.node_ns(node);
        let proxy = Proxy::builder(&node_config(&self.pki, node, settings), self.driver)
            .netns(&ns)
            .start();
        let mut rules = Command::new(ringmesh_bin());
        rules
            .args(["node", "rules"])
            .arg(proxy.config_path())
            .arg("--apply");
        self.bed
            .run(&ns, &rules)
            .unwrap_or_else(|e| panic!("apply the rules on {}: {e}", node_name(node)));
        proxy
    }

    /// Starts `command` in namespace `ns` until the mesh drops; its stdout.
    fn spawn(&self, ns: &str, command: &Command) -> ChildStdout {
        let mut child = self
            .bed
            .spawn(ns, command)
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        let stdout = child.stdout.take().expect("a piped stdout");
        self.children.borrow_mut().push(child);
        stdout
    }

    /// [`Mesh::spawn`], its stdout read and dropped by a thread (a server that writes to a
    /// closed pipe would die).
    fn spawn_drained(&self, ns: &str, command: &Command) {
        let mut stdout = self.spawn(ns, command);
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    }

    fn node_ns(&self, node: usize) -> String {
        self.bed.node(node).namespace.clone()
    }

    fn pod_ns(&self, node: usize, pod: usize) -> String {
        self.bed.pod(node, pod).namespace.clone()
    }

    fn pod_ip(&self, node: usize, pod: usize) -> Ipv4Addr {
        self.bed.pod(node, pod).address
    }

    /// The sum of node `node`'s samples of `name` with `labels`.
    fn metric(&self, node: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.nodes[node].metrics().sum(name, labels)
    }

    fn tunnels(&self, node: usize, direction: &str) -> f64 {
        self.metric(
            node,
            "ringmesh_hbone_tunnels_opened_total",
            &[("direction", direction)],
        )
    }

    /// Waits until node `node`'s `name{labels}` is above `before`.
    fn wait_metric_above(&self, node: usize, name: &str, labels: &[(&str, &str)], before: f64) {
        wait_until(
            PATIENCE,
            format!("{} {name}{labels:?} > {before}", node_name(node)),
            || match self.metric(node, name, labels) {
                now if now > before => Ok(()),
                now => Err(format!("{now}")),
            },
        );
    }

    /// Runs `program args` in namespace `ns` under `timeout 60`; its stdout, or the error.
    fn run(&self, ns: &str, program: &str, args: &[&str]) -> std::io::Result<String> {
        let mut command = Command::new("timeout");
        command.arg("60").arg(program).args(args);
        let output = self.bed.run(ns, &command)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `curl` in pod A1-style namespace `ns`: the body, or the error (curl's exit and stderr).
    fn curl(&self, ns: &str, url: &str, extra: &[&str]) -> std::io::Result<String> {
        let mut args = vec!["-sS", "--max-time", "20", url];
        args.extend_from_slice(extra);
        self.run(ns, "curl", &args)
    }

    /// Waits until something listens on TCP `port` in namespace `ns`.
    fn wait_listening(&self, ns: &str, port: u16) {
        wait_until(PATIENCE, format!("a listener on :{port} in {ns}"), || {
            let out = self
                .run(ns, "ss", &["-Hltn", &format!("sport = :{port}")])
                .map_err(|e| e.to_string())?;
            if out.trim().is_empty() {
                Err("none".into())
            } else {
                Ok(())
            }
        });
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for child in self.children.get_mut().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === Servers and clients inside the pods ===

/// An HTTP/1.1 server in namespace `ns` on `WHO_PORT` answering every request with
/// `<name> <peer ip> <marker>` and closing the connection.
fn who_server(ns: &str, name: &str, marker: &str) {
    let listener = netns::bind(ns, SocketAddr::from(([0, 0, 0, 0], WHO_PORT))).expect("bind");
    let (name, marker) = (name.to_owned(), marker.to_owned());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (name, marker) = (name.clone(), marker.clone());
            std::thread::spawn(move || answer_who(conn, &name, &marker));
        }
    });
}

fn answer_who(mut conn: TcpStream, name: &str, marker: &str) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let peer = conn
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let body = format!("{name} {peer} {marker}\n");
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// An echo server in namespace `ns` on `ECHO_PORT`: every connection gets its bytes back, and a
/// FIN for its FIN.
fn echo_server(ns: &str) {
    let listener = netns::bind(ns, SocketAddr::from(([0, 0, 0, 0], ECHO_PORT))).expect("bind");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// One `GET /` from namespace `ns` to `target`: the body of a 200, or why not (a connection
/// closed without an answer gives an error naming the bytes received).
fn get(ns: &str, target: SocketAddr) -> Result<String, String> {
    let mut conn = netns::connect(ns, target, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    conn.write_all(b"GET / HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes)
        .map_err(|e| format!("read after {} bytes: {e}", bytes.len()))?;
    let text = String::from_utf8_lossy(&bytes);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("no 200 answer: {text:?}")),
    }
}

/// Sends `line` on `conn` and reads it back.
fn echo_line(conn: &mut TcpStream, line: &str) -> Result<(), String> {
    conn.write_all(line.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; line.len()];
    conn.read_exact(&mut back)
        .map_err(|e| format!("read: {e}"))?;
    if back == line.as_bytes() {
        Ok(())
    } else {
        Err(format!("got {:?}", String::from_utf8_lossy(&back)))
    }
}

/// A target `ip:port`.
fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// nginx in namespace `ns` on `H2_PORT`, h2c with prior knowledge, answering `b1 h2`.
fn h2_nginx(mesh: &Mesh, ns: &str, dir: &std::path::Path) {
    let d = dir.display();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 512; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
          fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
          server {{\n  listen {H2_PORT} http2;\n  location / {{ return 200 \"b1 h2\\n\"; }}\n }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), config).expect("write nginx.conf");
    let mut command = Command::new(tests::tool("nginx"));
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    mesh.spawn_drained(ns, &command);
    mesh.wait_listening(ns, H2_PORT);
}

/// A grpcio server (`server PORT`, prints `ready`) or client (`client IP:PORT`: 20 unary calls
/// of 25 kB each way, prints `ok 20`) on a generic handler, so no stubs are generated.
const GRPC_SCRIPT: &str = r#"
import sys
from concurrent import futures
import grpc

if sys.argv[1] == "server":
    def unary(request, context):
        return b"b1:" + request
    handler = grpc.method_handlers_generic_handler(
        "ringmesh.node.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("0.0.0.0:%s" % sys.argv[2])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
else:
    with grpc.insecure_channel(sys.argv[2], options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary("/ringmesh.node.Echo/Unary")
        for i in range(20):
            payload = (b"%d:" % i) * 5000
            reply = call(payload, timeout=20)
            if reply != b"b1:" + payload:
                raise SystemExit("call %d: a different reply" % i)
    print("ok 20")
"#;

// === The tests ===

/// curl, h2load, grpcio and iperf3 from A1 reach B1 on the other node, each through HBONE
/// tunnels that both nodes count.
fn pod_traffic_crosses_nodes_in_hbone_tunnels(driver: Driver) {
    let mesh = Mesh::new(driver, &Settings::redirect());
    let mut mutual_tls = 0.0;
    let mut outbound = mesh.tunnels(0, "outbound");
    let mut inbound = mesh.tunnels(1, "inbound");
    let mut check_tunnels = |what: &str| {
        mesh.wait_metric_above(
            0,
            "ringmesh_hbone_tunnels_opened_total",
            &[("direction", "outbound")],
            outbound,
        );
        mesh.wait_metric_above(
            1,
            "ringmesh_hbone_tunnels_opened_total",
            &[("direction", "inbound")],
            inbound,
        );
        outbound = mesh.tunnels(0, "outbound");
        inbound = mesh.tunnels(1, "inbound");
        // Node B labels what it served from a tunnel as mutual TLS, as Istio does.
        mesh.wait_metric_above(
            1,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")],
            mutual_tls,
        );
        mutual_tls = mesh.metric(
            1,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")],
        );
        eprintln!("{what}: tunnels out {outbound}, in {inbound}");
    };
    a1_reaches_b1_with_every_tool(&mesh, &mut check_tunnels);
}

/// The control for the tests above: on the direct veth path (no ringmesh, no capture) the same
/// tools work, and a capture of the link holds the plaintext markers and port 8080, so the
/// assertions on the link are able to fail.
#[test]
fn without_ringmesh_the_tools_work_and_the_link_carries_plaintext() {
    let mesh = Mesh::bare(Driver::Uring);
    a1_reaches_b1_with_every_tool(&mesh, &mut |_| {});

    let (a1, b1_ip) = (mesh.pod_ns(0, 0), mesh.pod_ip(1, 0));
    let marker = format!("PLAINMARKER{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("link0.pcap");
    let capture = mesh
        .bed
        .capture(&mesh.node_ns(0), "link0", "ip", &file)
        .expect("tcpdump on link0");
    mesh.curl(&a1, &format!("http://{b1_ip}:{WHO_PORT}/{marker}"), &[])
        .expect("curl from A1 to B1");
    let (raw, packets) = capture.finish().expect("stop tcpdump");
    assert!(
        raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the direct path's capture lacks the marker: {packets:#?}"
    );
    assert!(
        packets.iter().any(|p| p.contains(&format!(".{WHO_PORT}"))),
        "{packets:#?}"
    );
}

/// curl, h2load, grpcio and iperf3 from A1 to servers in B1 (the who server is started here);
/// `after(tool)` runs after each.
fn a1_reaches_b1_with_every_tool(mesh: &Mesh, after: &mut dyn FnMut(&str)) {
    let (a1, b1) = (mesh.pod_ns(0, 0), mesh.pod_ns(1, 0));
    let (a1_ip, b1_ip) = (mesh.pod_ip(0, 0), mesh.pod_ip(1, 0));
    who_server(&b1, "b1", "-");

    // curl, HTTP/1.1.
    let body = mesh
        .curl(&a1, &format!("http://{b1_ip}:{WHO_PORT}/"), &[])
        .expect("curl from A1 to B1");
    assert_eq!(body.trim(), format!("b1 {a1_ip} -"), "B1's answer");
    after("curl");

    // h2load, h2c with prior knowledge, to nginx.
    let nginx_dir = tempfile::tempdir().expect("tempdir");
    h2_nginx(mesh, &b1, nginx_dir.path());
    let out = mesh
        .run(
            &a1,
            "h2load",
            &[
                "-n",
                "200",
                "-c",
                "2",
                "-m",
                "10",
                &format!("http://{b1_ip}:{H2_PORT}/"),
            ],
        )
        .expect("h2load from A1 to B1");
    assert!(
        out.contains("200 succeeded, 0 failed"),
        "h2load did not succeed:\n{out}"
    );
    after("h2load");

    // grpcio, unary calls over h2c.
    let mut server = Command::new(tests::python());
    server.args(["-c", GRPC_SCRIPT, "server", &GRPC_PORT.to_string()]);
    let grpc_stdout = mesh.spawn(&b1, &server);
    let mut line = String::new();
    BufReader::new(grpc_stdout)
        .read_line(&mut line)
        .expect("read the grpc server's readiness");
    assert_eq!(line.trim(), "ready", "the grpc server did not start");
    let out = mesh
        .run(
            &a1,
            &tests::python().display().to_string(),
            &["-c", GRPC_SCRIPT, "client", &format!("{b1_ip}:{GRPC_PORT}")],
        )
        .expect("grpc client from A1 to B1");
    assert_eq!(out.trim(), "ok 20", "grpc client");
    after("grpc");

    // iperf3, 32 MiB.
    mesh.spawn_drained(
        &b1,
        Command::new(tests::tool("iperf3")).args(["-s", "-p", &IPERF_PORT.to_string()]),
    );
    mesh.wait_listening(&b1, IPERF_PORT);
    let out = mesh
        .run(
            &a1,
            "iperf3",
            &[
                "-c",
                &b1_ip.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-n",
                "32M",
                "-J",
            ],
        )
        .expect("iperf3 from A1 to B1");
    let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J is JSON");
    let bytes = |side: &str| {
        report["end"][side]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {side} bytes in iperf3's report: {out}"))
    };
    // The receiver's sum stops with the sender's last write, so the bytes still in flight then
    // are not in it: it is only checked to be non-zero.
    assert!(bytes("sum_sent") >= 32 << 20, "{out}");
    assert!(bytes("sum_received") > 0, "{out}");
    after("iperf3");
}

/// While curl sends a request with a marker and B1 answers with another, the link between the
/// nodes carries only TCP to or from port 15008, and none of the markers; B1 sees A1's address.
fn the_link_carries_only_tls_on_15008_and_b1_sees_a1(driver: Driver) {
    let mesh = Mesh::new(driver, &Settings::redirect());
    let (a1, b1) = (mesh.pod_ns(0, 0), mesh.pod_ns(1, 0));
    let (a1_ip, b1_ip) = (mesh.pod_ip(0, 0), mesh.pod_ip(1, 0));
    let id = std::process::id();
    let request_marker = format!("REQUESTMARKER{id}x{}", driver.flag());
    let response_marker = format!("RESPONSEMARKER{id}x{}", driver.flag());
    who_server(&b1, "b1", &response_marker);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("link0.pcap");
    let capture = mesh
        .bed
        .capture(&mesh.node_ns(0), "link0", "ip", &file)
        .expect("tcpdump on link0");
    let body = mesh
        .curl(
            &a1,
            &format!("http://{b1_ip}:{WHO_PORT}/{request_marker}"),
            &["-H", &format!("x-marker: {request_marker}")],
        )
        .expect("curl from A1 to B1");
    let (raw, packets) = capture.finish().expect("stop tcpdump");

    assert_eq!(
        body.trim(),
        format!("b1 {a1_ip} {response_marker}"),
        "B1 saw A1's address as its peer"
    );
    assert!(!packets.is_empty(), "the capture of link0 is empty");
    for packet in &packets {
        assert!(
            packet.contains(".15008 >") || packet.contains(".15008:"),
            "a packet on the link is not to or from port 15008: {packet}\nall: {packets:#?}"
        );
    }
    for marker in [&request_marker, &response_marker] {
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the capture of link0 holds the plaintext marker {marker}"
        );
    }
}

/// tproxy capture: A1 reaches B1 through a tunnel and A2 on its own node, both keeping A1's
/// address.
fn tproxy_capture_carries_pod_traffic(driver: Driver) {
    let settings = Settings {
        capture: "tproxy",
        ..Settings::redirect()
    };
    let mesh = Mesh::new(driver, &settings);
    let (a1, a2, b1) = (mesh.pod_ns(0, 0), mesh.pod_ns(0, 1), mesh.pod_ns(1, 0));
    let a1_ip = mesh.pod_ip(0, 0);
    who_server(&b1, "b1", "-");
    who_server(&a2, "a2", "-");

    let outbound = mesh.tunnels(0, "outbound");
    let body = mesh
        .curl(
            &a1,
            &format!("http://{}:{WHO_PORT}/", mesh.pod_ip(1, 0)),
            &[],
        )
        .expect("curl from A1 to B1");
    assert_eq!(body.trim(), format!("b1 {a1_ip} -"));
    mesh.wait_metric_above(
        0,
        "ringmesh_hbone_tunnels_opened_total",
        &[("direction", "outbound")],
        outbound,
    );
    let body = get(&a1, at(mesh.pod_ip(0, 1), WHO_PORT)).expect("A1 to A2");
    assert_eq!(body.trim(), format!("a2 {a1_ip} -"));
}

/// Node B denies A1's principal: A1 gets no answer from B1 and node B counts the denial on the
/// hbone listener; A2 (another service account) is served.
fn a_denied_identity_is_refused_and_counted(driver: Driver) {
    let settings = Settings {
        node_b_tables: deny("a1"),
        ..Settings::redirect()
    };
    let mesh = Mesh::new(driver, &settings);
    let (a1, a2, b1) = (mesh.pod_ns(0, 0), mesh.pod_ns(0, 1), mesh.pod_ns(1, 0));
    let b1_ip = mesh.pod_ip(1, 0);
    who_server(&b1, "b1", "-");
    let url = format!("http://{b1_ip}:{WHO_PORT}/");

    let denied = mesh.metric(1, "ringmesh_authz_denied_total", &[("listener", "hbone")]);
    let refused = mesh.curl(&a1, &url, &[]);
    assert!(refused.is_err(), "A1 was served: {refused:?}");
    mesh.wait_metric_above(
        1,
        "ringmesh_authz_denied_total",
        &[("listener", "hbone")],
        denied,
    );

    let body = mesh.curl(&a2, &url, &[]).expect("A2 is allowed");
    assert_eq!(body.trim(), format!("b1 {} -", mesh.pod_ip(0, 1)));
}

/// Plaintext from node A's namespace (outside the mesh, not captured by node A) to B1 arrives at
/// node B's inbound listener: served with the client's address while B1 is PERMISSIVE, closed
/// without an answer and counted (`reason="strict"`) when B1 is STRICT by `[node] mode`, by
/// `namespace_modes`, or by its workload `mode` (each applied by a reload of node B).
fn plaintext_inbound_is_served_when_permissive_and_refused_when_strict(driver: Driver) {
    let mesh = Mesh::new(driver, &Settings::redirect());
    let node_a = mesh.node_ns(0);
    let b1_ip = mesh.pod_ip(1, 0);
    who_server(&mesh.pod_ns(1, 0), "b1", "-");
    let target = at(b1_ip, WHO_PORT);
    let node_a_ip = mesh.bed.node(0).link_address;

    let body = get(&node_a, target).expect("plaintext to a PERMISSIVE B1 is served");
    assert_eq!(body.trim(), format!("b1 {node_a_ip} -"));
    mesh.wait_metric_above(
        1,
        "istio_tcp_connections_opened_total",
        &[("connection_security_policy", "none")],
        0.0,
    );

    let strict = [
        Settings {
            node_b_lines: "mode = \"strict\"\n".into(),
            ..Settings::redirect()
        },
        Settings {
            node_b_lines: format!("namespace_modes = {{ {K8S_NS} = \"strict\" }}\n"),
            ..Settings::redirect()
        },
        Settings {
            b1_mode: Some("strict"),
            ..Settings::redirect()
        },
    ];
    for settings in &strict {
        let config = node_config(&mesh.pki, 1, settings);
        mesh.nodes[1].reload_with_sighup(&config);
        let before = mesh.metric(1, "ringmesh_node_refused_total", &[("reason", "strict")]);
        let refused = get(&node_a, target);
        assert!(
            refused.is_err(),
            "{settings:?}: plaintext to a STRICT B1 was served: {refused:?}"
        );
        mesh.wait_metric_above(
            1,
            "ringmesh_node_refused_total",
            &[("reason", "strict")],
            before,
        );
    }

    // Back to PERMISSIVE: served again.
    let config = node_config(&mesh.pki, 1, &Settings::redirect());
    mesh.nodes[1].reload_with_sighup(&config);
    let body = get(&node_a, target).expect("plaintext to a PERMISSIVE B1 again");
    assert_eq!(body.trim(), format!("b1 {node_a_ip} -"));
}

/// The VIP's endpoints are B1 (node B) and A2 (node A): a few calls from A1 reach both. A1 to A2
/// directly is served by node A alone (no outbound tunnel) and A2 sees A1's address.
fn a_service_vip_is_balanced_over_both_nodes_and_same_node_needs_no_tunnel(driver: Driver) {
    let mesh = Mesh::new(driver, &Settings::redirect());
    let a1 = mesh.pod_ns(0, 0);
    let a1_ip = mesh.pod_ip(0, 0);
    who_server(&mesh.pod_ns(1, 0), "b1", "-");
    who_server(&mesh.pod_ns(0, 1), "a2", "-");

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let body = get(&a1, at(VIP, 80)).expect("A1 to the VIP");
        let mut words = body.split_whitespace();
        let name = words.next().unwrap_or_default().to_owned();
        assert_eq!(words.next(), Some(a1_ip.to_string().as_str()), "{body}");
        seen.insert(name);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["a2", "b1"],
        "the VIP was not balanced over both endpoints"
    );

    let before = mesh.tunnels(0, "outbound");
    let body = get(&a1, at(mesh.pod_ip(0, 1), WHO_PORT)).expect("A1 to A2");
    assert_eq!(body.trim(), format!("a2 {a1_ip} -"));
    assert_eq!(
        mesh.tunnels(0, "outbound"),
        before,
        "same-node traffic went through a tunnel"
    );
}

/// SIGKILL of node B's ringmesh: A1's open connection to A2 (same node) keeps working; once B is
/// restarted, new connections from A1 to B1 succeed.
fn killing_node_b_keeps_node_a_flows_and_new_connections_succeed_once_back(driver: Driver) {
    let mut mesh = Mesh::new(driver, &Settings::redirect());
    let a1 = mesh.pod_ns(0, 0);
    echo_server(&mesh.pod_ns(0, 1));
    who_server(&mesh.pod_ns(1, 0), "b1", "-");
    let b1 = at(mesh.pod_ip(1, 0), WHO_PORT);

    let mut same_node =
        netns::connect(&a1, at(mesh.pod_ip(0, 1), ECHO_PORT), IO_TIMEOUT).expect("A1 to A2");
    echo_line(&mut same_node, "before\n").expect("A1-A2 before");
    get(&a1, b1).expect("A1 to B1 before");

    mesh.nodes[1].signal(Signal::SIGKILL);
    mesh.nodes[1].wait_exit(PATIENCE);
    echo_line(&mut same_node, "while node b is down\n").expect("A1-A2 while B is down");

    let restarted = mesh.start_node(1, &Settings::redirect());
    mesh.nodes[1] = restarted;
    let body = wait_until(PATIENCE, "A1 to reach B1 after node B came back", || {
        get(&a1, b1)
    });
    assert_eq!(body.trim(), format!("b1 {} -", mesh.pod_ip(0, 0)));
    echo_line(&mut same_node, "after\n").expect("A1-A2 after");
}

/// An open A1 → B1 connection through a tunnel is closed once node B reloads a policy that denies
/// A1 (the live re-check), while A2's open connection to B1 (another account) keeps working.
fn a_reload_that_denies_closes_the_open_tunnel(driver: Driver) {
    let mesh = Mesh::new(driver, &Settings::redirect());
    let a1 = mesh.pod_ns(0, 0);
    echo_server(&mesh.pod_ns(1, 0));
    let b1 = at(mesh.pod_ip(1, 0), ECHO_PORT);
    let mut conn = netns::connect(&a1, b1, IO_TIMEOUT).expect("A1 to B1");
    echo_line(&mut conn, "hello\n").expect("A1-B1 echo");
    let mut other = netns::connect(&mesh.pod_ns(0, 1), b1, IO_TIMEOUT).expect("A2 to B1");
    echo_line(&mut other, "hello\n").expect("A2-B1 echo");

    let settings = Settings {
        node_b_tables: deny("a1"),
        ..Settings::redirect()
    };
    mesh.nodes[1].reload_with_sighup(&node_config(&mesh.pki, 1, &settings));
    conn.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("read timeout");
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 64];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!(
                "unexpected bytes on the revoked connection: {:?}",
                &buf[..n]
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "the revoked tunnel is still open"
        );
    }
    echo_line(&mut other, "still here\n").expect("A2's tunnel survives the reload");
}
