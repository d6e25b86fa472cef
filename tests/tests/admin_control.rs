//! The admin API's guard rails, black box: mutating endpoints need their method and the bearer
//! token (inline, from the environment or from a file), a request for a non-loopback host name is
//! refused (DNS rebinding), `GET` never changes anything, the API has its own connection limit,
//! and `POST /drain` stops the proxy gracefully.
//!
//! Requires the binaries (`cargo build --bins`).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::{Admin, HttpUpstream, Json, TOKEN, admin_request};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, wait_until};

tests::both_drivers!(
    mutations_need_their_method_and_the_token,
    other_host_names_are_refused,
    tokens_come_from_the_environment_or_a_file,
    without_a_token_mutations_are_disabled,
    the_admin_api_has_its_own_connection_limit,
    drain_stops_the_proxy_gracefully,
);

fn config(admin: &str, upstream: &HttpUpstream) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
{admin}

[[listeners]]
name = "web"
address = "127.0.0.1:0"
protocol = "http"

[[clusters]]
name = "app"
endpoints = ["{app}"]

[[virtual_hosts]]
name = "default"
domains = ["*"]

[[virtual_hosts.routes]]
match.path_prefix = "/"
cluster = "app"
"#,
        app = upstream.address()
    )
}

fn call(proxy: &Proxy, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
    admin_request(
        proxy.admin_address(),
        method,
        path,
        token,
        "127.0.0.1",
        body,
    )
    .expect("admin request")
    .status
}

fn mutations_need_their_method_and_the_token(driver: Driver) {
    let app = HttpUpstream::http("app");
    let text = config(&format!("token = \"{TOKEN}\""), &app);
    let proxy = Proxy::start(&text, driver, 2);
    let metric = |proxy: &Proxy| proxy.metric("ringmesh_config_reloads_total");
    let reloads = metric(&proxy);

    // GET (and other wrong methods) never mutate, token or not.
    for (method, path) in [
        ("GET", "/reload"),
        ("GET", "/config"),
        ("GET", "/drain"),
        ("HEAD", "/reload"),
        ("POST", "/config"),
        ("PUT", "/reload"),
        ("DELETE", "/config"),
    ] {
        let status = call(&proxy, method, path, Some(TOKEN), "");
        assert_eq!(status, 405, "{method} {path}");
    }
    // A GET on a read-only endpoint with a token is still only a read.
    assert_eq!(call(&proxy, "POST", "/stats", Some(TOKEN), ""), 405);

    // The right method without or with a wrong token.
    for token in [None, Some("wrong"), Some("test-token-but-longer"), Some("")] {
        let response = admin_request(
            proxy.admin_address(),
            "POST",
            "/reload",
            token,
            "127.0.0.1",
            "",
        )
        .expect("admin request");
        assert_eq!(response.status, 401, "token {token:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            call(&proxy, "PUT", "/config", token, &text),
            401,
            "token {token:?}"
        );
        assert_eq!(call(&proxy, "POST", "/drain", token, ""), 401);
    }
    assert_eq!(metric(&proxy), reloads, "nothing was reloaded");
    assert_eq!(proxy.generation(), 1);
    assert!(proxy.log().contains("admin: refused a mutating request"));

    // With the token.
    let response = proxy.admin_call("POST", "/reload", "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["generation"], 2);
    let response = proxy.put_config(&text);
    assert_eq!(response.json()["generation"], 3);
    // An empty body is refused rather than taken as an empty config.
    let response = proxy.put_config("");
    assert_eq!(response.status, 400);
    assert!(response.json()["errors"][0]["message"].is_string());
    assert_eq!(proxy.generation(), 3);
    // The token is never shown.
    let dump = proxy.admin_get("/config_dump").body;
    assert!(!dump.contains(TOKEN), "{dump}");
    assert!(proxy.log().contains("admin: config applied"));
}

fn other_host_names_are_refused(driver: Driver) {
    let app = HttpUpstream::http("app");
    let proxy = Proxy::start(&config(&format!("token = \"{TOKEN}\""), &app), driver, 2);
    let address = proxy.admin_address();
    for host in [
        "evil.example",
        "evil.example:15000",
        "localhost.evil.example",
        "10.1.2.3",
    ] {
        for (method, path, token) in [
            ("GET", "/stats", None),
            ("GET", "/config_dump", None),
            ("POST", "/reload", Some(TOKEN)),
        ] {
            let response =
                admin_request(address, method, path, token, host, "").expect("admin request");
            assert_eq!(response.status, 403, "{method} {path} with Host {host}");
        }
    }
    for host in ["localhost", "127.0.0.1", &address.to_string(), "[::1]:1"] {
        let response = admin_request(address, "GET", "/healthz", None, host, "").expect("request");
        assert_eq!(response.status, 200, "Host {host}");
    }
    assert_eq!(proxy.generation(), 1);
}

fn tokens_come_from_the_environment_or_a_file(driver: Driver) {
    let app = HttpUpstream::http("app");
    // From a file (trailing newline trimmed).
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
    let proxy = Proxy::start(
        &config(&format!("token_file = \"{}\"", file.display()), &app),
        driver,
        1,
    );
    assert_eq!(proxy.admin_call("POST", "/reload", "").status, 200);
    // A token file that disappears makes a reload fail (the old token stays in force).
    std::fs::remove_file(&file).expect("remove");
    let response = proxy.admin_call("POST", "/reload", "");
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.json()["errors"][0]["path"], "admin.token_file");
    drop(proxy);

    // From the environment.
    let proxy = Proxy::builder(
        &config("token_env = \"RINGMESH_TEST_ADMIN_TOKEN\"", &app),
        driver,
    )
    .env("RINGMESH_TEST_ADMIN_TOKEN", TOKEN)
    .start();
    assert_eq!(proxy.admin_call("POST", "/reload", "").status, 200);
    assert_eq!(
        call(
            &proxy,
            "POST",
            "/reload",
            Some("RINGMESH_TEST_ADMIN_TOKEN"),
            ""
        ),
        401
    );
}

fn without_a_token_mutations_are_disabled(driver: Driver) {
    let app = HttpUpstream::http("app");
    let proxy = Proxy::start(&config("", &app), driver, 1);
    let response = admin_request(
        proxy.admin_address(),
        "POST",
        "/reload",
        Some("anything"),
        "127.0.0.1",
        "",
    )
    .expect("request");
    assert_eq!(response.status, 403);
    assert!(response.body.contains("admin.token"), "{}", response.body);
    // SIGHUP still works.
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(PATIENCE, "the SIGHUP reload", || {
        let g = proxy.generation();
        if g == 2 { Ok(()) } else { Err(format!("{g}")) }
    });
}

fn the_admin_api_has_its_own_connection_limit(driver: Driver) {
    let app = HttpUpstream::http("app");
    let proxy = Proxy::start(&config("max_connections = 2", &app), driver, 1);
    // Two clients that connect and say nothing hold both slots.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(proxy.admin_address()).expect("connect"))
        .collect();
    wait_until(
        PATIENCE,
        "the third connection to be refused",
        || match support::admin_get(proxy.admin_address(), "/healthz") {
            Ok(r) if r.status == 503 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // The data plane is not affected.
    assert_eq!(
        support::get(proxy.listener("web"), "/").expect("get").body,
        "app"
    );
    drop(held);
    wait_until(
        PATIENCE,
        "the slots to free up",
        || match support::admin_get(proxy.admin_address(), "/healthz") {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

fn drain_stops_the_proxy_gracefully(driver: Driver) {
    let app = HttpUpstream::http("app");
    let mut proxy = Proxy::start(&config(&format!("token = \"{TOKEN}\""), &app), driver, 2);
    let web = proxy.listener("web");
    // A keep-alive client with a request on its way as the drain starts gets its answer.
    let mut client = TcpStream::connect(web).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let response = proxy.admin_call("POST", "/drain", "");
    assert_eq!(response.status, 202, "{}", response.body);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    // The answer, then a close: with `connection: close` when the worker had started draining
    // before it read the request, else after the drain's short grace for a next request (the 202
    // says the drain has begun, not that every worker has seen it yet).
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut client, &mut answer).expect("the answer, then a close");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("app"), "one complete answer: {answer}");
    assert!(proxy.wait_exit(PATIENCE).success());
    assert!(
        proxy.log().contains("origin=\"admin POST /drain\""),
        "{}",
        proxy.log()
    );
}
