//! Route retry policies and the cluster retry budget, through the real binary on io_uring and on
//! epoll, against upstreams that misbehave on purpose (`tests/python/h2_upstream.py`'s counted
//! paths: `/flaky`, `/reset-first`, `/slow-first`, `/grpc-flaky`, `/fail-on`; and grpcio):
//!
//! - a 503 twice then 200 is retried within `attempts` and the client gets the 200; each try
//!   carries `x-envoy-attempt-count`; the access log shows the attempts;
//! - retries stop at `attempts`: the last 503 is relayed with flag `URX`;
//! - a reset before the answer is retried under `reset`, a POST body included (replayed whole);
//! - a try slower than `per_try_timeout` is abandoned and retried;
//! - the route `timeout` bounds all tries together: 504 `UT`, and no try starts after it;
//! - gRPC `UNAVAILABLE` in a trailers-only answer is retried under `unavailable`, from the test
//!   upstream on every pair and from a grpcio server;
//! - a retry goes to another endpoint than the one that failed;
//! - a body bigger than the replay buffer is not retried, and the access log says so;
//! - under a 100 % failing upstream, the retry budget holds the upstream's load to the budget's
//!   ratio plus its floor, whatever `attempts` says.
//!
//! Counts and statuses only; nothing here asserts how long anything took.

use std::time::Duration;

use serde_json::Value;
use tests::exchange::{Call, Extra, Pair, Setup};
use tests::h2::{PyServer, run_json};
use tests::http::{Client, access_log_config, cluster, http_listener, route, virtual_host};
use tests::{Driver, Proxy, both_drivers, exchange_pairs, wait_until};

exchange_pairs!(
    a_flaky_503_is_retried_until_the_200_within_attempts,
    retries_stop_at_attempts_and_the_last_answer_is_relayed_with_urx,
    a_reset_post_is_retried_with_its_body_under_reset,
    a_try_slower_than_the_per_try_timeout_is_abandoned_and_retried,
    the_route_timeout_bounds_all_tries_together,
    grpc_unavailable_is_retried_under_unavailable,
    a_body_bigger_than_the_replay_buffer_is_not_retried_and_the_log_says_why,
);
both_drivers!(
    a_retry_goes_to_another_endpoint_than_the_one_that_failed,
    the_retry_budget_caps_retries_under_a_failing_upstream,
    grpcio_unavailable_is_retried,
);

const HOST: &str = "svc.test";

/// How long a test waits for something the proxy has certainly done by then.
const BOUND: Duration = Duration::from_secs(10);

/// The upstream's `received` lines for requests to `path` (one per try that reached it).
fn tries_of(setup: &Setup, path: &str) -> Vec<Vec<String>> {
    setup
        .upstream
        .events("received")
        .into_iter()
        .filter(|w| w.get(5).is_some_and(|p| p == path))
        .collect()
}

fn flags(entry: &Value) -> String {
    entry["response_flags"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn a_flaky_503_is_retried_until_the_200_within_attempts(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 3, retry_on = [\"5xx\"], backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/flaky/2/503/a";
    let answer = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(answer.status, Some(200), "{answer:?}");
    assert_eq!(answer.text(), "200 try 3 attempt 3");
    assert_eq!(tries_of(&setup, path).len(), 3);
    let entry = setup.log_entry(path);
    assert_eq!(entry["upstream_attempts"], 3, "{entry}");
    assert_eq!(flags(&entry), "-", "{entry}");
    let metrics = setup.proxy.metrics();
    let labels = [("cluster", "backend")];
    assert_eq!(
        metrics.value("ringmesh_cluster_upstream_retries_total", &labels),
        2.0
    );
}

fn retries_stop_at_attempts_and_the_last_answer_is_relayed_with_urx(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 2, retry_on = [\"gateway-error\"], backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/flaky/9/503/a";
    let answer = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(answer.status, Some(503), "{answer:?}");
    assert_eq!(
        answer.text(),
        "503 try 3 attempt 3",
        "the last try's own answer"
    );
    assert_eq!(tries_of(&setup, path).len(), 3);
    let entry = setup.log_entry(path);
    assert_eq!(flags(&entry), "URX", "{entry}");
    assert_eq!(entry["retry_stopped"], "attempts_exhausted", "{entry}");
    // A 500 is not a gateway error: relayed at once, not retried.
    let path = "/flaky/9/500/b";
    let answer = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(answer.status, Some(500));
    assert_eq!(tries_of(&setup, path).len(), 1);
}

fn a_reset_post_is_retried_with_its_body_under_reset(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 1, retry_on = [\"reset\"], backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/reset-first/1/a";
    let answer = setup.call(pair, &Call::post(HOST, path, 5000));
    assert_eq!(answer.status, Some(200), "{answer:?}");
    // The first try was reset before the upstream logged it whole; the retry arrived whole.
    let tries = tries_of(&setup, path);
    assert!(!tries.is_empty() && tries.len() <= 2, "{tries:?}");
    assert_eq!(
        tries.last().map(|w| w[7].as_str()),
        Some("5000"),
        "{tries:?}"
    );
    assert_eq!(setup.log_entry(path)["upstream_attempts"], 2);

    // Without `reset` in retry_on, a POST that was reset is answered 502: the upstream may have
    // acted on it.
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 1, retry_on = [\"connect-failure\"] }",
            ..Extra::default()
        },
    );
    let answer = setup.call(pair, &Call::post(HOST, path, 5000));
    assert_eq!(answer.status, Some(502), "{answer:?}");
}

fn a_try_slower_than_the_per_try_timeout_is_abandoned_and_retried(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 1, retry_on = [\"5xx\"], per_try_timeout = \"300ms\", \
                    backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/slow-first/1/8000/a";
    let answer = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(answer.status, Some(200), "{answer:?}");
    assert_eq!(tries_of(&setup, path).len(), 2);
    let entry = setup.log_entry(path);
    assert_eq!(entry["upstream_attempts"], 2, "{entry}");

    // Every try slow: 504 with UT, and URX once the attempts are spent.
    let path = "/slow-first/9/8000/b";
    let answer = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(answer.status, Some(504), "{answer:?}");
    let entry = setup.log_entry(path);
    assert!(flags(&entry).contains("UT"), "{entry}");
    assert!(flags(&entry).contains("URX"), "{entry}");
}

fn the_route_timeout_bounds_all_tries_together(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "timeout = \"1s\"\nretries = { attempts = 5, retry_on = [\"5xx\"], \
                    per_try_timeout = \"400ms\", backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/delay/8000";
    let answer = setup.call(pair, &Call::get(HOST, path));
    assert_eq!(answer.status, Some(504), "{answer:?}");
    let entry = setup.log_entry(path);
    assert!(flags(&entry).contains("UT"), "{entry}");
    // Each try lasts its 400 ms (the upstream never answers sooner), so within the route's one
    // second at most three can start; five attempts were allowed.
    let attempts = entry["upstream_attempts"].as_u64().unwrap_or(0);
    assert!((1..=3).contains(&attempts), "{entry}");
}

fn grpc_unavailable_is_retried_under_unavailable(pair: Pair, driver: Driver) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 3, retry_on = [\"unavailable\"], backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/grpc-flaky/2/a";
    let answer = setup.call(pair, &Call::grpc(HOST, path));
    assert_eq!(answer.trailers_only_grpc_status(), Ok("0".to_owned()));
    assert_eq!(tries_of(&setup, path).len(), 3);
    // Other gRPC statuses are not retried without their condition.
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 3, retry_on = [\"cancelled\"] }",
            ..Extra::default()
        },
    );
    let answer = setup.call(pair, &Call::grpc(HOST, path));
    assert_eq!(answer.trailers_only_grpc_status(), Ok("14".to_owned()));
    assert_eq!(tries_of(&setup, path).len(), 1);
}

fn a_body_bigger_than_the_replay_buffer_is_not_retried_and_the_log_says_why(
    pair: Pair,
    driver: Driver,
) {
    let setup = Setup::start(
        pair,
        driver,
        Extra {
            route: "retries = { attempts = 2, retry_on = [\"5xx\"], backoff = \"5ms\" }",
            ..Extra::default()
        },
    );
    let path = "/flaky/1/503/big";
    let answer = setup.call(pair, &Call::post(HOST, path, 100 * 1024));
    assert_eq!(answer.status, Some(503), "{answer:?}");
    assert_eq!(tries_of(&setup, path).len(), 1);
    let entry = setup.log_entry(path);
    assert_eq!(entry["retry_stopped"], "body_not_kept", "{entry}");
    assert!(flags(&entry).contains("URX"), "{entry}");
    // The same request with a small body is retried.
    let path = "/flaky/1/503/small";
    let answer = setup.call(pair, &Call::post(HOST, path, 1000));
    assert_eq!(answer.status, Some(200), "{answer:?}");
}

fn a_retry_goes_to_another_endpoint_than_the_one_that_failed(driver: Driver) {
    let a = PyServer::start("h2_upstream.py", &["--name", "a"]);
    let b = PyServer::start("h2_upstream.py", &["--name", "b"]);
    // Consistent hashing on a header: the same user would land on the same endpoint again,
    // so only the rule "a retry avoids the endpoint that failed" can reach the other one.
    let config = [
        http_listener("main", ""),
        cluster(
            "backend",
            &[a.address(), b.address()],
            "lb_policy = \"ring_hash\"\nhash_policy.header = \"x-user\"",
        ),
        virtual_host(
            "all",
            &["*"],
            &route(
                "all",
                "cluster = \"backend\"\nretries = { attempts = 1, retry_on = [\"5xx\"], \
                 backoff = \"5ms\" }",
            ),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 1);
    let mut client = Client::connect(proxy.listener("main"));
    for user in 0..20 {
        let response = client.request(
            format!("GET /fail-on/a/503 HTTP/1.1\r\nhost: {HOST}\r\nx-user: u{user}\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(response.status, 200, "user {user}: {}", response.text());
        assert_eq!(response.text(), "ok from b");
    }
    assert!(
        a.count("received") > 0,
        "some users hash to the failing endpoint"
    );
}

fn the_retry_budget_caps_retries_under_a_failing_upstream(driver: Driver) {
    let upstream = PyServer::start("h2_upstream.py", &["--name", "down"]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("access.log");
    let config = [
        access_log_config(&log),
        http_listener("main", ""),
        cluster(
            "backend",
            &[upstream.address()],
            "retry_budget = { ratio = 0.2, min_retries_per_second = 1, ttl = \"10s\" }",
        ),
        virtual_host(
            "all",
            &["*"],
            &route(
                "all",
                "cluster = \"backend\"\nretries = { attempts = 3, retry_on = [\"5xx\"], \
                 backoff = \"1ms\", max_backoff = \"1ms\" }",
            ),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 2);
    const REQUESTS: usize = 1000;
    let mut client = Client::connect(proxy.listener("main"));
    for _ in 0..REQUESTS {
        let response = client.get(HOST, "/status/503");
        assert_eq!(response.status, 503);
    }
    let seen = wait_until(BOUND, "the upstream to log every try", || {
        let seen = upstream.count("received");
        let retries = proxy.metrics().sum(
            "ringmesh_cluster_upstream_retries_total",
            &[("cluster", "backend")],
        ) as usize;
        if seen == REQUESTS + retries {
            Ok(seen)
        } else {
            Err(format!("{seen} tries seen, {retries} retries counted"))
        }
    });
    // Without a budget, three retries each: 4000 tries. With it: at most 20 % of the requests
    // (the window of 10 s covers the whole test) plus the floor of 1 per second over 10 s.
    let cap = REQUESTS + REQUESTS / 5 + 10;
    assert!(
        seen <= cap,
        "the upstream saw {seen} tries for {REQUESTS} requests (cap {cap})"
    );
    assert!(seen > REQUESTS, "the budget allows some retries: {seen}");
    let overflow = proxy.metrics().sum(
        "ringmesh_cluster_upstream_retry_overflow_total",
        &[("cluster", "backend")],
    );
    assert!(overflow > 0.0, "retries refused by the budget are counted");
    let text = wait_until(BOUND, "access-log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= REQUESTS {
            Ok(text)
        } else {
            Err(format!("{} lines", text.lines().count()))
        }
    });
    assert!(
        text.contains("\"retry_stopped\":\"budget_exhausted\""),
        "the log says when the budget stopped a retry"
    );
}

fn grpcio_unavailable_is_retried(driver: Driver) {
    let server = PyServer::start("grpc_echo.py", &["server"]);
    let config = [
        http_listener("main", ""),
        cluster("grpc", &[server.address()], "protocol = \"h2\""),
        virtual_host(
            "all",
            &["*"],
            &route(
                "all",
                "cluster = \"grpc\"\nretries = { attempts = 3, retry_on = [\"unavailable\"], \
                 backoff = \"5ms\" }",
            ),
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config, driver, 1);
    let port = proxy.listener("main").port().to_string();
    let run = |failures: &str, key: &str| {
        run_json(
            "grpc_echo.py",
            &[
                "client",
                port.as_str(),
                "flaky",
                "--failures",
                failures,
                "--key",
                key,
            ],
            Duration::from_secs(30),
        )
    };
    let answer = run("2", "a");
    assert_eq!(answer["code"], "OK", "{answer}");
    assert_eq!(server.count("flaky-call"), 3);
    let answer = run("9", "b");
    assert_eq!(answer["code"], "UNAVAILABLE", "{answer}");
    assert_eq!(server.count("flaky-call"), 3 + 4);
}
