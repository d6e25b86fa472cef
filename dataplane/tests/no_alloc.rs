//! The per-request work of routing and load balancing allocates nothing once warmed up.
//!
//! A test binary of its own, because it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use config_schema::LbPolicy;
use dataplane::routing::{self, H1Request, MatchScratch, RouteAction};
use dataplane::upstream::{Balancer, HashOn, LbState};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the only addition is a
// thread-local counter with a const initialiser and no destructor, which never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const CONFIG: &str = r#"
    [[listeners]]
    name = "web"
    address = "127.0.0.1:0"
    protocol = "http"

    [[clusters]]
    name = "a"
    endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
    [[clusters]]
    name = "b"
    endpoints = ["127.0.0.1:3"]

    [[virtual_hosts]]
    name = "api"
    domains = ["api.example.com", "*.api.example.com"]
    routes = [
        { name = "exact", match = { path_exact = "/health" }, direct_response = { status = 200 } },
        { name = "user", match = { path_regex = "/users/[0-9]+", headers = [{ name = "x-id", regex = "[a-z]+" }] }, cluster = "a" },
        { name = "user-any", match = { path_regex = "/users/.*" }, cluster = "b" },
        { name = "search", match = { path_prefix = "/search", query = [{ name = "q", regex = "[a-z ]+" }] }, cluster = "a" },
        { name = "split", match = { path_prefix = "/api/v1" }, weighted_clusters = [{ cluster = "a", weight = 90 }, { cluster = "b", weight = 10 }], rewrite = { prefix = "/v1" } },
        { name = "old", match = { path_prefix = "/old" }, redirect = { path = "/new" } },
        { name = "big-hdr", match = { path_exact = "/big", headers = [{ name = "x-id", regex = "[a-z]*a[a-z]{16}" }] }, cluster = "a" },
        { name = "big-1", match = { path_regex = "/blow/[a-z]*a[a-z]{16}" }, cluster = "a" },
        { name = "big-2", match = { path_regex = "/blow/x" }, cluster = "a" },
        { name = "root", cluster = "b" },
    ]
"#;

#[test]
fn routing_and_picking_do_not_allocate() {
    let config = config_schema::parse(CONFIG).expect("valid config");
    let clusters: HashMap<&str, usize> = [("a", 0), ("b", 1)].into_iter().collect();
    let routes = routing::compile(&config.spec, &clusters).expect("compiles");
    let table = routes.listener("web").expect("web");

    // The "big" patterns are too large to prebuild, so they exercise the engines with caches.
    let requests: [(&str, &str, &[httparse::Header<'_>]); 10] = [
        (
            "GET",
            "/big",
            &[httparse::Header {
                name: "x-id",
                value: b"abbbbbbbbbbbbbbbbb",
            }],
        ),
        ("GET", "/blow/abbbbbbbbbbbbbbbb", &[]),
        ("GET", "/blow/x", &[]),
        ("GET", "/health", &[]),
        (
            "GET",
            "/users/42",
            &[httparse::Header {
                name: "X-Id",
                value: b"abc",
            }],
        ),
        (
            "GET",
            "/users/42",
            &[httparse::Header {
                name: "X-Id",
                value: b"123",
            }],
        ),
        ("GET", "/search?x=1&q=hello%20world", &[]),
        ("POST", "/api/v1/items/7?page=2", &[]),
        ("GET", "/old/page?a=b", &[]),
        ("GET", "/other/deep/path", &[]),
    ];
    let hosts: [&[u8]; 3] = [b"api.example.com", b"x.API.example.com:8443", b"nope"];

    let eps: Vec<(SocketAddr, u32)> = (1..=5)
        .map(|i| (format!("10.0.0.{i}:80").parse().expect("addr"), i))
        .collect();
    let balancers: Vec<Balancer> = [
        LbPolicy::RoundRobin,
        LbPolicy::WeightedRoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
        LbPolicy::Random,
    ]
    .into_iter()
    .map(|p| {
        let hash = matches!(p, LbPolicy::RingHash | LbPolicy::Maglev)
            .then(|| HashOn::Cookie((*b"sid").into()));
        Balancer::from_parts("c", p, &eps, hash).expect("balancer")
    })
    .collect();
    let states: Vec<LbState> = balancers.iter().map(|b| LbState::with_seed(b, 1)).collect();
    let source: IpAddr = "192.0.2.7".parse().expect("ip");

    let mut scratch = MatchScratch::new();
    let mut buf = Vec::with_capacity(256);
    let mut run = |rounds: usize| {
        let mut matched = 0;
        for _ in 0..rounds {
            for host in hosts {
                for (method, target, extra) in requests {
                    let mut fields = [httparse::Header {
                        name: "Host",
                        value: host,
                    }; 3];
                    fields[1] = httparse::Header {
                        name: "Cookie",
                        value: b"a=1; sid=s3",
                    };
                    let n = 2 + extra.len();
                    fields[2..n].copy_from_slice(extra);
                    let req = H1Request::new(method, target, &fields[..n]);
                    let Ok(m) = table.find(&req, &mut scratch) else {
                        continue;
                    };
                    matched += 1;
                    let random = states[0].rng().next_u64();
                    let _ = m.route.pick_cluster(random);
                    if let Some(rewrite) = &m.route.rewrite {
                        rewrite.write(req.path, req.query, &mut buf);
                    }
                    if let RouteAction::Redirect(r) = &m.route.action {
                        r.write_location("http", req.host, req.path, req.query, &mut buf);
                    }
                    for (b, state) in balancers.iter().zip(&states) {
                        let hash = b.request_hash(&req, source);
                        let endpoint = b.pick(state, hash).expect("endpoint");
                        let guard = state.start(endpoint);
                        drop(guard);
                    }
                }
            }
        }
        matched
    };
    // The counter works (so a zero below means something).
    let before = allocations();
    drop(std::hint::black_box(vec![0u8; 16]));
    assert_eq!(allocations() - before, 1);

    // Warm up: regex caches, the decode buffer and the output buffer reach their sizes.
    assert!(run(3) > 0);
    let before = allocations();
    let matched = run(200);
    let after = allocations();
    assert_eq!(
        matched,
        200 * 2 * requests.len(),
        "both known hosts route every request"
    );
    assert_eq!(
        after - before,
        0,
        "allocations during {matched} lookups and picks"
    );
}

/// Headers for the authorization input.
struct Headers;

impl dataplane::policy::authz::HeaderSource for Headers {
    fn header_value(&self, lower_name: &str) -> Option<&[u8]> {
        (lower_name == "x-user").then_some(b"alice".as_slice())
    }
}

/// Evaluating authorization policies over a request, and normalizing a path that is already
/// normal, allocate nothing.
#[test]
fn authorization_and_normal_paths_do_not_allocate() {
    use dataplane::http::normalize::{PathRules, normalize};
    use dataplane::policy::authz::{self, AuthzInput, HttpAttributes, ListenerAuthz};

    let config = config_schema::parse(
        r#"
        [[authorization_policies]]
        name = "no-admin"
        action = "deny"
        rules = [{ to = [{ paths = ["/admin*"], paths_ignore_case = true, methods = ["GET", "POST"] }] }]
        [[authorization_policies]]
        name = "office"
        action = "allow"
        rules = [
          { from = [{ ip_blocks = ["10.0.0.0/8", "2001:db8::/32"], not_principals = ["*/sa/evil"] }] },
          { when = [{ key = "request.headers[x-user]", values = ["ali*"] }] },
        ]
        [[authorization_policies]]
        name = "watch"
        action = "audit"
        rules = [{ to = [{ hosts = ["*.example.com"] }] }]
        "#,
    )
    .unwrap_or_else(|e| panic!("valid policies: {e:?}"));
    let compiled = authz::compile_all(&config.spec.authorization_policies);
    let listener = ListenerAuthz::compile("web", &compiled, None, 1).expect("policies apply");
    let headers = Headers;
    let rules = PathRules {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: config_schema::EscapedSlashes::Keep,
    };
    let mut out = Vec::new();
    let run = |n: usize, out: &mut Vec<u8>| {
        let mut allowed = 0;
        for i in 0..n {
            let path = if i % 2 == 0 {
                "/api/items/42"
            } else {
                "/Admin/x"
            };
            assert_eq!(normalize(path.as_bytes(), &rules, out), Ok(false));
            let input = AuthzInput {
                source_ip: IpAddr::from([192, 168, 0, 1]),
                remote_ip: IpAddr::from([192, 168, 0, 1]),
                principal: Some("spiffe://td/ns/shop/sa/web"),
                sni: None,
                destination_port: 8080,
                http: Some(HttpAttributes {
                    method: "GET",
                    host: "a.example.com:8080",
                    path,
                    headers: &headers,
                }),
            };
            if listener.evaluate(&input, 0).allowed {
                allowed += 1;
            }
        }
        allowed
    };
    assert_eq!(run(4, &mut out), 2);
    let before = allocations();
    let allowed = run(10_000, &mut out);
    assert_eq!(
        allocations() - before,
        0,
        "allocations during 10,000 evaluations"
    );
    assert_eq!(allowed, 5_000, "allowed by the header rule, /Admin denied");
}

/// A request view with a verified client identity, as a TLS connection's `RequestHead` gives it.
struct WithPrincipal<'a>(H1Request<'a>, &'a str);

impl routing::RequestView for WithPrincipal<'_> {
    fn method(&self) -> &[u8] {
        self.0.method()
    }
    fn host(&self) -> &[u8] {
        self.0.host()
    }
    fn path(&self) -> &[u8] {
        self.0.path()
    }
    fn query(&self) -> &[u8] {
        self.0.query()
    }
    fn header_values(&self, lower_name: &str) -> impl Iterator<Item = &[u8]> {
        self.0.header_values(lower_name)
    }
    fn source_principal(&self) -> Option<&str> {
        Some(self.1)
    }
}

/// The per-request consumers of the peer identity allocate nothing: a route lookup on
/// `source_principals`, and counting a request in a cluster's Istio series table once its row
/// exists (`istio_requests_total{source_principal}` and the histograms).
#[test]
fn peer_identity_routing_and_counting_do_not_allocate() {
    use routing::RequestView as _;
    let config = config_schema::parse(
        r#"
        [[listeners]]
        name = "web"
        address = "127.0.0.1:0"
        protocol = "http"
        [[clusters]]
        name = "a"
        endpoints = ["127.0.0.1:1"]
        [[clusters]]
        name = "b"
        endpoints = ["127.0.0.1:2"]
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "web", match = { path_prefix = "/", source_principals = ["cluster.local/ns/shop/sa/web"] }, cluster = "a" },
            { name = "shop", match = { path_prefix = "/", source_principals = ["cluster.local/ns/shop/*", "*/sa/admin"] }, cluster = "b" },
            { name = "rest", cluster = "b" },
        ]
        "#,
    )
    .expect("valid config");
    let clusters: HashMap<&str, usize> = [("a", 0), ("b", 1)].into_iter().collect();
    let routes = routing::compile(&config.spec, &clusters).expect("compiles");
    let table = routes.listener("web").expect("web");
    let series = dataplane::stats::SeriesTable::<dataplane::stats::HttpMetrics>::default();
    let mut scratch = MatchScratch::new();
    let fields = [httparse::Header {
        name: "Host",
        value: b"a.example",
    }];
    let ids = [
        "spiffe://cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local/ns/shop/sa/api",
        "spiffe://other.td/ns/ops/sa/admin",
        "spiffe://cluster.local/ns/ops/sa/x",
    ];
    let mut run = |n: usize| {
        let mut names = [0usize; 3];
        for i in 0..n {
            let id = ids[i % ids.len()];
            let principal = id.strip_prefix("spiffe://").unwrap_or(id);
            let req = WithPrincipal(H1Request::new("GET", "/x", &fields), principal);
            assert_eq!(req.source_principal(), Some(principal));
            let found = table.find(&req, &mut scratch).expect("a route");
            match &*found.route.name {
                "web" => names[0] += 1,
                "shop" => names[1] += 1,
                _ => names[2] += 1,
            }
            let key = dataplane::stats::SeriesKey {
                source_principal: dataplane::stats::principal_hash(id),
                response_code: if i % 3 == 0 { 503 } else { 200 },
                grpc_status: dataplane::stats::NO_GRPC_STATUS,
                ..Default::default()
            };
            let metrics = series.get(&key, || dataplane::stats::SeriesLabels {
                source_principal: Some(id.into()),
                ..Default::default()
            });
            metrics.requests.inc();
            metrics
                .duration
                .observe(std::time::Duration::from_micros(i as u64));
            metrics.request_bytes.observe_bytes(i as u64);
            metrics.response_bytes.observe_bytes(2 * i as u64);
        }
        names
    };
    // Warm up: every (principal, code) row is claimed (that allocates the row and its principal
    // once).
    run(24);
    let before = allocations();
    let names = run(12_000);
    assert_eq!(
        allocations() - before,
        0,
        "allocations during 12,000 lookups and counts"
    );
    assert_eq!(names, [3_000, 6_000, 3_000]);
}

/// Tracing's per-request work — reading the client's context (W3C and B3), deciding sampling,
/// rendering each attempt's headers, starting a span record — allocates nothing.
#[test]
fn trace_context_and_span_records_do_not_allocate() {
    use dataplane::trace::span::{SpanKind, SpanRecord};
    use dataplane::trace::{TraceStats, Tracer};

    let spec = config_schema::parse("[telemetry.tracing]\nsample_percent = 50.0\n")
        .expect("valid config")
        .spec
        .telemetry
        .tracing
        .expect("tracing is set");
    let stats = std::sync::Arc::new(TraceStats::new(1));
    let tracer = Tracer::new(&spec, &stats, "node").expect("no exporter to start");
    let fields: [(&str, &[u8]); 4] = [
        (
            "TraceParent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", b"a=b"),
        ("b3", b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ("X-B3-Sampled", b"0"),
    ];
    let mut state = 1u64;
    let started = std::time::Instant::now();
    let before = allocations();
    let mut written = 0usize;
    for round in 0..1_000u64 {
        let mut random = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(round);
            state
        };
        let trace = tracer.begin(fields.iter().copied(), b"request-id", &mut random);
        let none = tracer.begin(std::iter::empty(), b"another-id", &mut random);
        for outgoing in [trace.outgoing(), none.outgoing()] {
            written += outgoing.fields().map(|(_, v)| v.len()).sum::<usize>();
        }
        let span = SpanRecord::new(
            trace.trace_id,
            trace.span_id,
            trace.parent,
            SpanKind::Server,
            started,
        );
        written += usize::from(span.status);
    }
    assert_eq!(allocations() - before, 0, "tracing allocated");
    assert!(written > 0);
}
