//! Binary upgrade, black box: a new `ringmesh` takes the listening sockets over from the running
//! one through the upgrade socket; under load, no connection is refused or reset and no request
//! fails, across worker-count changes; a failed upgrade leaves the old process serving.
//!
//! Requires the binaries (`cargo build --bins`).

mod support;

use support::{HttpUpstream, Load, TOKEN, get};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, wait_until};

tests::both_drivers!(
    upgrades_under_load_refuse_and_reset_nothing,
    a_failed_upgrade_leaves_the_old_process_serving,
);

fn config(upstream: &HttpUpstream, socket: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[runtime]
drain_timeout = "5s"
upgrade_socket = "{socket}"

[[listeners]]
name = "web"
address = "127.0.0.1:0"
protocol = "http"
{extra}
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
        socket = socket.display(),
        app = upstream.address(),
    )
}

/// Three upgrades in a row (2 → 3 → 1 → 2 workers) under keep-alive load and under a client that opens
/// a new connection for every request: nothing is refused, reset or left unanswered, the listener
/// keeps its address, each old process exits once drained, and the last one serves alone.
fn upgrades_under_load_refuse_and_reset_nothing(driver: Driver) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("upgrade.sock");
    let app = HttpUpstream::http("app");
    let text = config(&app, &socket, "");

    let mut old = Proxy::builder(&text, driver)
        .workers(2)
        .log_level("info")
        .start();
    let web = old.listener("web");
    let keep_alive = Load {
        address: web,
        connections: 8,
        rate: 800.0,
        connection_per_request: false,
    }
    .start();
    let fresh = Load {
        address: web,
        connections: 4,
        rate: 400.0,
        connection_per_request: true,
    }
    .start();
    wait_until(PATIENCE, "load to arrive", || {
        if app.served() > 200 {
            Ok(())
        } else {
            Err(format!("{}", app.served()))
        }
    });

    for workers in [3, 1, 2] {
        let served_before = app.served();
        let new = Proxy::builder(&text, driver)
            .workers(workers)
            .log_level("info")
            .arg("--upgrade-from")
            .arg(socket.display().to_string())
            .start();
        assert_eq!(new.listener("web"), web, "the listener keeps its address");
        let status = old.wait_exit(PATIENCE);
        assert!(
            status.success(),
            "the old process exits 0 after draining: {status}"
        );
        let log = old.log();
        assert!(
            log.contains("binary upgrade: the new process serves"),
            "{log}"
        );
        assert!(log.contains("drained; exiting"), "{log}");
        assert!(
            new.log()
                .contains("adopting listening sockets from the previous process"),
            "{}",
            new.log()
        );
        // The new process serves: new requests keep arriving at the upstream (about a second's
        // worth, so that each process serves under load for a while).
        wait_until(PATIENCE, "traffic through the new process", || {
            let accepted = new.stats().0["listeners"][0]["accepted"]
                .as_u64()
                .unwrap_or(0);
            if accepted > 10 && app.served() > served_before + 1200 {
                Ok(())
            } else {
                Err(format!("accepted {accepted}, served {}", app.served()))
            }
        });
        old = new;
    }

    let keep_alive = keep_alive.stop();
    let fresh = fresh.stop();
    eprintln!("{driver:?} keep-alive: {}", keep_alive.summary());
    eprintln!("{driver:?} new connections: {}", fresh.summary());
    for (what, report) in [("keep-alive", &keep_alive), ("new connections", &fresh)] {
        assert_eq!(report.refused, 0, "{what}: {}", report.summary());
        assert_eq!(report.resets, 0, "{what}: {}", report.summary());
        assert_eq!(report.failures(), 0, "{what}: {}", report.summary());
        assert_eq!(report.non_2xx(), 0, "{what}: {}", report.summary());
        assert!(report.answers.len() > 500, "{what}: {}", report.summary());
    }
    assert!(
        keep_alive.connects > 8,
        "keep-alive clients reconnected after the old processes closed: {}",
        keep_alive.summary()
    );
    assert_eq!(old.stats().0["workers"].as_array().map(Vec::len), Some(2));
}

/// A new process that cannot start (here: the admin token file is missing, which only loading
/// the config finds, after the sockets were received) exits with an error; the old one never
/// stops accepting and can still be upgraded.
fn a_failed_upgrade_leaves_the_old_process_serving(driver: Driver) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("upgrade.sock");
    let app = HttpUpstream::http("app");
    let good = config(&app, &socket, "");
    let old = Proxy::builder(&good, driver).log_level("info").start();
    let web = old.listener("web");

    let broken = good.replace(
        &format!("token = \"{TOKEN}\""),
        "token_file = \"/nonexistent/admin-token\"",
    );
    assert_ne!(broken, good);
    let broken_path = dir.path().join("broken.toml");
    std::fs::write(&broken_path, broken).expect("write");
    let output = std::process::Command::new(tests::ringmesh_bin())
        .arg("--config")
        .arg(&broken_path)
        .args(["--io", driver.flag(), "--workers", "1"])
        .arg("--upgrade-from")
        .arg(&socket)
        .output()
        .expect("run ringmesh");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin.token_file"), "{stderr}");

    wait_until(
        PATIENCE,
        "the old process to log the aborted upgrade",
        || {
            if old
                .log()
                .contains("binary upgrade aborted; this process keeps serving")
            {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    assert_eq!(get(web, "/").expect("still served").body, "app");
    assert_eq!(old.admin_get("/ready").status, 200);

    // The upgrade socket still works.
    let mut old = old;
    let new = Proxy::builder(&good, driver)
        .log_level("info")
        .arg("--upgrade-from")
        .arg(socket.display().to_string())
        .start();
    assert!(old.wait_exit(PATIENCE).success());
    assert_eq!(get(new.listener("web"), "/").expect("served").body, "app");
}
