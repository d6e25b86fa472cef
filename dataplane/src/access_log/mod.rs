//! The access log: one line per HTTP request and per L4 connection, as JSON or as Envoy-style
//! text, written without blocking the workers.
//!
//! A worker decides first whether a line is written at all (the status filter, then sampling,
//! with errors exempt from sampling when `always_log_errors` says so), then formats it into its
//! own buffer (no allocation once the buffer has grown, no lock) and hands full buffers, or
//! whatever it has every 200 ms, to a writer thread over a bounded channel: one channel operation
//! per batch, not per request. If the writer falls behind (a slow disk, a blocked stdout pipe),
//! batches are dropped and counted rather than stalling the data path.
//!
//! The text format is compiled once per config ([`format::TextFormat`]): a list of literal and
//! operator pieces, parsed by `config_schema::access_log` (which the validator also runs, so a bad
//! operator is a config error at its line). `docs/ACCESS-LOG.md` lists the operators and fields.

mod format;

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use config_schema::{AccessLogFormat, AccessLogSpec};
use tracing::warn;

pub use format::TextFormat;
use format::{CachedClock, write_json, write_text};

/// Batches in flight to the writer before new ones are dropped.
const QUEUE_BATCHES: usize = 256;
/// A worker sends its buffer once it holds this much.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// ...or after this long, whichever comes first.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Sampling works in millionths.
const SAMPLE_SCALE: u64 = 1_000_000;

/// Where access-log batches go; shared by all workers, cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLogSink {
    path: Arc<str>,
    sender: flume::Sender<Batch>,
    dropped: Arc<AtomicU64>,
}

/// What the writer thread is handed.
#[derive(Debug)]
enum Batch {
    /// Lines to write.
    Lines(Vec<u8>),
    /// Answer once everything before has been written.
    Sync(flume::Sender<()>),
}

impl AccessLogSink {
    /// Opens `path` (`stdout`, `stderr` or a file, appended to) and starts its writer thread,
    /// which ends when the last sink clone is dropped.
    pub fn open(path: &str) -> std::io::Result<Self> {
        let mut output: Box<dyn std::io::Write + Send> = match path {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            file => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)?,
            ),
        };
        let (sender, receiver) = flume::bounded::<Batch>(QUEUE_BATCHES);
        let name = path.to_owned();
        std::thread::Builder::new()
            .name("ringmesh-accesslog".into())
            .spawn(move || {
                for batch in receiver.iter() {
                    match batch {
                        Batch::Lines(lines) => {
                            if let Err(e) = output.write_all(&lines).and_then(|()| output.flush()) {
                                warn!(path = %name, error = %e, "access log write failed");
                            }
                        }
                        Batch::Sync(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Self {
            path: path.into(),
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Waits (up to `timeout`) until the writer has written every batch sent before this call:
    /// the process calls it once its workers have drained and flushed, before it exits.
    pub fn sync(&self, timeout: Duration) {
        let (done, finished) = flume::bounded(1);
        if self.sender.send_timeout(Batch::Sync(done), timeout).is_ok() {
            let _ = finished.recv_timeout(timeout);
        }
    }

    /// The configured path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Batches dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, batch: Vec<u8>) {
        if self.sender.try_send(Batch::Lines(batch)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A snapshot's access log: where lines go and how they are chosen and written.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// The writer.
    pub sink: AccessLogSink,
    /// Format, filter and sampling, compiled from the config.
    pub settings: Arc<Settings>,
}

/// The compiled `[telemetry.access_log]`, apart from its path.
#[derive(Debug)]
pub struct Settings {
    /// JSON lines, or the compiled text format.
    pub format: Format,
    /// Whether L4 connections are logged.
    pub tcp: bool,
    /// Inclusive status ranges a line must fall in; empty = every status.
    pub status: Vec<(u16, u16)>,
    /// Lines written per million that pass the filter.
    pub sample_per_million: u64,
    /// Errors skip sampling.
    pub always_log_errors: bool,
}

/// How lines are written.
#[derive(Debug)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Envoy-style text.
    Text(TextFormat),
}

impl AccessLog {
    /// Compiles `spec`, keeping `previous`'s writer when the path is the same (the file stays
    /// open across reloads; a new path opens a new writer). An error names the key (under
    /// `telemetry.access_log`) it is about.
    pub fn compile(
        spec: &AccessLogSpec,
        previous: Option<&AccessLog>,
    ) -> Result<Self, (&'static str, String)> {
        let format = match spec.format {
            AccessLogFormat::Json => Format::Json,
            AccessLogFormat::Text => Format::Text(
                TextFormat::compile(
                    spec.text_format
                        .as_deref()
                        .unwrap_or(config_schema::access_log::DEFAULT_TEXT_FORMAT),
                )
                .map_err(|e| ("text_format", e))?,
            ),
        };
        let status = match &spec.filter {
            None => Vec::new(),
            Some(filter) => filter
                .status
                .iter()
                .map(|condition| config_schema::access_log::status_range(condition))
                .collect::<Result<_, _>>()
                .map_err(|e| ("filter.status", e))?,
        };
        let settings = Settings {
            format,
            tcp: spec.tcp,
            status,
            sample_per_million: (spec.sample_percent.clamp(0.0, 100.0) * 10_000.0).round() as u64,
            always_log_errors: spec.always_log_errors,
        };
        let sink = match previous.filter(|log| log.sink.path() == spec.path) {
            Some(log) => log.sink.clone(),
            None => AccessLogSink::open(&spec.path)
                .map_err(|e| ("path", format!("cannot open {}: {e}", spec.path)))?,
        };
        Ok(Self {
            sink,
            settings: Arc::new(settings),
        })
    }
}

impl Settings {
    /// Whether a line with this status and these flags passes the filter and the sample.
    fn admits(&self, status: u16, flags: ResponseFlags, random: impl FnOnce() -> u64) -> bool {
        if !self.status.is_empty()
            && !self
                .status
                .iter()
                .any(|&(low, high)| (low..=high).contains(&status))
        {
            return false;
        }
        if self.sample_per_million >= SAMPLE_SCALE {
            return true;
        }
        if self.always_log_errors && (status >= 500 || !flags.is_empty()) {
            return true;
        }
        self.sample_per_million > 0 && random() % SAMPLE_SCALE < self.sample_per_million
    }
}

/// Why a response was not an ordinary proxied one (Envoy's response flags, same letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// NR: no route matched.
    pub const NO_ROUTE: Self = Self(1);
    /// UF: the upstream connection failed.
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 1);
    /// UH: no endpoint to send to.
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 2);
    /// UPE: the upstream broke the protocol.
    pub const UPSTREAM_PROTOCOL_ERROR: Self = Self(1 << 3);
    /// UT: the upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: Self = Self(1 << 4);
    /// UO: the connection pool was full.
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 5);
    /// UC: the upstream closed mid-response.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 6);
    /// DPE: the client broke the protocol.
    pub const DOWNSTREAM_PROTOCOL_ERROR: Self = Self(1 << 7);
    /// DC: the client went away mid-exchange.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 8);
    /// DT: the client did not send its request in time.
    pub const DOWNSTREAM_TIMEOUT: Self = Self(1 << 9);
    /// SI: no byte moved either way for the stream idle timeout.
    pub const STREAM_IDLE_TIMEOUT: Self = Self(1 << 10);
    /// URX: the request was retried as often as its policy allows (or its retry budget) and
    /// the last attempt's answer is what the client got.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: Self = Self(1 << 11);
    /// RL: a local rate limit refused the request.
    pub const RATE_LIMITED: Self = Self(1 << 12);
    /// DI: fault injection delayed the request.
    pub const DELAY_INJECTED: Self = Self(1 << 13);
    /// FI: fault injection aborted the request.
    pub const FAULT_INJECTED: Self = Self(1 << 14);
    /// RBAC: an authorization policy refused the request.
    pub const RBAC_DENIED: Self = Self(1 << 15);

    const NAMES: [(Self, &'static str); 16] = [
        (Self::NO_ROUTE, "NR"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_PROTOCOL_ERROR, "UPE"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::DOWNSTREAM_PROTOCOL_ERROR, "DPE"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::DOWNSTREAM_TIMEOUT, "DT"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
        (Self::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::RATE_LIMITED, "RL"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::RBAC_DENIED, "RBAC"),
    ];

    /// Adds `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Writes the flags as `NR,UF`, or `-` when none is set.
    pub fn write_to(self, out: &mut String) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.0 & flag.0 != 0 {
                if !first {
                    out.push(',');
                }
                out.push_str(name);
                first = false;
            }
        }
    }
}

/// One access-log entry, an HTTP request's or an L4 connection's; every field borrows from the
/// request's or connection's own state.
#[derive(Debug)]
pub struct Entry<'a> {
    /// When the request head was complete (L4: when the connection was accepted).
    pub start: SystemTime,
    /// From `start` to the end of the response (L4: of the connection).
    pub duration: Duration,
    /// The listener's name.
    pub listener: &'a str,
    /// `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`; empty for an L4 connection.
    pub protocol: &'a str,
    /// Request method (empty for L4, or when the head could not be parsed).
    pub method: &'a str,
    /// Host or :authority.
    pub authority: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// Status sent to the client (0 if none was, and for L4).
    pub status: u16,
    /// Request body bytes received (L4: bytes from the client).
    pub bytes_received: u64,
    /// Response body bytes sent (L4: bytes to the client).
    pub bytes_sent: u64,
    /// The endpoint that served the request (L4: the one connected to).
    pub upstream: Option<SocketAddr>,
    /// Route name, empty when none matched.
    pub route: &'a str,
    /// Cluster name, empty when none was chosen.
    pub cluster: &'a str,
    /// Why the response is not an ordinary proxied one.
    pub flags: ResponseFlags,
    /// `x-request-id` (empty for L4).
    pub request_id: &'a str,
    /// The connection's peer.
    pub downstream: SocketAddr,
    /// The client's address when a trusted `x-forwarded-for` entry names another than the peer.
    pub client: Option<IpAddr>,
    /// Attempts made upstream (0 when answered locally; L4: connect attempts).
    pub attempts: u32,
    /// Why a retry that a condition asked for did not happen (empty when none was stopped).
    pub retry_stopped: &'a str,
    /// The authorization policy that decided (`-`: refused because no allow policy matched;
    /// empty when no policy applies or none decided).
    pub authz_policy: &'a str,
    /// The first audit policy that matched (empty when none did).
    pub authz_audit: &'a str,
    /// The server name the client asked for in its TLS ClientHello (SNI); empty without TLS or
    /// without SNI.
    pub sni: &'a str,
    /// The SPIFFE ID of the client's verified certificate (Envoy's
    /// `%DOWNSTREAM_PEER_URI_SAN%`); empty without one.
    pub downstream_peer_principal: &'a str,
    /// How the client connection was secured: `mutual_tls`, `tls` or `none`.
    pub security_policy: &'a str,
    /// The SPIFFE ID of the upstream's verified certificate (Envoy's
    /// `%UPSTREAM_PEER_URI_SAN%`); empty without one.
    pub upstream_peer_principal: &'a str,
    /// Why the proxy ended an L4 connection (Envoy's `%CONNECTION_TERMINATION_DETAILS%`);
    /// empty when it did not.
    pub termination_details: &'a str,
    /// The request's (or the L4 connection span's) trace id, written as 32 lower-case hex
    /// digits; `None` without one. A bare `u128`, not `trace::TraceId`: `trace` records response
    /// flags from this module, and imports form no circle.
    pub trace_id: Option<u128>,
    /// The request's headers, for `%REQ(...)%` (`None` for L4).
    pub headers: Option<&'a dyn HeaderSource>,
    /// The headers of the upstream response the client got, for `%RESP(...)%` (`None` for L4
    /// and local answers).
    pub response_headers: Option<&'a dyn HeaderSource>,
}

impl Entry<'_> {
    /// Whether this is an L4 connection's entry.
    pub fn is_tcp(&self) -> bool {
        self.protocol.is_empty()
    }
}

/// Where `%REQ(NAME)%` finds a request header: the request's own fields (HTTP/2, whose head
/// outlives the exchange), or the values [`Captured`] copied (HTTP/1.1, whose read buffer is
/// reused before the line is written).
pub trait HeaderSource: std::fmt::Debug {
    /// The first value of the header `lower_name`, which the text format lists at `index` of
    /// [`TextFormat::headers`].
    fn header(&self, index: usize, lower_name: &str) -> Option<&[u8]>;

    /// For values copied for one format, that format's [`TextFormat::identity`].
    fn captured_for(&self) -> Option<usize> {
        None
    }
}

/// The request headers a text format reads, copied out of a request into buffers reused by the
/// next request on the connection.
#[derive(Debug, Default)]
pub struct Captured {
    /// Which format's header list the spans follow (its address; never dereferenced).
    format: usize,
    values: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
}

impl Captured {
    /// Copies the request headers `log`'s text format reads (none for JSON or no log) with
    /// `lookup`.
    pub fn capture<'h>(
        &mut self,
        log: Option<&AccessLog>,
        lookup: impl Fn(&str) -> Option<&'h [u8]>,
    ) {
        self.capture_list(log, TextFormat::headers, lookup);
    }

    /// Copies the response headers `log`'s text format reads, as [`Captured::capture`].
    pub fn capture_response<'h>(
        &mut self,
        log: Option<&AccessLog>,
        lookup: impl Fn(&str) -> Option<&'h [u8]>,
    ) {
        self.capture_list(log, TextFormat::response_headers, lookup);
    }

    /// Forgets what was captured (a new request on the connection).
    pub fn clear(&mut self) {
        self.values.clear();
        self.spans.clear();
        self.format = 0;
    }

    fn capture_list<'h>(
        &mut self,
        log: Option<&AccessLog>,
        names: fn(&TextFormat) -> &[Box<str>],
        lookup: impl Fn(&str) -> Option<&'h [u8]>,
    ) {
        self.clear();
        let Some(Format::Text(format)) = log.map(|log| &log.settings.format) else {
            return;
        };
        self.format = format.identity();
        for name in names(format) {
            let span = lookup(name).map(|value| {
                let start = self.values.len();
                self.values.extend_from_slice(value);
                (start, self.values.len())
            });
            self.spans.push(span);
        }
    }
}

impl HeaderSource for Captured {
    fn header(&self, index: usize, _lower_name: &str) -> Option<&[u8]> {
        let (start, end) = (*self.spans.get(index)?)?;
        self.values.get(start..end)
    }

    fn captured_for(&self) -> Option<usize> {
        Some(self.format)
    }
}

/// A worker's access-log buffer.
#[derive(Debug)]
pub struct AccessLogBuffer {
    text: String,
    log: Option<AccessLog>,
    clock: CachedClock,
    /// wyrand state for sampling.
    rng: u64,
}

impl Default for AccessLogBuffer {
    fn default() -> Self {
        // Each worker's buffer samples on its own sequence: the clock, and a count of the
        // buffers made so far (workers start within the same clock tick).
        static BUFFERS: AtomicU64 = AtomicU64::new(0);
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
            ^ BUFFERS.fetch_add(1, Ordering::Relaxed).rotate_left(32);
        Self {
            text: String::new(),
            log: None,
            clock: CachedClock::default(),
            rng: seed,
        }
    }
}

impl AccessLogBuffer {
    /// Points the buffer at `log` (the current snapshot's), flushing what was buffered for the
    /// previous writer when the writer changes.
    pub fn set_sink(&mut self, log: Option<&AccessLog>) {
        match (&mut self.log, log) {
            (Some(current), Some(new)) if current.sink.sender.same_channel(&new.sink.sender) => {
                if !Arc::ptr_eq(&current.settings, &new.settings) {
                    current.settings = Arc::clone(&new.settings);
                }
            }
            (None, None) => {}
            _ => {
                self.flush();
                self.log = log.cloned();
            }
        }
    }

    /// Whether HTTP requests are being logged.
    pub fn enabled(&self) -> bool {
        self.log.is_some()
    }

    /// Whether L4 connections are being logged.
    pub fn tcp_enabled(&self) -> bool {
        self.log.as_ref().is_some_and(|log| log.settings.tcp)
    }

    /// Appends `entry` as one line, if the filter and the sample let it through; sends the
    /// buffer if it is full.
    pub fn record(&mut self, entry: &Entry<'_>) {
        let Some(log) = &self.log else {
            return;
        };
        let settings = &*log.settings;
        if entry.is_tcp() && !settings.tcp {
            return;
        }
        let rng = &mut self.rng;
        let random = || {
            *rng = rng.wrapping_add(0xa076_1d64_78bd_642f);
            let product = u128::from(*rng) * u128::from(*rng ^ 0xe703_7ed1_a0b4_28db);
            ((product >> 64) as u64) ^ (product as u64)
        };
        if !settings.admits(entry.status, entry.flags, random) {
            return;
        }
        match &settings.format {
            Format::Json => write_json(&mut self.text, &mut self.clock, entry),
            Format::Text(format) => {
                // Headers captured for another format (a reload between the capture and now)
                // are not read: their positions mean other names.
                let current = |source: &&dyn HeaderSource| {
                    source
                        .captured_for()
                        .is_none_or(|identity| identity == format.identity())
                };
                let headers = entry.headers.filter(current);
                let response_headers = entry.response_headers.filter(current);
                write_text(
                    &mut self.text,
                    &mut self.clock,
                    format,
                    entry,
                    headers,
                    response_headers,
                );
            }
        }
        if self.text.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Sends whatever is buffered.
    pub fn flush(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.text, String::with_capacity(FLUSH_BYTES + 1024));
        if let Some(log) = &self.log {
            log.sink.send(batch.into_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn buffer_with(settings: Settings) -> (AccessLogBuffer, flume::Receiver<Batch>) {
        let mut buffer = AccessLogBuffer::default();
        let (sender, receiver) = flume::bounded(4);
        buffer.log = Some(AccessLog {
            sink: AccessLogSink {
                path: "test".into(),
                sender,
                dropped: Arc::default(),
            },
            settings: Arc::new(settings),
        });
        (buffer, receiver)
    }

    fn settings(format: Format) -> Settings {
        Settings {
            format,
            tcp: true,
            status: Vec::new(),
            sample_per_million: SAMPLE_SCALE,
            always_log_errors: true,
        }
    }

    fn entry(flags: ResponseFlags) -> Entry<'static> {
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_763_730_787_715),
            duration: Duration::from_micros(1500),
            listener: "web",
            protocol: "HTTP/1.1",
            method: "GET",
            authority: "example.com",
            path: "/a\"b\\c\u{1}",
            status: 404,
            bytes_received: 0,
            bytes_sent: 9,
            upstream: None,
            route: "",
            cluster: "",
            flags,
            request_id: "abc",
            downstream: "127.0.0.1:5555".parse().expect("addr"),
            client: None,
            attempts: 3,
            retry_stopped: "budget_exhausted",
            authz_policy: "no-admin",
            authz_audit: "",
            sni: "a.example",
            downstream_peer_principal: "spiffe://cluster.local/ns/shop/sa/web",
            security_policy: "mutual_tls",
            upstream_peer_principal: "spiffe://cluster.local/ns/shop/sa/api",
            termination_details: "",
            trace_id: None,
            headers: None,
            response_headers: None,
        }
    }

    fn line(receiver: &flume::Receiver<Batch>) -> String {
        match receiver.try_recv().expect("one batch") {
            Batch::Lines(lines) => String::from_utf8(lines).expect("utf-8"),
            Batch::Sync(_) => panic!("lines, not a sync"),
        }
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(format::civil_days(0), (1970, 1, 1));
        assert_eq!(format::civil_days(19_723), (2024, 1, 1));
        assert_eq!(format::civil_days(20_413), (2025, 11, 21));
        assert_eq!(format::civil_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn entries_are_valid_json_lines() {
        let (mut buffer, receiver) = buffer_with(settings(Format::Json));
        let mut flags = ResponseFlags::default();
        flags.insert(ResponseFlags::NO_ROUTE);
        flags.insert(ResponseFlags::UPSTREAM_TIMEOUT);
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        buffer.record(&Entry {
            trace_id: Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            ..entry(flags)
        });
        buffer.flush();
        let line = line(&receiver);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).expect("valid JSON");
        assert_eq!(value["time"], "2025-11-21T13:13:07.715Z");
        assert_eq!(value["listener"], "web");
        assert_eq!(value["path"], "/a\"b\\c\u{1}");
        assert_eq!(value["status"], 404);
        assert_eq!(value["response_flags"], "NR,UT");
        assert_eq!(value["duration_ms"], 1.5);
        assert!(value["upstream_host"].is_null());
        assert_eq!(value["upstream_attempts"], 3);
        assert_eq!(value["retry_stopped"], "budget_exhausted");
        assert_eq!(value["authz_policy"], "no-admin");
        assert!(value.get("authz_audit").is_none());
        assert_eq!(value["requested_server_name"], "a.example");
        assert_eq!(value["trace_id"], trace);
        assert_eq!(
            value["downstream_peer_principal"],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(value["security_policy"], "mutual_tls");
        assert_eq!(
            value["upstream_peer_principal"],
            "spiffe://cluster.local/ns/shop/sa/api"
        );
    }

    #[derive(Debug)]
    struct Fixed;

    impl HeaderSource for Fixed {
        fn header(&self, _index: usize, lower_name: &str) -> Option<&[u8]> {
            match lower_name {
                "user-agent" => Some(b"curl/8.0 extra"),
                "x-bin" => Some(b"a\xffb\x01"),
                _ => None,
            }
        }
    }

    #[test]
    fn text_operators_render() {
        let format = TextFormat::compile(
            "%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s %z)% %REQ(:METHOD)% %REQ(USER-AGENT):4% \
             %REQ(X-MISSING?USER-AGENT)% %REQ(X-BIN)% %REQ(:SCHEME)% %RESPONSE_FLAGS% \
             %DURATION% %UPSTREAM_HOST% %ROUTE_NAME% %TRACE_ID% %DOWNSTREAM_REMOTE_ADDRESS%",
        )
        .expect("compiles");
        let (mut buffer, receiver) = buffer_with(settings(Format::Text(format)));
        let mut flags = ResponseFlags::default();
        flags.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        buffer.record(&Entry {
            headers: Some(&Fixed),
            client: Some("10.1.2.3".parse().expect("ip")),
            ..entry(flags)
        });
        buffer.flush();
        assert_eq!(
            line(&receiver),
            "2025/11/21 13:13:07.715 1763730787 +0000 GET curl curl/8.0 extra a?b? https URX \
             1 - - - 10.1.2.3:0\n"
        );
    }

    #[test]
    fn filter_and_sampling() {
        let mut chosen = settings(Format::Json);
        chosen.status = vec![(400, 499)];
        let none = ResponseFlags::default();
        assert!(chosen.admits(404, none, || 0));
        assert!(!chosen.admits(200, none, || 0));
        assert!(
            !chosen.admits(503, none, || 0),
            "the filter applies to errors too"
        );
        chosen.status.clear();
        chosen.sample_per_million = 0;
        assert!(!chosen.admits(200, none, || 0));
        assert!(chosen.admits(503, none, || 0), "errors skip sampling");
        assert!(chosen.admits(0, ResponseFlags::UPSTREAM_CONNECT_FAILURE, || 0));
        chosen.always_log_errors = false;
        assert!(!chosen.admits(503, none, || 0));
        chosen.sample_per_million = SAMPLE_SCALE / 2;
        assert!(chosen.admits(200, none, || 1));
        assert!(!chosen.admits(200, none, || SAMPLE_SCALE - 1));
    }
}
