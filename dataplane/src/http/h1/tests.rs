//! Strict framing: each case is a request that a lenient parser would accept or misread.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_head: 60 * 1024,
    max_headers: 100,
};

/// Scans a complete head, as the proxy does before parsing.
fn scan(raw: &[u8]) -> Result<Head, Reject> {
    match prescan(raw, 0)? {
        Scan::Complete(head) => Ok(head),
        Scan::Partial(_) => panic!("incomplete head in test input"),
    }
}

fn parse(raw: &[u8]) -> Result<(u8, BodyFraming, bool, String), Reject> {
    let head = scan(raw)?;
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let request = parse_request(raw, head, &mut storage, &LIMITS)?;
    Ok((
        request.minor_version,
        request.body,
        request.keep_alive,
        request.authority.to_owned(),
    ))
}

fn status_of(raw: &[u8]) -> u16 {
    match parse(raw) {
        Ok(_) => 0,
        Err(reject) => reject.status,
    }
}

#[test]
fn valid_requests_are_framed() {
    let (_, body, keep_alive, host) =
        parse(b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n").expect("valid");
    assert_eq!(body, BodyFraming::None);
    assert!(keep_alive);
    assert_eq!(host, "example.com");

    let (_, body, ..) =
        parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").expect("valid");
    assert_eq!(body, BodyFraming::Length(5));

    let (_, body, ..) =
        parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").expect("valid");
    assert_eq!(body, BodyFraming::Chunked);

    let (version, _, keep_alive, _) =
        parse(b"GET / HTTP/1.0\r\n\r\n").expect("HTTP/1.0 without Host");
    assert_eq!(version, 0);
    assert!(!keep_alive);

    let (_, _, keep_alive, _) =
        parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("valid");
    assert!(keep_alive);

    let (_, _, keep_alive, _) =
        parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").expect("valid");
    assert!(!keep_alive);
}

#[test]
fn absolute_form_overrides_host() {
    let raw = b"GET http://real.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
    let head = scan(raw).expect("clean head");
    let mut storage = [httparse::EMPTY_HEADER; 16];
    let request = parse_request(raw, head, &mut storage, &LIMITS).expect("valid");
    assert_eq!(request.authority, "real.example:8080");
    assert_eq!(request.path, "/p");
    assert_eq!(request.query, Some("q"));
}

#[test]
fn smuggling_vectors_are_refused() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 44\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +44\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: folded\r\n\tmore\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
        (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ];
    for (raw, status) in cases {
        assert_eq!(
            status_of(raw),
            *status,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn size_limits_give_414_and_431() {
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    assert_eq!(status_of(long_line.as_bytes()), 414);
    // An incomplete over-long line is refused before its end arrives.
    let partial = format!("GET /{}", "a".repeat(9000));
    assert_eq!(
        check_incomplete(partial.as_bytes(), &LIMITS).map_err(|r| r.status),
        Err(414)
    );

    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(61 * 1024)
    );
    assert_eq!(status_of(big_head.as_bytes()), 431);

    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(status_of(many_headers.as_bytes()), 431);
}

#[test]
fn connection_tokens_and_hop_by_hop() {
    assert!(is_connection_specific("Keep-Alive", ""));
    assert!(is_connection_specific(
        "x-internal-auth",
        "keep-alive, X-Internal-Auth"
    ));
    assert!(!is_connection_specific(
        "x-other",
        "keep-alive, X-Internal-Auth"
    ));
    assert!(!is_connection_specific("content-length", "close"));
}

#[test]
fn responses_are_framed_per_rfc_9112() {
    let frame = |raw: &[u8], head: bool| {
        let head_len = head_end(raw).expect("complete");
        let mut storage = [httparse::EMPTY_HEADER; 32];
        parse_response(raw, head_len, &mut storage, head, false)
            .map(|r| (r.status, r.body, r.keep_alive))
    };
    assert_eq!(
        frame(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
        Ok((200, BodyFraming::Length(3), true))
    );
    assert_eq!(
        frame(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
        Ok((200, BodyFraming::None, true))
    );
    assert_eq!(
        frame(b"HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok((204, BodyFraming::None, true))
    );
    assert_eq!(
        frame(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        ),
        Ok((304, BodyFraming::None, true))
    );
    assert_eq!(
        frame(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        Ok((200, BodyFraming::Chunked, true))
    );
    assert_eq!(
        frame(b"HTTP/1.1 200 OK\r\n\r\n", false),
        Ok((200, BodyFraming::UntilClose, false))
    );
    assert_eq!(
        frame(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
        Ok((200, BodyFraming::Length(1), false))
    );
    assert!(
        frame(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err()
    );
    assert!(
        frame(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err()
    );
    assert!(frame(b"HTTP/1.1 999 Nope\r\n\r\n", false).is_err());
    assert!(frame(b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", false).is_err());
}

#[test]
fn prescan_stops_at_the_end_of_the_head() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\na\nb\0";
    let end = raw.len() - 4;
    let Ok(Scan::Complete(head)) = prescan(raw, 0) else {
        panic!("complete expected")
    };
    assert_eq!(head.len(), end, "body bytes are not the head's business");
    // Scanning resumes where it stopped, across reads, whatever the split.
    for split in 1..end {
        let Ok(Scan::Partial(at)) = prescan(&raw[..split], 0) else {
            panic!("partial expected at {split}")
        };
        assert!(at <= split);
        let Ok(Scan::Complete(head)) = prescan(raw, at) else {
            panic!("complete expected after {split}")
        };
        assert_eq!(head.len(), end);
    }
}
