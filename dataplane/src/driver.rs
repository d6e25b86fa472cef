//! Choosing and building the I/O driver of a worker runtime.
//!
//! io_uring is the fast path, but Docker's and containerd's default seccomp profiles block it, some
//! kernels disable it (`kernel.io_uring_disabled`), and rings count against `RLIMIT_MEMLOCK` for
//! non-root users on older kernels. So the driver is chosen once at start by probing: `auto` tries
//! io_uring with the configured setup flags and falls back to epoll with one log line saying why.
//!
//! Setup flags matter more than anything else here: measured on this project's machines, a plain
//! ring cost ~25 % more CPU per proxied request than epoll, while COOP_TASKRUN + TASKRUN_FLAG made
//! it ~15 % cheaper than epoll (the kernel stops interrupting the worker to run completions).

use std::fmt;
use std::io;

use config_schema::{IoMode, UringSetup};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// The I/O driver a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring with the given setup flags.
    Uring(UringSetup),
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl IoDriver {
    /// The name shown in `/stats` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::Uring(_) => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

impl fmt::Display for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoDriver::Uring(UringSetup::CoopTaskrun) => f.write_str("io_uring (coop_taskrun)"),
            IoDriver::Uring(UringSetup::DeferTaskrun) => f.write_str("io_uring (defer_taskrun)"),
            IoDriver::Uring(UringSetup::Plain) => f.write_str("io_uring (plain)"),
            IoDriver::Epoll => f.write_str("epoll"),
        }
    }
}

/// The result of [`choose`]: the driver, and why io_uring was not used when it was wanted.
#[derive(Debug)]
pub struct DriverChoice {
    /// The driver every worker will run.
    pub driver: IoDriver,
    /// Set when `auto` fell back to epoll, or when the requested ring flags were unsupported.
    pub note: Option<String>,
}

/// Picks the driver for `mode`, probing io_uring with a throwaway ring of `entries` entries.
///
/// `uring` fails when io_uring cannot be set up; `auto` falls back to epoll.
pub fn choose(mode: IoMode, setup: UringSetup, entries: u32) -> Result<DriverChoice, String> {
    if mode == IoMode::Epoll {
        return Ok(DriverChoice {
            driver: IoDriver::Epoll,
            note: None,
        });
    }
    match probe(setup, entries) {
        Ok(()) => Ok(DriverChoice {
            driver: IoDriver::Uring(setup),
            note: None,
        }),
        // Older kernels (< 5.19 for COOP_TASKRUN, < 6.1 for DEFER_TASKRUN) reject the flags.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && setup != UringSetup::Plain => probe(
            UringSetup::Plain,
            entries,
        )
        .map_err(|e| explain(&e, entries))
        .map(|()| DriverChoice {
            driver: IoDriver::Uring(UringSetup::Plain),
            note: Some(format!(
                "the kernel rejected io_uring setup flags {setup:?}; running plain io_uring, \
                         which costs more CPU per request"
            )),
        }),
        Err(e) if mode == IoMode::Auto => Ok(DriverChoice {
            driver: IoDriver::Epoll,
            note: Some(format!("{}; falling back to epoll", explain(&e, entries))),
        }),
        Err(e) => Err(explain(&e, entries)),
    }
}

fn uring_builder(setup: UringSetup) -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    match setup {
        UringSetup::CoopTaskrun => {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        UringSetup::DeferTaskrun => {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        UringSetup::Plain => {}
    }
    builder
}

fn probe(setup: UringSetup, entries: u32) -> io::Result<()> {
    uring_builder(setup).build(entries).map(drop)
}

/// Turns a ring setup error into advice an operator can act on.
fn explain(error: &io::Error, entries: u32) -> String {
    match error.raw_os_error() {
        Some(libc::ENOMEM) => {
            let limit = memlock_limit_kib()
                .map_or_else(|| "unknown".to_owned(), |kib| format!("{kib} KiB"));
            format!(
                "io_uring setup failed for lack of locked memory (RLIMIT_MEMLOCK is {limit}; a ring of \
                 {entries} entries per worker needs more). Raise it with `ulimit -l unlimited`, \
                 `LimitMEMLOCK=infinity` in the systemd unit, or the IPC_LOCK capability in Kubernetes; \
                 or lower runtime.ring_entries, or run with --io epoll"
            )
        }
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => format!(
            "io_uring is not permitted here ({error}): a seccomp profile (Docker, containerd) or \
             the sysctl kernel.io_uring_disabled blocks it; allow io_uring_setup/enter/register or \
             run with --io epoll"
        ),
        _ => format!("io_uring setup failed: {error}"),
    }
}

fn memlock_limit_kib() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which lives on this stack frame.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur / 1024)
}

/// Runs `make()`'s future to completion on a new runtime of `driver`, with timers enabled.
///
/// Each worker calls this on its own thread; the runtime lives and dies with that thread.
pub fn block_on<F, Fut>(driver: IoDriver, entries: u32, make: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future,
{
    match driver {
        IoDriver::Uring(setup) => {
            let mut runtime = RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(entries)
                .uring_builder(uring_builder(setup))
                .enable_timer()
                .build()
                .map_err(|e| io::Error::new(e.kind(), explain(&e, entries)))?;
            Ok(runtime.block_on(make()))
        }
        IoDriver::Epoll => {
            let mut runtime = RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()?;
            Ok(runtime.block_on(make()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_is_always_available() {
        let choice = choose(IoMode::Epoll, UringSetup::CoopTaskrun, 256).expect("epoll");
        assert_eq!(choice.driver, IoDriver::Epoll);
        assert!(choice.note.is_none());
    }

    #[test]
    fn auto_never_fails() {
        // Whatever this kernel allows, auto must produce a driver that can run a future.
        let choice = choose(IoMode::Auto, UringSetup::CoopTaskrun, 256).expect("auto");
        let answer = block_on(choice.driver, 256, || async { 42 }).expect("runtime builds");
        assert_eq!(answer, 42);
    }

    #[test]
    fn getrlimit_reads_the_memlock_limit() {
        // Exercises the one unsafe call in this module.
        assert!(memlock_limit_kib().is_some());
    }

    #[test]
    fn memlock_errors_tell_how_to_fix_them() {
        let message = explain(&io::Error::from_raw_os_error(libc::ENOMEM), 1024);
        assert!(message.contains("RLIMIT_MEMLOCK"), "{message}");
        assert!(message.contains("LimitMEMLOCK"), "{message}");
        assert!(message.contains("--io epoll"), "{message}");
    }
}
