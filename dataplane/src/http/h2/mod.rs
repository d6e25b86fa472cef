//! HTTP/2, on the upstream `h2` crate over monoio's poll-io bridge.
//!
//! - [`server`]: one inbound connection: handshake with the listener's settings, a task per stream.
//! - [`stream`]: one stream handed to the exchange core (with the listener's head limits).
//! - [`client`]: per-core multiplexed upstream connections.
//! - [`guard`]: abuse limits on the inbound frame stream (floods, rapid reset).
//! - [`io`]: the socket adapter, the only place that knows about the poll-io bridge.

pub mod client;
pub mod guard;
pub mod io;
pub mod server;
pub mod stream;
