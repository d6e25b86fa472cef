//! What the proxy sends upstream and downstream, byte for byte.

use bytes::Bytes;

use super::*;
use crate::routing::HeaderMutation;

fn headers<'a>(pairs: &'a [(&'a str, &'a [u8])]) -> Vec<httparse::Header<'a>> {
    pairs
        .iter()
        .map(|(name, value)| httparse::Header { name, value })
        .collect()
}

fn request_head(
    pairs: &[(&str, &[u8])],
    connection_tokens: &str,
    body: BodyFraming,
    mutation: &HeaderMutation,
    trust_proto: bool,
) -> String {
    let fields = headers(pairs);
    let mut out = Vec::new();
    write_request_head(
        &mut out,
        &RequestHead {
            method: "POST",
            path_and_query: b"/a?b=1",
            host: b"example.com",
            headers: &fields,
            connection_tokens,
            body,
            upgrade: None,
            mutation,
            forwarding: Forwarding {
                peer: b"10.1.2.3",
                proto: "http",
                trust_proto,
                request_id: b"req-1",
            },
        },
    );
    String::from_utf8(out).expect("ascii head")
}

#[test]
fn request_head_strips_hop_by_hop_and_connection_nominated_headers() {
    let head = request_head(
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
    let head = request_head(
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

    let trusted = request_head(
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
    let head = request_head(
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
fn response_head_rewrites_framing_and_connection() {
    let fields = headers(&[
        ("Content-Length", b"3"),
        ("Connection", b"close, X-Secret"),
        ("X-Secret", b"s"),
        ("Server", b"up"),
    ]);
    let mut out = Vec::new();
    write_response_head(
        &mut out,
        &ResponseHead {
            status: 200,
            reason: "OK",
            headers: &fields,
            connection_tokens: "close, X-Secret",
            framing: ResponseFraming::Length(3),
            mutation: &HeaderMutation::default(),
            connection: None,
            upgrade: None,
        },
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 200 OK\r\nServer: up\r\ncontent-length: 3\r\n\r\n"
    );
}

#[test]
fn head_responses_keep_their_content_length() {
    let fields = headers(&[("Content-Length", b"1234")]);
    let mut out = Vec::new();
    write_response_head(
        &mut out,
        &ResponseHead {
            status: 200,
            reason: "OK",
            headers: &fields,
            connection_tokens: "",
            framing: ResponseFraming::NoBody,
            mutation: &HeaderMutation::default(),
            connection: Some("close"),
            upgrade: None,
        },
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn local_replies_are_complete_messages() {
    let mut out = Vec::new();
    write_local_reply(
        &mut out,
        &LocalReply {
            status: 404,
            body: b"no route\n",
            content_type: "text/plain",
            location: None,
            close: false,
            head_only: false,
            request_id: b"abc",
        },
    );
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\nx-request-id: abc\r\n\r\nno route\n"
    );
}
