//! HTTP/2 abuse on raw frames (`tests/python/h2_attack.py`, on hyperframe and hpack) against a
//! proxy with one worker, while a legitimate h2load client uses the same worker: rapid reset
//! (CVE-2023-44487), CONTINUATION floods with large and small frames, PING, PING ACK, SETTINGS
//! and unknown-frame-type floods, WINDOW_UPDATE floods, runs of empty DATA frames, and resets the
//! client provokes from the server ("MadeYouReset", CVE-2025-8671).
//!
//! For each attack: the attacking connection gets GOAWAY(ENHANCE_YOUR_CALM) and is closed before
//! the attacker sends more than the bound (the attacker never sends unit bound + 1, so this
//! holds however slow the machine), the matching counter in `/stats` (`listeners[].http2`) and
//! in Prometheus counts it, the legitimate client gets every answer, the proxy's resident memory
//! stays within `MAX_RSS_GROWTH` of where it was, and afterwards the proxy is idle (no spinning
//! on what is left of the attack). Every test runs on io_uring and on epoll.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::h2::{Background, H2load, MIB, PyServer, RssSampler, h2load_command, rss, run};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

/// ENHANCE_YOUR_CALM.
const ENHANCE_YOUR_CALM: u64 = 0xb;
/// Requests of the legitimate client, at 10 per second from each of 2 connections (3 s; the
/// attack starts once the first 5 have reached the upstream and takes about a second).
const LEGIT_REQUESTS: u64 = 60;
/// The most the proxy's resident memory may grow during an attack.
const MAX_RSS_GROWTH: u64 = 32 * MIB;
/// After the attack, the CPU share (of one core) above which the proxy is taken to be spinning.
const IDLE_CPU_SHARE: f64 = 0.2;
/// Time allowed for an attacker or the legitimate client.
const RUN: Duration = Duration::from_secs(90);

/// The listener's HTTP/2 limits under test. The control-frame budget is smaller than the
/// default (1,000) so that a flood trips it quickly; the rest are the defaults.
const CONTROL_FRAME_BURST: u64 = 500;
const CONTROL_FRAMES_PER_SECOND: u64 = 100;
const MAX_PENDING_ACCEPT_RESET_STREAMS: u64 = 100;
const MAX_CONSECUTIVE_EMPTY_FRAMES: u64 = 10;

both_drivers!(
    rapid_reset_from_four_connections_is_cut_off,
    rapid_reset_of_open_streams_is_cut_off,
    continuation_flood_of_large_frames_is_cut_off,
    continuation_flood_of_small_frames_is_cut_off,
    ping_flood_is_cut_off,
    settings_flood_is_cut_off,
    empty_data_frames_are_cut_off,
    ping_ack_flood_is_cut_off,
    unknown_frame_flood_is_cut_off,
    window_update_flood_is_cut_off,
    made_you_reset_is_cut_off,
    small_window_download_is_not_cut_off,
);

/// A proxy with one worker in front of an HTTP/2 upstream, the limits above, and a legitimate
/// h2load client running against it.
struct Scene {
    upstream: PyServer,
    proxy: Proxy,
    legit: Option<Background>,
}

impl Scene {
    fn start(driver: Driver) -> Self {
        let upstream = PyServer::start("h2_upstream.py", &["--name", "h2"]);
        let config = format!(
            r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
protocol = "http"

[listeners.http2]
max_pending_accept_reset_streams = {MAX_PENDING_ACCEPT_RESET_STREAMS}
control_frame_burst = {CONTROL_FRAME_BURST}
control_frames_per_second = {CONTROL_FRAMES_PER_SECOND}
max_consecutive_empty_frames = {MAX_CONSECUTIVE_EMPTY_FRAMES}

[[virtual_hosts]]
name = "all"
domains = ["*"]

[[virtual_hosts.routes]]
name = "all"
cluster = "backend"

[[clusters]]
name = "backend"
endpoints = ["{upstream}"]
protocol = "h2"
"#,
            upstream = upstream.address()
        );
        // One worker: the attacker and the legitimate client share it.
        let proxy = Proxy::builder(&config, driver)
            .workers(1)
            .log_level("info")
            .start();
        let url = format!("http://{}/bytes/100", proxy.listener("main"));
        let legit = Background::start(h2load_command(&[
            "-n",
            &LEGIT_REQUESTS.to_string(),
            "-c",
            "2",
            "--rps",
            "10",
            &url,
        ]));
        // The legitimate client is under way before the attack starts.
        wait_until(
            PATIENCE,
            "the legitimate client's first requests",
            || match upstream.count("stream") {
                n if n >= 5 => Ok(()),
                n => Err(format!("{n} requests")),
            },
        );
        Scene {
            upstream,
            proxy,
            legit: Some(legit),
        }
    }

    fn port(&self) -> String {
        self.proxy.listener("main").port().to_string()
    }

    /// Runs `attackers` copies of `h2_attack.py PORT ARGS` at once, sampling the proxy's memory;
    /// returns their results and the memory growth.
    fn attack(&self, attackers: usize, args: &[&str]) -> (Vec<Value>, u64) {
        let port = self.port();
        let before = rss(self.proxy.pid());
        let sampler = RssSampler::start(self.proxy.pid());
        let running: Vec<Background> = (0..attackers)
            .map(|_| {
                let mut all = vec![port.as_str()];
                all.extend_from_slice(args);
                Background::start(tests::h2::python_command("h2_attack.py", &all))
            })
            .collect();
        let results = running
            .into_iter()
            .map(|attacker| {
                let output = attacker.finish(RUN);
                assert!(
                    output.status.success(),
                    "attacker {args:?}: {}\n{}",
                    output.status,
                    output.stderr
                );
                let last = output.stdout.lines().last().unwrap_or_default().to_owned();
                serde_json::from_str::<Value>(&last)
                    .unwrap_or_else(|e| panic!("attacker output {last:?}: {e}"))
            })
            .collect();
        let growth = sampler.peak().saturating_sub(before);
        (results, growth)
    }

    /// The legitimate client's summary, once it is done: every request answered 2xx.
    fn legit_ok(&mut self) {
        let output = self
            .legit
            .take()
            .expect("the legitimate client runs")
            .finish(RUN);
        assert!(output.status.success(), "h2load: {}", output.stderr);
        H2load::parse(&output.stdout).assert_all_ok(LEGIT_REQUESTS);
    }

    /// Checks what every attack must show.
    fn check(&mut self, attack: &str, results: &[Value], growth: u64, bound: u64, counter: &str) {
        for result in results {
            eprintln!(
                "{attack}: sent {} before the proxy answered (bound {bound}), GOAWAY {}, \
                 last stream {}, {} s; proxy RSS growth {} KiB",
                result["sent"],
                result["goaway"],
                result["last_stream_id"],
                result["elapsed"],
                growth / 1024
            );
            assert_eq!(
                result["goaway"], ENHANCE_YOUR_CALM,
                "{attack}: GOAWAY(ENHANCE_YOUR_CALM) expected: {result}"
            );
            assert_eq!(
                result["closed"], true,
                "{attack}: the connection must be closed after the GOAWAY: {result}"
            );
            assert!(
                result["sent"].as_u64().is_some_and(|sent| sent <= bound),
                "{attack}: more than {bound} sent: {result}"
            );
        }
        self.legit_ok();
        assert!(
            growth < MAX_RSS_GROWTH,
            "{attack}: the proxy's RSS grew by {} MiB",
            growth / MIB
        );

        let expected = results.len() as u64;
        let stats = self.proxy.stats();
        let http2 = &stats.listener("main")["http2"];
        assert_eq!(
            http2[counter], expected,
            "{attack}: /stats listeners[].http2.{counter}: {http2}"
        );
        let metrics = self.proxy.metrics();
        assert_eq!(
            metrics.value(
                &format!("ringmesh_listener_http2_{counter}_total"),
                &[("listener", "main")]
            ),
            expected as f64,
            "{attack}: Prometheus counter"
        );
        for other in [
            "rapid_reset",
            "control_flood",
            "continuation_flood",
            "empty_frames",
            "window_update_flood",
            "made_you_reset",
        ] {
            if other != counter {
                assert_eq!(
                    http2[other], 0,
                    "{attack}: only {counter} counts it: {http2}"
                );
            }
        }

        // Afterwards, nothing is left running: the proxy is idle.
        let cpu_before = self.proxy.cpu_time();
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(1)); // the measurement window
        let share =
            (self.proxy.cpu_time() - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
        assert!(
            share < IDLE_CPU_SHARE,
            "{attack}: the proxy still uses {:.0} % of a core after the attack",
            share * 100.0
        );
        assert!(
            self.upstream.count("stream") >= LEGIT_REQUESTS as usize,
            "the legitimate requests reached the upstream"
        );
    }
}

/// Four connections open streams and reset them at once, as fast as they can. Each is cut off
/// after at most 1,000 resets (the h2 crate's pending-accept limit and the guard's reset ratio
/// both stand at `MAX_PENDING_ACCEPT_RESET_STREAMS`).
fn rapid_reset_from_four_connections_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 1000;
    let (results, growth) = scene.attack(4, &["rapid-reset", "--bound", "1000", "--batch", "20"]);
    for result in &results {
        // The GOAWAY names the last stream the proxy took in: the resets it processed.
        let processed = result["last_stream_id"]
            .as_u64()
            .map_or(0, |id| id.div_ceil(2));
        assert!(
            processed <= bound,
            "the proxy processed {processed} streams before its GOAWAY: {result}"
        );
    }
    scene.check(
        "rapid reset (4 connections)",
        &results,
        growth,
        bound,
        "rapid_reset",
    );
}

/// The same with requests whose body never comes, so each stream is open upstream when it is
/// reset: the proxy must cut the connection off and cancel what it started.
fn rapid_reset_of_open_streams_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let (results, growth) =
        scene.attack(1, &["rapid-reset-open", "--bound", "1000", "--batch", "20"]);
    scene.check(
        "rapid reset of open streams",
        &results,
        growth,
        1000,
        "rapid_reset",
    );
}

/// A header block that never ends, in 16 KiB frames: with a 64 KiB header list limit, the proxy
/// closes the connection by the 6th frame (the block may outgrow the list limit by one frame).
fn continuation_flood_of_large_frames_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 6;
    let (results, growth) = scene.attack(
        1,
        &[
            "continuation",
            "--bound",
            "6",
            "--frame-size",
            "16384",
            "--step-wait",
            "0.05",
        ],
    );
    scene.check(
        "CONTINUATION flood, 16 KiB frames",
        &results,
        growth,
        bound,
        "continuation_flood",
    );
}

/// The same in 1 KiB frames, which stay far below the header list limit for a long time: the
/// proxy must not wait for 64 KiB of them (h2 allows 5 CONTINUATION frames per 64 KiB list
/// at 16 KiB frames, whatever their size), so the connection is closed by the 7th frame.
fn continuation_flood_of_small_frames_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 7;
    let (results, growth) = scene.attack(
        1,
        &[
            "continuation",
            "--bound",
            "7",
            "--frame-size",
            "1024",
            "--step-wait",
            "0.05",
        ],
    );
    scene.check(
        "CONTINUATION flood, 1 KiB frames",
        &results,
        growth,
        bound,
        "continuation_flood",
    );
}

/// PINGs as fast as the socket takes them: closed once the burst and the sustained rate are
/// spent; the bound is twice the burst, which covers the refill of a slow attack.
fn ping_flood_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 2 * CONTROL_FRAME_BURST;
    let (results, growth) =
        scene.attack(1, &["ping", "--bound", &bound.to_string(), "--batch", "50"]);
    scene.check("PING flood", &results, growth, bound, "control_flood");
}

/// SETTINGS frames, the same way.
fn settings_flood_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 2 * CONTROL_FRAME_BURST;
    let (results, growth) = scene.attack(
        1,
        &["settings", "--bound", &bound.to_string(), "--batch", "50"],
    );
    scene.check("SETTINGS flood", &results, growth, bound, "control_flood");
}

/// Empty DATA frames without END_STREAM on an open stream: closed at the first frame past
/// `MAX_CONSECUTIVE_EMPTY_FRAMES`.
fn empty_data_frames_are_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = MAX_CONSECUTIVE_EMPTY_FRAMES + 1;
    let (results, growth) = scene.attack(
        1,
        &[
            "empty-data",
            "--bound",
            &bound.to_string(),
            "--step-wait",
            "0.05",
        ],
    );
    scene.check("empty DATA frames", &results, growth, bound, "empty_frames");
}

/// PING ACKs nobody asked for spend the control-frame budget as PINGs do.
fn ping_ack_flood_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 2 * CONTROL_FRAME_BURST;
    let (results, growth) = scene.attack(
        1,
        &["ping-ack", "--bound", &bound.to_string(), "--batch", "50"],
    );
    scene.check("PING ACK flood", &results, growth, bound, "control_flood");
}

/// Frames of a type the server does not know: parsed and dropped, so they spend the
/// control-frame budget too.
fn unknown_frame_flood_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 2 * CONTROL_FRAME_BURST;
    let (results, growth) = scene.attack(
        1,
        &["unknown", "--bound", &bound.to_string(), "--batch", "50"],
    );
    scene.check(
        "unknown frame flood",
        &results,
        growth,
        bound,
        "control_flood",
    );
}

/// WINDOW_UPDATEs on a connection that was sent no data: past the 100 free ones, they spend the
/// control-frame budget; the bound is the free ones plus twice the burst.
fn window_update_flood_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let bound = 100 + 2 * CONTROL_FRAME_BURST;
    let (results, growth) = scene.attack(
        1,
        &[
            "window-update",
            "--bound",
            &bound.to_string(),
            "--batch",
            "50",
        ],
    );
    scene.check(
        "WINDOW_UPDATE flood",
        &results,
        growth,
        bound,
        "window_update_flood",
    );
}

/// Requests each followed by a PRIORITY frame that makes the stream depend on itself, which the
/// server must answer by resetting the stream: counted as resets, so the connection is cut off
/// as a rapid reset one is (at most 1,000 units, the bound of the rapid reset tests).
fn made_you_reset_is_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let (results, growth) = scene.attack(1, &["self-priority", "--bound", "1000", "--batch", "20"]);
    scene.check(
        "MadeYouReset (self-dependent PRIORITY)",
        &results,
        growth,
        1000,
        "made_you_reset",
    );
}

/// The other side of the WINDOW_UPDATE budget: a client with 1 KiB windows downloading 1 MiB
/// bodies sends a WINDOW_UPDATE for about every 512 bytes it reads, thousands of them, far
/// beyond the free ones and the burst; they answer the DATA the proxy sent, so nothing is cut
/// off and no abuse is counted.
fn small_window_download_is_not_cut_off(driver: Driver) {
    let mut scene = Scene::start(driver);
    let url = format!("http://{}/bytes/{MIB}", scene.proxy.listener("main"));
    let output = run(
        h2load_command(&["-n", "4", "-c", "1", "-w", "10", "-W", "10", &url]),
        RUN,
    );
    assert!(output.status.success(), "h2load: {}", output.stderr);
    H2load::parse(&output.stdout).assert_all_ok(4);
    scene.legit_ok();
    let stats = scene.proxy.stats();
    let http2 = &stats.listener("main")["http2"];
    for counter in ["window_update_flood", "control_flood", "empty_frames"] {
        assert_eq!(http2[counter], 0, "{counter}: {http2}");
    }
}
