use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    pairs.iter().map(|(n, v)| (*n, v.as_bytes()))
}

fn ctx(value: &str) -> Option<Parent> {
    match parse_traceparent(value.as_bytes()) {
        Some(Parsed::Context(parent)) => Some(parent),
        _ => None,
    }
}

#[test]
fn traceparent_table() {
    let valid = format!("00-{TRACE}-{SPAN}-01");
    let cases: &[(&str, bool, Option<bool>)] = &[
        (&valid, true, Some(true)),
        (&format!("00-{TRACE}-{SPAN}-00"), true, Some(false)),
        // Other flag bits are kept out of the sampling decision.
        (&format!("00-{TRACE}-{SPAN}-03"), true, Some(true)),
        // Version ff is invalid.
        (&format!("ff-{TRACE}-{SPAN}-01"), false, None),
        // All-zero ids.
        (&format!("00-{}-{SPAN}-01", "0".repeat(32)), false, None),
        (&format!("00-{TRACE}-{}-01", "0".repeat(16)), false, None),
        // Upper case, wrong lengths, wrong characters, wrong separators.
        (
            &format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            false,
            None,
        ),
        (&format!("00-{TRACE}-{SPAN}-0A"), false, None),
        (&format!("00-{}-{SPAN}-01", &TRACE[1..]), false, None),
        (&format!("00-{TRACE}-{}-01", &SPAN[1..]), false, None),
        (&format!("00-{TRACE}-{SPAN}-1"), false, None),
        (&format!("00-{TRACE}-{SPAN}-01-"), false, None),
        (&format!("00-{TRACE}-{SPAN}-01x"), false, None),
        (&format!("00_{TRACE}-{SPAN}-01"), false, None),
        (&format!("0g-{TRACE}-{SPAN}-01"), false, None),
        (&format!("00-{}z-{SPAN}-01", &TRACE[1..]), false, None),
        ("", false, None),
        ("00", false, None),
        // A future version: longer is fine when the byte after the flags is '-'.
        (&format!("01-{TRACE}-{SPAN}-01"), true, Some(true)),
        (
            &format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds"),
            true,
            Some(true),
        ),
        (&format!("cc-{TRACE}-{SPAN}-01what"), false, None),
        // Surrounding whitespace is the list's, not the value's.
        (&format!(" {valid} "), true, Some(true)),
    ];
    for (value, ok, sampled) in cases {
        let parsed = ctx(value);
        assert_eq!(parsed.is_some(), *ok, "{value:?}");
        if let Some(parent) = parsed {
            assert_eq!(parent.sampled, *sampled, "{value:?}");
            assert_eq!(parent.trace_id.to_string(), TRACE);
            assert_eq!(parent.span_id.to_string(), SPAN);
        }
    }
}

#[test]
fn b3_single_table() {
    let cases: &[(String, Parsed)] = &[
        (
            format!("{TRACE}-{SPAN}-1"),
            Parsed::Context(Parent {
                trace_id: TraceId(u128::from_str_radix(TRACE, 16).unwrap_or(1)),
                span_id: SpanId(u64::from_str_radix(SPAN, 16).unwrap_or(1)),
                sampled: Some(true),
                debug: false,
                narrow: false,
            }),
        ),
        (
            "0".into(),
            Parsed::SamplingOnly {
                sampled: false,
                debug: false,
            },
        ),
        (
            "1".into(),
            Parsed::SamplingOnly {
                sampled: true,
                debug: false,
            },
        ),
        (
            "d".into(),
            Parsed::SamplingOnly {
                sampled: true,
                debug: true,
            },
        ),
        ("2".into(), Parsed::Malformed),
        (format!("{TRACE}-{SPAN}-x"), Parsed::Malformed),
        (
            format!("{TRACE}-{SPAN}-1-{}", "0".repeat(16)),
            Parsed::Malformed,
        ),
        (format!("{TRACE}-{SPAN}-1-{SPAN}-extra"), Parsed::Malformed),
        (format!("{}-{SPAN}", "0".repeat(32)), Parsed::Malformed),
        (
            format!("{TRACE}-{}", SPAN.to_uppercase()),
            Parsed::Malformed,
        ),
        (format!("{}-{SPAN}", &TRACE[..20]), Parsed::Malformed),
        (TRACE.to_string(), Parsed::Malformed),
    ];
    for (value, want) in cases {
        assert_eq!(parse_b3_single(value.as_bytes()), *want, "{value:?}");
    }
    // 64-bit trace ids are accepted and remembered as narrow; debug means sampled.
    let Parsed::Context(p) = parse_b3_single(format!("{SPAN}-{SPAN}-d-{SPAN}").as_bytes()) else {
        panic!("a 64-bit trace id is valid B3");
    };
    assert!(p.narrow && p.debug && p.sampled == Some(true));
    assert_eq!(p.trace_id.to_string(), format!("{}{SPAN}", "0".repeat(16)));
}

#[test]
fn b3_multi_table() {
    let ok = extract(fields(&[
        ("X-B3-TraceId", TRACE),
        ("X-B3-SpanId", SPAN),
        ("X-B3-ParentSpanId", SPAN),
        ("X-B3-Sampled", "1"),
    ]));
    let parent = ok.parent.expect("valid multi-header B3");
    assert_eq!(parent.trace_id.to_string(), TRACE);
    assert_eq!(parent.sampled, Some(true));
    assert!(ok.formats.b3_multi && !ok.formats.w3c && !ok.keep_tracestate);

    let debug = extract(fields(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]));
    assert_eq!(
        debug.parent.map(|p| (p.sampled, p.debug)),
        Some((Some(true), true))
    );

    let legacy = extract(fields(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "false"),
    ]));
    assert_eq!(legacy.parent.and_then(|p| p.sampled), Some(false));

    let sampling_only = extract(fields(&[("x-b3-sampled", "0")]));
    assert_eq!(
        (sampling_only.parent, sampling_only.sampled),
        (None, Some(false))
    );

    for bad in [
        &[("x-b3-traceid", TRACE)][..],
        &[("x-b3-spanid", SPAN)][..],
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "yes"),
        ][..],
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "2"),
        ][..],
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "00"),
        ][..],
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
        ][..],
        &[
            ("x-b3-traceid", "00000000000000000000000000000000"),
            ("x-b3-spanid", SPAN),
        ][..],
        &[("x-b3-flags", "0")][..],
    ] {
        let got = extract(fields(bad));
        assert_eq!(got.parent, None, "{bad:?}");
        assert!(got.formats.b3_multi, "{bad:?}: present, so rewritten");
    }
    // Other x-b3-like names are not B3 context.
    let other = extract(fields(&[("x-b3-something", "1")]));
    assert!(other.formats.is_empty());
}

#[test]
fn conflicts_w3c_wins_then_single_b3_then_multi() {
    let other_trace = "11111111111111111111111111111111";
    let w3c = format!("00-{TRACE}-{SPAN}-01");
    let single = format!("{other_trace}-{SPAN}-0");
    let both = extract(fields(&[("b3", &single), ("traceparent", &w3c)]));
    assert_eq!(
        both.parent.map(|p| p.trace_id.to_string()),
        Some(TRACE.to_string())
    );
    assert!(both.keep_tracestate);
    assert!(both.formats.w3c && both.formats.b3_single);

    // A malformed traceparent does not hide a valid B3 header, but is still rewritten.
    let broken = extract(fields(&[("traceparent", "00-zz"), ("b3", &single)]));
    assert_eq!(
        broken.parent.map(|p| p.trace_id.to_string()),
        Some(other_trace.to_string())
    );
    assert!(!broken.keep_tracestate && broken.formats.w3c);

    let multi_trace = "22222222222222222222222222222222";
    let singles = extract(fields(&[
        ("x-b3-traceid", multi_trace),
        ("x-b3-spanid", SPAN),
        ("b3", &single),
    ]));
    assert_eq!(
        singles.parent.map(|p| p.trace_id.to_string()),
        Some(other_trace.to_string())
    );

    // Two traceparent fields: invalid (W3C §3.2), B3 is used.
    let twice = extract(fields(&[("traceparent", &w3c), ("traceparent", &w3c)]));
    assert_eq!(twice.parent, None);
    assert!(twice.formats.w3c);
}

#[test]
fn outgoing_headers_carry_the_proxy_span_as_parent() {
    let trace = TraceId(u128::from_str_radix(TRACE, 16).unwrap_or(1));
    let formats = Formats {
        w3c: true,
        b3_single: true,
        b3_multi: true,
    };
    let out = Outgoing::new(
        formats,
        trace,
        SpanId(0xabc),
        SpanId(0xdef),
        true,
        false,
        false,
    );
    let got: Vec<(&str, String)> = out
        .fields()
        .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("traceparent", format!("00-{TRACE}-0000000000000abc-01")),
            ("b3", format!("{TRACE}-0000000000000abc-1-0000000000000def")),
            ("x-b3-traceid", TRACE.to_string()),
            ("x-b3-spanid", "0000000000000abc".to_string()),
            ("x-b3-parentspanid", "0000000000000def".to_string()),
            ("x-b3-sampled", "1".to_string()),
        ]
    );
    // None arrived: W3C only. Debug B3 says `d` and `x-b3-flags: 1`.
    let none = Outgoing::new(
        Formats::default(),
        trace,
        SpanId(1),
        SpanId(2),
        false,
        false,
        false,
    );
    assert_eq!(
        none.fields().map(|(n, _)| n).collect::<Vec<_>>(),
        vec!["traceparent"]
    );
    let debug = Outgoing::new(
        Formats {
            b3_multi: true,
            b3_single: true,
            w3c: false,
        },
        TraceId(5),
        SpanId(1),
        SpanId(2),
        true,
        true,
        true,
    );
    let got: Vec<(&str, String)> = debug
        .fields()
        .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned()))
        .collect();
    assert_eq!(
        got[0],
        (
            "b3",
            "0000000000000005-0000000000000001-d-0000000000000002".into()
        )
    );
    assert!(got.contains(&("x-b3-flags", "1".into())));
    assert!(!got.iter().any(|(n, _)| *n == "x-b3-sampled"));
}

#[test]
fn rewritten_names() {
    for name in [
        "traceparent",
        "TraceParent",
        "b3",
        "X-B3-TraceId",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert!(is_rewritten(name), "{name}");
    }
    for name in [
        "tracestate",
        "b",
        "x-b3",
        "x-b3-other",
        "x-request-id",
        "é-b3-xx",
    ] {
        assert!(!is_rewritten(name), "{name}");
    }
}

/// Random bytes never panic a parser, and whatever parses formats back to what parsed it.
#[test]
fn random_input_never_panics_and_valid_input_round_trips() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Mostly bytes that matter to the grammar, so that valid values come up too.
    const ALPHABET: &[u8] = b"0123456789abcdef-0123456789abcdefABCDEF d\xff\x00";
    for round in 0..20_000 {
        let len = (next() % 80) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if round % 4 == 0 {
                    r as u8
                } else {
                    ALPHABET[(r % ALPHABET.len() as u64) as usize]
                }
            })
            .collect();
        let _ = parse_b3_single(&bytes);
        let _ = extract([("x-b3-traceid", &bytes[..]), ("x-b3-spanid", &bytes[..])].into_iter());
        if let Some(Parsed::Context(p)) = parse_traceparent(&bytes) {
            let out = Outgoing::new(
                Formats::default(),
                p.trace_id,
                p.span_id,
                SpanId(1),
                p.sampled == Some(true),
                false,
                false,
            );
            let (_, value) = out.fields().next().expect("W3C is written");
            assert_eq!(ctx(std::str::from_utf8(value).unwrap_or_default()), Some(p));
        }
    }
    // Valid contexts, made at random, round-trip through every format.
    for _ in 0..2_000 {
        let trace = TraceId((u128::from(next()) << 64 | u128::from(next())).max(1));
        let span = SpanId(next().max(1));
        let sampled = next() % 2 == 0;
        let all = Formats {
            w3c: true,
            b3_single: true,
            b3_multi: true,
        };
        let out = Outgoing::new(all, trace, span, SpanId(7), sampled, false, false);
        let got = extract(out.fields());
        let parent = got.parent.expect("what the proxy writes parses");
        assert_eq!(
            (parent.trace_id, parent.span_id, parent.sampled),
            (trace, span, Some(sampled))
        );
        let single: Vec<_> = out.fields().filter(|(n, _)| *n != "traceparent").collect();
        let parent = extract(single.into_iter()).parent.expect("B3 alone parses");
        assert_eq!((parent.trace_id, parent.span_id), (trace, span));
    }
}

#[test]
fn outgoing_lines_read_back_as_fields() {
    let all = Formats {
        w3c: true,
        b3_single: true,
        b3_multi: true,
    };
    let out = Outgoing::new(all, TraceId(9), SpanId(8), SpanId(7), true, false, false);
    let mut block = Vec::new();
    out.write_lines(&mut block);
    let fields: Vec<_> = out.fields().collect();
    assert_eq!(lines(&block).collect::<Vec<_>>(), fields);
    assert_eq!(lines(b"x-other: 1\r\nbroken\r\n").count(), 0);
}
