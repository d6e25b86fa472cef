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
