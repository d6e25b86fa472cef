//! Counters of the identity layer: handshakes refused by the SPIFFE verifiers, by reason, and
//! failed rereads of the identity files.
//!
//! These are touched per *handshake* or per reload, never per request, and a handshake may run on
//! any worker, so they are process-wide `AtomicU64`s with relaxed ordering (one atomic add per
//! refused handshake; exact, since nothing else writes them). The admin thread reads them at
//! scrape time ([`IdentityMetrics::render_prometheus`]).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `ringmesh_tls_handshake_failures_total` | `reason` ([`Reason::as_str`]) | peer certificates refused by the verifiers |
//! | `ringmesh_cert_reloads_total` | — | identity material (re)loaded, the first load included |
//! | `ringmesh_cert_reload_errors_total` | — | new identity files refused, old material kept |

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::svid::Reason;

/// The identity layer's counters, shared by the verifiers, the store and the admin thread.
#[derive(Debug)]
pub struct IdentityMetrics {
    handshake_failures: [AtomicU64; Reason::ALL.len()],
    reloads: AtomicU64,
    reload_errors: AtomicU64,
}

impl Default for IdentityMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityMetrics {
    /// All counters at zero.
    pub fn new() -> Self {
        Self {
            handshake_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        }
    }

    /// Counts one handshake refused for `reason`.
    pub fn handshake_failed(&self, reason: Reason) {
        self.handshake_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Handshakes refused for `reason` so far.
    pub fn handshake_failures(&self, reason: Reason) -> u64 {
        self.handshake_failures[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts one successful (re)load of the identity material.
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Successful loads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Counts one refused reread (old material kept).
    pub fn reload_failed(&self) {
        self.reload_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Refused rereads so far.
    pub fn reload_errors(&self) -> u64 {
        self.reload_errors.load(Ordering::Relaxed)
    }

    /// Appends these counters in the Prometheus text format (every reason, zeros included, so a
    /// dashboard's rate() sees the first failure).
    pub fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ringmesh_tls_handshake_failures_total TLS handshakes refused because of the peer's certificate, by reason."
        );
        let _ = writeln!(out, "# TYPE ringmesh_tls_handshake_failures_total counter");
        for reason in Reason::ALL {
            let _ = writeln!(
                out,
                "ringmesh_tls_handshake_failures_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.handshake_failures(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ringmesh_cert_reloads_total Identity certificate, key and bundle loads, the first included."
        );
        let _ = writeln!(out, "# TYPE ringmesh_cert_reloads_total counter");
        let _ = writeln!(out, "ringmesh_cert_reloads_total {}", self.reloads());
        let _ = writeln!(
            out,
            "# HELP ringmesh_cert_reload_errors_total New identity files refused (old material kept serving)."
        );
        let _ = writeln!(out, "# TYPE ringmesh_cert_reload_errors_total counter");
        let _ = writeln!(
            out,
            "ringmesh_cert_reload_errors_total {}",
            self.reload_errors()
        );
    }
}
