//! HTTP/2, on the upstream `h2` crate over monoio's poll-io bridge.
//!
//! - [`server`]: one inbound connection: handshake with the listener's settings, a task per stream.
//! - [`proxy`]: the stream path (routing, upstream over HTTP/2 or HTTP/1.1, gRPC-aware replies).
//! - [`client`]: per-core multiplexed upstream connections.
//! - [`guard`]: abuse limits on the inbound frame stream (floods, rapid reset).
//! - [`io`]: the socket adapter, the only place that knows about the poll-io bridge.

pub mod client;
pub mod guard;
pub mod io;
pub mod proxy;
pub mod server;
