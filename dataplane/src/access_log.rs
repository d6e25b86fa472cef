//! JSON-lines access log, written without blocking the workers.
//!
//! A worker formats each entry into its own buffer (no allocation once the buffer has grown, no
//! lock) and hands full buffers, or whatever it has every 200 ms, to a writer thread over a
//! bounded channel: one channel operation per batch, not per request. If the writer falls behind
//! (a slow disk, a blocked stdout pipe), batches are dropped and counted rather than stalling the
//! data path.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

/// Batches in flight to the writer before new ones are dropped.
const QUEUE_BATCHES: usize = 256;
/// A worker sends its buffer once it holds this much.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// ...or after this long, whichever comes first.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Where access-log batches go; shared by all workers, cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLogSink {
    path: Arc<str>,
    sender: flume::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
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
        let (sender, receiver) = flume::bounded::<Vec<u8>>(QUEUE_BATCHES);
        let name = path.to_owned();
        std::thread::Builder::new()
            .name("ringmesh-accesslog".into())
            .spawn(move || {
                for batch in receiver.iter() {
                    if let Err(e) = output.write_all(&batch).and_then(|()| output.flush()) {
                        warn!(path = %name, error = %e, "access log write failed");
                    }
                }
            })?;
        Ok(Self {
            path: path.into(),
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        })
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
        if self.sender.try_send(batch).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
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

/// One access-log entry; every field borrows from the request's own state.
#[derive(Debug)]
pub struct Entry<'a> {
    /// When the request head was complete.
    pub start: SystemTime,
    /// Request method.
    pub method: &'a str,
    /// Host or :authority.
    pub authority: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`.
    pub protocol: &'a str,
    /// Status sent to the client (0 if none was).
    pub status: u16,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// From request head complete to response complete.
    pub duration: Duration,
    /// The endpoint that served the request.
    pub upstream: Option<SocketAddr>,
    /// Route name, empty when none matched.
    pub route: &'a str,
    /// Cluster name, empty when none was chosen.
    pub cluster: &'a str,
    /// Why the response is not an ordinary proxied one.
    pub flags: ResponseFlags,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// The client's address.
    pub downstream: SocketAddr,
    /// Attempts made upstream (0 when answered locally).
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
}

/// A worker's access-log buffer.
#[derive(Debug, Default)]
pub struct AccessLogBuffer {
    text: String,
    sink: Option<AccessLogSink>,
    clock: CachedClock,
}

impl AccessLogBuffer {
    /// Points the buffer at `sink` (the current snapshot's), flushing what was buffered for the
    /// previous one.
    pub fn set_sink(&mut self, sink: Option<&AccessLogSink>) {
        let same = match (&self.sink, sink) {
            (Some(a), Some(b)) => a.sender.same_channel(&b.sender),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.flush();
            self.sink = sink.cloned();
        }
    }

    /// Whether entries are being recorded.
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Appends `entry` as one JSON line; sends the buffer if it is full.
    pub fn record(&mut self, entry: &Entry<'_>) {
        if self.sink.is_none() {
            return;
        }
        let out = &mut self.text;
        out.push_str("{\"time\":\"");
        self.clock.write_rfc3339(entry.start, out);
        out.push_str("\",\"method\":");
        json_string(out, entry.method);
        out.push_str(",\"authority\":");
        json_string(out, entry.authority);
        out.push_str(",\"path\":");
        json_string(out, entry.path);
        out.push_str(",\"protocol\":\"");
        out.push_str(entry.protocol);
        let _ = write!(
            out,
            "\",\"status\":{},\"bytes_received\":{},\"bytes_sent\":{},\"duration_ms\":{:.3},\"upstream_host\":",
            entry.status,
            entry.bytes_received,
            entry.bytes_sent,
            entry.duration.as_secs_f64() * 1000.0
        );
        match entry.upstream {
            Some(address) => {
                let _ = write!(out, "\"{address}\"");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"route\":");
        json_string(out, entry.route);
        out.push_str(",\"cluster\":");
        json_string(out, entry.cluster);
        out.push_str(",\"response_flags\":\"");
        entry.flags.write_to(out);
        out.push_str("\",\"request_id\":");
        json_string(out, entry.request_id);
        let _ = write!(
            out,
            ",\"downstream_remote_address\":\"{}\",\"upstream_attempts\":{}",
            entry.downstream, entry.attempts
        );
        if !entry.retry_stopped.is_empty() {
            out.push_str(",\"retry_stopped\":\"");
            out.push_str(entry.retry_stopped);
            out.push('"');
        }
        if !entry.authz_policy.is_empty() {
            out.push_str(",\"authz_policy\":");
            json_string(out, entry.authz_policy);
        }
        if !entry.authz_audit.is_empty() {
            out.push_str(",\"authz_audit\":");
            json_string(out, entry.authz_audit);
        }
        if !entry.sni.is_empty() {
            // Envoy's name for it (%REQUESTED_SERVER_NAME%).
            out.push_str(",\"requested_server_name\":");
            json_string(out, entry.sni);
        }
        if !entry.downstream_peer_principal.is_empty() {
            out.push_str(",\"downstream_peer_principal\":");
            json_string(out, entry.downstream_peer_principal);
        }
        if !entry.upstream_peer_principal.is_empty() {
            out.push_str(",\"upstream_peer_principal\":");
            json_string(out, entry.upstream_peer_principal);
        }
        if !entry.security_policy.is_empty() {
            out.push_str(",\"security_policy\":\"");
            out.push_str(entry.security_policy);
            out.push('"');
        }
        out.push_str("}\n");
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
        if let Some(sink) = &self.sink {
            sink.send(batch.into_bytes());
        }
    }
}

/// Appends `value` as a JSON string literal.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats timestamps, redoing the calendar arithmetic once per second only.
#[derive(Debug, Default)]
struct CachedClock {
    second: u64,
    prefix: String,
}

impl CachedClock {
    fn write_rfc3339(&mut self, time: SystemTime, out: &mut String) {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since_epoch.as_secs();
        if second != self.second || self.prefix.is_empty() {
            self.second = second;
            self.prefix.clear();
            let (year, month, day) = civil_from_days((second / 86_400) as i64);
            let in_day = second % 86_400;
            let _ = write!(
                self.prefix,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                in_day / 3600,
                in_day % 3600 / 60,
                in_day % 60
            );
        }
        out.push_str(&self.prefix);
        let _ = write!(out, ".{:03}Z", since_epoch.subsec_millis());
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_413), (2025, 11, 21));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn entries_are_valid_json_lines() {
        let mut buffer = AccessLogBuffer::default();
        let (sender, receiver) = flume::bounded(4);
        buffer.sink = Some(AccessLogSink {
            path: "test".into(),
            sender,
            dropped: Arc::default(),
        });
        let mut flags = ResponseFlags::default();
        flags.insert(ResponseFlags::NO_ROUTE);
        flags.insert(ResponseFlags::UPSTREAM_TIMEOUT);
        buffer.record(&Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_763_730_787_715),
            method: "GET",
            authority: "example.com",
            path: "/a\"b\\c\u{1}",
            protocol: "HTTP/1.1",
            status: 404,
            bytes_received: 0,
            bytes_sent: 9,
            duration: Duration::from_micros(1500),
            upstream: None,
            route: "",
            cluster: "",
            flags,
            request_id: "abc",
            downstream: "127.0.0.1:5555".parse().expect("addr"),
            attempts: 3,
            retry_stopped: "budget_exhausted",
            authz_policy: "no-admin",
            authz_audit: "",
            sni: "a.example",
            downstream_peer_principal: "spiffe://cluster.local/ns/shop/sa/web",
            security_policy: "mutual_tls",
            upstream_peer_principal: "spiffe://cluster.local/ns/shop/sa/api",
        });
        buffer.flush();
        let batch = receiver.try_recv().expect("one batch");
        let line = String::from_utf8(batch).expect("utf-8");
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).expect("valid JSON");
        assert_eq!(value["time"], "2025-11-21T13:13:07.715Z");
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
}
