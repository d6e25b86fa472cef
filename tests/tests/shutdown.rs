//! SIGTERM and SIGINT: the proxy stops accepting at once (new connects are refused), lets open
//! connections finish up to `[runtime] drain_timeout`, closes what is still open at the deadline,
//! and exits 0.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use nix::sys::signal::Signal;
use tests::client::{self, connect, payload};
use tests::upstream::{self, Upstream};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, tcp_listener, wait_until};

const HALF: usize = 512 * 1024;

both_drivers!(
    sigterm_lets_an_open_transfer_finish_and_refuses_new_connections,
    drain_deadline_closes_connections_still_open,
);

fn config(endpoint: SocketAddr, drain_timeout: &str) -> String {
    let listener = tcp_listener("main", &[endpoint], "", "");
    format!("[runtime]\ndrain_timeout = \"{drain_timeout}\"\n{listener}")
}

/// A latch the test opens once; upstream handlers wait on it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().expect("gate lock") = true;
        self.opened.notify_all();
    }

    /// Waits until the gate opens (at most `PATIENCE`); returns whether it did.
    fn wait(&self) -> bool {
        let open = self.open.lock().expect("gate lock");
        let (open, _) = self
            .opened
            .wait_timeout_while(open, PATIENCE, |open| !*open)
            .expect("gate lock");
        *open
    }
}

/// Waits until connects to `address` are refused. A connect that still succeeds is closed at
/// once (the proxy may have accepted it before it stopped listening).
fn wait_refused(address: SocketAddr) {
    wait_until(
        PATIENCE,
        format!("connects to {address} to be refused"),
        || {
            if client::is_refused(address) {
                Ok(())
            } else {
                Err("connect succeeded".into())
            }
        },
    );
}

/// A 1 MiB transfer each way is half done when SIGTERM arrives; it completes byte for byte
/// while new connects are refused and `/ready` says 503, and then the process exits 0 without
/// waiting for the (long) drain timeout.
fn sigterm_lets_an_open_transfer_finish_and_refuses_new_connections(driver: Driver) {
    let upload = payload(2 * HALF, 11);
    let download = Arc::new(payload(2 * HALF, 12));
    let gate = Arc::new(Gate::default());
    let (recordings, recorded) = mpsc::channel();
    let server = {
        let download = Arc::clone(&download);
        let gate = Arc::clone(&gate);
        // First half of the download at once, the second half once the gate opens; everything
        // received is recorded. Connections other than the first are probes: just closed.
        Upstream::spawn(move |stream, index| {
            if index > 0 {
                return;
            }
            let mut writer = stream.try_clone().expect("clone");
            let download = Arc::clone(&download);
            let gate = Arc::clone(&gate);
            let sending = std::thread::spawn(move || {
                writer.write_all(&download[..HALF])?;
                if gate.wait() {
                    writer.write_all(&download[HALF..])?;
                }
                writer.shutdown(Shutdown::Write)
            });
            let received = upstream::read_all(&stream);
            let sent = sending.join().expect("sender");
            let _ = recordings.send((received, sent.map_err(|e| e.to_string())));
        })
    };
    let mut proxy = Proxy::start(&config(server.address(), "60s"), driver, 2);
    let address = proxy.listener("main");

    let mut stream = connect(address);
    stream
        .write_all(&upload[..HALF])
        .expect("first half of the upload");
    let mut first_half = vec![0u8; HALF];
    stream
        .read_exact(&mut first_half)
        .expect("first half of the download");
    assert!(
        first_half == download[..HALF],
        "first half of the download altered"
    );

    proxy.signal(Signal::SIGTERM);
    wait_refused(address);
    let ready = proxy.admin_get("/ready");
    assert_eq!(
        ready.status, 503,
        "draining proxies are not ready: {}",
        ready.body
    );
    assert!(proxy.is_running(), "still draining the open connection");

    gate.open();
    let rest = client::exchange(&stream, &upload[HALF..]);
    assert_eq!(
        rest.len(),
        HALF,
        "second half of the download after SIGTERM"
    );
    assert!(
        rest == download[HALF..],
        "second half of the download altered"
    );
    let (received, sent) = recorded
        .recv_timeout(PATIENCE)
        .expect("the upstream finished");
    assert_eq!(sent, Ok(()), "the upstream could send everything");
    assert_eq!(
        received.len(),
        upload.len(),
        "bytes uploaded across SIGTERM"
    );
    assert!(received == upload, "the upload arrived altered");

    let status = proxy.wait_exit(PATIENCE);
    assert!(status.success(), "exit after draining: {status}");
    assert!(client::is_refused(address));
}

/// A connection still open when the drain timeout expires is closed, and the process exits 0.
/// Until then it is served. SIGINT (Ctrl-C) drains exactly like SIGTERM.
fn drain_deadline_closes_connections_still_open(driver: Driver) {
    let echo = Upstream::echo();
    let mut proxy = Proxy::start(&config(echo.address(), "2s"), driver, 2);
    let address = proxy.listener("main");
    let mut lingering = connect(address);
    client::echo(&mut lingering, b"before SIGINT");

    proxy.signal(Signal::SIGINT);
    wait_refused(address);
    client::echo(&mut lingering, b"served while draining");

    // The client never closes; the deadline must.
    lingering
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut buffer = [0u8; 64];
    match lingering.read(&mut buffer) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the drain deadline to close the connection, got {other:?}"),
    }
    let status = proxy.wait_exit(PATIENCE);
    assert!(status.success(), "exit after the drain deadline: {status}");
    assert!(
        proxy.log().contains("drain timeout"),
        "the log says that connections were cut by the drain timeout"
    );
}
