//! What the proxy sends upstream and downstream, field by field, for both sink kinds.

use bytes::Bytes;
use http::HeaderMap;

use super::*;
use crate::http::h1::BodyFraming;
use crate::http::h1::client::{RequestLine, write_request_head};
use crate::http::request::{ClientProtocol, RequestBody, RequestHead};
use crate::routing::HeaderMutation;

fn fields<'a>(pairs: &'a [(&'a str, &'a [u8])]) -> Vec<httparse::Header<'a>> {
    pairs
        .iter()
        .map(|(name, value)| httparse::Header { name, value })
        .collect()
}

fn request<'a>(fields: Fields<'a>, connection_tokens: &'a str) -> RequestHead<'a> {
    RequestHead {
        method: "POST",
        authority: "example.com",
        path: "/a",
        query: "b=1",
        target: "/a?b=1",
        fields,
        connection_tokens,
        protocol: ClientProtocol::Http11,
        body: RequestBody::None,
        expect_continue: false,
        upgrade: None,
        grpc: false,
        tls: None,
    }
}

fn rules<'a>(mutation: &'a HeaderMutation, trust_proto: bool, h2: bool) -> RequestRules<'a> {
    RequestRules {
        mutation,
        forwarding: Forwarding {
            peer: b"10.1.2.3",
            proto: "http",
            trust_proto,
            request_id: b"req-1",
        },
        join_cookies: !h2,
        keep_te_trailers: h2,
        grpc_timeout: None,
        per_attempt: false,
        trace: None,
    }
}

/// The HTTP/1.1 upstream head for `pairs`.
fn h1_head(
    pairs: &[(&str, &[u8])],
    connection_tokens: &str,
    framing: BodyFraming,
    mutation: &HeaderMutation,
    trust_proto: bool,
) -> String {
    let fields = fields(pairs);
    let head = request(Fields::H1(&fields), connection_tokens);
    let mut out = Vec::new();
    write_request_head(
        &mut out,
        &head,
        &RequestLine {
            target: b"/a?b=1",
            host: b"example.com",
            framing,
            upgrade: None,
        },
        &rules(mutation, trust_proto, false),
        &mut Vec::new(),
    );
    String::from_utf8(out).expect("ascii head")
}

#[test]
fn request_head_strips_hop_by_hop_and_connection_nominated_headers() {
    let head = h1_head(
        &[
            ("Host", b"example.com"),
            ("Connection", b"keep-alive, X-Internal-Auth"),
            ("Keep-Alive", b"timeout=5"),
            ("X-Internal-Auth", b"secret"),
            ("TE", b"trailers"),
            ("Proxy-Connection", b"keep-alive"),
            ("Content-Length", b"5"),
            ("Expect", b"100-continue"),
            ("Accept", b"*/*"),
        ],
        "keep-alive, X-Internal-Auth",
        BodyFraming::Length(5),
        &HeaderMutation::default(),
        false,
    );
    assert_eq!(
        head,
        "POST /a?b=1 HTTP/1.1\r\nhost: example.com\r\nAccept: */*\r\nx-forwarded-for: 10.1.2.3\r\n\
         x-forwarded-proto: http\r\nx-request-id: req-1\r\ncontent-length: 5\r\n\r\n"
    );
}

#[test]
fn forwarded_for_is_appended_to_every_previous_value() {
    let head = h1_head(
        &[
            ("X-Forwarded-For", b"1.1.1.1"),
            ("x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
            ("X-Forwarded-Proto", b"https"),
        ],
        "",
        BodyFraming::None,
        &HeaderMutation::default(),
        false,
    );
    assert!(
        head.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3\r\n"),
        "{head}"
    );
    // Untrusted client: its X-Forwarded-Proto is replaced.
    assert!(
        head.contains("x-forwarded-proto: http\r\n") && !head.contains("https"),
        "{head}"
    );

    let trusted = h1_head(
        &[("X-Forwarded-Proto", b"https")],
        "",
        BodyFraming::None,
        &HeaderMutation::default(),
        true,
    );
    assert!(
        trusted.contains("X-Forwarded-Proto: https\r\n")
            && !trusted.contains("x-forwarded-proto: http\r\n"),
        "{trusted}"
    );
}

#[test]
fn framing_is_canonical_and_mutations_apply_in_order() {
    let mutation = HeaderMutation {
        remove: vec!["x-drop".into()].into(),
        set: vec![("x-set".into(), Bytes::from_static(b"new"))].into(),
        add: vec![("x-add".into(), Bytes::from_static(b"more"))].into(),
    };
    let head = h1_head(
        &[
            ("Transfer-Encoding", b"chunked"),
            ("X-Drop", b"1"),
            ("X-Set", b"old"),
            ("X-Add", b"first"),
        ],
        "",
        BodyFraming::Chunked,
        &mutation,
        false,
    );
    assert!(!head.contains("X-Drop"), "{head}");
    assert!(!head.contains("old"), "{head}");
    assert!(head.contains("x-set: new\r\n"), "{head}");
    assert!(
        head.contains("X-Add: first\r\n") && head.contains("x-add: more\r\n"),
        "{head}"
    );
    assert!(
        head.contains("transfer-encoding: chunked\r\n") && !head.contains("Transfer-Encoding"),
        "{head}"
    );
}

#[test]
fn split_cookies_are_joined_for_http1_and_kept_for_http2() {
    let mut map = HeaderMap::new();
    map.append("cookie", "a=1".parse().expect("value"));
    map.append("cookie", "b=2".parse().expect("value"));
    map.append("te", "trailers".parse().expect("value"));
    let head = request(Fields::H2(&map), "");
    let mutation = HeaderMutation::default();

    let mut h1 = Vec::new();
    request_headers(
        head.fields,
        "",
        &rules(&mutation, false, false),
        &mut Vec::new(),
        &mut h1,
    );
    let h1 = String::from_utf8(h1).expect("ascii");
    assert!(h1.contains("cookie: a=1; b=2\r\n"), "{h1}");
    assert_eq!(h1.matches("cookie").count(), 1, "{h1}");
    assert!(!h1.contains("te:"), "TE is hop-by-hop in HTTP/1.1: {h1}");

    let mut h2 = HeaderMap::new();
    request_headers(
        head.fields,
        "",
        &rules(&mutation, false, true),
        &mut Vec::new(),
        &mut h2,
    );
    assert_eq!(h2.get_all("cookie").iter().count(), 2);
    assert_eq!(h2["te"], "trailers");
    assert_eq!(h2["x-forwarded-for"], "10.1.2.3");
    assert_eq!(h2["x-request-id"], "req-1");
}

#[test]
fn the_remaining_grpc_deadline_replaces_the_clients() {
    let pairs = fields(&[
        ("grpc-timeout", b"10S"),
        ("content-type", b"application/grpc"),
    ]);
    let head = request(Fields::H1(&pairs), "");
    let mutation = HeaderMutation::default();
    let mut with_deadline = rules(&mutation, false, true);
    with_deadline.grpc_timeout = Some(b"1500m");
    let mut out = HeaderMap::new();
    request_headers(head.fields, "", &with_deadline, &mut Vec::new(), &mut out);
    assert_eq!(out.get_all("grpc-timeout").iter().count(), 1);
    assert_eq!(out["grpc-timeout"], "1500m");
}

#[test]
fn response_fields_lose_connection_and_framing_fields() {
    let pairs = fields(&[
        ("Content-Length", b"3"),
        ("Connection", b"close, X-Secret"),
        ("X-Secret", b"s"),
        ("Transfer-Encoding", b"chunked"),
        ("Server", b"up"),
    ]);
    let mut out = Vec::new();
    response_headers(
        Fields::H1(&pairs),
        "close, X-Secret",
        &HeaderMutation::default(),
        false,
        &mut out,
    );
    assert_eq!(String::from_utf8(out).expect("ascii"), "Server: up\r\n");

    // A bodiless answer (HEAD, 304) keeps the length of the resource.
    let mut out = Vec::new();
    response_headers(
        Fields::H1(&pairs),
        "close, X-Secret",
        &HeaderMutation::default(),
        true,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "Content-Length: 3\r\nServer: up\r\n"
    );
}

#[test]
fn with_tracing_on_client_trace_headers_are_dropped_for_the_attempt_to_write() {
    let pairs: &[(&str, &[u8])] = &[
        ("Host", b"example.com"),
        ("traceparent", b"00-zz"),
        ("TraceState", b"a=b"),
        ("b3", b"1"),
        ("X-B3-TraceId", b"x"),
        ("x-b3-other", b"kept"),
    ];
    let fields = fields(pairs);
    let head = request(Fields::H1(&fields), "");
    let mutation = HeaderMutation::default();
    let write = |trace| {
        let mut out = Vec::new();
        let rules = RequestRules {
            trace,
            ..rules(&mutation, false, false)
        };
        write_request_head(
            &mut out,
            &head,
            &RequestLine {
                target: b"/",
                host: b"example.com",
                framing: BodyFraming::None,
                upgrade: None,
            },
            &rules,
            &mut Vec::new(),
        );
        String::from_utf8(out).expect("ascii head")
    };
    let off = write(None);
    assert!(
        off.contains("traceparent: 00-zz") && off.contains("b3: 1"),
        "{off}"
    );
    let on = write(Some(TraceHeaders {
        keep_tracestate: false,
    }));
    for gone in ["traceparent", "TraceState", "b3:", "X-B3-TraceId"] {
        assert!(!on.contains(gone), "{gone} in {on}");
    }
    assert!(on.contains("x-b3-other: kept"), "{on}");
    let kept = write(Some(TraceHeaders {
        keep_tracestate: true,
    }));
    assert!(
        kept.contains("TraceState: a=b") && !kept.contains("traceparent"),
        "{kept}"
    );
}
