//! The ClientHello parser against real ClientHellos (captured from `openssl s_client` and curl
//! into `testdata/`; `tests/tests/sni_passthrough.rs` captures fresh ones through the binary),
//! refragmented, padded past one record, truncated at every byte, and mutated at random.
//!
//! The files are the bytes each client wrote to a listening socket that never answered, up to
//! the end of its first record: `openssl s_client -connect 127.0.0.1:PORT` with
//! `-servername api.example` (TLS 1.3), `-servername x.internal.example -tls1_2`, and
//! `-noservername` (OpenSSL 3.0), and `curl --resolve Api.Example:PORT:127.0.0.1
//! https://Api.Example:PORT/` (curl 7.88).

use super::*;

const OPENSSL_TLS13: &[u8] = include_bytes!("testdata/openssl-tls13-sni.bin");
const OPENSSL_TLS12: &[u8] = include_bytes!("testdata/openssl-tls12-sni.bin");
const OPENSSL_NO_SNI: &[u8] = include_bytes!("testdata/openssl-no-sni.bin");
/// curl asked for `https://Api.Example:PORT/`.
const CURL: &[u8] = include_bytes!("testdata/curl-sni.bin");

fn name(hello: &[u8]) -> Option<String> {
    match parse(hello) {
        Hello::Complete(name) => name.map(|n| n.as_str().to_owned()),
        other => panic!("not a complete ClientHello: {other:?}"),
    }
}

/// The handshake message of a one-record ClientHello.
fn message(hello: &[u8]) -> &[u8] {
    let length = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    &hello[5..5 + length]
}

/// `message` cut into records of at most `size` payload bytes each.
fn records(message: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[HANDSHAKE, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// `message` with a padding extension (21) of `extra` bytes appended to its extensions.
fn padded(message: &[u8], extra: usize) -> Vec<u8> {
    // Walk to the extensions block: header 4, version 2, random 32, session id, suites,
    // compression.
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(message[at]);
    at += 2 + usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    at += 1 + usize::from(message[at]);
    let extensions_len = usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    let mut body = message[4..].to_vec();
    let ext_at = at - 4;
    let new_len = extensions_len + 4 + extra;
    body[ext_at..ext_at + 2].copy_from_slice(&(new_len as u16).to_be_bytes());
    body.extend_from_slice(&21u16.to_be_bytes());
    body.extend_from_slice(&(extra as u16).to_be_bytes());
    body.extend(std::iter::repeat_n(0u8, extra));
    let mut out = vec![CLIENT_HELLO];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&body);
    out
}

#[test]
fn real_client_hellos_give_their_server_name() {
    assert_eq!(name(OPENSSL_TLS13).as_deref(), Some("api.example"));
    assert_eq!(name(OPENSSL_TLS12).as_deref(), Some("x.internal.example"));
    assert_eq!(name(OPENSSL_NO_SNI), None);
    // Lowercased: names compare case-insensitively.
    assert_eq!(name(CURL).as_deref(), Some("api.example"));
}

#[test]
fn every_prefix_of_a_client_hello_is_incomplete() {
    for hello in [OPENSSL_TLS13, OPENSSL_TLS12, OPENSSL_NO_SNI, CURL] {
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
    }
}

#[test]
fn bytes_after_the_client_hello_do_not_matter() {
    let mut hello = CURL.to_vec();
    hello.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(name(&hello).as_deref(), Some("api.example"));
}

#[test]
fn a_client_hello_split_into_many_records_is_put_together() {
    assert_eq!(message(CURL).len(), 512);
    // 64 records of 8 bytes is the most allowed.
    for size in [8, 9, 16, 100, 511] {
        let split = records(message(CURL), size);
        assert_eq!(
            name(&split).as_deref(),
            Some("api.example"),
            "records of {size}"
        );
        // Still incomplete until its last byte.
        for cut in (0..split.len()).step_by(13) {
            assert_eq!(
                parse(&split[..cut]),
                Hello::Incomplete,
                "{size}: cut at {cut}"
            );
        }
    }
}

#[test]
fn a_client_hello_in_more_than_64_records_is_invalid() {
    for size in [1, 7] {
        let split = records(message(CURL), size);
        assert!(
            matches!(parse(&split), Hello::Invalid(_)),
            "records of {size}"
        );
        // Decided once 64 records are there without the whole message, not at the end.
        assert!(matches!(
            parse(&split[..65 * (5 + size)]),
            Hello::Invalid(_)
        ));
    }
}

#[test]
fn a_client_hello_larger_than_one_record_is_read() {
    let big = padded(message(OPENSSL_TLS13), 40_000);
    assert!(big.len() > 2 * MAX_RECORD);
    let wire = records(&big, MAX_RECORD);
    assert_eq!(name(&wire).as_deref(), Some("api.example"));
    assert_eq!(parse(&wire[..wire.len() - 1]), Hello::Incomplete);
}

#[test]
fn a_client_hello_over_the_limit_is_refused_without_waiting_for_it() {
    let mut header = vec![HANDSHAKE, 3, 1, 0x40, 0x00, CLIENT_HELLO];
    header.extend_from_slice(&((MAX_HELLO as u32).to_be_bytes()[1..]));
    assert!(matches!(parse(&header), Hello::Invalid(_)));
    // A message just within the limit whose records, with their headers, are not: the read
    // stops at the limit rather than growing without end.
    let mut huge = vec![CLIENT_HELLO];
    huge.extend_from_slice(&((MAX_HELLO as u32 - 4).to_be_bytes()[1..]));
    huge.resize(MAX_HELLO, 0);
    let wire = records(&huge, MAX_RECORD);
    assert!(wire.len() > MAX_HELLO);
    assert!(matches!(parse(&wire[..MAX_HELLO]), Hello::Invalid(_)));
    assert!(matches!(parse(&wire), Hello::Invalid(_)));
}

#[test]
fn other_protocols_are_told_apart_from_the_first_bytes() {
    for bytes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"G",
        b"SSH-2.0-OpenSSH",
        b"\x16\x02",
        b"\x80\x2e\x01\x03\x01", // SSLv2-compatible hello: no SNI possible
        b"\x17\x03\x03\x00\x10",
    ] {
        assert!(matches!(parse(bytes), Hello::Invalid(_)), "{bytes:?}");
    }
    assert_eq!(parse(b"\x16"), Hello::Incomplete);
    assert_eq!(parse(b"\x16\x03"), Hello::Incomplete);
}

#[test]
fn broken_client_hellos_are_invalid() {
    let message = message(OPENSSL_TLS13);
    // Not a ClientHello (a ServerHello's type).
    let mut server_hello = message.to_vec();
    server_hello[0] = 2;
    assert!(matches!(
        parse(&records(&server_hello, 500)),
        Hello::Invalid(_)
    ));
    // An alert record in the middle of the handshake message.
    let mut interleaved = records(&message[..100], 100);
    interleaved.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    assert!(matches!(parse(&interleaved), Hello::Invalid(_)));
    // A zero-length record.
    assert!(matches!(parse(&[22, 3, 1, 0, 0]), Hello::Invalid(_)));
    // A record longer than TLS allows.
    assert!(matches!(parse(&[22, 3, 1, 0x40, 0x01]), Hello::Invalid(_)));
    // A message length that the body does not fill: the extensions overrun it.
    let mut short = message.to_vec();
    short.truncate(message.len() - 3);
    let length = (short.len() - 4) as u32;
    short[1..4].copy_from_slice(&length.to_be_bytes()[1..]);
    assert!(matches!(parse(&records(&short, 500)), Hello::Invalid(_)));
}

#[test]
fn server_names_that_are_not_host_names_are_invalid() {
    for bad in [
        "",
        "a..b",
        ".a",
        "a.",
        "a b",
        "a\0b",
        "ä.example",
        &"a".repeat(64),
    ] {
        assert!(ServerName::new(bad.as_bytes()).is_none(), "{bad:?}");
    }
    for good in ["a", "api.example", "A-1.b_c.Example", &"a".repeat(63)] {
        let name = ServerName::new(good.as_bytes()).expect(good);
        assert_eq!(name.as_str(), good.to_ascii_lowercase());
    }
    let longest = vec!["a".repeat(63); 4].join(".");
    assert_eq!(longest.len(), 255);
    assert!(ServerName::new(longest.as_bytes()).is_some());
    assert!(ServerName::new(format!("{longest}a").as_bytes()).is_none());
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = [OPENSSL_TLS13, OPENSSL_TLS12, OPENSSL_NO_SNI, CURL];
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].to_vec();
        match round % 4 {
            // Flip a few bytes anywhere (lengths included).
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
            }
            // Truncate, then flip.
            1 => {
                bytes.truncate(rng.below(bytes.len() + 1));
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 0xff;
                }
            }
            // Refragment a mutated message into random record sizes.
            2 => {
                let mut m = message(&bytes).to_vec();
                let at = rng.below(m.len());
                m[at] = rng.next() as u8;
                bytes = records(&m, 1 + rng.below(300));
            }
            // Pure noise behind a handshake record header.
            _ => {
                let len = rng.below(600);
                bytes = vec![22, 3, 1];
                bytes.extend((0..len).map(|_| rng.next() as u8));
            }
        }
        // Whatever it says, it must say it without panicking, and a name is a host name.
        if let Hello::Complete(Some(name)) = parse(&bytes) {
            assert!(ServerName::new(name.as_str().as_bytes()).is_some());
        }
    }
}
