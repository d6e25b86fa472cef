//! monoio runtimes for the generator and the upstream, on io_uring or epoll, pinned to a core.
//!
//! The same choice as the proxy's (`dataplane/src/driver.rs`), kept separate so the harness does
//! not link the data plane: io_uring with COOP_TASKRUN + TASKRUN_FLAG (the cheapest setup measured
//! here), plain io_uring on kernels that reject the flags, epoll when io_uring is unavailable.

use std::future::Future;
use std::io;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use serde::{Deserialize, Serialize};

/// Submission queue entries per ring.
const RING_ENTRIES: u32 = 1024;

/// Which I/O driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Io {
    /// io_uring when available, epoll otherwise.
    Auto,
    /// io_uring only.
    Uring,
    /// epoll only.
    Epoll,
}

impl Io {
    /// Resolves `Auto` to the driver this machine allows.
    pub fn resolve(self) -> Io {
        match self {
            Io::Auto if uring_available() => Io::Uring,
            Io::Auto => Io::Epoll,
            other => other,
        }
    }

    /// The name used in reports and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Io::Auto => "auto",
            Io::Uring => "uring",
            Io::Epoll => "epoll",
        }
    }
}

fn uring_builder(flags: bool) -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    if flags {
        builder.setup_coop_taskrun().setup_taskrun_flag();
    }
    builder
}

/// Whether an io_uring ring can be set up here (seccomp, sysctl and RLIMIT_MEMLOCK allowing).
pub fn uring_available() -> bool {
    uring_builder(false).build(RING_ENTRIES).is_ok()
}

/// Runs `future` to completion on a new runtime of `io` (with timers) on the current thread.
pub fn block_on<F: Future>(io: Io, future: F) -> io::Result<F::Output> {
    match io.resolve() {
        Io::Uring => {
            // Kernels before 5.19 reject the taskrun flags; plain io_uring still works there.
            let flags = uring_builder(true).build(RING_ENTRIES).is_ok();
            let mut runtime = RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .uring_builder(uring_builder(flags))
                .enable_timer()
                .build()?;
            Ok(runtime.block_on(future))
        }
        _ => {
            let mut runtime = RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()?;
            Ok(runtime.block_on(future))
        }
    }
}

/// Pins the calling thread to `core`. Returns false when the core does not exist or the kernel
/// refused (the caller reports that the run was unpinned).
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// The cores this process may run on.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_drivers_run_a_future() {
        assert_eq!(block_on(Io::Epoll, async { 1 }).expect("epoll"), 1);
        assert_eq!(block_on(Io::Auto, async { 2 }).expect("auto"), 2);
        if uring_available() {
            assert_eq!(block_on(Io::Uring, async { 3 }).expect("uring"), 3);
        } else {
            eprintln!("skipped the io_uring case: io_uring is not available here");
        }
    }
}
