//! The Istio-style table test of the evaluator: each case is a set of policies (TOML, as an
//! operator writes them), a request or connection, and the expected verdict.

use super::*;
use config_schema::ConfigSpec;

fn parse(text: &str) -> ConfigSpec {
    match config_schema::parse(text) {
        Ok(config) => config.spec,
        Err(errors) => panic!("test policies are valid: {errors:?}"),
    }
}

/// Headers for a case: `(lower-case name, value)`.
struct Headers(&'static [(&'static str, &'static str)]);

impl HeaderSource for Headers {
    fn header_value(&self, lower_name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| *n == lower_name)
            .map(|(_, v)| v.as_bytes())
    }
}

/// A request (or connection, `http: false`) of a case.
#[derive(Clone, Copy)]
struct Req {
    ip: &'static str,
    principal: Option<&'static str>,
    sni: Option<&'static str>,
    port: u16,
    http: bool,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const GET: Req = Req {
    ip: "10.1.2.3",
    principal: None,
    sni: None,
    port: 8080,
    http: true,
    method: "GET",
    host: "api.example.com",
    path: "/",
    headers: &[],
};

const TCP: Req = Req { http: false, ..GET };

fn listener(policies: &str) -> Option<ListenerAuthz> {
    let spec = parse(policies);
    let compiled = compile_all(&spec.authorization_policies);
    ListenerAuthz::compile("web", &compiled, None, 1)
}

/// `Some(name)`: allowed by/denied by that policy; `None`: no deciding policy.
fn check(policies: &str, req: Req) -> (bool, Option<String>, Option<String>) {
    let Some(authz) = listener(policies) else {
        return (true, None, None);
    };
    let headers = Headers(req.headers);
    let input = AuthzInput {
        source_ip: req.ip.parse().expect("test address"),
        remote_ip: req.ip.parse().expect("test address"),
        principal: req.principal,
        sni: req.sni,
        destination_port: req.port,
        http: req.http.then_some(HttpAttributes {
            method: req.method,
            host: req.host,
            path: req.path,
            headers: &headers,
        }),
    };
    let verdict = authz.evaluate(&input, 0);
    assert_eq!(verdict.allowed, authz.passes(&input), "passes agrees");
    (
        verdict.allowed,
        verdict.policy.map(str::to_owned),
        verdict.audit.map(str::to_owned),
    )
}

fn allowed(policies: &str, req: Req) -> bool {
    check(policies, req).0
}

const ALICE: Option<&str> = Some("spiffe://cluster.local/ns/shop/sa/alice");
const BOB: Option<&str> = Some("spiffe://cluster.local/ns/bank/sa/bob");

#[test]
fn table() {
    // (name, policies, request, allowed)
    let cases: &[(&str, &str, Req, bool)] = &[
        ("no policy allows", "", GET, true),
        (
            "deny matches",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["/admin"] }] }]"#,
            Req {
                path: "/admin",
                ..GET
            },
            false,
        ),
        (
            "deny does not match: allowed (no allow policy)",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["/admin"] }] }]"#,
            Req {
                path: "/public",
                ..GET
            },
            true,
        ),
        (
            "deny over allow",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{}]
               [[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ methods = ["DELETE"] }] }]"#,
            Req {
                method: "DELETE",
                ..GET
            },
            false,
        ),
        (
            "allow present, none matching: denied",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ methods = ["GET"] }] }]"#,
            Req {
                method: "POST",
                ..GET
            },
            false,
        ),
        (
            "allow present and matching",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ methods = ["GET"] }] }]"#,
            GET,
            true,
        ),
        (
            "one of two allow policies matches",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ methods = ["POST"] }] }]
               [[authorization_policies]]
               name = "b"
               action = "allow"
               rules = [{ to = [{ paths = ["/"] }] }]"#,
            GET,
            true,
        ),
        (
            "audit has no effect",
            r#"[[authorization_policies]]
               name = "au"
               action = "audit"
               rules = [{}]"#,
            GET,
            true,
        ),
        (
            "audit does not count as an allow policy",
            r#"[[authorization_policies]]
               name = "au"
               action = "audit"
               rules = [{ to = [{ methods = ["POST"] }] }]"#,
            GET,
            true,
        ),
        // Empty rules.
        (
            "allow without rules matches nothing: denied",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow""#,
            GET,
            false,
        ),
        (
            "deny without rules matches nothing",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny""#,
            GET,
            true,
        ),
        (
            "deny with rules = [{}] matches everything",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{}]"#,
            GET,
            false,
        ),
        (
            "allow with rules = [{}] matches everything",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{}]"#,
            TCP,
            true,
        ),
        // Principals.
        (
            "principal exact",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["cluster.local/ns/shop/sa/alice"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            true,
        ),
        (
            "principal exact, spiffe:// form",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["spiffe://cluster.local/ns/shop/sa/alice"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            true,
        ),
        (
            "principal exact, other peer",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["cluster.local/ns/shop/sa/alice"] }] }]"#,
            Req {
                principal: BOB,
                ..GET
            },
            false,
        ),
        (
            "principal prefix",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["cluster.local/ns/shop/*"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            true,
        ),
        (
            "principal suffix",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["*/sa/bob"] }] }]"#,
            Req {
                principal: BOB,
                ..GET
            },
            true,
        ),
        (
            "principal suffix, other peer",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["*/sa/bob"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            false,
        ),
        (
            "principal * = any authenticated peer",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["*"] }] }]"#,
            Req {
                principal: BOB,
                ..GET
            },
            true,
        ),
        (
            "principal * does not match a plaintext peer",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ principals = ["*"] }] }]"#,
            GET,
            false,
        ),
        (
            "not_principals matches a plaintext peer",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ not_principals = ["*"] }] }]"#,
            GET,
            false,
        ),
        (
            "not_principals does not match a listed peer",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ not_principals = ["cluster.local/ns/shop/sa/alice"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            true,
        ),
        // Namespaces.
        (
            "namespace",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ namespaces = ["shop"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            true,
        ),
        (
            "namespace, other",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ namespaces = ["shop"] }] }]"#,
            Req {
                principal: BOB,
                ..GET
            },
            false,
        ),
        (
            "namespace needs an identity",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ namespaces = ["*"] }] }]"#,
            GET,
            false,
        ),
        (
            "not_namespaces",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ not_namespaces = ["shop"] }] }]"#,
            Req {
                principal: BOB,
                ..GET
            },
            false,
        ),
        (
            "not_namespaces, listed",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ not_namespaces = ["shop"] }] }]"#,
            Req {
                principal: ALICE,
                ..GET
            },
            true,
        ),
        // IP blocks.
        (
            "ip_blocks v4",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["10.1.0.0/16"] }] }]"#,
            GET,
            false,
        ),
        (
            "ip_blocks v4, outside",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["10.2.0.0/16", "192.168.1.1"] }] }]"#,
            GET,
            true,
        ),
        (
            "ip_blocks v4 matches a v4-mapped v6 peer",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["10.1.0.0/16"] }] }]"#,
            Req {
                ip: "::ffff:10.1.2.3",
                ..GET
            },
            false,
        ),
        (
            "ip_blocks v6",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["2001:db8::/32"] }] }]"#,
            Req {
                ip: "2001:db8::7",
                ..GET
            },
            false,
        ),
        (
            "ip_blocks v6, outside",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["2001:db8::/32"] }] }]"#,
            Req {
                ip: "2001:db9::7",
                ..GET
            },
            true,
        ),
        (
            "ip_blocks /0",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["0.0.0.0/0"] }] }]"#,
            GET,
            false,
        ),
        (
            "not_ip_blocks",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ not_ip_blocks = ["10.0.0.0/8"] }] }]"#,
            GET,
            false,
        ),
        (
            "not_ip_blocks, outside",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ from = [{ not_ip_blocks = ["10.0.0.0/8"] }] }]"#,
            Req {
                ip: "127.0.0.1",
                ..GET
            },
            true,
        ),
        // Ports.
        (
            "ports",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ ports = [8080] }] }]"#,
            GET,
            true,
        ),
        (
            "ports, other",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ ports = [9090] }] }]"#,
            GET,
            false,
        ),
        (
            "not_ports",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ not_ports = [9090] }] }]"#,
            GET,
            false,
        ),
        (
            "ports work on tcp",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ ports = [8080] }] }]"#,
            TCP,
            true,
        ),
        // Methods, paths, hosts.
        (
            "not_methods",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ not_methods = ["DELETE", "PUT"] }] }]"#,
            GET,
            true,
        ),
        (
            "not_methods, listed",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ not_methods = ["DELETE", "PUT"] }] }]"#,
            Req {
                method: "PUT",
                ..GET
            },
            false,
        ),
        (
            "path prefix",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["/admin/*"] }] }]"#,
            Req {
                path: "/admin/users",
                ..GET
            },
            false,
        ),
        (
            "path suffix",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["*.php"] }] }]"#,
            Req {
                path: "/x/index.php",
                ..GET
            },
            false,
        ),
        (
            "path * (any)",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["*"] }] }]"#,
            GET,
            false,
        ),
        (
            "paths are case-sensitive by default",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["/admin"] }] }]"#,
            Req {
                path: "/ADMIN",
                ..GET
            },
            true,
        ),
        (
            "paths_ignore_case",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ paths = ["/admin*"], paths_ignore_case = true }] }]"#,
            Req {
                path: "/ADMIN/x",
                ..GET
            },
            false,
        ),
        (
            "not_paths",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ not_paths = ["/admin*"] }] }]"#,
            Req {
                path: "/admin",
                ..GET
            },
            false,
        ),
        (
            "not_paths, other path",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ not_paths = ["/admin*"] }] }]"#,
            Req {
                path: "/shop",
                ..GET
            },
            true,
        ),
        (
            "host exact, case-insensitive, port ignored",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ hosts = ["API.example.com"] }] }]"#,
            Req {
                host: "api.example.com:8080",
                ..GET
            },
            false,
        ),
        (
            "host suffix",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ hosts = ["*.example.com"] }] }]"#,
            GET,
            false,
        ),
        (
            "not_hosts",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ not_hosts = ["*.example.com"] }] }]"#,
            Req {
                host: "evil.test",
                ..GET
            },
            false,
        ),
        (
            "fields in a rule are AND'd",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["10.0.0.0/8"] }], to = [{ methods = ["POST"] }] }]"#,
            GET,
            true,
        ),
        (
            "rules are OR'd",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ methods = ["POST"] }] }, { from = [{ ip_blocks = ["10.0.0.0/8"] }] }]"#,
            GET,
            false,
        ),
        // when
        (
            "when header",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ when = [{ key = "request.headers[X-Foo]", values = ["bar*"] }] }]"#,
            Req {
                headers: &[("x-foo", "barbaz")],
                ..GET
            },
            false,
        ),
        (
            "when header absent",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ when = [{ key = "request.headers[x-foo]", values = ["*"] }] }]"#,
            GET,
            true,
        ),
        (
            "when header not_values",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ when = [{ key = "request.headers[x-foo]", not_values = ["ok"] }] }]"#,
            Req {
                headers: &[("x-foo", "nope")],
                ..GET
            },
            false,
        ),
        (
            "when sni (none yet: no match)",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ when = [{ key = "connection.sni", values = ["*.example.com"] }] }]"#,
            GET,
            false,
        ),
        (
            "when sni",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ when = [{ key = "connection.sni", values = ["*.example.com"] }] }]"#,
            Req {
                sni: Some("a.example.com"),
                ..TCP
            },
            true,
        ),
        (
            "when source.ip",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ when = [{ key = "source.ip", values = ["10.1.2.0/24"] }] }]"#,
            TCP,
            false,
        ),
        (
            "when destination.port not_values",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ when = [{ key = "destination.port", not_values = ["8080"] }] }]"#,
            GET,
            true,
        ),
        (
            "when source.namespace",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ when = [{ key = "source.namespace", values = ["bank"] }] }]"#,
            Req {
                principal: BOB,
                ..GET
            },
            true,
        ),
        // HTTP-only fields on TCP fail closed.
        (
            "tcp: allow with paths never matches",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ paths = ["*"] }] }]"#,
            TCP,
            false,
        ),
        (
            "tcp: allow with not_methods never matches",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ to = [{ not_methods = ["DELETE"] }] }]"#,
            TCP,
            false,
        ),
        (
            "tcp: allow with a header condition never matches",
            r#"[[authorization_policies]]
               name = "a"
               action = "allow"
               rules = [{ when = [{ key = "request.headers[x-a]", values = ["*"] }] }]"#,
            TCP,
            false,
        ),
        (
            "tcp: deny with methods matches",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ methods = ["DELETE"] }] }]"#,
            TCP,
            false,
        ),
        (
            "tcp: deny with hosts matches",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ to = [{ not_hosts = ["*"] }] }]"#,
            TCP,
            false,
        ),
        (
            "tcp: deny with paths still needs its other fields",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["192.168.0.0/16"] }], to = [{ paths = ["/x"] }] }]"#,
            TCP,
            true,
        ),
        (
            "tcp: deny with paths and a matching source",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["10.0.0.0/8"] }], to = [{ paths = ["/x"] }] }]"#,
            TCP,
            false,
        ),
        (
            "http: the same deny does not match another path",
            r#"[[authorization_policies]]
               name = "d"
               action = "deny"
               rules = [{ from = [{ ip_blocks = ["10.0.0.0/8"] }], to = [{ paths = ["/x"] }] }]"#,
            GET,
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (name, policies, req, want) in cases {
        if allowed(policies, *req) != *want {
            failures.push(*name);
        }
    }
    assert!(failures.is_empty(), "failing cases: {failures:#?}");
    assert!(cases.len() >= 60, "{} cases", cases.len());
}

#[test]
fn the_verdict_names_the_deciding_policy_and_audits() {
    let policies = r#"
        [[authorization_policies]]
        name = "watch"
        action = "audit"
        rules = [{ to = [{ paths = ["/admin*"] }] }]
        [[authorization_policies]]
        name = "admins"
        action = "allow"
        rules = [{ to = [{ paths = ["/admin"] }] }]
        [[authorization_policies]]
        name = "no-delete"
        action = "deny"
        rules = [{ to = [{ methods = ["DELETE"] }] }]
    "#;
    let (ok, policy, audit) = check(
        policies,
        Req {
            path: "/admin",
            ..GET
        },
    );
    assert!(ok);
    assert_eq!(policy.as_deref(), Some("admins"));
    assert_eq!(audit.as_deref(), Some("watch"));
    let (ok, policy, audit) = check(
        policies,
        Req {
            path: "/admin",
            method: "DELETE",
            ..GET
        },
    );
    assert!(!ok);
    assert_eq!(policy.as_deref(), Some("no-delete"));
    assert_eq!(audit.as_deref(), Some("watch"));
    let (ok, policy, audit) = check(policies, Req { path: "/x", ..GET });
    assert!(!ok, "an allow policy applies and none matched");
    assert_eq!(policy, None);
    assert_eq!(audit, None);
}

#[test]
fn policies_apply_to_their_listeners_and_counters_carry_over() {
    let spec = parse(
        r#"
        [[listeners]]
        name = "db"
        address = "127.0.0.1:0"
        protocol = "tcp"
        cluster = "db"
        [[clusters]]
        name = "db"
        endpoints = ["127.0.0.1:1"]
        [[authorization_policies]]
        name = "d"
        action = "deny"
        listeners = ["db"]
        rules = [{}]
    "#,
    );
    let compiled = compile_all(&spec.authorization_policies);
    assert!(ListenerAuthz::compile("web", &compiled, None, 1).is_none());
    let db = ListenerAuthz::compile("db", &compiled, None, 1).expect("applies to db");
    let input = Tracked {
        listener: "db".into(),
        peer: "10.0.0.1:5000".parse().expect("address"),
        destination_port: 5432,
        sni: None,
        principal: None,
        revoked: Signal::default(),
    };
    assert!(!db.evaluate(&input.input(), 0).allowed);
    // A passthrough connection's ClientHello name reaches `connection.sni` conditions.
    let passthrough = Tracked {
        sni: Some("db.example".into()),
        ..input
    };
    assert_eq!(passthrough.input().sni, Some("db.example"));
    let again = ListenerAuthz::compile("db", &compiled, Some(&db), 1).expect("applies");
    assert_eq!(again.policies[0].counters.slot(0).denied.get(), 1);
}

#[test]
fn the_registry_revokes_what_no_longer_passes_and_forgets_dropped_connections() {
    let registry = Registry::default();
    let tracked = |ip: &str| Tracked {
        listener: "db".into(),
        peer: format!("{ip}:4000").parse().expect("address"),
        destination_port: 5432,
        sni: None,
        principal: None,
        revoked: Signal::default(),
    };
    let a = registry.register(tracked("10.0.0.1"));
    let b = registry.register(tracked("10.0.0.2"));
    assert_eq!(registry.len(), 2);
    let revoked = registry.recheck(|t| t.peer.ip() != "10.0.0.2".parse::<IpAddr>().expect("ip"));
    assert_eq!(revoked, 1);
    assert!(!a.tracked.revoked.is_fired());
    assert!(b.tracked.revoked.is_fired());
    drop(b);
    assert_eq!(registry.len(), 1);
    let c = registry.register(tracked("10.0.0.3"));
    assert_eq!(registry.len(), 2, "the freed slot is reused");
    drop((a, c));
    assert!(registry.is_empty());
}

#[test]
fn namespaces_come_from_the_spiffe_id() {
    assert_eq!(namespace_of("spiffe://td/ns/shop/sa/a"), Some("shop"));
    assert_eq!(namespace_of("td/ns/shop/sa/a"), Some("shop"));
    assert_eq!(namespace_of("spiffe://td/sa/a"), None);
    assert_eq!(namespace_of("spiffe://td/ns/"), None);
    assert_eq!(without_port("a.example:80"), "a.example");
    assert_eq!(without_port("[::1]:80"), "[::1]");
    assert_eq!(without_port("[::1]"), "[::1]");
}

#[test]
fn a_tracked_connection_keeps_its_verified_identity_for_the_live_recheck() {
    let spec = parse(
        r#"
        [[listeners]]
        name = "db"
        address = "127.0.0.1:0"
        protocol = "tcp"
        cluster = "db"
        [[clusters]]
        name = "db"
        endpoints = ["127.0.0.1:1"]
        [[authorization_policies]]
        name = "only-web"
        action = "allow"
        listeners = ["db"]
        rules = [{ from = [{ principals = ["cluster.local/ns/shop/sa/web"] }] }]
        [[authorization_policies]]
        name = "no-ops"
        action = "deny"
        listeners = ["db"]
        rules = [{ from = [{ namespaces = ["ops"] }] }]
    "#,
    );
    let compiled = compile_all(&spec.authorization_policies);
    let db = ListenerAuthz::compile("db", &compiled, None, 1).expect("applies to db");
    let tracked = |principal: Option<&str>| Tracked {
        listener: "db".into(),
        peer: "10.0.0.1:5000".parse().expect("address"),
        destination_port: 5432,
        sni: Some("db.example".into()),
        principal: principal.map(|p| crate::identity::SpiffeId::parse(p).expect("valid ID")),
        revoked: Signal::default(),
    };
    let web = tracked(Some("spiffe://cluster.local/ns/shop/sa/web"));
    assert_eq!(
        web.input().principal,
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert!(db.passes(&web.input()));
    assert!(!db.passes(&tracked(Some("spiffe://cluster.local/ns/shop/sa/api")).input()));
    assert!(!db.passes(&tracked(Some("spiffe://cluster.local/ns/ops/sa/web")).input()));
    assert!(
        !db.passes(&tracked(None).input()),
        "no identity: no principal matches"
    );
    // A reload that revokes the principal: the registry's re-check fires on it.
    let registry = Registry::default();
    let open = registry.register(tracked(Some("spiffe://cluster.local/ns/shop/sa/web")));
    let revoking = parse(
        r#"
        [[listeners]]
        name = "db"
        address = "127.0.0.1:0"
        protocol = "tcp"
        cluster = "db"
        [[clusters]]
        name = "db"
        endpoints = ["127.0.0.1:1"]
        [[authorization_policies]]
        name = "only-api"
        action = "allow"
        listeners = ["db"]
        rules = [{ from = [{ principals = ["*/sa/api"] }] }]
    "#,
    );
    let compiled = compile_all(&revoking.authorization_policies);
    let db = ListenerAuthz::compile("db", &compiled, Some(&db), 1).expect("applies");
    assert_eq!(registry.recheck(|t| db.passes(&t.input())), 1);
    assert!(open.tracked.revoked.is_fired());
}
