//! Running out of file descriptors: under `prlimit --nofile=256`, accept fails with EMFILE. The
//! proxy must pause accepting rather than spin, count the failures, and serve again once
//! descriptors are free.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tests::client::{self, connect, try_connect};
use tests::upstream::Upstream;
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, tcp_listener, wait_until};

/// Open-file limit of the proxy under test.
const NOFILE: usize = 256;
/// Connections opened on top of those that exhaust the limit.
const EXTRA: usize = 150;
/// How long the proxy's CPU time is measured while it is out of descriptors.
const WINDOW: Duration = Duration::from_secs(2);
/// The CPU share (of one core) above which the proxy is taken to be spinning. Generous: this is
/// a behaviour check, not a speed measurement. A proxy that backs off uses next to nothing; one
/// that spins used 40 % here, on a busy machine, logging every failure (the accept error count
/// below catches spinning whatever the load).
const MAX_CPU_SHARE: f64 = 0.20;

both_drivers!(emfile_pauses_accepting_without_spinning_and_recovers);

fn emfile_pauses_accepting_without_spinning_and_recovers(driver: Driver) {
    let echo = Upstream::echo();
    let config = tcp_listener("main", &[echo.address()], "", "");
    let mut proxy = Proxy::builder(&config, driver)
        .workers(2)
        .nofile(NOFILE as u32)
        .start();
    let address = proxy.listener("main");

    // Proxied connections until every descriptor is in use. Each takes two (downstream and
    // upstream). With exactly one left, a connection is accepted but its upstream socket fails
    // and it is closed; then an idle admin connection takes the last descriptor.
    let mut clients: Vec<TcpStream> = Vec::new();
    let mut last_descriptor: Option<TcpStream> = None;
    while proxy.open_fds() < NOFILE {
        assert!(
            clients.len() < NOFILE,
            "{} connections and still not out of files",
            clients.len()
        );
        let mut stream = connect(address);
        match client::try_echo(&mut stream, b"x") {
            Ok(()) => clients.push(stream),
            Err(_) => {
                assert!(
                    last_descriptor.is_none(),
                    "a second connection failed before EMFILE"
                );
                last_descriptor = Some(connect(proxy.admin_address()));
                wait_until(
                    PATIENCE,
                    "the admin API to take the last descriptor",
                    || {
                        let open = proxy.open_fds();
                        if open >= NOFILE {
                            Ok(())
                        } else {
                            Err(format!("{open} open"))
                        }
                    },
                );
            }
        }
    }
    // The kernel completes these handshakes; the proxy cannot accept them.
    let extra: Vec<TcpStream> = (0..EXTRA).map(|_| connect(address)).collect();
    let opened = clients.len() + extra.len() + usize::from(last_descriptor.is_some());
    assert!(opened > NOFILE, "opened {opened} connections");

    let cpu_before = proxy.cpu_time();
    let started = Instant::now();
    std::thread::sleep(WINDOW); // the measurement window, not a wait for readiness
    let cpu = proxy.cpu_time() - cpu_before;
    let elapsed = started.elapsed();
    assert_eq!(
        proxy.open_fds(),
        NOFILE,
        "still out of descriptors during the measurement"
    );
    assert!(proxy.is_running(), "the proxy survived EMFILE");
    let share = cpu.as_secs_f64() / elapsed.as_secs_f64();
    assert!(
        share < MAX_CPU_SHARE,
        "the proxy used {cpu:?} of CPU in {elapsed:?} ({:.0} % of a core) while out of \
         descriptors: it is busy-looping on accept",
        share * 100.0
    );

    // Free the descriptors: the proxy serves again.
    drop(clients);
    drop(extra);
    drop(last_descriptor);
    wait_until(
        PATIENCE,
        "a new connection to be served after EMFILE",
        || {
            let mut stream = try_connect(address).map_err(|e| e.to_string())?;
            client::try_echo(&mut stream, b"served again").map_err(|e| e.to_string())
        },
    );
    assert_eq!(proxy.admin_get("/healthz").status, 200);
    let errors = proxy.stats().listener_counter("main", "accept_errors");
    assert!(errors > 0, "accept errors must be counted");
    // A spinning accept loop would count an error per try, hundreds of thousands a second;
    // backing off, it counts a few per second per worker.
    assert!(
        errors < 1000,
        "{errors} accept errors: the accept loop does not back off"
    );
}
