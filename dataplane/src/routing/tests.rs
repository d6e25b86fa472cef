use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use config_schema::RetryOn;

use super::*;

const CLUSTERS: &str = r#"
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
    [[clusters]]
    name = "c"
    endpoints = ["127.0.0.1:3"]
"#;

fn config(extra: &str) -> config_schema::Config {
    let text = format!("{CLUSTERS}\n{extra}");
    match config_schema::parse(&text) {
        Ok(config) => config,
        Err(errors) => panic!("invalid test config: {errors:#?}"),
    }
}

fn compile_config(extra: &str) -> RouteConfig {
    let config = config(extra);
    let clusters: HashMap<&str, usize> = config
        .spec
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    compile(&config.spec, &clusters).expect("compiles")
}

/// The table of listener "web" for a config of clusters a, b, c plus `extra`.
fn table(extra: &str) -> Arc<RouteTable> {
    Arc::clone(
        compile_config(extra)
            .listener("web")
            .expect("web is an HTTP listener"),
    )
}

/// The name of the route chosen for a request, or why none was.
fn pick(
    table: &RouteTable,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut fields = vec![httparse::Header {
        name: "Host",
        value: host.as_bytes(),
    }];
    fields.extend(headers.iter().map(|(name, value)| httparse::Header {
        name,
        value: value.as_bytes(),
    }));
    let req = H1Request::new(method, target, &fields);
    let mut scratch = MatchScratch::new();
    match table.find(&req, &mut scratch) {
        Ok(m) => Ok(m.route.name.to_string()),
        Err(NoRoute::NoVirtualHost) => Err("no virtual host".to_owned()),
        Err(NoRoute::NoRoute(vhost)) => Err(format!("no route in {vhost}")),
    }
}

fn get(table: &RouteTable, host: &str, target: &str) -> Result<String, String> {
    pick(table, "GET", host, target, &[])
}

#[test]
fn virtual_hosts_most_specific_domain_wins() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "exact"
        domains = ["api.example.com"]
        routes = [{ name = "exact", cluster = "a" }]
        [[virtual_hosts]]
        name = "short"
        domains = ["*.example.com"]
        routes = [{ name = "short", cluster = "a" }]
        [[virtual_hosts]]
        name = "long"
        domains = ["*.eu.example.com"]
        routes = [{ name = "long", cluster = "a" }]
        [[virtual_hosts]]
        name = "default"
        domains = ["*"]
        routes = [{ name = "default", cluster = "a" }]
    "#,
    );
    assert_eq!(get(&t, "api.example.com", "/").as_deref(), Ok("exact"));
    assert_eq!(get(&t, "API.Example.COM:8443", "/").as_deref(), Ok("exact"));
    assert_eq!(get(&t, "www.example.com", "/").as_deref(), Ok("short"));
    assert_eq!(get(&t, "a.b.example.com", "/").as_deref(), Ok("short"));
    assert_eq!(get(&t, "x.eu.example.com:80", "/").as_deref(), Ok("long"));
    assert_eq!(get(&t, "eu.example.com", "/").as_deref(), Ok("short"));
    assert_eq!(get(&t, "example.com", "/").as_deref(), Ok("default"));
    assert_eq!(get(&t, "", "/").as_deref(), Ok("default"));
    assert_eq!(get(&t, &"x".repeat(300), "/").as_deref(), Ok("default"));
}

#[test]
fn without_a_default_virtual_host_unknown_hosts_get_no_route() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "only"
        domains = ["only.test"]
        routes = [{ match = { path_prefix = "/api" }, cluster = "a" }]
    "#,
    );
    assert_eq!(get(&t, "other.test", "/"), Err("no virtual host".into()));
    assert_eq!(get(&t, "only.test", "/x"), Err("no route in only".into()));
    assert_eq!(get(&t, "only.test", "/api").as_deref(), Ok("only#0"));
}

#[test]
fn listeners_serve_the_virtual_hosts_they_list() {
    let routes = compile_config(
        r#"
        [[listeners]]
        name = "internal"
        address = "127.0.0.1:0"
        protocol = "auto"
        virtual_hosts = ["two"]
        [[listeners]]
        name = "db"
        address = "127.0.0.1:0"
        protocol = "tcp"
        cluster = "a"

        [[virtual_hosts]]
        name = "one"
        domains = ["*"]
        routes = [{ name = "r1", cluster = "a" }]
        [[virtual_hosts]]
        name = "two"
        domains = ["two.test"]
        routes = [{ name = "r2", cluster = "b" }]
    "#,
    );
    let web = routes.listener("web").expect("web");
    let internal = routes.listener("internal").expect("internal");
    assert!(
        routes.listener("db").is_none(),
        "tcp listeners have no routes"
    );
    assert_eq!(web.virtual_hosts().count(), 2);
    assert_eq!(get(web, "x", "/").as_deref(), Ok("r1"));
    assert_eq!(get(web, "two.test", "/").as_deref(), Ok("r2"));
    assert_eq!(get(internal, "two.test", "/").as_deref(), Ok("r2"));
    assert_eq!(get(internal, "x", "/"), Err("no virtual host".into()));
    // A virtual host served by two listeners is compiled once.
    let a = web.virtual_host(b"two.test").expect("two");
    let b = internal.virtual_host(b"two.test").expect("two");
    assert!(std::ptr::eq(a, b));
}

const PRECEDENCE: &str = r#"
    [[virtual_hosts]]
    name = "v"
    domains = ["*"]
    [[virtual_hosts.routes]]
    name = "root"
    match = { path_prefix = "/" }
    cluster = "a"
    [[virtual_hosts.routes]]
    name = "impl-prefix"
    match = { path_prefix = "/impl" }
    cluster = "a"
    [[virtual_hosts.routes]]
    name = "api-prefix"
    match = { path_prefix = "/api" }
    cluster = "a"
    [[virtual_hosts.routes]]
    name = "api-v1-prefix"
    match = { path_prefix = "/api/v1/" }
    cluster = "a"
    [[virtual_hosts.routes]]
    name = "impl-regex"
    match = { path_regex = "/impl.*" }
    cluster = "b"
    [[virtual_hosts.routes]]
    name = "users-regex"
    match = { path_regex = "/api/v1/users/[0-9]+" }
    cluster = "b"
    [[virtual_hosts.routes]]
    name = "exact"
    match = { path_exact = "/api/v1/users/42" }
    cluster = "c"
"#;

#[test]
fn exact_then_regex_then_longest_prefix_then_root() {
    let t = table(PRECEDENCE);
    assert_eq!(get(&t, "h", "/api/v1/users/42").as_deref(), Ok("exact"));
    assert_eq!(
        get(&t, "h", "/api/v1/users/7").as_deref(),
        Ok("users-regex")
    );
    assert_eq!(
        get(&t, "h", "/api/v1/users/x").as_deref(),
        Ok("api-v1-prefix")
    );
    assert_eq!(get(&t, "h", "/api/v1").as_deref(), Ok("api-v1-prefix"));
    assert_eq!(get(&t, "h", "/api/v2").as_deref(), Ok("api-prefix"));
    assert_eq!(get(&t, "h", "/other").as_deref(), Ok("root"));
    assert_eq!(get(&t, "h", "/").as_deref(), Ok("root"));
    // The query is not part of the path.
    assert_eq!(get(&t, "h", "/api/v1/users/42?x=1").as_deref(), Ok("exact"));
}

#[test]
fn a_longer_regex_shadows_a_shorter_prefix() {
    // Cilium's Ingress ordering puts regex before prefix, so `/impl` is never reached.
    let t = table(PRECEDENCE);
    assert_eq!(get(&t, "h", "/impl").as_deref(), Ok("impl-regex"));
    assert_eq!(get(&t, "h", "/impl/x").as_deref(), Ok("impl-regex"));
    assert_eq!(get(&t, "h", "/implementation").as_deref(), Ok("impl-regex"));
}

#[test]
fn prefixes_match_whole_segments() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "api", match = { path_prefix = "/api" }, cluster = "a" },
            { name = "docs-slash", match = { path_prefix = "/docs/" }, cluster = "a" },
            { name = "deep", match = { path_prefix = "/a/b/c" }, cluster = "a" },
        ]
    "#,
    );
    assert_eq!(get(&t, "h", "/api").as_deref(), Ok("api"));
    assert_eq!(get(&t, "h", "/api/").as_deref(), Ok("api"));
    assert_eq!(get(&t, "h", "/api/x/y").as_deref(), Ok("api"));
    assert_eq!(get(&t, "h", "/api?x").as_deref(), Ok("api"));
    assert_eq!(get(&t, "h", "/apix"), Err("no route in v".into()));
    assert_eq!(get(&t, "h", "/ap"), Err("no route in v".into()));
    assert_eq!(get(&t, "h", "/docs/x").as_deref(), Ok("docs-slash"));
    assert_eq!(get(&t, "h", "/docs/").as_deref(), Ok("docs-slash"));
    // A trailing slash in the configured prefix is ignored, as in Ingress and Gateway API.
    assert_eq!(get(&t, "h", "/docs").as_deref(), Ok("docs-slash"));
    assert_eq!(get(&t, "h", "/docsx"), Err("no route in v".into()));
    assert_eq!(get(&t, "h", "/a/b/c/d").as_deref(), Ok("deep"));
    assert_eq!(get(&t, "h", "/a/b"), Err("no route in v".into()));
    assert_eq!(get(&t, "h", "//api"), Err("no route in v".into()));
}

#[test]
fn ties_go_to_more_conditions_then_file_order() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "plain-1", match = { path_prefix = "/p" }, cluster = "a" },
            { name = "plain-2", match = { path_prefix = "/p" }, cluster = "a" },
            { name = "method", match = { path_prefix = "/p", methods = ["POST"] }, cluster = "a" },
            { name = "two", match = { path_prefix = "/p", headers = [{ name = "x-a", present = true }], query = [{ name = "q", present = true }] }, cluster = "a" },
            { name = "no-path", cluster = "a" },
            { name = "root", match = { path_prefix = "/", headers = [{ name = "x-root", present = true }] }, cluster = "a" },
        ]
    "#,
    );
    assert_eq!(get(&t, "h", "/p").as_deref(), Ok("plain-1"));
    assert_eq!(pick(&t, "POST", "h", "/p", &[]).as_deref(), Ok("method"));
    assert_eq!(
        pick(&t, "POST", "h", "/p?q", &[("x-a", "1")]).as_deref(),
        Ok("two")
    );
    // Root group: a route with a condition beats an earlier one without.
    assert_eq!(get(&t, "h", "/z").as_deref(), Ok("no-path"));
    assert_eq!(
        pick(&t, "GET", "h", "/z", &[("x-root", "")]).as_deref(),
        Ok("root")
    );
}

#[test]
fn failed_conditions_fall_through_in_precedence_order() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "exact-canary", match = { path_exact = "/x/y", headers = [{ name = "canary", exact = "1" }] }, cluster = "a" },
            { name = "regex-post", match = { path_regex = "/x/.*", methods = ["POST"] }, cluster = "a" },
            { name = "regex-query", match = { path_regex = "/x/[a-z]+", query = [{ name = "v", exact = "2" }] }, cluster = "a" },
            { name = "regex-any", match = { path_regex = "/x/y" }, cluster = "a" },
            { name = "prefix-hdr", match = { path_prefix = "/x/y", headers = [{ name = "h", present = true }] }, cluster = "a" },
            { name = "prefix", match = { path_prefix = "/x" }, cluster = "a" },
            { name = "root", match = { path_prefix = "/" }, cluster = "a" },
        ]
    "#,
    );
    assert_eq!(
        pick(&t, "GET", "h", "/x/y", &[("canary", "1")]).as_deref(),
        Ok("exact-canary")
    );
    assert_eq!(
        pick(&t, "POST", "h", "/x/y", &[]).as_deref(),
        Ok("regex-post")
    );
    assert_eq!(get(&t, "h", "/x/y?v=2").as_deref(), Ok("regex-query"));
    assert_eq!(get(&t, "h", "/x/y").as_deref(), Ok("regex-any"));
    assert_eq!(
        pick(&t, "GET", "h", "/x/y/z", &[("h", "")]).as_deref(),
        Ok("prefix-hdr")
    );
    assert_eq!(get(&t, "h", "/x/y/z").as_deref(), Ok("prefix"));
    assert_eq!(get(&t, "h", "/q").as_deref(), Ok("root"));
}

#[test]
fn header_conditions() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "exact", match = { path_exact = "/exact", headers = [{ name = "X-Env", exact = "canary" }] }, cluster = "a" },
            { name = "prefix", match = { path_exact = "/prefix", headers = [{ name = "user-agent", prefix = "curl/" }] }, cluster = "a" },
            { name = "regex", match = { path_exact = "/regex", headers = [{ name = "x-id", regex = "[0-9]{3}" }] }, cluster = "a" },
            { name = "present", match = { path_exact = "/present", headers = [{ name = "x-p", present = true }] }, cluster = "a" },
            { name = "absent", match = { path_exact = "/absent", headers = [{ name = "x-p", present = false }] }, cluster = "a" },
        ]
    "#,
    );
    let no = |_: &str| Err("no route in v".to_owned());
    assert_eq!(
        pick(&t, "GET", "h", "/exact", &[("x-env", "canary")]).as_deref(),
        Ok("exact")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/exact", &[("X-ENV", "canary")]).as_deref(),
        Ok("exact")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/exact", &[("x-env", "Canary")]),
        no("")
    );
    assert_eq!(pick(&t, "GET", "h", "/exact", &[]), no(""));
    // The first value counts.
    assert_eq!(
        pick(
            &t,
            "GET",
            "h",
            "/exact",
            &[("x-env", "prod"), ("x-env", "canary")]
        ),
        no("")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/prefix", &[("user-agent", "curl/8.1")]).as_deref(),
        Ok("prefix")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/prefix", &[("user-agent", "wget")]),
        no("")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/regex", &[("x-id", "123")]).as_deref(),
        Ok("regex")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/regex", &[("x-id", "1234")]),
        no(""),
        "full match"
    );
    assert_eq!(
        pick(&t, "GET", "h", "/regex", &[("x-id", "a123")]),
        no(""),
        "full match"
    );
    assert_eq!(
        pick(&t, "GET", "h", "/present", &[("x-p", "")]).as_deref(),
        Ok("present")
    );
    assert_eq!(pick(&t, "GET", "h", "/present", &[]), no(""));
    assert_eq!(
        pick(&t, "GET", "h", "/absent", &[]).as_deref(),
        Ok("absent")
    );
    assert_eq!(pick(&t, "GET", "h", "/absent", &[("X-P", "1")]), no(""));
}

#[test]
fn query_conditions_use_decoded_values() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "exact", match = { path_exact = "/exact", query = [{ name = "user name", exact = "a b/c" }] }, cluster = "a" },
            { name = "regex", match = { path_exact = "/regex", query = [{ name = "id", regex = "[a-z]+ [0-9]+" }] }, cluster = "a" },
            { name = "present", match = { path_exact = "/present", query = [{ name = "debug", present = true }] }, cluster = "a" },
            { name = "absent", match = { path_exact = "/absent", query = [{ name = "debug", present = false }] }, cluster = "a" },
        ]
    "#,
    );
    let no = || Err("no route in v".to_owned());
    assert_eq!(
        get(&t, "h", "/exact?user%20name=a%20b%2Fc").as_deref(),
        Ok("exact")
    );
    assert_eq!(
        get(&t, "h", "/exact?x=1&user%20name=a%20b/c").as_deref(),
        Ok("exact")
    );
    assert_eq!(
        get(&t, "h", "/exact?user+name=a+b/c"),
        no(),
        "+ is not decoded"
    );
    assert_eq!(get(&t, "h", "/exact?user%20name=a%20b%2Fcd"), no());
    assert_eq!(
        get(&t, "h", "/exact?user%20name=x&user%20name=a%20b%2Fc"),
        no(),
        "the first parameter counts"
    );
    assert_eq!(get(&t, "h", "/regex?id=abc%20123").as_deref(), Ok("regex"));
    assert_eq!(get(&t, "h", "/regex?id=abc%20123x"), no());
    assert_eq!(get(&t, "h", "/regex?id=abc").as_deref().ok(), None);
    assert_eq!(get(&t, "h", "/present?debug").as_deref(), Ok("present"));
    assert_eq!(
        get(&t, "h", "/present?a=1&debug=0").as_deref(),
        Ok("present")
    );
    assert_eq!(get(&t, "h", "/present?debugx=1"), no());
    assert_eq!(get(&t, "h", "/absent").as_deref(), Ok("absent"));
    assert_eq!(get(&t, "h", "/absent?debug"), no());
}

#[test]
fn methods_and_default_route_names() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "shop"
        domains = ["*"]
        routes = [
            { match = { path_prefix = "/cart", methods = ["POST", "PUT"] }, cluster = "a" },
            { match = { path_prefix = "/cart" }, cluster = "b" },
        ]
    "#,
    );
    assert_eq!(pick(&t, "PUT", "h", "/cart", &[]).as_deref(), Ok("shop#0"));
    assert_eq!(pick(&t, "POST", "h", "/cart", &[]).as_deref(), Ok("shop#0"));
    assert_eq!(pick(&t, "GET", "h", "/cart", &[]).as_deref(), Ok("shop#1"));
    assert_eq!(
        pick(&t, "post", "h", "/cart", &[]).as_deref(),
        Ok("shop#1"),
        "methods are case-sensitive"
    );
}

#[test]
fn many_regex_routes_fall_through_to_the_next_match() {
    let routes: String = (0..200)
        .map(|i| {
            format!(
                "{{ name = \"r{i}\", match = {{ path_regex = \"/s{}/.*\", headers = [{{ name = \"x\", exact = \"{i}\" }}] }}, cluster = \"a\" }},\n",
                i % 10
            )
        })
        .collect();
    let t = table(&format!(
        "[[virtual_hosts]]\nname = \"v\"\ndomains = [\"*\"]\nroutes = [\n{routes}]"
    ));
    assert_eq!(
        pick(&t, "GET", "h", "/s3/q", &[("x", "3")]).as_deref(),
        Ok("r3")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/s3/q", &[("x", "193")]).as_deref(),
        Ok("r193")
    );
    assert_eq!(
        pick(&t, "GET", "h", "/s3/q", &[("x", "194")]),
        Err("no route in v".into())
    );
}

#[test]
fn weighted_splits_come_out_in_proportion() {
    for (a, b) in [(99u32, 1u32), (90, 10), (80, 20), (1, 0)] {
        let split = WeightedClusters::new([(7, a), (9, b)]).expect("positive total");
        // An even sweep over the random space gives exact proportions.
        let n: u64 = 100_000;
        let sweep_b = (0..n)
            .filter(|i| split.pick(((i * (1u64 << 32)) / n) << 32) == 9)
            .count() as u64;
        let want = n * u64::from(b) / u64::from(a + b);
        assert!(sweep_b.abs_diff(want) <= 1, "{a}/{b}: {sweep_b} of {n}");
        // And a real random source lands within 0.5 percentage points.
        let rng = crate::upstream::rng::FastRng::with_seed(42);
        let draws = 200_000;
        let random_b = (0..draws)
            .filter(|_| split.pick(rng.next_u64()) == 9)
            .count();
        let share = random_b as f64 / draws as f64 * 100.0;
        let want = f64::from(b) / f64::from(a + b) * 100.0;
        assert!((share - want).abs() < 0.5, "{a}/{b}: got {share:.2}%");
    }
    assert!(WeightedClusters::new([(1, 0)]).is_none());
    let split = WeightedClusters::new([(1, 3), (2, 0), (3, 5)]).expect("positive");
    assert_eq!(
        split.arms().collect::<Vec<_>>(),
        vec![(1, 3), (2, 0), (3, 5)]
    );
}

#[test]
fn actions_compile_with_cluster_indices() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        [[virtual_hosts.routes]]
        name = "split"
        match = { path_prefix = "/split" }
        weighted_clusters = [{ cluster = "b", weight = 90 }, { cluster = "c", weight = 10 }]
        mirror = { cluster = "a", percent = 25 }
        [[virtual_hosts.routes]]
        name = "direct"
        match = { path_exact = "/health" }
        direct_response = { status = 200, body = "ok" }
        [[virtual_hosts.routes]]
        name = "one"
        cluster = "c"
    "#,
    );
    let route = |path: &str| {
        let req = H1Request::new("GET", path, &[]);
        let mut scratch = MatchScratch::new();
        let name = t
            .find(&req, &mut scratch)
            .expect("route")
            .route
            .name
            .clone();
        t.virtual_hosts()
            .flat_map(|v| v.routes.iter())
            .find(|r| r.name == name)
            .expect("route by name")
    };
    let split = route("/split/x");
    assert_eq!(split.pick_cluster(0), Some(1));
    assert_eq!(split.pick_cluster(u64::MAX), Some(2));
    let mirror = split.mirror.as_ref().expect("mirror");
    assert_eq!(mirror.cluster, 0);
    assert_eq!(
        mirror.share,
        Share {
            per_million: 250_000
        }
    );
    let direct = route("/health");
    assert_eq!(direct.pick_cluster(0), None);
    match &direct.action {
        RouteAction::DirectResponse(d) => {
            assert_eq!(
                (d.status, &d.body[..], &*d.content_type),
                (200, &b"ok"[..], "text/plain")
            );
        }
        other => panic!("unexpected action {other:?}"),
    }
    assert_eq!(route("/other").pick_cluster(5), Some(2));
}

#[test]
fn shares_sample_their_percentage() {
    let rng = crate::upstream::rng::FastRng::with_seed(7);
    for percent in [0.0, 1.0, 25.0, 100.0] {
        let share = Share::from_percent(percent);
        let hits = (0..100_000)
            .filter(|_| share.sample(rng.next_u64()))
            .count();
        let got = hits as f64 / 1000.0;
        assert!((got - percent).abs() < 0.5, "{percent}%: got {got}%");
    }
    assert!(Share::from_percent(100.0).sample(u64::MAX));
    assert!(!Share::from_percent(0.0).sample(0));
}

#[test]
fn redirect_locations() {
    let location = |r: Redirect, scheme: &str, host: &str, target: &str| {
        let (path, query) = split_target(target.as_bytes());
        let mut out = Vec::new();
        r.write_location(scheme, host.as_bytes(), path, query, &mut out);
        String::from_utf8(out).expect("ascii")
    };
    let redirect = |scheme: Option<&str>,
                    host: Option<&str>,
                    port: Option<u16>,
                    path: Option<&str>| Redirect {
        status: 301,
        scheme: scheme.map(Into::into),
        host: host.map(Into::into),
        port,
        path: path.map(Into::into),
    };
    // http → https: the default port of the old scheme goes, others stay.
    assert_eq!(
        location(
            redirect(Some("https"), None, None, None),
            "http",
            "a.com:80",
            "/p?q=1"
        ),
        "https://a.com/p?q=1"
    );
    assert_eq!(
        location(
            redirect(Some("https"), None, None, None),
            "http",
            "a.com:8080",
            "/p"
        ),
        "https://a.com:8080/p"
    );
    assert_eq!(
        location(
            redirect(Some("https"), None, None, None),
            "http",
            "a.com",
            "/"
        ),
        "https://a.com/"
    );
    // New host: the request's port is not carried over; a new port is, unless it is the default.
    assert_eq!(
        location(
            redirect(None, Some("b.com"), None, None),
            "http",
            "a.com:8080",
            "/p?x"
        ),
        "http://b.com/p?x"
    );
    assert_eq!(
        location(
            redirect(None, Some("b.com"), Some(9000), Some("/new")),
            "http",
            "a.com",
            "/p?x"
        ),
        "http://b.com:9000/new?x"
    );
    assert_eq!(
        location(
            redirect(Some("https"), None, Some(443), None),
            "http",
            "a.com:8080",
            "/p"
        ),
        "https://a.com/p"
    );
    // Path only: scheme, host and port kept.
    assert_eq!(
        location(
            redirect(None, None, None, Some("/login")),
            "http",
            "a.com:8080",
            "/p?next=1"
        ),
        "http://a.com:8080/login?next=1"
    );
    assert_eq!(
        location(
            redirect(None, None, None, None),
            "https",
            "[::1]:8443",
            "/p"
        ),
        "https://[::1]:8443/p"
    );
}

#[test]
fn prefix_rewrites_respect_segments_and_slashes() {
    let rewrite = |prefix: &str, replacement: &str, target: &str| {
        let rw = PathRewrite::Prefix {
            matched: super::compile::normalize_prefix(prefix).as_bytes().into(),
            replacement: replacement.as_bytes().into(),
        };
        let (path, query) = split_target(target.as_bytes());
        let mut out = Vec::new();
        rw.write(path, query, &mut out);
        String::from_utf8(out).expect("ascii")
    };
    assert_eq!(rewrite("/api", "/v2", "/api/x?q=1"), "/v2/x?q=1");
    assert_eq!(rewrite("/api", "/v2", "/api"), "/v2");
    assert_eq!(rewrite("/api", "/v2/", "/api/x"), "/v2/x");
    assert_eq!(rewrite("/api", "/v2/", "/api"), "/v2/");
    assert_eq!(rewrite("/api", "/", "/api/x"), "/x");
    assert_eq!(rewrite("/api", "/", "/api"), "/");
    assert_eq!(rewrite("/api", "/", "/api/"), "/");
    assert_eq!(rewrite("/api/", "/v2", "/api/x"), "/v2/x");
    assert_eq!(rewrite("/", "/v2", "/x/y"), "/v2/x/y");
    assert_eq!(rewrite("/", "/v2/", "/x"), "/v2/x");
    assert_eq!(rewrite("/", "/v2", "/"), "/v2");
    assert_eq!(
        rewrite("/api", "/v2", "/apix"),
        "/apix",
        "not a segment match: unchanged"
    );

    let full = PathRewrite::FullPath(b"/static/index.html".as_slice().into());
    let mut out = Vec::new();
    full.write(b"/anything", b"v=1", &mut out);
    assert_eq!(out, b"/static/index.html?v=1");
}

#[test]
fn shadow_host_follows_envoy() {
    let shadow = |host: &str| {
        let mut out = Vec::new();
        shadow_host(host.as_bytes(), &mut out);
        String::from_utf8(out).expect("ascii")
    };
    assert_eq!(shadow("foo.com"), "foo.com-shadow");
    assert_eq!(shadow("foo.com:8080"), "foo.com-shadow:8080");
    assert_eq!(shadow("cluster1"), "cluster1-shadow");
    assert_eq!(shadow("[::1]:80"), "[::1]-shadow:80");
    assert_eq!(shadow("[::1]"), "[::1]-shadow");
}

#[test]
fn route_settings_are_carried_compiled() {
    let mut config = config(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        [[virtual_hosts.routes]]
        name = "full"
        match = { path_prefix = "/api" }
        cluster = "a"
        rewrite = { prefix = "/v2" }
        request_headers = { set = { "X-Env" = "prod" }, add = { "x-extra" = "1" }, remove = ["Cookie"] }
        response_headers = { remove = ["server"] }
        timeout = "2s"
        max_request_body = "1MiB"
    "#,
    );
    // Rate limits, retries and faults are rejected by `config_schema::parse` until the HTTP path
    // acts on them (`config_schema::support`); their compilation is ready, so it is tested on a
    // spec that sets them in code.
    let rate_limit = |requests_per_second, burst| config_schema::RateLimitSpec {
        requests_per_second,
        burst,
        key: None,
    };
    let vhost = &mut config.spec.virtual_hosts[0];
    vhost.rate_limit = Some(rate_limit(100, None));
    let route = &mut vhost.routes[0];
    route.retries = Some(config_schema::RetrySpec {
        attempts: 3,
        per_try_timeout: Some("500ms".parse().expect("duration")),
        retry_on: vec![RetryOn::ServerError, RetryOn::Reset],
        retriable_status_codes: Vec::new(),
        backoff: "25ms".parse().expect("duration"),
        max_backoff: None,
    });
    route.fault = Some(config_schema::FaultSpec {
        headers: Vec::new(),
        delay: Some(config_schema::FaultDelaySpec {
            percent: 10.0,
            fixed: "1s".parse().expect("duration"),
        }),
        abort: Some(config_schema::FaultAbortSpec {
            percent: 1.5,
            status: 503,
            grpc_status: None,
        }),
    });
    route.rate_limit = Some(rate_limit(50, Some(5)));
    let clusters: HashMap<&str, usize> = [("a", 0), ("b", 1), ("c", 2)].into();
    let compiled = compile(&config.spec, &clusters).expect("compiles");
    let t = compiled.listener("web").expect("web is an HTTP listener");
    let vhost = t.virtual_host(b"x").expect("vhost");
    assert_eq!(
        vhost.rate_limit,
        Some(RateLimit {
            requests_per_second: 100,
            burst: 100,
            key: RateLimitKey::Global,
        })
    );
    let r = &vhost.routes[0];
    assert!(
        matches!(&r.rewrite, Some(PathRewrite::Prefix { matched, replacement })
        if **matched == *b"/api" && **replacement == *b"/v2")
    );
    assert_eq!(&*r.request_headers.remove, &["cookie".into()]);
    assert_eq!(r.request_headers.set[0].0.as_ref(), "x-env");
    assert_eq!(&r.request_headers.set[0].1[..], b"prod");
    assert_eq!(r.request_headers.add.len(), 1);
    assert!(r.request_headers.drops("Cookie") && r.request_headers.drops("x-env"));
    assert!(!r.request_headers.drops("x-extra"));
    assert!(!r.response_headers.is_empty());
    assert_eq!(r.timeout, Some(Duration::from_secs(2)));
    let retries = r.retries.as_ref().expect("retries");
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert!(retries.retry_on.contains(RetryOn::ServerError));
    assert!(retries.retry_on.contains(RetryOn::Reset));
    assert!(!retries.retry_on.contains(RetryOn::ConnectFailure));
    assert_eq!(retries.backoff, Duration::from_millis(25));
    let fault = r.fault.as_ref().expect("fault");
    assert_eq!(
        fault.delay,
        Some((
            Share {
                per_million: 100_000
            },
            Duration::from_secs(1)
        ))
    );
    let abort = fault.abort.as_ref().expect("abort");
    assert_eq!((abort.share.per_million, abort.status), (15_000, 503));
    assert_eq!(
        r.rate_limit,
        Some(RateLimit {
            requests_per_second: 50,
            burst: 5,
            key: RateLimitKey::Global,
        })
    );
    assert_eq!(r.max_request_body, Some(1 << 20));
    let plain = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [{ cluster = "a", timeout = "0s" }]
    "#,
    );
    let r = &plain.virtual_host(b"x").expect("vhost").routes[0];
    assert!(r.request_headers.is_empty() && r.timeout.is_none() && r.retries.is_none());
}

#[test]
fn unknown_references_are_errors_not_panics() {
    let config = config(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [{ cluster = "b" }]
    "#,
    );
    let only_a: HashMap<&str, usize> = [("a", 0)].into_iter().collect();
    let err = compile(&config.spec, &only_a).expect_err("b is unknown");
    assert_eq!(
        err,
        RouteCompileError::UnknownCluster {
            path: "virtual_hosts[0].routes[0].cluster".into(),
            cluster: "b".into()
        }
    );
    let mut spec = config.spec.clone();
    spec.virtual_hosts[0].routes[0].matcher.path_regex = Some("(".into());
    let all: HashMap<&str, usize> = [("a", 0), ("b", 1)].into_iter().collect();
    assert!(matches!(
        compile(&spec, &all),
        Err(RouteCompileError::Regex { .. })
    ));
}

#[test]
fn one_scratch_serves_tables_of_different_generations() {
    let one = table(PRECEDENCE);
    let two = table(PRECEDENCE);
    let fields = [httparse::Header {
        name: "Host",
        value: b"h",
    }];
    let req = H1Request::new("GET", "/impl/x", &fields);
    let mut scratch = MatchScratch::new();
    for _ in 0..3 {
        assert_eq!(
            &*one.find(&req, &mut scratch).expect("route").route.name,
            "impl-regex"
        );
        assert_eq!(
            &*two.find(&req, &mut scratch).expect("route").route.name,
            "impl-regex"
        );
    }
}

#[test]
fn regex_routes_are_grouped_by_literal_start() {
    use super::compile::regex_key;
    assert_eq!(regex_key("/svc1/v1/items/[0-9]+"), b"/svc1/v1/items");
    assert_eq!(regex_key("/api/(v1|v2)/x"), b"/api");
    assert_eq!(regex_key("/impl.*"), b"");
    assert_eq!(regex_key(r".*\.png"), b"");
    assert_eq!(regex_key("(?i)/API/x"), b"");
    assert_eq!(regex_key("/a/b|/a/c"), b"/a");
    assert_eq!(regex_key("/a/b|/x/c"), b"");
    assert_eq!(regex_key("/a/b?"), b"/a");
    assert_eq!(regex_key("/a/b"), b"/a");
}

#[test]
fn regex_precedence_holds_across_groups() {
    // Group "" holds /impl.* and .*\.png; group "/impl/x" holds the numbered one.
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "numbered", match = { path_regex = "/impl/x/[0-9]+" }, cluster = "a" },
            { name = "impl", match = { path_regex = "/impl.*" }, cluster = "a" },
            { name = "png", match = { path_regex = ".*\\.png", headers = [{ name = "accept", prefix = "image/" }] }, cluster = "a" },
            { name = "png-any", match = { path_regex = "/impl/x/.*\\.png" }, cluster = "a" },
        ]
    "#,
    );
    assert_eq!(get(&t, "h", "/impl/x/12").as_deref(), Ok("numbered"));
    assert_eq!(get(&t, "h", "/impl/x/y").as_deref(), Ok("impl"));
    // "png" has a condition, so it ranks first; without the header the next match is "impl".
    assert_eq!(
        pick(&t, "GET", "h", "/impl/x/a.png", &[("accept", "image/png")]).as_deref(),
        Ok("png")
    );
    assert_eq!(get(&t, "h", "/impl/x/a.png").as_deref(), Ok("impl"));
    assert_eq!(get(&t, "h", "/other/a.png"), Err("no route in v".into()));
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "v"
        domains = ["*"]
        routes = [
            { name = "impl", match = { path_regex = "/impl.*" }, cluster = "a" },
            { name = "numbered", match = { path_regex = "/impl/x/[0-9]+" }, cluster = "a" },
        ]
    "#,
    );
    assert_eq!(
        get(&t, "h", "/impl/x/12").as_deref(),
        Ok("impl"),
        "file order decides"
    );
}

#[test]
fn a_large_group_of_unanchored_regexes_still_matches() {
    // 500 patterns with no literal start all land in the root group's lazy DFA.
    let routes: String = (0..500)
        .map(|i| format!("{{ name = \"r{i}\", match = {{ path_regex = \"(/[a-z]+)+/r{i}\" }}, cluster = \"a\" }},\n"))
        .collect();
    let t = table(&format!(
        "[[virtual_hosts]]\nname = \"v\"\ndomains = [\"*\"]\nroutes = [\n{routes}]"
    ));
    assert_eq!(get(&t, "h", "/abc/def/r250").as_deref(), Ok("r250"));
    assert_eq!(get(&t, "h", "/abc/r499").as_deref(), Ok("r499"));
    assert_eq!(get(&t, "h", "/abc/r500"), Err("no route in v".into()));
    let long = format!("{}/r7", "/abcdefgh".repeat(500));
    assert_eq!(get(&t, "h", &long).as_deref(), Ok("r7"));
}

/// An HTTP/1.1 view with a verified client identity, as a TLS connection gives it.
struct WithPrincipal<'a> {
    inner: H1Request<'a>,
    principal: Option<&'a str>,
}

impl RequestView for WithPrincipal<'_> {
    fn method(&self) -> &[u8] {
        self.inner.method()
    }
    fn host(&self) -> &[u8] {
        self.inner.host()
    }
    fn path(&self) -> &[u8] {
        self.inner.path()
    }
    fn query(&self) -> &[u8] {
        self.inner.query()
    }
    fn header_values(&self, lower_name: &str) -> impl Iterator<Item = &[u8]> {
        self.inner.header_values(lower_name)
    }
    fn source_principal(&self) -> Option<&str> {
        self.principal
    }
}

#[test]
fn source_principals_match_istio_patterns_and_an_anonymous_client_matches_none() {
    let t = table(
        r#"
        [[virtual_hosts]]
        name = "shop"
        domains = ["*"]
        routes = [
            { match = { path_prefix = "/", source_principals = ["cluster.local/ns/shop/sa/web"] }, cluster = "a" },
            { match = { path_prefix = "/", source_principals = ["spiffe://cluster.local/ns/ops/*", "*/sa/admin"] }, cluster = "b" },
            { match = { path_prefix = "/", source_principals = ["*"] }, cluster = "c" },
            { match = { path_prefix = "/" }, cluster = "a" },
        ]
    "#,
    );
    let fields = [httparse::Header {
        name: "Host",
        value: b"h",
    }];
    let mut scratch = MatchScratch::new();
    let mut route = |principal: Option<&str>| {
        let req = WithPrincipal {
            inner: H1Request::new("GET", "/x", &fields),
            principal,
        };
        t.find(&req, &mut scratch)
            .map(|m| m.route.name.to_string())
            .ok()
    };
    assert_eq!(
        route(Some("cluster.local/ns/shop/sa/web")).as_deref(),
        Some("shop#0")
    );
    assert_eq!(
        route(Some("cluster.local/ns/ops/sa/x")).as_deref(),
        Some("shop#1")
    );
    assert_eq!(
        route(Some("other.td/ns/a/sa/admin")).as_deref(),
        Some("shop#1")
    );
    assert_eq!(
        route(Some("cluster.local/ns/shop/sa/api")).as_deref(),
        Some("shop#2")
    );
    assert_eq!(
        route(None).as_deref(),
        Some("shop#3"),
        "no identity: no principal route"
    );
    // A plain request view has no identity.
    assert_eq!(get(&t, "h", "/x").as_deref(), Ok("shop#3"));
}

#[test]
fn malformed_source_principal_patterns_are_refused() {
    for bad in ["", "a*b", "*a*", "spiffe://"] {
        let text = format!(
            "{CLUSTERS}\n[[virtual_hosts]]\nname = \"v\"\ndomains = [\"*\"]\n\
             routes = [{{ match = {{ path_prefix = \"/\", source_principals = [{bad:?}] }}, cluster = \"a\" }}]"
        );
        let errors = config_schema::parse(&text).expect_err(bad);
        assert!(
            format!("{errors:?}").contains("source_principals[0]"),
            "{bad:?}: {errors:?}"
        );
    }
}
