//! Hot reload, black box: route tables change under load through the admin API with no request
//! lost; invalid configs are rejected whole and change nothing; listeners come and go at runtime;
//! `--watch`, SIGHUP and `POST /reload` reread the file.
//!
//! Requires the binaries (`cargo build --bins`) and `h2load` (nghttp2-client).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Admin, H2load, HttpUpstream, Json, Load, TOKEN, get};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, tool, wait_until};

tests::both_drivers!(
    reload_storm_under_load_loses_nothing_and_switches_at_once,
    invalid_configs_are_rejected_whole_and_change_nothing,
    listeners_are_added_moved_and_removed_under_load,
    watch_sighup_and_post_reload_reread_the_file,
);

/// Three upstreams answering with their names.
struct Backends {
    a: HttpUpstream,
    b: HttpUpstream,
    c: HttpUpstream,
}

impl Backends {
    fn new() -> Self {
        Self {
            a: HttpUpstream::http("a"),
            b: HttpUpstream::http("b"),
            c: HttpUpstream::http("c"),
        }
    }

    /// Listener `main`, clusters a, b, c, and `routes` (a `[[virtual_hosts.routes]]` body).
    fn config(&self, extra: &str, route: &str) -> String {
        format!(
            r#"[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[runtime]
drain_timeout = "2s"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"
{extra}
[[clusters]]
name = "a"
endpoints = ["{a}"]

[[clusters]]
name = "b"
endpoints = ["{b}"]

[[clusters]]
name = "c"
endpoints = ["{c}"]

[[virtual_hosts]]
name = "default"
domains = ["*"]

[[virtual_hosts.routes]]
match.path_prefix = "/"
{route}
"#,
            a = self.a.address(),
            b = self.b.address(),
            c = self.c.address(),
        )
    }

    /// Everything to cluster a.
    fn table_a(&self) -> String {
        self.config("", "cluster = \"a\"")
    }

    /// A weighted split between b and c.
    fn table_split(&self) -> String {
        self.config(
            "",
            "weighted_clusters = [{ cluster = \"b\", weight = 80 }, { cluster = \"c\", weight = 20 }]",
        )
    }
}

/// Which upstreams may answer under each table.
fn allowed(table: usize) -> &'static [&'static str] {
    if table == 0 { &["a"] } else { &["b", "c"] }
}

/// 100 reloads alternating two route tables (one a weighted split) every 200 ms, under 2,000
/// requests per second from h2load for over 20 s: no request fails, the achieved rate is at least
/// 99 % of the target, and every request sent after a reload answered is routed by the new table
/// (the answer to `PUT /config` comes once every worker runs it).
fn reload_storm_under_load_loses_nothing_and_switches_at_once(driver: Driver) {
    const RELOADS: usize = 100;
    const EVERY: Duration = Duration::from_millis(200);
    const RATE: u64 = 2000;
    const CLIENTS: u64 = 20;
    const DURATION_S: u64 = 23;

    let backends = Backends::new();
    let tables = [backends.table_a(), backends.table_split()];
    let proxy = Proxy::builder(&tables[0], driver).log_level("info").start();
    let main = proxy.listener("main");

    let h2load = Command::new(tool("h2load"))
        .args(["--h1", "-c", &CLIENTS.to_string(), "-t", "1"])
        .args(["--rps", &(RATE / CLIENTS).to_string()])
        .args(["-D", &DURATION_S.to_string()])
        .arg(format!("http://{main}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run h2load");
    // A probe that records which upstream answered each request, and when it was sent.
    let probe = Load {
        address: main,
        connections: 2,
        rate: 100.0,
        connection_per_request: false,
    }
    .start();
    wait_until(PATIENCE, "h2load traffic to arrive", || {
        if backends.a.served() > 500 {
            Ok(())
        } else {
            Err(format!("{} served", backends.a.served()))
        }
    });

    // (sent, answered, table) per reload.
    let mut reloads: Vec<(Instant, Instant, usize)> = Vec::with_capacity(RELOADS);
    let started = Instant::now();
    let mut generation = proxy.generation();
    for i in 0..RELOADS {
        let table = (i + 1) % 2;
        let sent = Instant::now();
        let response = proxy.put_config(&tables[table]);
        let answered = Instant::now();
        assert_eq!(response.status, 200, "reload {i}: {}", response.body);
        generation += 1;
        assert_eq!(response.json()["generation"], generation, "reload {i}");
        reloads.push((sent, answered, table));
        if i % 10 == 0 {
            // "Applied" means every worker runs it.
            assert!(
                proxy.worker_generations().iter().all(|&g| g == generation),
                "reload {i}: workers {:?}, expected {generation}",
                proxy.worker_generations()
            );
        }
        let next = started + EVERY * (i as u32 + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let storm = started.elapsed();
    let probe = probe.stop();
    let output = h2load.wait_with_output().expect("h2load ran");
    let h2 = H2load::parse(String::from_utf8_lossy(&output.stdout).into_owned());
    eprintln!(
        "{driver:?}: {RELOADS} reloads in {storm:?}; h2load: {} ok, {:.1} req/s; probe: {}",
        h2.succeeded,
        h2.rate,
        probe.summary()
    );

    assert!(output.status.success(), "h2load failed: {}", h2.output);
    assert_eq!(
        (h2.failed, h2.errored, h2.timeout),
        (0, 0, 0),
        "{}",
        h2.output
    );
    assert_eq!(h2.status_2xx, h2.succeeded, "{}", h2.output);
    assert!(
        h2.rate >= 0.99 * RATE as f64,
        "achieved {:.1} req/s, target {RATE}: {}",
        h2.rate,
        h2.output
    );
    assert_eq!(probe.failures(), 0, "probe: {}", probe.summary());
    assert_eq!(probe.non_2xx(), 0, "probe: {}", probe.summary());
    assert_eq!(proxy.generation(), 1 + RELOADS as u64);

    // Every probe request sent after reload i answered, and answered before reload i+1 was sent,
    // must be routed by table i.
    let mut checked = [0usize; 2];
    let mut seen_split = std::collections::BTreeSet::new();
    for answer in &probe.answers {
        let Some(i) = reloads.iter().rposition(|r| r.1 <= answer.sent) else {
            continue;
        };
        if reloads
            .get(i + 1)
            .is_some_and(|next| next.0 <= answer.received)
        {
            continue; // in flight while the next reload was in progress: either table is right
        }
        let table = reloads[i].2;
        assert!(
            allowed(table).contains(&answer.body.as_str()),
            "a request sent {:?} after reload {i} was answered by {:?}, not by table {table}",
            answer.sent - reloads[i].1,
            answer.body
        );
        checked[table] += 1;
        if table == 1 {
            seen_split.insert(answer.body.clone());
        }
    }
    assert!(
        checked[0] > 200 && checked[1] > 200,
        "too few probe requests between reloads: {checked:?}"
    );
    assert_eq!(
        seen_split.len(),
        2,
        "the split sends to b and c: {seen_split:?}"
    );
}

/// A valid base plus one mistake each: 20 configs of six kinds. Each is rejected with its
/// errors as JSON (path, line, column, message); the generation, the config and the traffic are
/// untouched; `ringmesh_config_reload_failed_total` counts every one, whichever way it came in.
fn invalid_configs_are_rejected_whole_and_change_nothing(driver: Driver) {
    let backends = Backends::new();
    let good = backends.table_a();
    let mut proxy = Proxy::start(&good, driver, 2);
    let main = proxy.listener("main");
    let dump_before = proxy.admin_get("/config_dump").json()["config"].clone();
    let probe = Load {
        address: main,
        connections: 2,
        rate: 200.0,
        connection_per_request: false,
    }
    .start();
    let probe_traffic = |at_least: u64| {
        wait_until(PATIENCE, format!("{at_least} probe requests"), || {
            let served = backends.a.served();
            if served >= at_least {
                Ok(served)
            } else {
                Err(format!("{served}"))
            }
        })
    };
    let before = probe_traffic(50);

    let missing = "/nonexistent/ringmesh-test";
    let tls_listener =
        |tls: &str| backends.config(&format!("tls = {{ {tls} }}\n"), "cluster = \"a\"");
    let invalid: Vec<(&str, String, &str)> = vec![
        // Syntax.
        ("syntax", good.replace("[[clusters]]", "[[clusters]"), ""),
        ("syntax", format!("{good}\nname = \"unterminated\n"), ""),
        ("syntax", good.replace("protocol = \"http\"", "protocol = http"), ""),
        ("syntax", format!("{good}\n[admin]\n"), ""),
        // Dangling references.
        ("dangling", good.replace("cluster = \"a\"", "cluster = \"nope\""), "virtual_hosts[0].routes[0].cluster"),
        ("dangling", backends.config("", "weighted_clusters = [{ cluster = \"a\", weight = 1 }, { cluster = \"gone\", weight = 1 }]"), "virtual_hosts[0].routes[0].weighted_clusters[1].cluster"),
        ("dangling", backends.config("", "cluster = \"a\"\nmirror = { cluster = \"shadow\", percent = 10.0 }"), "virtual_hosts[0].routes[0].mirror.cluster"),
        ("dangling", backends.config("virtual_hosts = [\"missing\"]\n", "cluster = \"a\""), "listeners[0].virtual_hosts[0]"),
        // Duplicate listeners.
        ("duplicate", format!("{good}\n[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\n"), "listeners[1].name"),
        ("duplicate", format!("{good}\n[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"a\"\n"), "listeners[1].name"),
        ("duplicate", format!("{good}\n[[listeners]]\nname = \"x\"\naddress = \"127.0.0.1:1\"\n[[listeners]]\nname = \"y\"\naddress = \"127.0.0.1:1\"\n"), "listeners[2].address"),
        ("duplicate", format!("{good}\n[[listeners]]\nname = \"x\"\naddress = \"0.0.0.0:1\"\n[[listeners]]\nname = \"y\"\naddress = \"127.0.0.1:1\"\n"), "listeners[2].address"),
        // Bad regular expressions.
        ("regex", backends.config("", "cluster = \"a\"").replace("match.path_prefix = \"/\"", "match.path_regex = \"/api(\""), "virtual_hosts[0].routes[0].match.path_regex"),
        ("regex", backends.config("", "cluster = \"a\"").replace("match.path_prefix = \"/\"", "match.path_regex = \"[z-a]\""), "virtual_hosts[0].routes[0].match.path_regex"),
        ("regex", backends.config("", "cluster = \"a\"\nmatch.headers = [{ name = \"x-user\", regex = \"(?P<\" }]"), "virtual_hosts[0].routes[0].match.headers[0].regex"),
        ("regex", backends.config("", "cluster = \"a\"\nmatch.query = [{ name = \"q\", regex = \"*\" }]"), "virtual_hosts[0].routes[0].match.query[0].regex"),
        // mTLS and workload identity: a SPIFFE ID that does not parse; files that do not exist.
        ("mtls", good.replace(&format!("endpoints = [\"{}\"]", backends.b.address()), &format!("endpoints = [\"{}\"]\ntls = {{ ca = \"{missing}/upstream-ca.pem\", expected_spiffe_ids = [\"cluster.local/ns/a/sa/b\"] }}", backends.b.address())), "clusters[1].tls.expected_spiffe_ids[0]"),
        ("mtls", tls_listener(&format!("cert = \"{missing}/cert.pem\", key = \"{missing}/key.pem\", client_ca = \"{missing}/ca.pem\"")), "listeners[0].tls.client_ca"),
        ("mtls", format!("{good}\n[identity]\ntrust_domain = \"cluster.local\"\ncert = \"{missing}/svid.pem\"\nkey = \"{missing}/svid.key\"\nca_bundle = \"{missing}/bundle.pem\"\n"), "identity.cert"),
        // A file the config names is missing (validation cannot see files; the reload checks them).
        ("file", good.replace(&format!("token = \"{TOKEN}\""), &format!("token_file = \"{missing}/admin-token\"")), "admin.token_file"),
    ];
    assert_eq!(invalid.len(), 20);

    for (i, (kind, text, path)) in invalid.iter().enumerate() {
        let before = proxy.metric("ringmesh_config_reload_failed_total");
        // 16 through PUT /config, 2 through POST /reload, 2 through SIGHUP.
        let how = match i % 10 {
            3 => "post",
            7 => "sighup",
            _ => "put",
        };
        match how {
            "put" | "post" => {
                let response = if how == "put" {
                    proxy.put_config(text)
                } else {
                    std::fs::write(proxy.config_path(), text).expect("write the config");
                    proxy.admin_call("POST", "/reload", "")
                };
                assert_eq!(
                    response.status, 400,
                    "{kind} #{i} ({how}): {}",
                    response.body
                );
                let errors = response.json()["errors"].clone();
                let errors = errors.as_array().expect("errors array");
                assert!(!errors.is_empty(), "{kind} #{i}");
                for e in errors {
                    for field in ["path", "line", "column", "message"] {
                        assert!(e.get(field).is_some(), "{kind} #{i}: {e} lacks {field}");
                    }
                }
                if !path.is_empty() {
                    assert!(
                        errors
                            .iter()
                            .any(|e| e["path"] == *path && e["line"].as_u64() > Some(0)),
                        "{kind} #{i}: no error at {path} with a line: {errors:?}"
                    );
                }
            }
            _ => {
                std::fs::write(proxy.config_path(), text).expect("write the config");
                proxy.signal(Signal::SIGHUP);
            }
        }
        wait_until(PATIENCE, format!("{kind} #{i} to be counted"), || {
            let now = proxy.metric("ringmesh_config_reload_failed_total");
            if now == before + 1.0 {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        });
        assert_eq!(proxy.generation(), 1, "{kind} #{i} changed the generation");
    }
    assert_eq!(proxy.metric("ringmesh_config_reload_failed_total"), 20.0);
    let dump = proxy.admin_get("/config_dump").json();
    assert_eq!(dump["generation"], 1);
    assert_eq!(
        dump["config"], dump_before,
        "the config in force is unchanged"
    );
    assert!(
        proxy
            .log()
            .contains("listeners[0].tls.client_ca: CA bundle"),
        "errors are logged with their path"
    );

    // Traffic went on throughout, and some more after.
    probe_traffic(before + 100);
    let report = probe.stop();
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(
        report
            .answers
            .iter()
            .all(|a| a.status == 200 && a.body == "a"),
        "traffic was affected: {}",
        report.summary()
    );

    // And the proxy still takes a good config.
    std::fs::write(proxy.config_path(), backends.table_split()).expect("write");
    let response = proxy.admin_call("POST", "/reload", "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["generation"], 2);
    assert!(["b", "c"].contains(&get(main, "/").expect("get").body.as_str()));
    assert!(proxy.is_running());
}

/// Under load on `main`, a listener is added, moved to another address and removed: it serves
/// as soon as the reload answers, a moved or removed address refuses new connections, a request in
/// flight on it finishes (with `connection: close`), and `main` never notices.
fn listeners_are_added_moved_and_removed_under_load(driver: Driver) {
    let backends = Backends::new();
    let proxy = Proxy::start(&backends.table_a(), driver, 2);
    let main = proxy.listener("main");
    let probe = Load {
        address: main,
        connections: 4,
        rate: 400.0,
        connection_per_request: true,
    }
    .start();

    let with_extra = |address: &str| {
        backends.config(
            &format!(
                "\n[[listeners]]\nname = \"extra\"\naddress = \"{address}\"\nprotocol = \"http\"\n"
            ),
            "cluster = \"a\"",
        )
    };

    // Add.
    let response = proxy.put_config(&with_extra("127.0.0.1:0"));
    assert_eq!(response.status, 200, "{}", response.body);
    let extra = proxy.listeners_now()["extra"];
    assert_eq!(get(extra, "/").expect("the new listener serves").body, "a");

    // Move.
    let response = proxy.put_config(&with_extra("127.0.0.2:0"));
    assert_eq!(response.status, 200, "{}", response.body);
    let moved = proxy.listeners_now()["extra"];
    assert_eq!(
        moved.ip(),
        "127.0.0.2".parse::<std::net::IpAddr>().expect("ip")
    );
    assert_eq!(
        get(moved, "/").expect("the moved listener serves").body,
        "a"
    );
    wait_refused(extra);

    // Remove, with a slow request in flight on it.
    let in_flight = std::thread::spawn(move || {
        support::raw_request(moved, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
    });
    wait_until(PATIENCE, "the slow request to reach the upstream", || {
        let active = proxy.stats().0["listeners"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == "extra"))
            .map(|l| l["active"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        if active > 0 {
            Ok(())
        } else {
            Err("no active connection".into())
        }
    });
    let response = proxy.put_config(&backends.table_a());
    assert_eq!(response.status, 200, "{}", response.body);
    let names: Vec<String> = proxy.listeners_now().into_keys().collect();
    assert_eq!(names, ["main"]);
    wait_refused(moved);
    // It finished on the config it started with, and then the connection closed.
    let slow = in_flight
        .join()
        .expect("thread")
        .expect("the in-flight request finished and the connection closed");
    assert_eq!((slow.status, slow.body.as_str()), (200, "a"));
    assert_eq!(proxy.generation(), 4);
    assert!(proxy.worker_generations().iter().all(|&g| g == 4));

    let report = probe.stop();
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert_eq!(report.non_2xx(), 0, "{}", report.summary());
    assert!(report.answers.len() > 100, "{}", report.summary());
}

/// Waits until connecting to `address` is refused: a stopped listener first serves what is
/// already in its accept queue, then closes.
fn wait_refused(address: SocketAddr) {
    wait_until(PATIENCE, format!("{address} to refuse connections"), || {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// `--watch` reloads when the file changes (once, after it settles) and rejects a broken file
/// like any reload; SIGHUP and `POST /reload` reread it too, and `/config_dump` shows the
/// generation every worker runs.
fn watch_sighup_and_post_reload_reread_the_file(driver: Driver) {
    let backends = Backends::new();
    let proxy = Proxy::builder(&backends.table_a(), driver)
        .arg("--watch")
        .start();
    let main = proxy.listener("main");
    let wait_generation = |n: u64| {
        wait_until(PATIENCE, format!("generation {n}"), || {
            let dump = proxy.admin_get("/config_dump").json();
            let workers: Vec<u64> = dump["workers"]
                .as_array()
                .expect("workers")
                .iter()
                .map(|w| w["generation"].as_u64().unwrap_or(0))
                .collect();
            if dump["generation"] == n && workers.iter().all(|&g| g == n) {
                Ok(())
            } else {
                Err(format!("{} {workers:?}", dump["generation"]))
            }
        })
    };

    std::fs::write(proxy.config_path(), backends.table_split()).expect("write");
    wait_generation(2);
    assert!(["b", "c"].contains(&get(main, "/").expect("get").body.as_str()));

    // A broken file is counted and changes nothing.
    std::fs::write(proxy.config_path(), "[[listeners]\n").expect("write");
    wait_until(PATIENCE, "the broken file to be rejected", || {
        let failed = proxy.metric("ringmesh_config_reload_failed_total");
        if failed == 1.0 {
            Ok(())
        } else {
            Err(format!("{failed}"))
        }
    });
    assert_eq!(proxy.generation(), 2);

    std::fs::write(proxy.config_path(), backends.table_a()).expect("write");
    wait_generation(3);
    assert_eq!(get(main, "/").expect("get").body, "a");

    // Rewriting the same content (a touch) is not a change.
    std::fs::write(proxy.config_path(), backends.table_a()).expect("write");
    std::thread::sleep(Duration::from_millis(600)); // longer than the watch's settle time
    assert_eq!(proxy.generation(), 3);

    proxy.signal(Signal::SIGHUP);
    wait_generation(4);
    let response = proxy.admin_call("POST", "/reload", "");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["generation"], 5);
    wait_generation(5);
}
