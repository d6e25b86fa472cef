//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and B3 (the single
//! `b3` header and the `x-b3-*` headers), parsed strictly and written back.
//!
//! Parsing never panics and never guesses: a header that does not follow its spec to the letter
//! (wrong length, upper-case or non-hex digits, an all-zero id, version `ff`) is malformed, and a
//! malformed header is not continued — the request starts a new trace, and the header is removed
//! and written again from the proxy's context, never forwarded half-parsed. Version rules follow
//! W3C Trace Context §3.2.4: version `00` is exactly 55 bytes; a later version may be longer, and
//! then the byte after the flags must be `-`; only the first four fields are read.
//!
//! **Precedence** when both arrive: a valid `traceparent` wins over B3 (W3C is the standard, the
//! one OpenTelemetry SDKs send by default), then the single `b3` header, then the `x-b3-*`
//! headers (the single header is the newer, shorter form of the same thing). A malformed header
//! of the preferred format does not hide a valid one of the next.
//!
//! **What goes upstream**: the formats that arrived (malformed ones included, rewritten), all
//! carrying the one context the proxy continued; W3C when none arrived. So a B3 shop stays B3,
//! and a client that sends both keeps getting both.

use std::fmt;

/// A 128-bit trace id, never zero. Displays as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A 64-bit span id, never zero. Displays as 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl TraceId {
    /// Big-endian bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl SpanId {
    /// Big-endian bytes, as OTLP carries them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// Which formats a request carries (and so which go upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Formats {
    /// `traceparent` (and `tracestate`).
    pub w3c: bool,
    /// The single `b3` header.
    pub b3_single: bool,
    /// The `x-b3-*` headers.
    pub b3_multi: bool,
}

impl Formats {
    /// Whether no format arrived.
    pub fn is_empty(self) -> bool {
        !(self.w3c || self.b3_single || self.b3_multi)
    }
}

/// A context read from one format's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of the proxy's server span.
    pub span_id: SpanId,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// B3 debug (`d`, `x-b3-flags: 1`): sampled, and said again upstream.
    pub debug: bool,
    /// A B3 trace id of 64 bits (16 digits): written upstream in the same width.
    pub narrow: bool,
}

/// What one format's headers said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A context to continue.
    Context(Parent),
    /// B3 sampling only (`b3: 0`, `x-b3-sampled: 1` without ids): a new trace with this
    /// decision (`Some(true)` with debug).
    SamplingOnly {
        /// The decision.
        sampled: bool,
        /// B3 debug.
        debug: bool,
    },
    /// Present but not valid.
    Malformed,
}

/// What a request's headers say about its trace, all formats considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extracted {
    /// The context that wins (see the module docs), if any is valid.
    pub parent: Option<Parent>,
    /// A sampling decision without a context (B3 sampling-only headers).
    pub sampled: Option<bool>,
    /// B3 debug without a context.
    pub debug: bool,
    /// The formats present, valid or not.
    pub formats: Formats,
    /// The winning context came from a valid `traceparent`: `tracestate` goes on with it.
    pub keep_tracestate: bool,
}

/// Reads the trace context of a request from its header fields, given as (name, value) pairs
/// (names in any case).
pub fn extract<'a, 'b>(fields: impl Iterator<Item = (&'a str, &'b [u8])>) -> Extracted {
    let mut traceparent: Option<&'b [u8]> = None;
    let mut traceparents = 0u32;
    let mut b3: Option<&'b [u8]> = None;
    let mut b3_count = 0u32;
    let mut multi: MultiB3<'b> = MultiB3::default();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("traceparent") {
            traceparents += 1;
            traceparent = Some(value);
        } else if name.eq_ignore_ascii_case("b3") {
            b3_count += 1;
            b3 = Some(value);
        } else if let Some(suffix) = b3_suffix(name) {
            multi.set(suffix, value);
        }
    }
    let mut out = Extracted {
        formats: Formats {
            w3c: traceparents > 0,
            b3_single: b3_count > 0,
            b3_multi: multi.present,
        },
        ..Extracted::default()
    };
    // W3C: several traceparent fields are invalid (§3.2: a vendor must not guess which).
    let w3c = match (traceparents, traceparent) {
        (1, Some(value)) => parse_traceparent(value),
        (0, _) => None,
        _ => Some(Parsed::Malformed),
    };
    let single = match (b3_count, b3) {
        (1, Some(value)) => Some(parse_b3_single(value)),
        (0, _) => None,
        _ => Some(Parsed::Malformed),
    };
    let multi = multi.present.then(|| multi.parse());
    for (parsed, is_w3c) in [(w3c, true), (single, false), (multi, false)] {
        match parsed {
            Some(Parsed::Context(parent)) => {
                out.parent = Some(parent);
                out.keep_tracestate = is_w3c;
                return out;
            }
            Some(Parsed::SamplingOnly { sampled, debug }) if out.sampled.is_none() => {
                out.sampled = Some(sampled);
                out.debug = debug;
            }
            _ => {}
        }
    }
    out
}

/// Parses a `traceparent` value (W3C Trace Context §3.2).
pub fn parse_traceparent(value: &[u8]) -> Option<Parsed> {
    let Some(parsed) = parse_traceparent_fields(value) else {
        return Some(Parsed::Malformed);
    };
    Some(Parsed::Context(parsed))
}

fn parse_traceparent_fields(value: &[u8]) -> Option<Parent> {
    // The value may have optional whitespace around it (a list member's OWS); inside, none.
    let value = value.trim_ascii();
    if value.len() < 55 {
        return None;
    }
    let version = hex_u64(value.get(0..2)?)?;
    if version == 0xff {
        return None;
    }
    if version == 0 && value.len() != 55 {
        return None;
    }
    if value.len() > 55 && value.get(55) != Some(&b'-') {
        return None;
    }
    if value.get(2) != Some(&b'-') || value.get(35) != Some(&b'-') || value.get(52) != Some(&b'-') {
        return None;
    }
    let trace_id = hex_u128(value.get(3..35)?)?;
    let span_id = hex_u64(value.get(36..52)?)?;
    let flags = hex_u64(value.get(53..55)?)?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        sampled: Some(flags & 1 == 1),
        debug: false,
        narrow: false,
    })
}

/// Parses a single `b3` header: `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or a
/// sampling state alone (`0`, `1`, `d`).
pub fn parse_b3_single(value: &[u8]) -> Parsed {
    let value = value.trim_ascii();
    match value {
        b"0" => {
            return Parsed::SamplingOnly {
                sampled: false,
                debug: false,
            };
        }
        b"1" => {
            return Parsed::SamplingOnly {
                sampled: true,
                debug: false,
            };
        }
        b"d" => {
            return Parsed::SamplingOnly {
                sampled: true,
                debug: true,
            };
        }
        _ => {}
    }
    let mut parts = value.split(|&b| b == b'-');
    let (Some(trace), Some(span)) = (parts.next(), parts.next()) else {
        return Parsed::Malformed;
    };
    let sampling = parts.next();
    let parent = parts.next();
    if parts.next().is_some() {
        return Parsed::Malformed;
    }
    let Some((trace_id, narrow)) = b3_trace_id(trace) else {
        return Parsed::Malformed;
    };
    let Some(span_id) = b3_span_id(span) else {
        return Parsed::Malformed;
    };
    let (sampled, debug) = match sampling {
        None => (None, false),
        Some(b"0") => (Some(false), false),
        Some(b"1") => (Some(true), false),
        Some(b"d") => (Some(true), true),
        Some(_) => return Parsed::Malformed,
    };
    if let Some(parent) = parent
        && b3_span_id(parent).is_none()
    {
        return Parsed::Malformed;
    }
    Parsed::Context(Parent {
        trace_id,
        span_id,
        sampled,
        debug,
        narrow,
    })
}

/// The `x-b3-*` headers of a request, as they arrive.
#[derive(Debug, Default)]
struct MultiB3<'a> {
    present: bool,
    repeated: bool,
    trace: Option<&'a [u8]>,
    span: Option<&'a [u8]>,
    parent: Option<&'a [u8]>,
    sampled: Option<&'a [u8]>,
    flags: Option<&'a [u8]>,
}

impl<'a> MultiB3<'a> {
    /// Takes `x-b3-{suffix}`; unknown suffixes are not B3 context and are left alone.
    fn set(&mut self, suffix: &str, value: &'a [u8]) {
        let slot = if suffix.eq_ignore_ascii_case("traceid") {
            &mut self.trace
        } else if suffix.eq_ignore_ascii_case("spanid") {
            &mut self.span
        } else if suffix.eq_ignore_ascii_case("parentspanid") {
            &mut self.parent
        } else if suffix.eq_ignore_ascii_case("sampled") {
            &mut self.sampled
        } else if suffix.eq_ignore_ascii_case("flags") {
            &mut self.flags
        } else {
            return;
        };
        self.present = true;
        if slot.is_some() {
            self.repeated = true;
        }
        *slot = Some(value.trim_ascii());
    }

    fn parse(&self) -> Parsed {
        if self.repeated {
            return Parsed::Malformed;
        }
        let debug = match self.flags {
            None => false,
            Some(b"1") => true,
            Some(_) => return Parsed::Malformed,
        };
        // `true`/`false` are what early B3 clients sent; the spec asks receivers to accept them.
        let sampled = match self.sampled {
            None => None,
            Some(b"1" | b"true") => Some(true),
            Some(b"0" | b"false") => Some(false),
            Some(_) => return Parsed::Malformed,
        };
        match (self.trace, self.span) {
            (None, None) if self.parent.is_none() => match (sampled, debug) {
                (_, true) => Parsed::SamplingOnly {
                    sampled: true,
                    debug: true,
                },
                (Some(sampled), false) => Parsed::SamplingOnly {
                    sampled,
                    debug: false,
                },
                (None, false) => Parsed::Malformed,
            },
            (Some(trace), Some(span)) => {
                let (Some((trace_id, narrow)), Some(span_id)) =
                    (b3_trace_id(trace), b3_span_id(span))
                else {
                    return Parsed::Malformed;
                };
                if let Some(parent) = self.parent
                    && b3_span_id(parent).is_none()
                {
                    return Parsed::Malformed;
                }
                Parsed::Context(Parent {
                    trace_id,
                    span_id,
                    sampled: if debug { Some(true) } else { sampled },
                    debug,
                    narrow,
                })
            }
            _ => Parsed::Malformed,
        }
    }
}

/// A B3 trace id: 16 or 32 lower-case hex digits, not all zero; `true` for 16.
fn b3_trace_id(text: &[u8]) -> Option<(TraceId, bool)> {
    let id = match text.len() {
        16 => u128::from(hex_u64(text)?),
        32 => hex_u128(text)?,
        _ => return None,
    };
    (id != 0).then_some((TraceId(id), text.len() == 16))
}

/// A B3 span id: 16 lower-case hex digits, not all zero.
fn b3_span_id(text: &[u8]) -> Option<SpanId> {
    if text.len() != 16 {
        return None;
    }
    let id = hex_u64(text)?;
    (id != 0).then_some(SpanId(id))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lower-case hex, at most 16 digits.
fn hex_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    text.iter()
        .try_fold(0u64, |acc, &b| Some((acc << 4) | u64::from(hex_digit(b)?)))
}

/// Lower-case hex, at most 32 digits.
fn hex_u128(text: &[u8]) -> Option<u128> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    text.iter().try_fold(0u128, |acc, &b| {
        Some((acc << 4) | u128::from(hex_digit(b)?))
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], value: u128, digits: usize) {
    for (i, slot) in out.iter_mut().take(digits).enumerate() {
        *slot = HEX[((value >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
}

/// The trace headers one upstream attempt carries, rendered into fixed buffers (no allocation):
/// the proxy's client span as the parent, in every format of [`Formats`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    formats: Formats,
    traceparent: [u8; 55],
    b3: [u8; 68],
    b3_len: usize,
    trace: [u8; 32],
    trace_len: usize,
    span: [u8; 16],
    parent: [u8; 16],
    sampled: bool,
    debug: bool,
}

impl Outgoing {
    /// The headers for a request in trace `trace_id`, sent by span `span` (the proxy's client
    /// span) whose parent is `parent` (the proxy's server span).
    pub fn new(
        formats: Formats,
        trace_id: TraceId,
        span: SpanId,
        parent: SpanId,
        sampled: bool,
        debug: bool,
        narrow: bool,
    ) -> Self {
        let formats = if formats.is_empty() {
            Formats {
                w3c: true,
                ..Formats::default()
            }
        } else {
            formats
        };
        let mut out = Self {
            formats,
            traceparent: [0; 55],
            b3: [0; 68],
            b3_len: 0,
            trace: [0; 32],
            trace_len: if narrow { 16 } else { 32 },
            span: [0; 16],
            parent: [0; 16],
            sampled,
            debug,
        };
        // 00-{trace}-{span}-{flags}
        out.traceparent[..3].copy_from_slice(b"00-");
        put_hex(&mut out.traceparent[3..35], trace_id.0, 32);
        out.traceparent[35] = b'-';
        put_hex(&mut out.traceparent[36..52], u128::from(span.0), 16);
        out.traceparent[52] = b'-';
        out.traceparent[53..55].copy_from_slice(if sampled { b"01" } else { b"00" });
        let trace_len = out.trace_len;
        put_hex(&mut out.trace[..trace_len], trace_id.0, trace_len);
        put_hex(&mut out.span, u128::from(span.0), 16);
        put_hex(&mut out.parent, u128::from(parent.0), 16);
        // {trace}-{span}-{sampling}-{parent}
        let mut n = 0;
        for part in [&out.trace[..trace_len], b"-", &out.span[..], b"-"] {
            out.b3[n..n + part.len()].copy_from_slice(part);
            n += part.len();
        }
        out.b3[n] = match (debug, sampled) {
            (true, _) => b'd',
            (false, true) => b'1',
            (false, false) => b'0',
        };
        out.b3[n + 1] = b'-';
        let parent = out.parent;
        out.b3[n + 2..n + 18].copy_from_slice(&parent);
        out.b3_len = n + 18;
        out
    }

    /// The header fields, as (lower-case name, value).
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let w3c = self.formats.w3c;
        let single = self.formats.b3_single;
        let multi = self.formats.b3_multi;
        let sampled: &[u8] = if self.sampled { b"1" } else { b"0" };
        [
            (w3c, "traceparent", &self.traceparent[..]),
            (single, "b3", &self.b3[..self.b3_len]),
            (multi, "x-b3-traceid", &self.trace[..self.trace_len]),
            (multi, "x-b3-spanid", &self.span[..]),
            (multi, "x-b3-parentspanid", &self.parent[..]),
            // Debug implies sampled; B3 says not to send both.
            (multi && !self.debug, "x-b3-sampled", sampled),
            (multi && self.debug, "x-b3-flags", b"1"),
        ]
        .into_iter()
        .filter(|(on, _, _)| *on)
        .map(|(_, name, value)| (name, value))
    }
}

/// The names [`Outgoing::fields`] writes.
const OUTGOING_NAMES: [&str; 7] = [
    "traceparent",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

impl Outgoing {
    /// Appends the fields as HTTP/1.1 field lines (`name: value\r\n`): the form an attempt
    /// keeps them in (one reused buffer; see [`lines`]).
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The fields of a block [`Outgoing::write_lines`] wrote, with their names as `'static` strings
/// (an HTTP/2 request takes them without copying the name); anything else is skipped.
pub fn lines(block: &[u8]) -> impl Iterator<Item = (&'static str, &[u8])> {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r")?;
        let at = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..at], line.get(at + 2..)?);
        let name = OUTGOING_NAMES.iter().find(|n| n.as_bytes() == name)?;
        Some((*name, value))
    })
}

/// Whether `name` is a trace-context field the proxy rewrites (`tracestate` separately: it goes
/// on with a continued W3C context).
pub fn is_rewritten(name: &str) -> bool {
    name.eq_ignore_ascii_case("traceparent")
        || name.eq_ignore_ascii_case("b3")
        || b3_suffix(name).is_some_and(|suffix| {
            ["traceid", "spanid", "parentspanid", "sampled", "flags"]
                .iter()
                .any(|s| suffix.eq_ignore_ascii_case(s))
        })
}

/// `name` after an `x-b3-` prefix (any case).
fn b3_suffix(name: &str) -> Option<&str> {
    let prefix = name.as_bytes().get(..5)?;
    if prefix.eq_ignore_ascii_case(b"x-b3-") {
        name.get(5..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
