//! How long does the per-request route lookup take — Host → virtual host → route, the exact call
//! the proxy makes (`RouteTable::find` on an `H1Request` view with a warmed `MatchScratch`) — and
//! how does it grow from 10 to 1 000 to 10 000 routes in one virtual host, for exact, prefix,
//! regex and mixed route sets (mixed: 40 % prefix, 40 % exact, 10 % regex, 10 % prefix plus a
//! header condition)? Also: the Host lookup alone with 1 000 virtual hosts.
//!
//! Each iteration looks up the next of 256 pre-built requests that hit routes spread over the
//! table (plus a few that fall through to `/`), so caches see a realistic spread rather than one
//! hot key. Run with `cargo bench -p perf --bench route_match`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use config_schema::{ConfigSpec, HeaderMatchSpec, RouteMatchSpec, RouteSpec, VirtualHostSpec};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dataplane::routing::{self, H1Request, MatchScratch, RouteTable};

const BASE: &str = r#"
    [[listeners]]
    name = "web"
    address = "127.0.0.1:0"
    protocol = "http"

    [[clusters]]
    name = "a"
    endpoints = ["127.0.0.1:1"]
"#;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Exact,
    Prefix,
    Regex,
    PrefixHeader,
}

#[derive(Clone, Copy, Debug)]
enum Mix {
    Exact,
    Prefix,
    Regex,
    Mixed,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Exact => "exact",
            Mix::Prefix => "prefix",
            Mix::Regex => "regex",
            Mix::Mixed => "mixed",
        }
    }

    fn kind(self, i: usize) -> Kind {
        match self {
            Mix::Exact => Kind::Exact,
            Mix::Prefix => Kind::Prefix,
            Mix::Regex => Kind::Regex,
            Mix::Mixed => match i % 10 {
                0..=3 => Kind::Prefix,
                4..=7 => Kind::Exact,
                8 => Kind::Regex,
                _ => Kind::PrefixHeader,
            },
        }
    }
}

fn route(i: usize, kind: Kind) -> RouteSpec {
    let mut matcher = RouteMatchSpec::default();
    match kind {
        Kind::Exact => matcher.path_exact = Some(format!("/svc{i}/v1/items")),
        Kind::Prefix => matcher.path_prefix = Some(format!("/svc{i}/v1")),
        Kind::Regex => matcher.path_regex = Some(format!("/svc{i}/v1/items/[0-9]+")),
        Kind::PrefixHeader => {
            matcher.path_prefix = Some(format!("/svc{i}/v1"));
            matcher.headers = vec![HeaderMatchSpec {
                name: "x-tenant".into(),
                exact: Some(format!("t{i}")),
                ..Default::default()
            }];
        }
    }
    RouteSpec {
        matcher,
        cluster: Some("a".into()),
        ..Default::default()
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<RouteSpec>) -> VirtualHostSpec {
    VirtualHostSpec {
        name: name.into(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        routes,
        rate_limit: None,
    }
}

fn compile(spec: &ConfigSpec) -> Arc<RouteTable> {
    let clusters: HashMap<&str, usize> = [("a", 0)].into_iter().collect();
    let routes = routing::compile(spec, &clusters).expect("compiles");
    Arc::clone(routes.listener("web").expect("web"))
}

fn base() -> ConfigSpec {
    config_schema::parse(BASE).expect("valid").spec
}

/// A request kept alive for the whole benchmark (leaked: benchmark setup only).
struct Request {
    method: &'static str,
    target: &'static str,
    headers: &'static [httparse::Header<'static>],
}

impl Request {
    fn new(host: &str, target: String, extra: Option<(&'static str, String)>) -> Self {
        let leak = |s: String| -> &'static [u8] { Box::leak(s.into_boxed_str()).as_bytes() };
        let mut headers = vec![
            httparse::Header {
                name: "Host",
                value: leak(host.to_owned()),
            },
            httparse::Header {
                name: "User-Agent",
                value: b"curl/8.5.0",
            },
            httparse::Header {
                name: "Accept",
                value: b"*/*",
            },
            httparse::Header {
                name: "Cookie",
                value: b"session=abcdef0123456789; theme=dark",
            },
            httparse::Header {
                name: "X-Request-Id",
                value: b"3f1e5d2c-9a8b-4c7d-8e6f-0a1b2c3d4e5f",
            },
        ];
        if let Some((name, value)) = extra {
            headers.push(httparse::Header {
                name,
                value: leak(value),
            });
        }
        Request {
            method: "GET",
            target: Box::leak(target.into_boxed_str()),
            headers: Box::leak(headers.into_boxed_slice()),
        }
    }

    fn view(&self) -> H1Request<'static> {
        H1Request::new(self.method, self.target, self.headers)
    }
}

/// 256 requests over routes spread through `0..n` (a fixed LCG), every 16th one a miss.
fn requests(n: usize, mix: Mix) -> Vec<Request> {
    let mut x: u64 = 12345;
    (0..256)
        .map(|j| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % n;
            let host = "api.example.com:8080";
            if j % 16 == 15 {
                return Request::new(host, "/static/app.js".into(), None);
            }
            match mix.kind(i) {
                Kind::Exact => Request::new(host, format!("/svc{i}/v1/items"), None),
                Kind::Prefix => Request::new(host, format!("/svc{i}/v1/items/7?page=2"), None),
                Kind::Regex => Request::new(host, format!("/svc{i}/v1/items/12345"), None),
                Kind::PrefixHeader => Request::new(
                    host,
                    format!("/svc{i}/v1/orders"),
                    Some(("X-Tenant", format!("t{i}"))),
                ),
            }
        })
        .collect()
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for mix in [Mix::Exact, Mix::Prefix, Mix::Regex, Mix::Mixed] {
        for n in [10, 1_000, 10_000] {
            let mut spec = base();
            let mut routes: Vec<RouteSpec> = (0..n).map(|i| route(i, mix.kind(i))).collect();
            routes.push(RouteSpec {
                cluster: Some("a".into()),
                ..Default::default()
            });
            spec.virtual_hosts
                .push(vhost("api", &["api.example.com", "*.example.com"], routes));
            spec.virtual_hosts.push(vhost(
                "default",
                &["*"],
                vec![RouteSpec {
                    cluster: Some("a".into()),
                    ..Default::default()
                }],
            ));
            let table = compile(&spec);
            let requests = requests(n, mix);
            let views: Vec<H1Request<'static>> = requests.iter().map(Request::view).collect();
            let mut scratch = MatchScratch::new();
            for v in &views {
                assert!(table.find(v, &mut scratch).is_ok());
            }
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new(mix.name(), n), |b| {
                b.iter(|| {
                    let req = &views[next % views.len()];
                    next = next.wrapping_add(1);
                    let found = table.find(black_box(req), &mut scratch);
                    black_box(found.map(|m| m.route as *const _))
                })
            });
        }
    }
    group.finish();
}

fn vhost_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("vhost_lookup");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    let mut spec = base();
    let one_route = || {
        vec![RouteSpec {
            cluster: Some("a".into()),
            ..Default::default()
        }]
    };
    for i in 0..1_000 {
        let exact = format!("svc{i}.example.com");
        let suffix = format!("*.tenant{i}.example.net");
        spec.virtual_hosts
            .push(vhost(&format!("v{i}"), &[&exact, &suffix], one_route()));
    }
    spec.virtual_hosts
        .push(vhost("default", &["*"], one_route()));
    let table = compile(&spec);
    for (name, host) in [
        ("exact", "SVC517.example.com:8080"),
        ("suffix", "a.b.tenant517.example.net"),
        ("default", "unknown.example.org"),
    ] {
        let host = host.as_bytes();
        group.bench_function(name, |b| {
            b.iter(|| black_box(table.virtual_host(black_box(host)).map(|v| v as *const _)))
        });
    }
    group.finish();
}

criterion_group!(benches, route_match, vhost_lookup);
criterion_main!(benches);
