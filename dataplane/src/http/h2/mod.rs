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

use guard::GuardLimits;

/// The HTTP/2 server settings of a listener, compiled from `[listeners.http2]`.
#[derive(Debug, Clone, Copy)]
pub struct H2ServerSettings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// Initial stream window.
    pub initial_stream_window: u32,
    /// Initial connection window.
    pub initial_connection_window: u32,
    /// Streams reset before being accepted, before GOAWAY (h2's rapid-reset defence).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the proxy resets for protocol errors, before GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// Bytes buffered per stream toward a slow client.
    pub max_send_buffer: usize,
    /// The frame-level limits.
    pub guard: GuardLimits,
}

impl H2ServerSettings {
    /// An `h2` server builder with these settings.
    pub fn builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .initial_window_size(self.initial_stream_window)
            .initial_connection_window_size(self.initial_connection_window)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .max_send_buffer_size(self.max_send_buffer);
        builder
    }
}
