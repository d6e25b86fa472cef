//! Writing one entry as a line: JSON, or a compiled Envoy-style text format.
//!
//! Both write straight into the worker's buffer: numbers and addresses through `fmt::Write`,
//! strings by copy, the timestamp from a calendar computed once per second. No allocation per
//! line beyond the buffer's growth.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use config_schema::access_log::{self as syntax, Operator, Piece, TimePiece};

use super::{Entry, HeaderSource};

/// A text format, compiled once per config: literal text and operators, with `%REQ(...)%`
/// names resolved to positions in [`TextFormat::headers`].
#[derive(Debug)]
pub struct TextFormat {
    pieces: Vec<Compiled>,
    headers: Vec<Box<str>>,
    response_headers: Vec<Box<str>>,
}

/// One compiled piece.
#[derive(Debug)]
enum Compiled {
    Literal(Box<str>),
    Field(Operator),
    /// `%REQ(...)%`: the positions of the name and the alternative in `headers`.
    Req {
        name: Header,
        alternative: Option<Header>,
        max: Option<usize>,
    },
    /// `%RESP(...)%`: the positions in `response_headers`.
    Resp {
        name: usize,
        alternative: Option<usize>,
        max: Option<usize>,
    },
}

/// A header `%REQ(...)%` reads: a pseudo-header or `x-request-id` from the entry, or a field.
#[derive(Debug, Clone, Copy)]
enum Header {
    Method,
    Path,
    Authority,
    Scheme,
    RequestId,
    Field(usize),
}

impl TextFormat {
    /// Compiles `text`; a newline is added when it does not end with one.
    pub fn compile(text: &str) -> Result<Self, String> {
        let parsed = syntax::parse(text).map_err(|e| e.to_string())?;
        let mut headers: Vec<Box<str>> = Vec::new();
        let mut header = |name: String| match name.as_str() {
            ":method" => Header::Method,
            ":path" => Header::Path,
            ":authority" | "host" => Header::Authority,
            ":scheme" => Header::Scheme,
            "x-request-id" => Header::RequestId,
            _ => match headers.iter().position(|known| **known == *name) {
                Some(index) => Header::Field(index),
                None => {
                    headers.push(name.into());
                    Header::Field(headers.len() - 1)
                }
            },
        };
        let mut response_headers: Vec<Box<str>> = Vec::new();
        let mut response_header =
            |name: String| match response_headers.iter().position(|known| **known == *name) {
                Some(index) => index,
                None => {
                    response_headers.push(name.into());
                    response_headers.len() - 1
                }
            };
        let mut pieces: Vec<Compiled> = parsed
            .into_iter()
            .map(|piece| match piece {
                Piece::Literal(text) => Compiled::Literal(text.into()),
                Piece::Operator(Operator::Req {
                    name,
                    alternative,
                    max,
                }) => Compiled::Req {
                    name: header(name),
                    alternative: alternative.map(&mut header),
                    max,
                },
                Piece::Operator(Operator::Resp {
                    name,
                    alternative,
                    max,
                }) => Compiled::Resp {
                    name: response_header(name),
                    alternative: alternative.map(&mut response_header),
                    max,
                },
                Piece::Operator(operator) => Compiled::Field(operator),
            })
            .collect();
        let ends_with_newline =
            matches!(pieces.last(), Some(Compiled::Literal(text)) if text.ends_with('\n'));
        if !ends_with_newline {
            pieces.push(Compiled::Literal("\n".into()));
        }
        Ok(Self {
            pieces,
            headers,
            response_headers,
        })
    }

    /// The request header fields the format reads (lower-case), in the order of their positions.
    pub fn headers(&self) -> &[Box<str>] {
        &self.headers
    }

    /// The response header fields the format reads (lower-case), in the order of their
    /// positions.
    pub fn response_headers(&self) -> &[Box<str>] {
        &self.response_headers
    }

    /// Tells formats apart while they are alive (the snapshot holding one outlives any request
    /// that captured headers for it).
    pub fn identity(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// Appends `entry` as a line of `format`.
pub(super) fn write_text(
    out: &mut String,
    clock: &mut CachedClock,
    format: &TextFormat,
    entry: &Entry<'_>,
    headers: Option<&dyn HeaderSource>,
    response_headers: Option<&dyn HeaderSource>,
) {
    for piece in &format.pieces {
        match piece {
            Compiled::Literal(text) => out.push_str(text),
            Compiled::Req {
                name,
                alternative,
                max,
            } => {
                let value = request_header(entry, headers, format, *name).or_else(|| {
                    alternative.and_then(|alt| request_header(entry, headers, format, alt))
                });
                match value {
                    Some(value) => push_value(out, value, *max),
                    None => out.push('-'),
                }
            }
            Compiled::Resp {
                name,
                alternative,
                max,
            } => {
                let value = |index: usize| {
                    let name = format.response_headers.get(index)?;
                    response_headers?.header(index, name)
                };
                match value(*name).or_else(|| alternative.and_then(value)) {
                    Some(value) => push_value(out, value, *max),
                    None => out.push('-'),
                }
            }
            Compiled::Field(operator) => write_field(out, clock, entry, operator),
        }
    }
}

/// The value of a `%REQ(...)%` header; `None` for L4 entries and absent headers.
fn request_header<'a>(
    entry: &'a Entry<'_>,
    headers: Option<&'a dyn HeaderSource>,
    format: &TextFormat,
    header: Header,
) -> Option<&'a [u8]> {
    if entry.is_tcp() {
        return None;
    }
    let text = |s: &'a str| (!s.is_empty()).then_some(s.as_bytes());
    match header {
        Header::Method => text(entry.method),
        Header::Path => text(entry.path),
        Header::Authority => text(entry.authority),
        Header::Scheme => Some(
            if entry.security_policy == "none" || entry.security_policy.is_empty() {
                b"http".as_slice()
            } else {
                b"https".as_slice()
            },
        ),
        Header::RequestId => text(entry.request_id),
        Header::Field(index) => headers?.header(index, format.headers.get(index)?),
    }
}

/// Appends a header value, at most `max` bytes of it (cut at a character boundary). Bytes that
/// are not UTF-8 or are control characters become `?`: a header cannot break the line.
fn push_value(out: &mut String, value: &[u8], max: Option<usize>) {
    let value = &value[..max.map_or(value.len(), |max| max.min(value.len()))];
    let (valid, rest) = match std::str::from_utf8(value) {
        Ok(text) => (text, &[][..]),
        Err(e) => {
            let (valid, rest) = value.split_at(e.valid_up_to());
            // `valid_up_to` marks where the UTF-8 prefix ends.
            (std::str::from_utf8(valid).unwrap_or_default(), rest)
        }
    };
    for c in valid.chars() {
        out.push(if c.is_control() { '?' } else { c });
    }
    // What follows the first invalid byte (or a character the cut split) is written byte by
    // byte, ASCII kept.
    for &b in rest {
        out.push(if b.is_ascii_graphic() || b == b' ' {
            b as char
        } else {
            '?'
        });
    }
}

fn or_dash(out: &mut String, value: &str) {
    out.push_str(if value.is_empty() { "-" } else { value });
}

fn write_field(out: &mut String, clock: &mut CachedClock, entry: &Entry<'_>, operator: &Operator) {
    match operator {
        Operator::StartTime(None) => clock.write_rfc3339(entry.start, out),
        Operator::StartTime(Some(pieces)) => clock.write_format(entry.start, pieces, out),
        // Handled by `write_text` with their resolved names.
        Operator::Req { .. } | Operator::Resp { .. } => out.push('-'),
        Operator::Protocol => or_dash(out, entry.protocol),
        Operator::ResponseCode => {
            let _ = write!(out, "{}", entry.status);
        }
        Operator::ResponseFlags => entry.flags.write_to(out),
        Operator::BytesReceived => {
            let _ = write!(out, "{}", entry.bytes_received);
        }
        Operator::BytesSent => {
            let _ = write!(out, "{}", entry.bytes_sent);
        }
        Operator::Duration => {
            let _ = write!(out, "{}", entry.duration.as_millis());
        }
        Operator::UpstreamHost => match entry.upstream {
            Some(address) => {
                let _ = write!(out, "{address}");
            }
            None => out.push('-'),
        },
        Operator::UpstreamCluster => or_dash(out, entry.cluster),
        Operator::RouteName => or_dash(out, entry.route),
        Operator::DownstreamRemoteAddress => write_client(out, entry, true),
        Operator::DownstreamRemoteAddressWithoutPort => write_client(out, entry, false),
        Operator::DownstreamDirectRemoteAddress => {
            let _ = write!(out, "{}", entry.downstream);
        }
        Operator::DownstreamDirectRemoteAddressWithoutPort => {
            let _ = write!(out, "{}", entry.downstream.ip());
        }
        Operator::DownstreamPeerUriSan => or_dash(out, entry.downstream_peer_principal),
        Operator::UpstreamPeerUriSan => or_dash(out, entry.upstream_peer_principal),
        Operator::RequestedServerName => or_dash(out, entry.sni),
        Operator::UpstreamRequestAttemptCount => {
            let _ = write!(out, "{}", entry.attempts);
        }
        Operator::ConnectionTerminationDetails => or_dash(out, entry.termination_details),
        Operator::TraceId => match entry.trace_id {
            Some(id) => {
                let _ = write!(out, "{id:032x}");
            }
            None => out.push('-'),
        },
    }
}

/// The client's address: the trusted `x-forwarded-for` entry (port 0, as Envoy writes it) or
/// the peer.
fn write_client(out: &mut String, entry: &Entry<'_>, with_port: bool) {
    let address = match entry.client {
        Some(ip) if ip != entry.downstream.ip() => SocketAddr::new(ip, 0),
        _ => entry.downstream,
    };
    let _ = if with_port {
        write!(out, "{address}")
    } else {
        write!(out, "{}", address.ip())
    };
}

/// Appends `entry` as one JSON object and a newline.
pub(super) fn write_json(out: &mut String, clock: &mut CachedClock, entry: &Entry<'_>) {
    out.push_str("{\"time\":\"");
    clock.write_rfc3339(entry.start, out);
    out.push('"');
    if !entry.listener.is_empty() {
        out.push_str(",\"listener\":");
        json_string(out, entry.listener);
    }
    if entry.is_tcp() {
        out.push_str(",\"protocol\":\"tcp\"");
    } else {
        out.push_str(",\"method\":");
        json_string(out, entry.method);
        out.push_str(",\"authority\":");
        json_string(out, entry.authority);
        out.push_str(",\"path\":");
        json_string(out, entry.path);
        out.push_str(",\"protocol\":\"");
        out.push_str(entry.protocol);
        let _ = write!(out, "\",\"status\":{}", entry.status);
    }
    let _ = write!(
        out,
        ",\"bytes_received\":{},\"bytes_sent\":{},\"duration_ms\":{:.3},\"upstream_host\":",
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
    if !entry.is_tcp() {
        out.push_str(",\"route\":");
        json_string(out, entry.route);
    }
    out.push_str(",\"cluster\":");
    json_string(out, entry.cluster);
    out.push_str(",\"response_flags\":\"");
    entry.flags.write_to(out);
    out.push('"');
    if !entry.is_tcp() {
        out.push_str(",\"request_id\":");
        json_string(out, entry.request_id);
    }
    let _ = write!(
        out,
        ",\"downstream_remote_address\":\"{}\",\"upstream_attempts\":{}",
        entry.downstream, entry.attempts
    );
    if let Some(client) = entry.client.filter(|ip| *ip != entry.downstream.ip()) {
        let _ = write!(out, ",\"client_address\":\"{client}\"");
    }
    if let Some(id) = entry.trace_id {
        let _ = write!(out, ",\"trace_id\":\"{id:032x}\"");
    }
    for (key, value) in [
        ("retry_stopped", entry.retry_stopped),
        ("authz_policy", entry.authz_policy),
        ("authz_audit", entry.authz_audit),
        // Envoy's name for it (%REQUESTED_SERVER_NAME%).
        ("requested_server_name", entry.sni),
        ("downstream_peer_principal", entry.downstream_peer_principal),
        ("upstream_peer_principal", entry.upstream_peer_principal),
        ("security_policy", entry.security_policy),
        ("connection_termination_details", entry.termination_details),
    ] {
        if !value.is_empty() {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            json_string(out, value);
        }
    }
    out.push_str("}\n");
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
pub(super) struct CachedClock {
    second: u64,
    civil: Civil,
    prefix: String,
}

/// A second's calendar fields, UTC.
#[derive(Debug, Default, Clone, Copy)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

impl CachedClock {
    /// The calendar of `time`'s second, and its nanoseconds.
    fn at(&mut self, time: SystemTime) -> (Civil, u64, u32) {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since_epoch.as_secs();
        if second != self.second || self.prefix.is_empty() {
            self.second = second;
            let (year, month, day) = civil_from_days((second / 86_400) as i64);
            let in_day = second % 86_400;
            self.civil = Civil {
                year,
                month,
                day,
                hour: in_day / 3600,
                minute: in_day % 3600 / 60,
                second: in_day % 60,
            };
            let c = self.civil;
            self.prefix.clear();
            let _ = write!(
                self.prefix,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                c.year, c.month, c.day, c.hour, c.minute, c.second
            );
        }
        (self.civil, second, since_epoch.subsec_nanos())
    }

    /// `2025-11-21T13:13:07.715Z` (Envoy's default `%START_TIME%`).
    pub(super) fn write_rfc3339(&mut self, time: SystemTime, out: &mut String) {
        let (_, _, nanos) = self.at(time);
        out.push_str(&self.prefix);
        let _ = write!(out, ".{:03}Z", nanos / 1_000_000);
    }

    /// `time` in a `%START_TIME(...)%` format.
    fn write_format(&mut self, time: SystemTime, pieces: &[TimePiece], out: &mut String) {
        let (c, epoch, nanos) = self.at(time);
        for piece in pieces {
            let _ = match piece {
                TimePiece::Literal(text) => {
                    out.push_str(text);
                    Ok(())
                }
                TimePiece::Year => write!(out, "{:04}", c.year),
                TimePiece::YearOfCentury => write!(out, "{:02}", c.year.rem_euclid(100)),
                TimePiece::Month => write!(out, "{:02}", c.month),
                TimePiece::Day => write!(out, "{:02}", c.day),
                TimePiece::Hour => write!(out, "{:02}", c.hour),
                TimePiece::Minute => write!(out, "{:02}", c.minute),
                TimePiece::Second => write!(out, "{:02}", c.second),
                TimePiece::EpochSeconds => write!(out, "{epoch}"),
                TimePiece::Fraction(digits) => {
                    let digits = u32::from(*digits).clamp(1, 9);
                    let value = nanos / 10u32.pow(9 - digits);
                    write!(out, "{value:0width$}", width = digits as usize)
                }
                TimePiece::Offset => {
                    out.push_str("+0000");
                    Ok(())
                }
                TimePiece::Zone => {
                    out.push_str("UTC");
                    Ok(())
                }
            };
        }
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
pub(super) fn civil_days(days: i64) -> (i64, u32, u32) {
    civil_from_days(days)
}
