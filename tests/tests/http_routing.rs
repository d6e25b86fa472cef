//! HTTP/1.1 routing through the real proxy: the precedence table (virtual host by Host, then
//! exact > regex > longest prefix > `/`, more conditions first), a 90/10 weighted split over
//! 10,000 requests, a header-based canary, mirroring, redirects and direct responses, path
//! rewrites, and request/response header changes. Every test runs on io_uring and on epoll.

use std::time::Duration;

use tests::http::{
    Client, HttpUpstream, Request, Response, cluster, curl, http_listener, request_bytes, route,
    virtual_host,
};
use tests::{Driver, Proxy, both_drivers};

both_drivers!(
    routing_precedence_table,
    ninety_ten_split_over_ten_thousand_requests,
    header_based_canary,
    mirroring_reaches_the_shadow_and_never_the_client,
    redirects_and_direct_responses_are_answered_locally,
    prefix_and_full_path_rewrites,
    request_and_response_header_changes,
);

/// A routing case: host, method, target, an extra header, and the route expected (None: 404).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

/// An upstream that answers 200 with the target it received as the body.
fn target_echo() -> HttpUpstream {
    HttpUpstream::start(|request: &Request| Response::ok(request.target.clone()).into())
}

/// A route to cluster `backend` that names itself in the response header `x-route`.
fn named_route(name: &str, matcher: &str) -> String {
    route(
        name,
        &format!(
            "match = {matcher}\ncluster = \"backend\"\n\
             response_headers = {{ set = {{ \"x-route\" = \"{name}\" }} }}"
        ),
    )
}

/// 26 requests, each answered by the route the precedence rules pick (or 404 when none does),
/// sent with curl as a user would; the upstream sees each target unchanged.
fn routing_precedence_table(driver: Driver) {
    let upstream = target_echo();
    let default_routes = [
        ("exact", r#"{ path_exact = "/api/v1/users/42" }"#),
        ("users-regex", r#"{ path_regex = "/api/v1/users/[0-9]+" }"#),
        ("api-v1", r#"{ path_prefix = "/api/v1/" }"#),
        ("api", r#"{ path_prefix = "/api" }"#),
        // The shorter prefix comes first in the file and still loses to the longer regex.
        ("impl-prefix", r#"{ path_prefix = "/impl" }"#),
        ("impl-regex", r#"{ path_regex = "/impl.*" }"#),
        ("h", r#"{ path_prefix = "/h" }"#),
        (
            "h-v2",
            r#"{ path_prefix = "/h", headers = [{ name = "x-version", exact = "2" }] }"#,
        ),
        ("form", r#"{ path_prefix = "/form" }"#),
        (
            "post-only",
            r#"{ path_prefix = "/form", methods = ["POST"] }"#,
        ),
        ("q", r#"{ path_exact = "/q" }"#),
        (
            "q-debug",
            r#"{ path_exact = "/q", query = [{ name = "debug", present = true }] }"#,
        ),
        ("root", r#"{ path_prefix = "/" }"#),
    ];
    let default_routes: String = default_routes
        .iter()
        .map(|(name, matcher)| named_route(name, matcher))
        .collect();
    let config = [
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host(
            "api",
            &["api.example.com"],
            &named_route("api-v2", r#"{ path_prefix = "/v2" }"#),
        ),
        virtual_host("wild", &["*.example.com"], &named_route("wild", "{}")),
        virtual_host("default", &["*"], &default_routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("web");

    let cases: &[Case] = &[
        ("svc", "GET", "/api/v1/users/42", None, Some("exact")),
        ("svc", "GET", "/api/v1/users/42?x=1", None, Some("exact")),
        ("svc", "GET", "/api/v1/users/7", None, Some("users-regex")),
        ("svc", "GET", "/api/v1/users/x", None, Some("api-v1")),
        ("svc", "GET", "/api/v1", None, Some("api-v1")),
        ("svc", "GET", "/api/v2", None, Some("api")),
        ("svc", "GET", "/apix", None, Some("root")),
        ("svc", "GET", "/impl", None, Some("impl-regex")),
        ("svc", "GET", "/impl/x", None, Some("impl-regex")),
        ("svc", "GET", "/implementation", None, Some("impl-regex")),
        ("svc", "GET", "/h", Some("x-version: 2"), Some("h-v2")),
        ("svc", "GET", "/h/deep", Some("X-Version: 2"), Some("h-v2")),
        ("svc", "GET", "/h", Some("x-version: 3"), Some("h")),
        ("svc", "GET", "/h", None, Some("h")),
        ("svc", "POST", "/form", None, Some("post-only")),
        ("svc", "GET", "/form", None, Some("form")),
        ("svc", "GET", "/q?debug=1", None, Some("q-debug")),
        ("svc", "GET", "/q?other=1", None, Some("q")),
        ("svc", "GET", "/", None, Some("root")),
        ("svc", "GET", "/anything/else", None, Some("root")),
        ("api.example.com", "GET", "/v2/users", None, Some("api-v2")),
        ("API.Example.COM:8080", "GET", "/v2", None, Some("api-v2")),
        ("api.example.com", "GET", "/other", None, None),
        (
            "www.example.com",
            "GET",
            "/api/v1/users/42",
            None,
            Some("wild"),
        ),
        ("a.b.example.com", "GET", "/", None, Some("wild")),
        ("example.com", "GET", "/api", None, Some("api")),
    ];
    assert!(cases.len() >= 15);
    for &(host, method, target, header, expected) in cases {
        let url = format!("http://{address}{target}");
        let host_header = format!("Host: {host}");
        let mut args = vec![
            "-i",
            "--path-as-is",
            "-X",
            method,
            "-H",
            host_header.as_str(),
            url.as_str(),
        ];
        if let Some(header) = header {
            args.extend(["-H", header]);
        }
        let forwarded_before = upstream.request_count();
        let response = curl(&args).response();
        let case = format!("{method} {target} (Host: {host}, {header:?})");
        match expected {
            Some(route) => {
                assert_eq!(response.status, 200, "{case}: {}", response.text());
                assert_eq!(response.header("x-route"), Some(route), "{case}");
                let requests = upstream.wait_for_requests(forwarded_before + 1);
                let seen = requests.last().expect("a request");
                assert_eq!(
                    seen.target, target,
                    "{case}: the target reached the upstream"
                );
                assert_eq!(seen.method, method, "{case}");
            }
            None => {
                assert_eq!(response.status, 404, "{case}: {}", response.text());
                assert_eq!(response.header("x-route"), None, "{case}");
                assert_eq!(
                    upstream.request_count(),
                    forwarded_before,
                    "{case}: nothing forwarded"
                );
            }
        }
    }
}

/// 10,000 requests through a 90/10 split: every one answered by one of the two clusters, and
/// the canary's share within six standard deviations of 10 % (binomial: σ = √(n·p·(1−p)) = 30,
/// so 1,000 ± 180; a correct proxy lands outside it with probability below 10⁻⁸). The
/// proxy's per-cluster counters agree with what the upstreams saw.
fn ninety_ten_split_over_ten_thousand_requests(driver: Driver) {
    const REQUESTS: usize = 10_000;
    const CLIENTS: usize = 4;
    const CANARY_SHARE: f64 = 0.10;
    let stable = HttpUpstream::named("stable");
    let canary = HttpUpstream::named("canary");
    let config = [
        http_listener("web", ""),
        cluster("stable", &[stable.address()], ""),
        cluster("canary", &[canary.address()], ""),
        virtual_host(
            "default",
            &["*"],
            &route(
                "split",
                r#"weighted_clusters = [{ cluster = "stable", weight = 90 }, { cluster = "canary", weight = 10 }]"#,
            ),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("web");

    let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                scope.spawn(move || {
                    let mut client = Client::connect(address);
                    let request =
                        request_bytes("GET", &format!("/split/{c}"), "split.test", &[], b"");
                    let (mut to_stable, mut to_canary) = (0, 0);
                    for _ in 0..REQUESTS / CLIENTS {
                        let response = client.request(&request);
                        assert_eq!(response.status, 200, "{}", response.text());
                        match response.text().as_str() {
                            "stable" => to_stable += 1,
                            "canary" => to_canary += 1,
                            other => panic!("answered by {other:?}"),
                        }
                    }
                    (to_stable, to_canary)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect()
    });
    let to_stable: usize = counts.iter().map(|c| c.0).sum();
    let to_canary: usize = counts.iter().map(|c| c.1).sum();
    assert_eq!(to_stable + to_canary, REQUESTS);
    assert_eq!(stable.request_count(), to_stable, "requests seen by stable");
    assert_eq!(canary.request_count(), to_canary, "requests seen by canary");

    let n = REQUESTS as f64;
    let sigma = (n * CANARY_SHARE * (1.0 - CANARY_SHARE)).sqrt();
    let deviation = (to_canary as f64 - n * CANARY_SHARE).abs();
    assert!(
        deviation <= 6.0 * sigma,
        "canary got {to_canary} of {REQUESTS}: {:.1} σ from the 10 % share",
        deviation / sigma
    );

    let metrics = proxy.metrics();
    for (name, count) in [("stable", to_stable), ("canary", to_canary)] {
        let labels = [("destination_service", name), ("response_code", "200")];
        assert_eq!(
            metrics.value("istio_requests_total", &labels),
            count as f64,
            "istio_requests_total for {name}"
        );
        assert_eq!(
            metrics.value(
                "ringmesh_cluster_upstream_requests_total",
                &[("cluster", name)]
            ),
            count as f64
        );
    }
}

/// Requests with `x-canary: always` go to the canary, all others (header absent or another
/// value) to the stable cluster: a route with a header condition beats the plain one.
fn header_based_canary(driver: Driver) {
    let stable = HttpUpstream::named("stable");
    let canary = HttpUpstream::named("canary");
    let routes = [
        route(
            "stable",
            "match = { path_prefix = \"/\" }\ncluster = \"stable\"",
        ),
        route(
            "canary",
            "match = { path_prefix = \"/\", headers = [{ name = \"x-canary\", exact = \"always\" }] }\n\
             cluster = \"canary\"",
        ),
    ]
    .concat();
    let config = [
        http_listener("web", ""),
        cluster("stable", &[stable.address()], ""),
        cluster("canary", &[canary.address()], ""),
        virtual_host("default", &["*"], &routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("x-canary", "always")], "canary"),
        (&[("X-Canary", "always")], "canary"),
        (&[], "stable"),
        (&[("x-canary", "never")], "stable"),
        (&[("x-canary", "Always")], "stable"),
    ];
    const EACH: usize = 20;
    for (headers, expected) in cases {
        for i in 0..EACH {
            let response = client.request(&request_bytes(
                "GET",
                &format!("/item/{i}"),
                "shop",
                headers,
                b"",
            ));
            assert_eq!(response.status, 200);
            assert_eq!(response.text(), *expected, "headers {headers:?}");
        }
    }
    assert_eq!(canary.request_count(), 2 * EACH);
    assert_eq!(stable.request_count(), 3 * EACH);
    for request in canary.requests() {
        assert!(
            request.header("x-canary").is_some_and(|v| v == "always"),
            "the canary got {}",
            request.head_text()
        );
    }
}

/// Every request is copied to the shadow cluster with `-shadow` appended to the Host, body
/// included; the shadow answers slowly with an error, and none of that reaches the client, which
/// gets every primary answer unchanged.
fn mirroring_reaches_the_shadow_and_never_the_client(driver: Driver) {
    const REQUESTS: usize = 20;
    let primary = HttpUpstream::start(|request: &Request| {
        Response::ok(format!("primary:{}", request.body.len()))
            .with_header("x-from", "primary")
            .into()
    });
    let shadow = HttpUpstream::start(|_: &Request| {
        // Slow, failing and loud: a client that saw any of this would notice.
        std::thread::sleep(Duration::from_millis(200));
        Response::new(500)
            .with_header("x-from", "shadow")
            .with_body("SHADOW ANSWER")
            .into()
    });
    let config = [
        http_listener("web", ""),
        cluster("primary", &[primary.address()], ""),
        cluster("shadow", &[shadow.address()], ""),
        virtual_host(
            "default",
            &["*"],
            &route(
                "mirrored",
                "cluster = \"primary\"\nmirror = { cluster = \"shadow\", percent = 100 }",
            ),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let mut client = Client::connect(proxy.listener("web"));

    let body = tests::client::payload(10_000, 21);
    for i in 0..REQUESTS {
        let request = if i % 2 == 0 {
            request_bytes("GET", &format!("/m/{i}?q=1"), "mirror.test:8080", &[], b"")
        } else {
            request_bytes("POST", &format!("/m/{i}"), "mirror.test:8080", &[], &body)
        };
        let response = client.request(&request);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.headers_named("x-from"), vec!["primary"]);
        let expected = if i % 2 == 0 { 0 } else { body.len() };
        assert_eq!(response.text(), format!("primary:{expected}"));
    }

    let mirrored = shadow.wait_for_requests(REQUESTS);
    assert_eq!(mirrored.len(), REQUESTS, "one copy per request, no more");
    let mut targets: Vec<String> = mirrored.iter().map(|r| r.target.clone()).collect();
    targets.sort();
    let mut sent: Vec<String> = primary
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    sent.sort();
    assert_eq!(targets, sent, "the shadow got the same targets");
    for request in &mirrored {
        assert_eq!(request.header("host"), Some("mirror.test-shadow:8080"));
        if request.method == "POST" {
            assert!(request.body == body, "the mirrored body differs");
        }
    }
    for request in primary.requests() {
        assert_eq!(request.header("host"), Some("mirror.test:8080"));
    }
}

/// Redirects (scheme and host change, path change with the query kept) and direct responses
/// are answered by the proxy on a kept-alive connection, HEAD without a body; nothing reaches
/// the upstream.
fn redirects_and_direct_responses_are_answered_locally(driver: Driver) {
    let upstream = target_echo();
    let routes = [
        route(
            "to-https",
            "match = { path_prefix = \"/secure\" }\n\
             redirect = { scheme = \"https\", host = \"secure.example.com\" }",
        ),
        route(
            "moved",
            "match = { path_exact = \"/old\" }\nredirect = { status = 308, path = \"/new\" }",
        ),
        route(
            "ping",
            "match = { path_exact = \"/ping\" }\ndirect_response = { status = 200, body = \"pong\\n\" }",
        ),
        route(
            "maintenance",
            "match = { path_prefix = \"/maintenance\" }\n\
             direct_response = { status = 503, body = '{\"down\":true}', content_type = \"application/json\" }",
        ),
        route("rest", "cluster = \"backend\""),
    ]
    .concat();
    let config = [
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host("default", &["*"], &routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let address = proxy.listener("web");

    // curl, as a user would see it (curl does not follow redirects unless asked).
    let redirect = curl([
        "-i".to_owned(),
        "-H".to_owned(),
        "Host: www.test".to_owned(),
        format!("http://{address}/secure/page?a=1"),
    ])
    .response();
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.header("location"),
        Some("https://secure.example.com/secure/page?a=1")
    );

    // The same connection serves them all: local answers without a body to read keep it open.
    let mut client = Client::connect(address);
    let moved = client.request(&request_bytes("GET", "/old?x=y", "www.test:8080", &[], b""));
    assert_eq!(moved.status, 308);
    assert_eq!(
        moved.header("location"),
        Some("http://www.test:8080/new?x=y")
    );
    let pong = client.get("www.test", "/ping");
    assert_eq!((pong.status, pong.text().as_str()), (200, "pong\n"));
    assert_eq!(pong.header("content-type"), Some("text/plain"));
    let head = client.request(&request_bytes("HEAD", "/ping", "www.test", &[], b""));
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5"));
    assert!(head.body.is_empty());
    let down = client.get("www.test", "/maintenance/now");
    assert_eq!(down.status, 503);
    assert_eq!(down.text(), "{\"down\":true}");
    assert_eq!(down.header("content-type"), Some("application/json"));
    assert_eq!(upstream.request_count(), 0, "local answers forward nothing");
    // And the connection still forwards.
    let forwarded = client.get("www.test", "/after");
    assert_eq!(
        (forwarded.status, forwarded.text().as_str()),
        (200, "/after")
    );
}

/// Prefix rewrites replace whole segments and keep the query; a full-path rewrite replaces the
/// path and keeps the query.
fn prefix_and_full_path_rewrites(driver: Driver) {
    let upstream = target_echo();
    let routes = [
        route(
            "api",
            "match = { path_prefix = \"/api/\" }\ncluster = \"backend\"\nrewrite = { prefix = \"/v2/\" }",
        ),
        route(
            "strip",
            "match = { path_prefix = \"/strip\" }\ncluster = \"backend\"\nrewrite = { prefix = \"/\" }",
        ),
        route(
            "health",
            "match = { path_exact = \"/healthz\" }\ncluster = \"backend\"\n\
             rewrite = { full_path = \"/internal/health\" }",
        ),
        route("rest", "cluster = \"backend\""),
    ]
    .concat();
    let config = [
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host("default", &["*"], &routes),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let mut client = Client::connect(proxy.listener("web"));
    let cases = [
        ("/api/users?x=1", "/v2/users?x=1"),
        ("/api/a/b/c", "/v2/a/b/c"),
        ("/api", "/v2/"),
        ("/apiary", "/apiary"),
        ("/strip/a/b?k=v", "/a/b?k=v"),
        ("/strip", "/"),
        ("/healthz?verbose=1", "/internal/health?verbose=1"),
        ("/healthz", "/internal/health"),
        ("/healthz/x", "/healthz/x"),
    ];
    for (sent, expected) in cases {
        let response = client.get("rewrite.test", sent);
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), expected, "rewrite of {sent}");
    }
}

/// Route header changes: on the request, `add` keeps the client's value, `set` replaces it,
/// `remove` drops it; the same on the response, where `server` can be removed too.
fn request_and_response_header_changes(driver: Driver) {
    let upstream = HttpUpstream::start(|_: &Request| {
        Response::ok("body")
            .with_header("x-resp-set", "upstream")
            .with_header("x-resp-remove", "secret")
            .with_header("server", "in-test")
            .with_header("x-resp-added", "upstream")
            .with_header("x-resp-keep", "k")
            .into()
    });
    let changes = "request_headers = { add = { \"x-added\" = \"a\" }, set = { \"x-set\" = \"proxy\" }, \
                   remove = [\"x-remove\"] }\n\
                   response_headers = { add = { \"x-resp-added\" = \"b\" }, set = { \"x-resp-set\" = \"proxy\" }, \
                   remove = [\"x-resp-remove\", \"server\"] }";
    let config = [
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host(
            "default",
            &["*"],
            &route("mutate", &format!("cluster = \"backend\"\n{changes}")),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    let mut client = Client::connect(proxy.listener("web"));
    let response = client.request(&request_bytes(
        "GET",
        "/",
        "headers.test",
        &[
            ("x-added", "client"),
            ("X-Set", "client"),
            ("x-remove", "secret"),
            ("x-keep", "k"),
        ],
        b"",
    ));
    assert_eq!(response.status, 200);
    let request = upstream.wait_for_requests(1).remove(0);
    assert_eq!(request.headers_named("x-added"), vec!["client", "a"]);
    assert_eq!(request.headers_named("x-set"), vec!["proxy"]);
    assert!(
        request.headers_named("x-remove").is_empty(),
        "{}",
        request.head_text()
    );
    assert_eq!(request.headers_named("x-keep"), vec!["k"]);

    assert_eq!(response.headers_named("x-resp-set"), vec!["proxy"]);
    assert!(response.headers_named("x-resp-remove").is_empty());
    assert!(response.headers_named("server").is_empty());
    assert_eq!(
        response.headers_named("x-resp-added"),
        vec!["upstream", "b"]
    );
    assert_eq!(response.headers_named("x-resp-keep"), vec!["k"]);
    assert_eq!(response.text(), "body");
}
