//! Support code for ringmesh's black-box integration tests.
//!
//! The tests in `tests/tests/*.rs` drive the real `ringmesh` binary as a subprocess over real
//! sockets bound to port 0, the way an operator and its clients would. This library holds what they
//! share, so that later HTTP, HTTP/2 and reload tests reuse it instead of growing their own:
//!
//! - [`proxy`]: finding the binary, [`Proxy`] (start with a config on a chosen [`Driver`], wait for
//!   `/ready`, map listener names to bound addresses, signal it, reload it through its file,
//!   read its CPU time, open files and TCP connections, print its log when a test fails),
//!   [`run_ringmesh`] for short-lived commands, and [`tcp_listener`] to write the common L4
//!   config.
//! - [`admin`]: a minimal HTTP/1.1 GET client for the admin API, the `/stats` JSON
//!   ([`admin::Stats`]) and a Prometheus text parser ([`admin::Metrics`]).
//! - [`peers`]: third-party servers as upstreams (uvicorn, hypercorn, aiohttp), a Python `h2`
//!   client that abandons its request on cue, and curl with a stall limit for big transfers.
//! - [`upstream`]: in-test upstreams on std threads: echo, scripted handlers, resetting servers, a
//!   recording server that may speak first, a blackhole address (connects time out) and a
//!   refused address.
//! - [`client`]: client-side helpers: connect with timeouts, byte-exact exchanges, waiting for a
//!   close, threads pinned to each core.
//! - [`exchange`]: the four (client protocol × cluster protocol) pairs of the HTTP request path,
//!   [`exchange_pairs!`] to generate a test per pair and driver, one client for both protocols
//!   (whose request body may trickle), and a one-worker proxy in front of `h2_upstream.py` to run
//!   them against.
//! - [`netns`]: the node-mode [`netns::Testbed`] (nodes and pods as network namespaces), sockets
//!   opened inside a namespace ([`netns::connect`], [`netns::bind`]) and link captures;
//!   `Proxy::builder(..).netns(ns)` runs ringmesh in a node namespace.
//! - [`wait`]: bounded polling. Tests never sleep to wait for readiness; they poll a condition
//!   with a deadline and fail with the last state they saw.
//!
//! Every test that touches sockets runs on both I/O drivers: write it as `fn name(driver: Driver)`
//! and list it in [`both_drivers!`], which generates `name::uring` and `name::epoll` tests.
//!
//! The binary is not built by these tests: run `scripts/test`, or `cargo build --bins` before
//! `cargo nextest run`. `RINGMESH_BIN` points the tests at another binary.

pub mod admin;
pub mod client;
pub mod exchange;
pub mod h2;
pub mod http;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod proxy;
pub mod upstream;
pub mod wait;

pub use admin::{Metrics, Stats};
pub use proxy::{Driver, Proxy, repo_root, ringmesh_bin, run_ringmesh, tcp_listener};
pub use wait::wait_until;

/// Generates, for each named `fn name(driver: Driver)`, a module `name` with the tests `uring` and
/// `epoll`, so that a failure names the driver (`half_close::epoll`).
///
/// ```ignore
/// fn half_close(driver: Driver) { /* ... */ }
/// tests::both_drivers!(half_close);
/// ```
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name($crate::Driver::Uring)
            }

            #[test]
            fn epoll() {
                super::$name($crate::Driver::Epoll)
            }
        }
    )+};
}

/// True when the running kernel is at least `major.minor` (from `/proc/sys/kernel/osrelease`).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// The path of an external tool the tests need (curl, nginx, h2load, prlimit ...), found on
/// `PATH`. Panics with an install hint when it is missing: `.ci/run` installs all of them.
pub fn tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed or not on PATH; `.ci/run` installs the test tools")
        })
}

/// The Python interpreter of the test virtualenv (with `h2`, `hyperframe`, `grpcio`, `uvicorn`,
/// `hypercorn`, `aiohttp`):
/// `RINGMESH_PYTHON` when set (`.ci/run` sets it), else `.venv/bin/python3` at the repository root.
pub fn python() -> std::path::PathBuf {
    if let Some(python) = std::env::var_os("RINGMESH_PYTHON") {
        return python.into();
    }
    let venv = repo_root().join(".venv/bin/python3");
    assert!(
        venv.is_file(),
        "no test virtualenv at {}: run `.ci/run`, or set RINGMESH_PYTHON",
        venv.display()
    );
    venv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_is_at_least_linux_3() {
        assert!(kernel_at_least(3, 0));
        assert!(!kernel_at_least(999, 0));
    }
}
