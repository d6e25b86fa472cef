//! The admin API of a running proxy: every endpoint, its refusals, and that `/stats` and
//! `/stats/prometheus` count the traffic that really went through.

use std::process::Command;

use tests::admin::{self, Metrics};
use tests::client::{self, connect};
use tests::upstream::Upstream;
use tests::{Driver, Proxy, both_drivers};

both_drivers!(admin_endpoints_report_the_running_proxy);

fn admin_endpoints_report_the_running_proxy(driver: Driver) {
    let echo = Upstream::echo();
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"
token = "s3cret-admin-token"

[telemetry]
source_workload = "tests"

[[listeners]]
name = "echo"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "backend"

[[clusters]]
name = "backend"
endpoints = ["{echo}"]
"#,
        echo = echo.address()
    );
    let proxy = Proxy::start(&config, driver, 2);

    // Health and readiness.
    let health = proxy.admin_get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(proxy.admin_get("/ready").status, 200);

    // /listeners: the configured and the bound address.
    let listeners: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/listeners").body).expect("/listeners is JSON");
    assert_eq!(listeners.as_array().map(Vec::len), Some(1), "{listeners:#}");
    assert_eq!(listeners[0]["name"], "echo");
    assert_eq!(listeners[0]["address"], "127.0.0.1:0");
    assert_eq!(listeners[0]["protocol"], "tcp");
    let bound = proxy.listener("echo");
    assert_ne!(bound.port(), 0, "port 0 is replaced by the bound port");

    // /config_dump: the active config, generation 1, secrets redacted.
    let dump = proxy.admin_get("/config_dump");
    assert_eq!(dump.status, 200);
    assert!(
        !dump.body.contains("s3cret"),
        "the admin token leaks: {}",
        dump.body
    );
    let dump: serde_json::Value = serde_json::from_str(&dump.body).expect("/config_dump is JSON");
    assert_eq!(dump["generation"], 1);
    assert_eq!(dump["config"]["admin"]["token"], "<redacted>");
    assert_eq!(dump["config"]["listeners"][0]["name"], "echo");
    assert_eq!(
        dump["config"]["clusters"][0]["endpoints"][0]["address"],
        echo.address().to_string()
    );

    // /stats before traffic.
    let stats = proxy.stats();
    assert_eq!(stats.driver(), driver.stats_name());
    assert_eq!(stats.0["generation"], 1);
    let workers = stats.workers();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w.generation == 1), "{workers:?}");
    if client::cores().len() >= 2 {
        assert_ne!(
            workers[0].core, workers[1].core,
            "workers pinned to different cores"
        );
    }
    assert_eq!(stats.listener("echo")["local_address"], bound.to_string());
    assert_eq!(stats.listener_counter("echo", "accepted"), 0);

    // Traffic: three connections of known sizes.
    let mut sent = 0;
    for i in 0..3 {
        let mut stream = connect(bound);
        let message = client::payload(1000 * (i + 1), i as u64);
        client::echo(&mut stream, &message);
        sent += message.len() as u64;
    }
    proxy.wait_listener_counter("echo", "closed", 3);
    let stats = proxy.stats();
    assert_eq!(stats.listener_counter("echo", "accepted"), 3);
    assert_eq!(stats.listener_counter("echo", "active"), 0);
    assert_eq!(stats.listener_counter("echo", "bytes_received"), sent);
    assert_eq!(stats.listener_counter("echo", "bytes_sent"), sent);
    assert_eq!(stats.per_worker("echo", "accepted").iter().sum::<u64>(), 3);
    assert_eq!(stats.cluster_counter("backend", "upstream_connections"), 3);

    // The Prometheus view of the same counters.
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.value(
            "ringmesh_info",
            &[("driver", driver.stats_name()), ("workers", "2")]
        ),
        1.0
    );
    let listener = [("listener", "echo")];
    assert_eq!(
        metrics.value("ringmesh_listener_connections_accepted_total", &listener),
        3.0
    );
    assert_eq!(
        metrics.value("ringmesh_listener_connections_closed_total", &listener),
        3.0
    );
    assert_eq!(
        metrics.value("ringmesh_listener_connections_active", &listener),
        0.0
    );
    assert_eq!(
        metrics.value("ringmesh_listener_received_bytes_total", &listener),
        sent as f64
    );
    assert_eq!(
        metrics.value("ringmesh_listener_sent_bytes_total", &listener),
        sent as f64
    );
    assert_eq!(
        metrics.sum("ringmesh_worker_connections_accepted_total", &listener),
        3.0
    );
    assert_eq!(
        metrics.value(
            "ringmesh_cluster_upstream_connections_total",
            &[("cluster", "backend")]
        ),
        3.0
    );
    let istio = [
        ("listener", "echo"),
        ("destination_service", "backend"),
        ("source_workload", "tests"),
        // A plaintext listener reports as the caller's side (Istio's outbound or gateway).
        ("reporter", "source"),
    ];
    assert_eq!(
        metrics.value("istio_tcp_connections_opened_total", &istio),
        3.0
    );
    assert_eq!(
        metrics.value("istio_tcp_connections_closed_total", &istio),
        3.0
    );
    assert_eq!(
        metrics.value("istio_tcp_received_bytes_total", &istio),
        sent as f64
    );
    assert_eq!(
        metrics.value("istio_tcp_sent_bytes_total", &istio),
        sent as f64
    );
    assert_eq!(metrics.value("ringmesh_config_generation", &[]), 1.0);

    // Refusals.
    let address = proxy.admin_address();
    assert_eq!(proxy.admin_get("/no-such-endpoint").status, 404);
    let post = admin::request(
        address,
        "POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n",
    )
    .expect("POST");
    assert_eq!(post.status, 405);
    let rebinding = admin::request(
        address,
        "GET /stats HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .expect("GET with a foreign Host");
    assert_eq!(rebinding.status, 403, "DNS rebinding defence");
    let garbage = admin::request(address, "NOT HTTP AT ALL\r\n\r\n").expect("garbage");
    assert_eq!(garbage.status, 400);

    // A real client, as an operator would use it.
    let curl = Command::new(tests::tool("curl"))
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .arg(format!("http://{address}/stats/prometheus"))
        .output()
        .expect("run curl");
    assert!(
        curl.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let scraped =
        Metrics::parse(&String::from_utf8_lossy(&curl.stdout)).expect("curl's scrape parses");
    assert_eq!(
        scraped.value("ringmesh_listener_connections_accepted_total", &listener),
        3.0
    );
}
