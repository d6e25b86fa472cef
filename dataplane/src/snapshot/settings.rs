//! The settings a compiled snapshot carries for the protocol code: what a listener's HTTP server
//! and a cluster's connection pools must honour. They are plain values owned here, next to the
//! snapshot that holds them, so the protocol modules read the snapshot and the snapshot never
//! imports the protocol modules.

use std::sync::Arc;
use std::time::Duration;

use config_schema::EscapedSlashes;

use crate::routing::RouteTable;
use crate::routing::sni::SniRoutes;

/// A TLS passthrough listener's routing (the default cluster is the listener's `cluster`).
#[derive(Debug)]
pub struct PassthroughSettings {
    /// SNI routes to cluster indices.
    pub routes: SniRoutes,
    /// Time allowed for the whole ClientHello, from accept.
    pub hello_timeout: Duration,
}

/// The HTTP settings of a listener.
#[derive(Debug)]
pub struct HttpSettings {
    /// Request head limits.
    pub limits: HeadLimits,
    /// Largest request body unless the route says otherwise; 0 = unlimited.
    pub max_request_body: u64,
    /// Time allowed for a request head once its first byte arrived.
    pub request_header_timeout: Duration,
    /// Keep-alive idle limit between requests (the listener's idle timeout).
    pub idle_timeout: Option<Duration>,
    /// A request with no body byte moving either way for this long ends.
    pub stream_idle_timeout: Option<Duration>,
    /// Proxies in front of this one whose `X-Forwarded-*` headers are trusted.
    pub xff_trusted_hops: u32,
    /// The routes this listener serves.
    pub routes: Option<Arc<RouteTable>>,
    /// HTTP/2 server settings and abuse limits.
    pub h2: H2ServerSettings,
    /// How request paths are normalized (`http::normalize`).
    pub paths: PathRules,
}

/// A listener's path rules (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Decode unreserved escapes, check escapes, remove dot segments.
    pub normalize: bool,
    /// Merge runs of slashes.
    pub merge_slashes: bool,
    /// What `%2F` and `%5C` become.
    pub escaped_slashes: EscapedSlashes,
}

impl PathRules {
    /// No rule at all: paths go through untouched.
    pub fn is_off(&self) -> bool {
        !self.normalize && !self.merge_slashes && self.escaped_slashes == EscapedSlashes::Keep
    }
}

/// The size limits of a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line, CRLF included.
    pub max_request_line: usize,
    /// Largest head, request line included.
    pub max_head: usize,
    /// Most header fields.
    pub max_headers: usize,
}

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

/// The abuse limits of one inbound HTTP/2 connection (enforced by `http::h2::guard`).
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// Client resets (RST_STREAM) tolerated before the reset ratio is checked.
    pub max_resets: u32,
    /// Control frames (PING, SETTINGS, PRIORITY, their ACKs, unknown types, unexplained
    /// WINDOW_UPDATEs) per second, sustained.
    pub control_frames_per_second: u32,
    /// Control frames allowed in a burst.
    pub control_frame_burst: u32,
    /// Consecutive frames without payload or meaning (empty DATA/HEADERS/CONTINUATION without an
    /// end flag).
    pub max_consecutive_empty_frames: u32,
    /// Most header-block bytes (HEADERS plus CONTINUATION payloads) in one block.
    pub max_header_block: u32,
}

/// The pool settings of one cluster.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Open connections per endpoint on this core.
    pub max_connections: u32,
    /// Idle connections kept per endpoint on this core.
    pub max_idle: u32,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// How a cluster's HTTP/2 connections are shared.
#[derive(Debug, Clone, Copy)]
pub struct H2ClusterSettings {
    /// Streams per connection before another connection is opened.
    pub max_streams: u32,
}
