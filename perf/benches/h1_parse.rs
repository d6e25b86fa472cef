//! How long does the HTTP/1.1 request path spend turning bytes into a validated request and back
//! into the head it sends upstream? Measures, for a typical 6-header request and a larger
//! 20-header one: the framing pre-scan (`h1::prescan`), strict parsing and validation
//! (`h1::parse_request`), and writing the upstream head with forwarding headers
//! (`h1::client::write_request_head`, with the header rules of `http::headers`). Run with `cargo bench -p perf --bench h1_parse`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dataplane::http::h1::client::{RequestLine, write_request_head};
use dataplane::http::h1::{self, BodyFraming, Scan};
use dataplane::http::headers::{Fields, Forwarding, RequestRules};
use dataplane::http::request::{ClientProtocol, RequestBody, RequestHead};
use dataplane::routing::HeaderMutation;
use dataplane::snapshot::HeadLimits;

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_head: 60 * 1024,
    max_headers: 100,
};

fn small() -> Vec<u8> {
    b"GET /api/v1/users/42?fields=name,email HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/7.88.1\r\n\
Accept: */*\r\nX-Request-Id: 6f1c86f7-8cc7-4b46-87fe-d13366b55c4e\r\nX-Forwarded-For: 10.0.0.1\r\n\
Connection: keep-alive\r\n\r\n"
        .to_vec()
}

fn large() -> Vec<u8> {
    let mut head =
        b"POST /checkout/cart/items HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 512\r\n"
            .to_vec();
    for i in 0..17 {
        head.extend_from_slice(
            format!("X-Custom-Header-{i}: value-{i}-abcdefghijklmnopqrstuvwxyz\r\n").as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn bench(c: &mut Criterion) {
    for (name, bytes) in [("6 headers", small()), ("20 headers", large())] {
        c.bench_function(&format!("prescan/{name}"), |b| {
            b.iter(|| black_box(h1::prescan(black_box(&bytes), 0)));
        });
        let Ok(Scan::Complete(head)) = h1::prescan(&bytes, 0) else {
            panic!("complete head")
        };
        c.bench_function(&format!("parse_request/{name}"), |b| {
            b.iter(|| {
                let mut storage = [httparse::EMPTY_HEADER; 128];
                let request = h1::parse_request(black_box(&bytes), head, &mut storage, &LIMITS);
                black_box(request.map(|r| r.body).ok());
            });
        });
        let mut out = Vec::with_capacity(4096);
        let mut values = Vec::new();
        let mutation = HeaderMutation::default();
        c.bench_function(&format!("write_request_head/{name}"), |b| {
            let mut storage = [httparse::EMPTY_HEADER; 128];
            let request = h1::parse_request(&bytes, head, &mut storage, &LIMITS).expect("valid");
            let view = RequestHead {
                method: request.method,
                authority: request.authority,
                path: request.path,
                query: request.query.unwrap_or_default(),
                target: request.target,
                fields: Fields::H1(request.headers),
                connection_tokens: request.connection_tokens,
                protocol: ClientProtocol::Http11,
                body: match request.body {
                    BodyFraming::Length(n) => RequestBody::Length(n),
                    BodyFraming::None => RequestBody::None,
                    _ => RequestBody::Stream,
                },
                expect_continue: false,
                upgrade: None,
                grpc: false,
                tls: None,
            };
            let rules = RequestRules {
                mutation: &mutation,
                forwarding: Forwarding {
                    peer: b"10.1.2.3",
                    proto: "http",
                    trust_proto: false,
                    request_id: b"6f1c86f7-8cc7-4b46-87fe-d13366b55c4e",
                },
                join_cookies: true,
                keep_te_trailers: false,
                grpc_timeout: None,
                per_attempt: false,
                trace: None,
            };
            b.iter(|| {
                write_request_head(
                    &mut out,
                    &view,
                    &RequestLine {
                        target: request.target.as_bytes(),
                        host: request.authority.as_bytes(),
                        framing: request.body,
                        upgrade: None,
                    },
                    &rules,
                    &mut values,
                );
                black_box(out.len());
            });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
