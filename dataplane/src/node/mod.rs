//! Node mode (issue 13, `docs/NODE-MODE.md`): one ringmesh per machine captures its workloads'
//! traffic and carries it between nodes in HBONE tunnels.
//!
//! This module holds what the capture listeners and the tunnel read, compiled with the snapshot:
//!
//! - [`table`]: the `[node]` settings and the [`NodeTable`], which tells an outbound
//!   connection's original destination apart: a service VIP (balanced over its workloads), a
//!   workload, or anything else (passthrough).
//! - [`tls`]: [`NodeTls`], the rustls configs of HBONE tunnels — each side presents a local
//!   service account's certificate from the identity store and verifies the peer by SPIFFE rules.

pub mod table;
pub mod tls;

pub use table::{Destination, NodeTable, Service};
pub use tls::NodeTls;

pub mod serve;

pub use serve::serve;

use std::sync::Arc;

use crate::hbone::HboneCounters;
use crate::stats::{Counter, PerWorker};

/// What a `[node]` listener does; also its name (in metrics, access logs and authorization
/// counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Captured connections that local workloads open.
    Outbound,
    /// Captured plaintext connections to local workloads from outside the mesh.
    Inbound,
    /// HBONE tunnels from other nodes to local workloads.
    Hbone,
}

impl Role {
    /// The listener's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::Inbound => "inbound",
            Role::Hbone => "hbone",
        }
    }
}

/// Node-mode counters of every worker, carried across reloads (in the snapshot).
#[derive(Debug)]
pub struct NodeStats {
    /// HBONE, per worker: one `Arc` shared by the worker's tunnel pool and its servers.
    pub hbone: Box<[Arc<HboneCounters>]>,
    /// Connections refused before any byte moved, per worker, by reason.
    pub refused: PerWorker<Refused>,
}

impl NodeStats {
    /// Counters for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            hbone: (0..workers).map(|_| Arc::default()).collect(),
            refused: PerWorker::new(workers),
        }
    }
}

/// Why node mode refused a connection (`ringmesh_node_refused_total{reason}`).
#[derive(Debug, Default)]
pub struct Refused {
    /// Plaintext to a STRICT workload.
    pub strict: Counter,
    /// An outbound connection from an address that is no local workload's.
    pub unknown_source: Counter,
    /// An inbound or HBONE connection to an address that is no local workload's.
    pub not_local: Counter,
    /// No certificate for the identity a tunnel needs (either end).
    pub no_certificate: Counter,
    /// A service without endpoints.
    pub no_endpoint: Counter,
    /// The original destination could not be read.
    pub no_original_destination: Counter,
}

impl Refused {
    /// `(reason label, count)` for every reason.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("strict", self.strict.get()),
            ("unknown_source", self.unknown_source.get()),
            ("not_local", self.not_local.get()),
            ("no_certificate", self.no_certificate.get()),
            ("no_endpoint", self.no_endpoint.get()),
            (
                "no_original_destination",
                self.no_original_destination.get(),
            ),
        ]
    }
}
