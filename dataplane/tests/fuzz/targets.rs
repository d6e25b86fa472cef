//! Fuzz target bodies, written once and called from both harnesses: the `bolero` tests in
//! `dataplane/tests/fuzz.rs` (short runs under `cargo test`) and the `cargo fuzz` crate in
//! `fuzz/` (long libFuzzer campaigns). Each takes arbitrary bytes and asserts properties of one
//! parser on network or config input, not just that it does not panic. `docs/FUZZING.md` says
//! how to run them and how a finding becomes a regression test.

// Each harness uses its own subset of what is here.
#![allow(dead_code, unreachable_pub)]

use dataplane::http::detect::{Detected, H2_PREFACE, detect};
use dataplane::http::h1::chunked::ChunkedDecoder;
use dataplane::http::h1::{self, BodyFraming, Scan, prescan};
use dataplane::http::h2::guard::FrameGuard;
use dataplane::http::headers::{
    Fields, Forwarding, RequestRules, TraceHeaders, request_headers, response_headers,
};
use dataplane::http::normalize::{PathRules, normalize};
use dataplane::identity::SpiffeId;
use dataplane::l4::sni::{self, Hello};
use dataplane::routing::HeaderMutation;
use dataplane::snapshot::{GuardLimits, HeadLimits};
use dataplane::trace::context::{Parsed, extract, parse_b3_single, parse_traceparent};
use dataplane::trace::{Formats, Outgoing, SpanId};

/// A target: takes any bytes, panics when a property does not hold.
pub type Target = fn(&[u8]);

/// Every target, by name: the harnesses iterate over this list, and the corpus of target `name`
/// lives in `dataplane/tests/fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("h1_request", h1_request),
    ("h1_response", h1_response),
    ("chunked", chunked),
    ("detect", detect_split),
    ("h2_guard", h2_guard),
    ("header_translation", header_translation),
    ("normalize", normalize_path),
    ("config_text", config_text),
    ("config_mutated", config_mutated),
    ("sni", sni_hello),
    ("spiffe", spiffe_id),
    ("trace_context", trace_context),
    ("hbone_connect", hbone_connect),
];

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8 * 1024,
    max_head: 64 * 1024,
    max_headers: 100,
};

/// Reads little numbers off the front of the input to steer a target (split points, flags).
struct Steer<'a>(&'a [u8]);

impl<'a> Steer<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) << 8 | u16::from(self.byte())
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Bytes at the front of an input that choose read splits: a count and four cut points.
const SPLIT_BYTES: usize = 9;

/// The input's split-steering prefix and the bytes to split.
fn split_prefix(data: &[u8]) -> (Steer<'_>, &[u8]) {
    let (steer, bytes) = data.split_at(data.len().min(SPLIT_BYTES));
    (Steer(steer), bytes)
}

/// Fuzz-chosen cut points in `0..=len`, ascending.
fn cuts(steer: &mut Steer<'_>, len: usize) -> Vec<usize> {
    let n = usize::from(steer.byte() % 5);
    let mut cuts: Vec<usize> = (0..n)
        .map(|_| usize::from(steer.u16()) % (len + 1))
        .collect();
    cuts.sort_unstable();
    cuts
}

/// `bytes` in pieces cut at `cuts`.
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts {
        out.push(&bytes[at..cut]);
        at = cut;
    }
    out.push(&bytes[at..]);
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 heads

/// Scanning a head in pieces, resuming where each call stopped, ends as scanning it whole.
fn prescan_in_pieces(bytes: &[u8], cuts: &[usize]) {
    let whole = prescan(bytes, 0);
    let mut scanned = 0;
    for &cut in cuts {
        match prescan(&bytes[..cut], scanned) {
            Ok(Scan::Partial(at)) => {
                assert!(at <= cut && at >= scanned, "partial scan went backwards");
                scanned = at;
            }
            Ok(Scan::Complete(head)) => {
                assert_eq!(
                    whole,
                    Ok(Scan::Complete(head)),
                    "a prefix completed differently"
                );
                return;
            }
            Err(reject) => {
                assert_eq!(whole, Err(reject), "a prefix was refused differently");
                return;
            }
        }
    }
    let resumed = prescan(bytes, scanned);
    let agree = match (whole, resumed) {
        // A partial scan reports how far it got, which depends on where it started.
        (Ok(Scan::Partial(_)), Ok(Scan::Partial(_))) => true,
        (a, b) => a == b,
    };
    assert!(
        agree,
        "resumed scan {resumed:?} differs from whole scan {whole:?}"
    );
}

/// Writes the fields of a parsed head back as `name: value` lines.
fn write_fields(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    for header in headers {
        h1::push_header(out, header.name.as_bytes(), header.value);
    }
    out.extend_from_slice(b"\r\n");
}

fn field_list<'a>(headers: &'a [httparse::Header<'a>]) -> Vec<(&'a str, &'a [u8])> {
    headers.iter().map(|h| (h.name, h.value)).collect()
}

/// HTTP/1.1 request heads: scanning is independent of read splits, and a head that parses
/// re-serializes to one that parses the same.
pub fn h1_request(data: &[u8]) {
    let (mut steer, bytes) = split_prefix(data);
    let cuts = cuts(&mut steer, bytes.len());
    prescan_in_pieces(bytes, &cuts);
    let Ok(Scan::Complete(head)) = prescan(bytes, 0) else {
        return;
    };
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let Ok(request) = h1::parse_request(bytes, head, &mut storage, &LIMITS) else {
        return;
    };
    let mut again = Vec::new();
    again.extend_from_slice(request.method.as_bytes());
    again.push(b' ');
    again.extend_from_slice(request.target.as_bytes());
    again.extend_from_slice(if request.minor_version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    write_fields(&mut again, request.headers);
    let Ok(Scan::Complete(head2)) = prescan(&again, 0) else {
        panic!(
            "re-serialized head does not scan: {:?}",
            String::from_utf8_lossy(&again)
        );
    };
    let mut storage2 = [httparse::EMPTY_HEADER; 128];
    let reparsed = h1::parse_request(&again, head2, &mut storage2, &LIMITS).unwrap_or_else(|r| {
        panic!(
            "re-serialized head refused ({r:?}): {:?}",
            String::from_utf8_lossy(&again)
        )
    });
    assert_eq!(reparsed.method, request.method);
    assert_eq!(reparsed.target, request.target);
    assert_eq!(reparsed.minor_version, request.minor_version);
    assert_eq!(field_list(reparsed.headers), field_list(request.headers));
    assert_eq!(reparsed.authority, request.authority);
    assert_eq!(reparsed.path, request.path);
    assert_eq!(reparsed.query, request.query);
    assert_eq!(reparsed.body, request.body);
    assert_eq!(reparsed.keep_alive, request.keep_alive);
    assert_eq!(reparsed.expect_continue, request.expect_continue);
    assert_eq!(reparsed.upgrade, request.upgrade);
    assert_eq!(reparsed.connection_tokens, request.connection_tokens);
    assert!(request.path.starts_with('/') || request.path == "*");
    // A parsed request never carries both framings, and HTTP/1.0 is never chunked.
    assert!(!(request.minor_version == 0 && request.body == BodyFraming::Chunked));
}

/// HTTP/1.1 response heads (first byte: answers a HEAD, a CONNECT): a head that parses
/// re-serializes to one that parses the same.
pub fn h1_response(data: &[u8]) {
    let mut steer = Steer(data);
    let flags = steer.byte();
    let (is_head, is_connect) = (flags & 1 == 1, flags & 2 == 2);
    let bytes = steer.rest();
    let Some(head_len) = h1::head_end(bytes) else {
        return;
    };
    let mut storage = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
    let Ok(response) = h1::parse_response(bytes, head_len, &mut storage, is_head, is_connect)
    else {
        return;
    };
    let mut again = Vec::new();
    again.extend_from_slice(if response.minor_version == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    h1::push_decimal(&mut again, u64::from(response.status));
    again.push(b' ');
    again.extend_from_slice(response.reason.as_bytes());
    again.extend_from_slice(b"\r\n");
    write_fields(&mut again, response.headers);
    let mut storage2 = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
    let reparsed = h1::parse_response(&again, again.len(), &mut storage2, is_head, is_connect)
        .unwrap_or_else(|r| {
            panic!(
                "re-serialized response refused ({r:?}): {:?}",
                String::from_utf8_lossy(&again)
            )
        });
    assert_eq!(reparsed.status, response.status);
    assert_eq!(reparsed.reason, response.reason);
    assert_eq!(reparsed.minor_version, response.minor_version);
    assert_eq!(field_list(reparsed.headers), field_list(response.headers));
    assert_eq!(reparsed.body, response.body);
    assert_eq!(reparsed.keep_alive, response.keep_alive);
    assert_eq!(reparsed.connection_tokens, response.connection_tokens);
    assert!((100..=599).contains(&response.status));
    // A body delimited by close never leaves the connection reusable.
    assert!(!(response.body == BodyFraming::UntilClose && response.keep_alive));
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies

/// What a whole chunked input amounts to.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// The body ended after `consumed` bytes.
    Done { consumed: usize, payload: Vec<u8> },
    /// Valid so far; the body has not ended.
    Incomplete { payload: Vec<u8> },
    /// Refused.
    Error,
}

/// The streaming decoder fed `pieces` one after another (stopping where the body ends).
fn decode_in_pieces(pieces: &[&[u8]]) -> Decoded {
    let mut decoder = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        match decoder.feed(piece, Some(&mut payload)) {
            Err(_) => return Decoded::Error,
            Ok(progress) => {
                assert!(progress.consumed <= piece.len());
                consumed += progress.consumed;
                if progress.done {
                    assert_eq!(decoder.data_len(), payload.len() as u64);
                    return Decoded::Done { consumed, payload };
                }
                assert_eq!(
                    progress.consumed,
                    piece.len(),
                    "stopped before the end, not done"
                );
            }
        }
    }
    assert_eq!(decoder.data_len(), payload.len() as u64);
    Decoded::Incomplete { payload }
}

/// A second, independent reading of RFC 9112 §7.1 with the decoder's documented limits (16 hex
/// digits, 16 KiB of trailers; CRLF only; no control characters in extensions and trailers; no
/// trailer line starting with SP or HTAB, which is obs-fold), over the whole input at once.
fn reference_decode(input: &[u8]) -> Decoded {
    let mut payload = Vec::new();
    let mut at = 0;
    let is_ctl = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    // Returns the index of the LF ending a line that starts at `from`, checking that CR is
    // only ever followed by LF; `None` if the input ends first.
    loop {
        // Size line.
        let digits = input[at..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits > 16 {
            return Decoded::Error;
        }
        if at + digits == input.len() {
            return Decoded::Incomplete { payload };
        }
        if digits == 0 {
            return Decoded::Error;
        }
        let size = u64::from_str_radix(
            std::str::from_utf8(&input[at..at + digits]).unwrap_or_default(),
            16,
        )
        .unwrap_or_default();
        at += digits;
        match input[at] {
            b'\r' => {}
            b';' | b' ' | b'\t' => {
                at += 1;
                while at < input.len() && input[at] != b'\r' {
                    if is_ctl(input[at]) {
                        return Decoded::Error;
                    }
                    at += 1;
                }
                if at == input.len() {
                    return Decoded::Incomplete { payload };
                }
            }
            _ => return Decoded::Error,
        }
        // input[at] is CR.
        match input.get(at + 1) {
            None => return Decoded::Incomplete { payload },
            Some(b'\n') => at += 2,
            Some(_) => return Decoded::Error,
        }
        if size == 0 {
            break;
        }
        let available = (input.len() - at) as u64;
        if available < size {
            payload.extend_from_slice(&input[at..]);
            return Decoded::Incomplete { payload };
        }
        let size = size as usize;
        payload.extend_from_slice(&input[at..at + size]);
        at += size;
        for expected in [b'\r', b'\n'] {
            match input.get(at) {
                None => return Decoded::Incomplete { payload },
                Some(&b) if b == expected => at += 1,
                Some(_) => return Decoded::Error,
            }
        }
    }
    // Trailer section: lines until an empty one.
    let mut trailer_bytes = 0usize;
    loop {
        let line_start = at;
        match input.get(at) {
            None => return Decoded::Incomplete { payload },
            Some(b'\r') => {
                return match input.get(at + 1) {
                    None => Decoded::Incomplete { payload },
                    Some(b'\n') => Decoded::Done {
                        consumed: at + 2,
                        payload,
                    },
                    Some(_) => Decoded::Error,
                };
            }
            Some(_) => {}
        }
        loop {
            let Some(&b) = input.get(at) else {
                return Decoded::Incomplete { payload };
            };
            trailer_bytes += 1;
            if trailer_bytes > 16 * 1024 {
                return Decoded::Error;
            }
            at += 1;
            if b == b'\r' {
                break;
            }
            // Whitespace first on a line is obs-fold (RFC 9112 §5.2).
            if is_ctl(b) || (matches!(b, b' ' | b'\t') && at - 1 == line_start) {
                return Decoded::Error;
            }
        }
        match input.get(at) {
            None => return Decoded::Incomplete { payload },
            Some(b'\n') => at += 1,
            Some(_) => return Decoded::Error,
        }
    }
}

/// The chunked decoder: its output does not depend on how the input is split into reads, equals
/// the reference decoder's, and `consumed` is exactly the body.
pub fn chunked(data: &[u8]) {
    let (mut steer, body) = split_prefix(data);
    let cuts = cuts(&mut steer, body.len());
    let whole = decode_in_pieces(&[body]);
    let split = decode_in_pieces(&pieces(body, &cuts));
    assert_eq!(
        whole, split,
        "the result depends on the read split {cuts:?}"
    );
    let bytewise: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(whole, decode_in_pieces(&bytewise), "byte-at-a-time differs");
    assert_eq!(
        whole,
        reference_decode(body),
        "differs from the reference decoder"
    );
    if let Decoded::Done { consumed, .. } = whole {
        // The body ends where it ends, whatever follows it.
        assert_eq!(
            decode_in_pieces(&[&body[..consumed]]),
            whole,
            "the body alone decodes differently"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol detection

/// Detection is stable under splitting: once a prefix is decided, every longer input is decided
/// the same way; an undecided input has only undecided prefixes.
pub fn detect_split(data: &[u8]) {
    let bytes = &data[..data.len().min(64)];
    let verdict = detect(bytes);
    for k in 0..bytes.len() {
        let early = detect(&bytes[..k]);
        if early != Detected::NeedMore {
            assert_eq!(
                early, verdict,
                "decided {early:?} at {k} bytes, {verdict:?} later"
            );
        }
    }
    match verdict {
        Detected::Http2 => assert!(bytes.starts_with(H2_PREFACE)),
        Detected::NeedMore => assert!(bytes.len() <= H2_PREFACE.len().max(24)),
        Detected::Http1 => assert!(bytes.contains(&b' ')),
        Detected::Opaque => {}
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 frame guard

/// Limits with no refill of the control-frame budget, so that verdicts do not depend on time.
const GUARD: GuardLimits = GuardLimits {
    max_resets: 10,
    control_frames_per_second: 0,
    control_frame_burst: 20,
    max_consecutive_empty_frames: 5,
    max_header_block: 4096,
};

/// The HTTP/2 frame guard (the input follows the client preface): its verdict does not depend
/// on how the bytes are split, and once broken it stays broken with the same abuse.
pub fn h2_guard(data: &[u8]) {
    let (mut steer, frames) = split_prefix(data);
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend_from_slice(frames);
    let cuts = cuts(&mut steer, bytes.len());

    let mut whole = FrameGuard::new(GUARD);
    let verdict = whole.inspect(&bytes);
    assert_eq!(verdict, whole.broken());

    let mut split = FrameGuard::new(GUARD);
    let mut first = None;
    for piece in pieces(&bytes, &cuts) {
        let seen = split.inspect(piece);
        if let Some(abuse) = first {
            assert_eq!(seen, Some(abuse), "a broken guard changed its verdict");
        }
        first = first.or(seen);
    }
    assert_eq!(
        first, verdict,
        "the verdict depends on the read split {cuts:?}"
    );
    assert_eq!(split.broken(), verdict);
    if verdict.is_none() {
        assert_eq!(split.in_header_block(), whole.in_header_block());
    }
    // More bytes never repair a broken connection.
    if let Some(abuse) = verdict {
        assert_eq!(whole.inspect(&bytes[..bytes.len().min(40)]), Some(abuse));
    }
}

// ---------------------------------------------------------------------------------------------
// Header translation

/// (lower-case name, value) pairs, sorted: what both codecs must agree on. Values are compared
/// without surrounding whitespace, which an HTTP/1.1 field line cannot carry (a joined `cookie`
/// whose last field was empty ends in `"; "`, and the space is gone once parsed).
fn canonical<'a>(pairs: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = pairs
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim_ascii().to_vec()))
        .collect();
    out.sort();
    out
}

/// The fields of an HTTP/1.1 block written by a sink, parsed back.
fn h1_block_fields(block: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    head.extend_from_slice(block);
    head.extend_from_slice(b"\r\n");
    let Ok(Scan::Complete(_)) = prescan(&head, 0) else {
        panic!(
            "written fields do not scan: {:?}",
            String::from_utf8_lossy(&head)
        );
    };
    let mut storage = [httparse::EMPTY_HEADER; 256];
    let mut request = httparse::Request::new(&mut storage);
    match request.parse(&head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        other => panic!(
            "written fields do not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&head)
        ),
    }
    canonical(request.headers.iter().map(|h| (h.name, h.value)))
}

/// HTTP/1.1 ↔ HTTP/2 header translation: the fields of a request head that parses, translated
/// for an HTTP/1.1 and for an HTTP/2 upstream, are the same fields; no connection-specific
/// field survives; and what went into an HTTP/2 map comes back out of it unchanged.
pub fn header_translation(data: &[u8]) {
    let mut steer = Steer(data);
    let flags = steer.byte();
    let mut head = b"GET /p HTTP/1.1\r\n".to_vec();
    head.extend_from_slice(steer.rest());
    let Ok(Scan::Complete(scan)) = prescan(&head, 0) else {
        return;
    };
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let Ok(request) = h1::parse_request(&head, scan, &mut storage, &LIMITS) else {
        return;
    };
    let mutation = HeaderMutation::default();
    let rules = RequestRules {
        mutation: &mutation,
        forwarding: Forwarding {
            peer: b"10.1.2.3",
            proto: "http",
            trust_proto: flags & 1 == 1,
            request_id: b"req-1",
        },
        join_cookies: flags & 2 == 2,
        keep_te_trailers: flags & 4 == 4,
        grpc_timeout: (flags & 8 == 8).then_some(&b"5S"[..]),
        per_attempt: flags & 16 == 16,
        trace: (flags & 32 == 32).then_some(TraceHeaders {
            keep_tracestate: flags & 64 == 64,
        }),
    };
    let fields = Fields::H1(request.headers);
    let mut scratch = Vec::new();
    let mut h1_out: Vec<u8> = Vec::new();
    request_headers(
        fields,
        request.connection_tokens,
        &rules,
        &mut scratch,
        &mut h1_out,
    );
    let mut h2_out = http::HeaderMap::new();
    request_headers(
        fields,
        request.connection_tokens,
        &rules,
        &mut scratch,
        &mut h2_out,
    );

    let from_h1 = h1_block_fields(&h1_out);
    let from_h2 = canonical(h2_out.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    assert_eq!(
        from_h1, from_h2,
        "HTTP/1.1 and HTTP/2 upstreams get different fields"
    );
    for (name, value) in &from_h1 {
        let te_trailers = name == "te" && rules.keep_te_trailers && value == b"trailers";
        // The proxy writes these itself, whatever the client's `Connection` lists.
        let own = matches!(
            name.as_str(),
            "x-forwarded-for" | "x-forwarded-proto" | "x-request-id" | "grpc-timeout"
        );
        assert!(
            te_trailers || own || !h1::is_connection_specific(name, request.connection_tokens),
            "connection-specific field {name} forwarded"
        );
        assert!(
            !matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding"
            ),
            "framing field {name} forwarded"
        );
    }

    // Back out of the HTTP/2 map (as a response would come): nothing is lost or added but the
    // hop-by-hop `te`.
    let mut back_h1: Vec<u8> = Vec::new();
    response_headers(Fields::H2(&h2_out), "", &mutation, true, &mut back_h1);
    let mut back_h2 = http::HeaderMap::new();
    response_headers(Fields::H2(&h2_out), "", &mutation, true, &mut back_h2);
    let without_te: Vec<_> = from_h2.into_iter().filter(|(n, _)| n != "te").collect();
    assert_eq!(h1_block_fields(&back_h1), without_te);
    let back = canonical(back_h2.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    assert_eq!(back, without_te);
}

// ---------------------------------------------------------------------------------------------
// Path normalization

/// Path normalization (first byte: the rules): the result starts at the root, is a fixed point,
/// has no `.` or `..` segment when dot segments are removed, and no `//` when slashes merge.
pub fn normalize_path(data: &[u8]) {
    let mut steer = Steer(data);
    let bits = steer.byte();
    let rules = PathRules {
        normalize: bits & 1 == 1,
        merge_slashes: bits & 2 == 2,
        escaped_slashes: match (bits >> 2) % 3 {
            0 => config_schema::EscapedSlashes::Keep,
            1 => config_schema::EscapedSlashes::Reject,
            _ => config_schema::EscapedSlashes::Decode,
        },
    };
    let mut path = vec![b'/'];
    path.extend_from_slice(steer.rest());
    let mut out = Vec::new();
    let Ok(changed) = normalize(&path, &rules, &mut out) else {
        return;
    };
    let first = if changed { out.clone() } else { path.clone() };
    let show = || String::from_utf8_lossy(&first).into_owned();
    assert!(first.starts_with(b"/"), "{} leaves the root", show());
    if rules.normalize {
        assert!(
            !first
                .split(|&b| b == b'/')
                .any(|segment| segment == b"." || segment == b".."),
            "{} keeps a dot segment",
            show()
        );
    }
    if rules.merge_slashes {
        assert!(!first.windows(2).any(|w| w == b"//"), "{} keeps //", show());
    }
    let mut again = Vec::new();
    let second = match normalize(&first, &rules, &mut again) {
        Ok(true) => again,
        Ok(false) => first.clone(),
        Err(e) => panic!("normalized {} is refused: {e:?}", show()),
    };
    assert_eq!(second, first, "normalizing {} again changes it", show());
}

// ---------------------------------------------------------------------------------------------
// Config loading and validation

/// Every error of a refused config points into the text: a line within it (or 0 for the whole
/// file, with no column) and a column within that line.
fn check_config(text: &str) {
    let Err(errors) = config_schema::parse(text) else {
        return;
    };
    assert!(!errors.is_empty(), "refused without an error");
    let lines: Vec<&str> = text.split('\n').collect();
    for error in &errors {
        if error.line == 0 {
            assert_eq!(error.column, 0, "{error:?} has a column but no line");
            continue;
        }
        let Some(line) = lines.get(error.line - 1) else {
            panic!(
                "{error:?} points past the text ({} lines): {text:?}",
                lines.len()
            );
        };
        let width = line.chars().count() + 1;
        assert!(
            error.column >= 1 && error.column <= width,
            "{error:?} points past its line ({width} columns): {line:?}"
        );
    }
}

/// The config loader and validator on arbitrary text.
pub fn config_text(data: &[u8]) {
    check_config(&String::from_utf8_lossy(data));
}

/// Valid configs to mutate (the deployable examples).
const CONFIGS: &[&str] = &[
    include_str!("../../../deploy/examples/quickstart.toml"),
    include_str!("../../../deploy/examples/l4-fanout.toml"),
    include_str!("../../../deploy/examples/mesh-node.toml"),
    include_str!("../../../deploy/examples/node-mode.toml"),
];

/// The config loader and validator on mutated valid configs: the input picks an example and a
/// series of line edits (replace a value, delete, duplicate or insert a line), each carrying
/// text from the input.
pub fn config_mutated(data: &[u8]) {
    let mut steer = Steer(data);
    let base = CONFIGS[usize::from(steer.byte()) % CONFIGS.len()];
    let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
    let edits = steer.byte() % 6 + 1;
    let mut rest = steer.rest();
    for _ in 0..edits {
        let mut op = Steer(rest);
        let kind = op.byte();
        let at = usize::from(op.u16()) % lines.len().max(1);
        let len = usize::from(op.byte() % 32);
        let rest_now = op.rest();
        let (payload, tail) = rest_now.split_at(len.min(rest_now.len()));
        rest = tail;
        let payload = String::from_utf8_lossy(payload).replace(['\n', '\r'], " ");
        if lines.is_empty() {
            lines.push(payload);
            continue;
        }
        match kind % 4 {
            0 => {
                let line = &mut lines[at];
                if let Some(eq) = line.find('=') {
                    line.truncate(eq + 1);
                    line.push(' ');
                    line.push_str(&payload);
                } else {
                    line.push_str(&payload);
                }
            }
            1 => {
                lines.remove(at);
            }
            2 => {
                let copy = lines[at].clone();
                lines.insert(at, copy);
            }
            _ => lines.insert(at, payload),
        }
    }
    check_config(&lines.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// SNI / ClientHello

/// A ClientHello built from the input, with the server name it carries (the reference the
/// parser must agree with): random, session id, suites and extra extensions from the input,
/// then cut into records of input-chosen sizes.
fn built_hello(steer: &mut Steer<'_>) -> (Vec<u8>, Option<String>) {
    let name_len = usize::from(steer.byte() % 40);
    const LABEL: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let mut name: Vec<u8> = (0..name_len)
        .map(|i| {
            let b = steer.byte();
            // A dot now and then, never first, last or twice in a row.
            if b.is_multiple_of(7) && i > 0 && i + 1 < name_len {
                b'.'
            } else {
                LABEL[usize::from(b) % LABEL.len()]
            }
        })
        .collect();
    while name.windows(2).any(|w| w == b"..") {
        if let Some(p) = name.windows(2).position(|w| w == b"..") {
            name[p + 1] = b'a';
        }
    }
    let name = (!name.is_empty()).then_some(name);

    let mut body = vec![3, 3];
    body.extend((0..32).map(|_| steer.byte()));
    let session = usize::from(steer.byte() % 33);
    body.push(session as u8);
    body.extend((0..session).map(|_| steer.byte()));
    let suites = usize::from(steer.byte() % 8 + 1) * 2;
    body.extend_from_slice(&(suites as u16).to_be_bytes());
    body.extend((0..suites).map(|_| steer.byte()));
    body.extend_from_slice(&[1, 0]);

    let mut extensions = Vec::new();
    let extra = steer.byte() % 4;
    let sni_slot = steer.byte() % (extra + 1);
    for slot in 0..=extra {
        if slot == sni_slot
            && let Some(name) = &name
        {
            let mut list = vec![0u8];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend_from_slice(&list);
            extensions.extend_from_slice(&0u16.to_be_bytes());
            extensions.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&ext);
        }
        if slot < extra {
            // Any extension but server_name, each of another type, with an input-chosen body.
            let kind = 0x1000 + u16::from(slot) * 0x100 + u16::from(steer.byte());
            let len = usize::from(steer.byte());
            extensions.extend_from_slice(&kind.to_be_bytes());
            extensions.extend_from_slice(&(len as u16).to_be_bytes());
            extensions.extend((0..len).map(|_| steer.byte()));
        }
    }
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut message = vec![1];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend_from_slice(&body);

    // At most 64 records (the reader's documented limit).
    let record_size = (usize::from(steer.u16()) % 512 + 1).max(message.len().div_ceil(64));
    let mut out = Vec::new();
    for chunk in message.chunks(record_size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    let expected = name.map(|n| String::from_utf8_lossy(&n).to_ascii_lowercase());
    (out, expected)
}

/// The SNI/ClientHello reader (first byte: raw bytes or a built hello). A well-formed hello
/// gives exactly the server name it was built with, and every prefix of it is incomplete; on
/// any input, a complete verdict does not depend on bytes after the hello (it never reads past
/// it) and no prefix of a refused input is complete.
pub fn sni_hello(data: &[u8]) {
    let mut steer = Steer(data);
    let mode = steer.byte();
    let bytes = if mode % 2 == 0 {
        steer.rest().to_vec()
    } else {
        let (hello, expected) = built_hello(&mut steer);
        match sni::parse(&hello) {
            Hello::Complete(name) => assert_eq!(
                name.map(|n| n.as_str().to_owned()),
                expected,
                "a built hello's name was read wrong"
            ),
            other => panic!("a well-formed hello was not read: {other:?}"),
        }
        for k in (0..hello.len()).step_by(7) {
            assert_eq!(
                sni::parse(&hello[..k]),
                Hello::Incomplete,
                "prefix of {k} bytes"
            );
        }
        hello
    };
    let verdict = sni::parse(&bytes);
    if let Hello::Complete(_) = verdict {
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"\x16\x03\x01garbage after the hello");
        assert_eq!(
            sni::parse(&longer),
            verdict,
            "bytes after the hello changed it"
        );
    }
    for k in (0..bytes.len()).step_by(11) {
        let early = sni::parse(&bytes[..k]);
        if let Hello::Complete(_) = early {
            assert_eq!(early, verdict, "a prefix of {k} bytes was complete");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SPIFFE IDs

/// SPIFFE ID parsing: parse∘format is the identity on accepted IDs, and an ID is its trust
/// domain and path put back together.
pub fn spiffe_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(id) = SpiffeId::parse(&text) else {
        return;
    };
    assert_eq!(id.as_str(), text);
    assert_eq!(id.to_string(), text);
    assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id));
    assert_eq!(
        format!("spiffe://{}{}", id.trust_domain(), id.path()),
        text,
        "trust domain and path do not make up the ID"
    );
    assert_eq!(
        SpiffeId::new(id.trust_domain(), id.path()).as_ref(),
        Ok(&id)
    );
}

// ---------------------------------------------------------------------------------------------
// HBONE CONNECT

/// The HBONE CONNECT target and `forwarded` source: the input's first line is an `:authority`,
/// the rest a `forwarded` value. A target that parses is an `ip:port` that prints back to itself
/// (so a host name never passes); a source that parses survives `forwarded_value` and back;
/// nothing panics.
pub fn hbone_connect(data: &[u8]) {
    use dataplane::hbone::{forwarded_value, parse_forwarded, parse_target};
    let text = String::from_utf8_lossy(data);
    let (authority, forwarded) = text.split_once('\n').unwrap_or((&text, ""));
    if let Some(target) = parse_target(authority) {
        assert_eq!(parse_target(&target.to_string()), Some(target));
        assert!(
            authority.starts_with(|c: char| c.is_ascii_digit() || c == '['),
            "{authority:?} is no ip:port"
        );
        assert_eq!(parse_forwarded(&forwarded_value(target)), Some(target));
    }
    if let Some(source) = parse_forwarded(forwarded) {
        assert_eq!(parse_forwarded(&forwarded_value(source)), Some(source));
        assert!(
            forwarded.to_ascii_lowercase().contains("for"),
            "{forwarded:?} has no for="
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Trace context

/// Trace-context parsing: a `traceparent` or `b3` that parses formats back to one that parses
/// the same, and whatever context `extract` finds in arbitrary fields survives a round trip
/// through every output format.
pub fn trace_context(data: &[u8]) {
    let all = Formats {
        w3c: true,
        b3_single: true,
        b3_multi: true,
    };
    if let Some(Parsed::Context(p)) = parse_traceparent(data) {
        let out = Outgoing::new(
            Formats::default(),
            p.trace_id,
            p.span_id,
            SpanId(1),
            p.sampled == Some(true),
            false,
            false,
        );
        let (name, value) = out.fields().next().expect("W3C is written");
        assert_eq!(name, "traceparent");
        assert_eq!(parse_traceparent(value), Some(Parsed::Context(p)));
    }
    if let Parsed::Context(p) = parse_b3_single(data) {
        let out = Outgoing::new(
            Formats {
                b3_single: true,
                ..Formats::default()
            },
            p.trace_id,
            p.span_id,
            SpanId(1),
            p.sampled == Some(true),
            p.debug,
            p.narrow,
        );
        let (_, value) = out
            .fields()
            .find(|(n, _)| *n == "b3")
            .expect("b3 is written");
        let Parsed::Context(q) = parse_b3_single(value) else {
            panic!(
                "written b3 {:?} does not parse",
                String::from_utf8_lossy(value)
            );
        };
        assert_eq!(
            (q.trace_id, q.span_id, q.narrow),
            (p.trace_id, p.span_id, p.narrow)
        );
        assert_eq!(q.debug, p.debug);
        if !p.debug {
            assert_eq!(q.sampled, Some(p.sampled == Some(true)));
        }
    }
    // The input as a block of header fields, split at `\n` and the first `:`.
    let text = String::from_utf8_lossy(data);
    let fields: Vec<(&str, &[u8])> = text
        .split('\n')
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim().as_bytes()))
        .collect();
    let found = extract(fields.iter().copied());
    if let Some(p) = found.parent {
        let sampled = p.sampled == Some(true) || p.debug;
        let out = Outgoing::new(
            all,
            p.trace_id,
            p.span_id,
            SpanId(7),
            sampled,
            false,
            p.narrow,
        );
        let again = extract(out.fields())
            .parent
            .expect("what the proxy writes parses");
        assert_eq!((again.trace_id, again.span_id), (p.trace_id, p.span_id));
        assert_eq!(again.sampled, Some(sampled));
    }
}
