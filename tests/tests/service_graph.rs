//! The service map through the real binary, on both drivers: a three-service traffic pattern,
//! then `GET /service_graph` (JSON and `?format=dot`) and `GET /ui` rendered by headless
//! Chromium.
//!
//! The pattern: three in-test upstreams behind three clusters, `catalog`, `orders` and
//! `payments` (which answers 503 to `/payments/fail`); a plaintext listener routing everything
//! to `catalog`, whose clients are the node's `source_workload` (`gateway`); an mTLS listener
//! routing `/orders` and `/payments` by prefix, with two clients presenting X.509-SVIDs made
//! here with `rcgen` (`web` over HTTP/2, `api` over HTTP/1.1, both with curl); and a tcp
//! listener to `orders`, one connection from the node's workload. Five HTTP edges and a TCP
//! one, three sources, three destinations, 5xx on one edge. Every count asserted follows from the requests
//! sent; nothing asserts a rate or a duration.
//!
//! - **JSON**: exactly the expected nodes and edges, with their request and error counts, error
//!   rates and health colours; latency present for every HTTP edge (the edge's own where the
//!   destination has one source, else the destination's); bytes for the `catalog` edge equal to
//!   its listener's counters, and unknown where a listener serves several clusters; the TCP
//!   edge's one connection and its listener's bytes.
//! - **Window**: once traffic stops, a short window empties; one more request shows as exactly
//!   one request in it, while the long window still counts everything.
//! - **DOT**: the Graphviz text parses (a small parser here) and has every node and edge, the
//!   failing edge red, the TCP edge beside the HTTP ones.
//! - **UI**: Chromium (`--headless --dump-dom`, run as root with `--no-sandbox`) runs the page's
//!   script; the DOM has every node and edge drawn in the SVG with its error rate and
//!   latencies, and a table row per edge with its counts. A screenshot goes to a temp dir
//!   (`RINGMESH_SERVICE_MAP_PNG=docs/service-map.png` writes it there: that is how the one in
//!   `docs/` was made).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::http::message::Response;
use tests::http::{HttpUpstream, curl};
use tests::pki::Pki;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(the_service_map_shows_three_services_their_clients_and_numbers);

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const GATEWAY: &str = "gateway";
const PATIENCE: Duration = Duration::from_secs(30);
/// The longest window: the whole test fits in it, so it counts everything sent.
const ALL: &str = "window=300";

/// One edge of the pattern: (source name, destination service, requests, 5xx responses).
type Expected = (&'static str, &'static str, u64, u64);

const EDGES: [Expected; 5] = [
    (GATEWAY, "catalog", 6, 0),
    (WEB, "orders", 4, 0),
    (WEB, "payments", 2, 0),
    (API, "orders", 3, 0),
    (API, "payments", 5, 2),
];

/// A CA, the proxy's server certificate (`localhost`) and the `web` and `api` client SVIDs.
fn pki() -> Pki {
    let pki = Pki::new("service graph test CA");
    pki.leaf("localhost", &["localhost"], None)
        .leaf("web", &[], Some(WEB))
        .leaf("api", &[], Some(API));
    pki
}

fn config(pki: &Pki, catalog: SocketAddr, orders: SocketAddr, payments: SocketAddr) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[telemetry]
source_workload = "{GATEWAY}"

[[listeners]]
name = "plain"
address = "127.0.0.1:0"
protocol = "http"
virtual_hosts = ["catalog"]

[[listeners]]
name = "stock"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "orders"

[[listeners]]
name = "mesh"
address = "127.0.0.1:0"
protocol = "http"
virtual_hosts = ["shop"]

[listeners.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
require_client_cert = true

[[virtual_hosts]]
name = "catalog"
domains = ["*"]

[[virtual_hosts.routes]]
cluster = "catalog"

[[virtual_hosts]]
name = "shop"
domains = ["*"]

[[virtual_hosts.routes]]
match = {{ path_prefix = "/orders" }}
cluster = "orders"

[[virtual_hosts.routes]]
match = {{ path_prefix = "/payments" }}
cluster = "payments"

[[clusters]]
name = "catalog"
endpoints = ["{catalog}"]

[[clusters]]
name = "orders"
endpoints = ["{orders}"]

[[clusters]]
name = "payments"
endpoints = ["{payments}"]
"#,
        cert = pki.p("localhost.crt"),
        key = pki.p("localhost.key"),
        ca = pki.p("ca.pem"),
    )
}

/// GETs every path in one curl run (one connection, reused) as `client` (its SVID; `None`:
/// plaintext to `address`), over `version`; the status codes in order.
fn get_all(
    pki: &Pki,
    address: SocketAddr,
    client: Option<&str>,
    version: &str,
    paths: &[&str],
) -> Vec<u16> {
    let port = address.port();
    let mut args: Vec<String> = vec![version.into(), "-w".into(), "%{http_code}\n".into()];
    let base = match client {
        Some(client) => {
            args.extend([
                "--cacert".into(),
                pki.p("ca.pem"),
                "--resolve".into(),
                format!("localhost:{port}:127.0.0.1"),
                "--cert".into(),
                pki.p(&format!("{client}.crt")),
                "--key".into(),
                pki.p(&format!("{client}.key")),
            ]);
            format!("https://localhost:{port}")
        }
        None => format!("http://127.0.0.1:{port}"),
    };
    for path in paths {
        args.extend(["-o".into(), "/dev/null".into(), format!("{base}{path}")]);
    }
    let out = curl(&args);
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    out.stdout_text()
        .lines()
        .map(|code| code.trim().parse().unwrap_or(0))
        .collect()
}

/// Sends the pattern of [`EDGES`].
fn send_pattern(pki: &Pki, proxy: &Proxy) {
    let plain = proxy.listener("plain");
    let mesh = proxy.listener("mesh");
    assert_eq!(
        get_all(pki, plain, None, "--http1.1", &["/items"; 6]),
        vec![200; 6]
    );
    // Three requests on one connection through the tcp listener: one TCP edge, one connection.
    assert_eq!(
        get_all(
            pki,
            proxy.listener("stock"),
            None,
            "--http1.1",
            &["/stock"; 3]
        ),
        vec![200; 3]
    );
    let web = get_all(
        pki,
        mesh,
        Some("web"),
        "--http2",
        &[
            "/orders/1",
            "/orders/2",
            "/payments/ok",
            "/orders/3",
            "/payments/ok",
            "/orders/4",
        ],
    );
    assert_eq!(web, vec![200; 6]);
    let api = get_all(
        pki,
        mesh,
        Some("api"),
        "--http1.1",
        &[
            "/payments/ok",
            "/orders/1",
            "/payments/fail",
            "/orders/2",
            "/payments/ok",
            "/payments/fail",
            "/orders/3",
            "/payments/ok",
        ],
    );
    assert_eq!(api, vec![200, 200, 503, 200, 200, 503, 200, 200]);
}

fn client_id(name: &str) -> String {
    format!("client:{name}")
}

fn service_id(name: &str) -> String {
    format!("service:{name}")
}

/// The map's JSON for `query`.
fn graph(proxy: &Proxy, query: &str) -> Value {
    let response = proxy.admin_get(&format!("/service_graph?{query}"));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_str(&response.body).expect("the service graph is JSON")
}

/// (source id, destination id) → edge, for the HTTP edges of `graph`.
fn http_edges(graph: &Value) -> BTreeMap<(String, String), Value> {
    graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| e["protocol"] == "http")
        .map(|e| {
            let key = (
                e["source"].as_str().unwrap_or_default().to_owned(),
                e["destination"].as_str().unwrap_or_default().to_owned(),
            );
            (key, e.clone())
        })
        .collect()
}

/// The one TCP edge of `graph`.
fn tcp_edge(graph: &Value) -> Value {
    let tcp: Vec<&Value> = graph["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| e["protocol"] == "tcp")
        .collect();
    assert_eq!(tcp.len(), 1, "{graph:#}");
    tcp[0].clone()
}

/// (source id, destination id, requests, errors) of every HTTP edge.
fn counts(graph: &Value) -> BTreeSet<(String, String, u64, u64)> {
    http_edges(graph)
        .into_iter()
        .map(|((s, d), e)| {
            let n = |f: &str| e[f].as_u64().unwrap_or(u64::MAX);
            (s, d, n("requests"), n("errors"))
        })
        .collect()
}

fn expected_counts(edges: &[Expected]) -> BTreeSet<(String, String, u64, u64)> {
    edges
        .iter()
        .map(|(s, d, n, e)| (client_id(s), service_id(d), *n, *e))
        .collect()
}

/// The error share as the map rounds it (three decimals).
fn error_rate(requests: u64, errors: u64) -> f64 {
    (errors as f64 / requests as f64 * 1000.0).round() / 1000.0
}

/// Kiali's colour for an error share: green under 0.1 %, orange under 20 %, red from there.
fn health(requests: u64, errors: u64) -> &'static str {
    let rate = errors as f64 / requests as f64;
    if rate >= 0.2 {
        "failure"
    } else if rate >= 0.001 {
        "degraded"
    } else {
        "healthy"
    }
}

fn the_service_map_shows_three_services_their_clients_and_numbers(driver: Driver) {
    let pki = pki();
    let catalog = HttpUpstream::named("catalog");
    let orders = HttpUpstream::named("orders");
    let payments = HttpUpstream::start(|request| {
        if request.path().starts_with("/payments/fail") {
            Response::new(503).with_body("payment declined").into()
        } else {
            Response::ok("paid").into()
        }
    });
    let proxy = Proxy::start(
        &config(
            &pki,
            catalog.address(),
            orders.address(),
            payments.address(),
        ),
        driver,
        2,
    );
    send_pattern(&pki, &proxy);

    // JSON: the pattern's nodes and edges, counted as sent.
    let expected = expected_counts(&EDGES);
    let map = wait_until(PATIENCE, "the map to count the pattern", || {
        let map = graph(&proxy, ALL);
        if counts(&map) == expected {
            Ok(map)
        } else {
            Err(format!("{:?}", counts(&map)))
        }
    });
    let nodes: BTreeSet<(String, String)> = map["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_owned(),
                n["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected_nodes: BTreeSet<(String, String)> = [GATEWAY, WEB, API]
        .iter()
        .map(|s| (client_id(s), "client".to_owned()))
        .chain(
            ["catalog", "orders", "payments"]
                .iter()
                .map(|d| (service_id(d), "service".to_owned())),
        )
        .collect();
    assert_eq!(nodes, expected_nodes, "{map:#}");
    assert!(
        map["window_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{map:#}"
    );
    assert_eq!(map["node"]["workload"], GATEWAY);
    let web_node = map["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == client_id(WEB)))
        .expect("the web node");
    assert_eq!(web_node["label"], "web");
    assert_eq!(web_node["namespace"], "shop");
    let edges = http_edges(&map);
    for (source, destination, requests, errors) in EDGES {
        let edge = &edges[&(client_id(source), service_id(destination))];
        let what = format!("{source} -> {destination}: {edge:#}");
        assert_eq!(
            edge["error_rate"].as_f64(),
            Some(error_rate(requests, errors)),
            "{what}"
        );
        assert_eq!(edge["health"], health(requests, errors), "{what}");
        assert!(edge["request_rate"].as_f64().unwrap_or(0.0) > 0.0, "{what}");
        let p50 = edge["p50_ms"].as_f64().expect("p50");
        let p99 = edge["p99_ms"].as_f64().expect("p99");
        assert!(0.0 <= p50 && p50 <= p99, "{what}");
        // Each edge has its own histogram and its own bytes: body bytes, from the Istio
        // series (GETs carry no request body; every answer has one of at least 4 bytes).
        assert_eq!(edge["bytes_received"].as_u64(), Some(0), "{what}");
        let least = if destination == "catalog" {
            "catalog".len()
        } else {
            "paid".len()
        };
        assert!(
            edge["bytes_sent"].as_u64().unwrap_or(0) >= requests * least as u64,
            "{what}"
        );
    }

    // The TCP edge: one connection, and its listener's bytes once the connection is over.
    wait_until(PATIENCE, "the tcp connection to end", || {
        match proxy.stats().listener_counter("stock", "closed") {
            1 => Ok(()),
            n => Err(format!("{n} closed")),
        }
    });
    let stats = proxy.stats();
    let tcp = tcp_edge(&graph(&proxy, ALL));
    assert_eq!(tcp["source"], client_id(GATEWAY), "{tcp:#}");
    assert_eq!(tcp["destination"], service_id("orders"), "{tcp:#}");
    assert_eq!(tcp["requests"], 1, "{tcp:#}");
    assert_eq!(tcp["errors"], 0, "{tcp:#}");
    assert!(tcp["p50_ms"].is_null(), "{tcp:#}");
    for counter in ["bytes_received", "bytes_sent"] {
        assert_eq!(
            tcp[counter].as_u64(),
            Some(stats.listener_counter("stock", counter)),
            "{counter}: {tcp:#}"
        );
    }
    assert!(tcp["bytes_sent"].as_u64().unwrap_or(0) >= 3 * "orders".len() as u64);

    // DOT: every node and edge, the failing edge red.
    let dot = proxy.admin_get(&format!("/service_graph?{ALL}&format=dot"));
    assert_eq!(dot.status, 200);
    let parsed = Dot::parse(&dot.body).unwrap_or_else(|e| panic!("{e}:\n{}", dot.body));
    let node_ids: BTreeSet<String> = expected_nodes.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(parsed.nodes, node_ids, "{}", dot.body);
    let dot_edges: BTreeSet<(String, String, String)> = parsed.edges.keys().cloned().collect();
    let want_edges: BTreeSet<(String, String, String)> = EDGES
        .iter()
        .map(|(s, d, _, _)| (client_id(s), service_id(d), "http".to_owned()))
        .chain([(client_id(GATEWAY), service_id("orders"), "tcp".to_owned())])
        .collect();
    assert_eq!(dot_edges, want_edges, "{}", dot.body);
    for (source, destination, requests, errors) in EDGES {
        let attributes = &parsed.edges[&(
            client_id(source),
            service_id(destination),
            "http".to_owned(),
        )];
        let colour = match health(requests, errors) {
            "failure" => "red",
            "degraded" => "orange",
            _ => "green",
        };
        assert!(
            attributes.contains(&format!("color={colour}")),
            "{attributes}"
        );
        let percent = format!("{:.1}% err", errors as f64 * 100.0 / requests as f64);
        assert!(attributes.contains(&percent), "{attributes}");
    }

    // The UI, rendered by a real browser.
    let page = proxy.admin_get("/ui");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'none'"))
    );
    let url = format!("http://{}/ui?{ALL}", proxy.admin_address());
    let browser = Chromium::new();
    let dom = browser.dump_dom(&url);
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    for (id, kind) in &expected_nodes {
        assert!(
            dom.contains(&format!("<g class=\"node {kind}\" data-id=\"{id}\">")),
            "node {id} is not drawn:\n{dom}"
        );
    }
    for (source, destination, requests, errors) in EDGES {
        let (s, d) = (client_id(source), service_id(destination));
        let drawn = element(
            &dom,
            &format!(
                "<g class=\"edge {}\" data-source=\"{s}\" data-destination=\"{d}\" data-protocol=\"http\">",
                health(requests, errors)
            ),
            "</g>",
        )
        .unwrap_or_else(|| panic!("edge {s} -> {d} is not drawn:\n{dom}"));
        let percent = format!("{:.1}%", errors as f64 * 100.0 / requests as f64);
        assert!(drawn.contains(&format!("rps, {percent} err")), "{drawn}");
        assert!(
            drawn.contains("p50 ") && drawn.contains("/ p99 "),
            "{drawn}"
        );
        let row = element(
            &dom,
            &format!("<tr data-source=\"{s}\" data-destination=\"{d}\" data-protocol=\"http\""),
            "</tr>",
        )
        .unwrap_or_else(|| panic!("no table row for {s} -> {d}:\n{dom}"));
        for (field, value) in [
            ("source", source.to_owned()),
            ("destination", destination.to_owned()),
            ("requests", requests.to_string()),
            ("errors", errors.to_string()),
        ] {
            assert!(
                row.contains(&format!("data-field=\"{field}\"")) && cell(row, field) == value,
                "{field} should be {value}: {row}"
            );
        }
        assert!(cell(row, "error_rate").ends_with(&percent), "{row}");
    }
    let (s, d) = (client_id(GATEWAY), service_id("orders"));
    let drawn = element(
        &dom,
        &format!("<g class=\"edge healthy\" data-source=\"{s}\" data-destination=\"{d}\" data-protocol=\"tcp\">"),
        "</g>",
    )
    .unwrap_or_else(|| panic!("the tcp edge is not drawn:\n{dom}"));
    assert!(
        drawn.contains(" conn/s<") && !drawn.contains("err"),
        "{drawn}"
    );
    assert!(
        drawn.contains(&format!(
            "{} B in, {} B out",
            tcp["bytes_received"], tcp["bytes_sent"]
        )),
        "{drawn}"
    );
    let row = element(
        &dom,
        &format!("<tr data-source=\"{s}\" data-destination=\"{d}\" data-protocol=\"tcp\""),
        "</tr>",
    )
    .unwrap_or_else(|| panic!("no table row for the tcp edge:\n{dom}"));
    assert_eq!(cell(row, "requests"), "1", "{row}");
    let shot = browser.screenshot(&url);
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // `docs/service-map.png` is this picture: set the variable to write it again.
    if let Some(path) = std::env::var_os("RINGMESH_SERVICE_MAP_PNG") {
        std::fs::write(path, &shot).expect("write the screenshot");
    }

    // The window: once traffic stops, a short one empties while the long one keeps it all;
    // one more request is then exactly one request in the short window.
    let short = "window=6";
    wait_until(PATIENCE, "the short window to empty", || {
        let map = graph(&proxy, short);
        match map["edges"].as_array().map(Vec::len) {
            Some(0) => Ok(()),
            _ => Err(format!("{map}")),
        }
    });
    assert_eq!(counts(&graph(&proxy, ALL)), expected);
    assert_eq!(
        get_all(&pki, proxy.listener("plain"), None, "--http1.1", &["/one"]),
        vec![200]
    );
    let expected_short = expected_counts(&[(GATEWAY, "catalog", 1, 0)]);
    wait_until(PATIENCE, "the short window to hold one request", || {
        let map = graph(&proxy, short);
        if counts(&map) == expected_short {
            Ok(())
        } else {
            Err(format!("{map}"))
        }
    });
    let mut all = EDGES;
    all[0].2 += 1;
    assert_eq!(counts(&graph(&proxy, ALL)), expected_counts(&all));
    let bad = proxy.admin_get("/service_graph?window=soon");
    assert_eq!(bad.status, 400, "{}", bad.body);
}

/// The text of the element that starts with `start`, up to its `end`.
fn element<'a>(dom: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = dom.find(start)?;
    let len = dom[from..].find(end)?;
    Some(&dom[from..from + len])
}

/// The text of the `<td data-field="field">` in a table row.
fn cell<'a>(row: &'a str, field: &str) -> &'a str {
    let Some(start) = row.find(&format!("data-field=\"{field}\"")) else {
        return "";
    };
    let rest = &row[start..];
    let open = rest.find('>').map_or(rest.len(), |i| i + 1);
    let rest = &rest[open..];
    let text = &rest[..rest.find("</td>").unwrap_or(rest.len())];
    // Drop the colour dot's `<i ...></i>`.
    text.rsplit("</i>").next().unwrap_or(text)
}

/// A DOT digraph's node ids and edges (with their attribute text), as a small parser of the
/// subset `/service_graph?format=dot` writes: `"id" [attrs];` and `"a" -> "b" [attrs];`
/// statements, one a line, inside `digraph NAME { ... }`.
struct Dot {
    nodes: BTreeSet<String>,
    /// (from, to, protocol: the first line of the label) → the attribute text.
    edges: BTreeMap<(String, String, String), String>,
}

impl Dot {
    fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .trim()
            .strip_prefix("digraph ")
            .and_then(|rest| rest.split_once('{'))
            .and_then(|(_, rest)| rest.strip_suffix('}'))
            .ok_or("not a `digraph NAME { ... }`")?;
        let mut dot = Dot {
            nodes: BTreeSet::new(),
            edges: BTreeMap::new(),
        };
        for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let line = line
                .strip_suffix(';')
                .ok_or(format!("no `;` ending {line:?}"))?;
            if !line.starts_with('"') {
                // Graph or default attributes: `rankdir=LR`, `node [...]`.
                continue;
            }
            let (first, rest) = quoted(line)?;
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix("->") {
                let (second, rest) = quoted(rest.trim_start())?;
                let attributes = attributes(rest)?;
                let protocol = attributes
                    .split_once("label=\"")
                    .and_then(|(_, label)| label.split_once("\\n"))
                    .map(|(protocol, _)| protocol.to_owned())
                    .ok_or(format!("edge {first} -> {second} has no protocol line"))?;
                dot.edges.insert((first, second, protocol), attributes);
            } else {
                attributes(rest)?;
                dot.nodes.insert(first);
            }
        }
        for (a, b, _) in dot.edges.keys() {
            if !dot.nodes.contains(a) || !dot.nodes.contains(b) {
                return Err(format!("edge {a} -> {b} names an undeclared node"));
            }
        }
        Ok(dot)
    }
}

/// A DOT quoted string at the start of `text` (with `\"` and `\\` escapes), and the rest.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let inner = text
        .strip_prefix('"')
        .ok_or(format!("expected a quoted id at {text:?}"))?;
    let mut out = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &inner[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unterminated string in {text:?}"))
}

/// The text of a `[ ... ]` attribute list (required, and the end of the statement).
fn attributes(text: &str) -> Result<String, String> {
    text.trim()
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .map(str::to_owned)
        .ok_or(format!("expected `[attributes]` in {text:?}"))
}

/// Headless Chromium with a profile of its own (tests run in parallel), run as root.
struct Chromium {
    profile: tempfile::TempDir,
}

impl Chromium {
    fn new() -> Self {
        Self {
            profile: tempfile::Builder::new()
                .prefix("ringmesh-chromium-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// The DOM after the page's script ran (a virtual-time budget lets it fetch and draw).
    fn dump_dom(&self, url: &str) -> String {
        let out = self.run(&["--dump-dom", url]);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A PNG of the page.
    fn screenshot(&self, url: &str) -> Vec<u8> {
        let file = self.profile.path().join("service-map.png");
        let arg = format!("--screenshot={}", file.display());
        self.run(&["--window-size=1100,1100", "--hide-scrollbars", &arg, url]);
        std::fs::read(&file).expect("Chromium wrote the screenshot")
    }

    /// Runs Chromium to completion (at most `PATIENCE` x 2), returning its standard output.
    fn run(&self, args: &[&str]) -> Vec<u8> {
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        let mut child = Command::new(tests::tool("chromium"))
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--virtual-time-budget=5000",
                &profile,
            ])
            .args(args)
            .env("HOME", self.profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            out
        });
        let errors = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stderr.read_to_string(&mut out);
            out
        });
        let deadline = Instant::now() + PATIENCE * 2;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chromium") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium did not finish: {}",
                    errors.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = reader.join().expect("stdout reader");
        let log = errors.join().unwrap_or_default();
        assert!(status.success(), "chromium failed ({status}): {log}");
        out
    }
}
