//! Protocol detection on `http` and `auto` listeners: HTTP/1.x, the HTTP/2 preface (h2c with prior
//! knowledge), or opaque bytes for the listener's fallback `cluster`.
//!
//! Detection is a gate in front of strict HTTP parsing, routing and the header timeout, so it
//! must be impossible to slip past it and it must never lose a byte:
//!
//! - **HTTP-looking bytes are never demoted to opaque.** A connection whose bytes so far are a
//!   prefix of a method token (token characters only, at most [`MAX_METHOD`] of them) or of the
//!   HTTP/2 preface waits for more bytes, up to the request header timeout. Otherwise a client
//!   that pauses mid-request-line would be forwarded raw to the fallback cluster, unparsed and
//!   unrouted.
//! - **Silence is opaque only when it is total.** Server-first protocols (SMTP, MySQL) never speak
//!   first, so on a listener with a fallback, a connection on which *no* byte arrives within
//!   [`DETECT_WINDOW`] is opaque. Once a byte has arrived, only the bytes decide.
//! - **One deadline per phase, not per read.** The wait for the first byte is one window; after
//!   the first byte, detection shares the request header timeout counted from that byte, and the
//!   instant is handed on ([`Detection::first_byte_at`]) so that the HTTP/1.1 server's head
//!   deadline does not restart: a client trickling a byte at a time gets 408 at the header
//!   timeout whatever its rate.
//! - **No read is dropped.** A read given up at a deadline is cancelled and awaited
//!   (`net::read_within`): with io_uring, a dropped read that the kernel had already completed
//!   takes its bytes with it. Every byte read here is handed on, to be parsed (HTTP) or forwarded
//!   (opaque).

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token looked at when deciding whether bytes are HTTP/1 (the longest registered
/// method, `UPDATEREDIRECTREF`, has 17 characters). Longer runs of token characters are opaque.
pub const MAX_METHOD: usize = 24;
/// On listeners with an opaque fallback, how long a client may stay silent before the connection
/// is treated as a server-first protocol.
pub const DETECT_WINDOW: Duration = Duration::from_secs(1);
/// Bytes asked for per detection read.
const READ_SIZE: usize = 1024;

/// What the first bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Anything else.
    Opaque,
    /// Not enough bytes yet: everything so far is a prefix of a method token or of the preface.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub fn detect(bytes: &[u8]) -> Detected {
    let preface_prefix = bytes.len().min(H2_PREFACE.len());
    if bytes[..preface_prefix] == H2_PREFACE[..preface_prefix] {
        return if bytes.len() >= H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    for (i, &b) in bytes.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b' ' if i > 0 => return Detected::Http1,
            b if is_token(b) => {}
            _ => return Detected::Opaque,
        }
    }
    if bytes.len() > MAX_METHOD {
        Detected::Opaque
    } else {
        Detected::NeedMore
    }
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a listener detects.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The listener forwards non-HTTP connections to a cluster (`auto` with `cluster`).
    pub opaque_fallback: bool,
    /// The listener's request header timeout: the whole head must arrive within it, counted from
    /// the first byte. Without a fallback it also bounds the wait for the first byte.
    pub header_timeout: Duration,
    /// With a fallback: how long to wait for a first byte before deciding on opaque.
    pub window: Duration,
}

/// Where the connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To the HTTP/1.1 server: an HTTP/1.x request line, or HTTP-looking bytes that did not
    /// complete a request line before the header timeout or before the client closed (the strict
    /// parser answers them: 408, 400).
    Http1,
    /// To the HTTP/2 server.
    Http2,
    /// Opaque: not HTTP, or silent for the whole window. Forwarded to the fallback cluster if
    /// the listener has one, else closed.
    Opaque,
    /// Nothing to serve: the client closed or failed before its first byte, or (without a
    /// fallback) sent nothing within the header timeout.
    Close,
}

/// The outcome of detection.
#[derive(Debug)]
pub struct Detection {
    /// Where the connection goes.
    pub verdict: Verdict,
    /// Every byte read so far, in order: the next stage starts with them.
    pub initial: Vec<u8>,
    /// When the first byte arrived (`None` if none did).
    pub first_byte_at: Option<Instant>,
}

/// Reads a connection's first bytes and decides where it goes.
pub async fn detect_connection(stream: &mut TcpStream, policy: &Policy) -> Detection {
    let mut detection = Detection {
        verdict: Verdict::Close,
        initial: Vec::with_capacity(4 * READ_SIZE),
        first_byte_at: None,
    };
    // The first byte: one window with a fallback (silence is a server-first protocol), else the
    // header timeout.
    let first_wait = if policy.opaque_fallback {
        policy.window
    } else {
        policy.header_timeout
    };
    let first_deadline = Instant::now() + first_wait;
    while detection.initial.is_empty() {
        let left = first_deadline.saturating_duration_since(Instant::now());
        match crate::net::read_within(stream, &mut detection.initial, READ_SIZE, usize::MAX, left)
            .await
        {
            Ok(0) => return detection,
            Ok(_) => {}
            // `TimedOut` means the read was cancelled with nothing read (one that completed as
            // the window closed returns its bytes instead): total silence.
            Err(e) if e.kind() == ErrorKind::TimedOut && policy.opaque_fallback => {
                detection.verdict = Verdict::Opaque;
                return detection;
            }
            Err(_) => return detection,
        }
    }
    let first_byte_at = Instant::now();
    detection.first_byte_at = Some(first_byte_at);

    // After the first byte: the bytes decide, within the header timeout from that byte.
    let deadline = first_byte_at + policy.header_timeout;
    loop {
        match detect(&detection.initial) {
            Detected::Http1 => {
                detection.verdict = Verdict::Http1;
                return detection;
            }
            Detected::Http2 => {
                detection.verdict = Verdict::Http2;
                return detection;
            }
            Detected::Opaque => {
                detection.verdict = Verdict::Opaque;
                return detection;
            }
            Detected::NeedMore => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::net::read_within(stream, &mut detection.initial, READ_SIZE, usize::MAX, left)
            .await
        {
            Ok(n) if n > 0 => {}
            // HTTP-looking bytes stay HTTP: the HTTP/1.1 server answers a head cut short by a
            // close (400) or by the header timeout (408: its deadline, counted from the first
            // byte, has passed).
            Ok(_) => {
                detection.verdict = Verdict::Http1;
                return detection;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                detection.verdict = Verdict::Http1;
                return detection;
            }
            Err(_) => {
                detection.verdict = Verdict::Close;
                return detection;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::TcpStream as StdStream;

    use super::*;

    #[test]
    fn detects_protocols_from_first_bytes() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(detect(b"M-SEARCH * HTTP/1.1"), Detected::Http1);
        assert_eq!(detect(b"GE"), Detected::NeedMore);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Detected::Http2);
        assert_eq!(detect(b"PRI * HTTP/2"), Detected::NeedMore);
        assert_eq!(detect(b"PRI / HTTP/1.1"), Detected::Http1);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00"), Detected::Opaque);
        assert_eq!(detect(b"SSH-2.0-OpenSSH_9.2\r\n"), Detected::Opaque);
        assert_eq!(detect(&[b'A'; 40]), Detected::Opaque);
    }

    #[test]
    fn method_prefixes_wait_up_to_the_longest_method() {
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(b"G"), Detected::NeedMore);
        assert_eq!(detect(b"UPDATEREDIRECTREF"), Detected::NeedMore);
        assert_eq!(detect(&[b'A'; MAX_METHOD]), Detected::NeedMore);
        assert_eq!(detect(&[b'A'; MAX_METHOD + 1]), Detected::Opaque);
        // A space first is not a method; neither is a control character or a non-ASCII byte.
        assert_eq!(detect(b" GET"), Detected::Opaque);
        assert_eq!(detect(b"GE\r"), Detected::Opaque);
        assert_eq!(detect(b"G\xc3"), Detected::Opaque);
        // Every prefix of the preface waits.
        for n in 0..H2_PREFACE.len() {
            assert_eq!(detect(&H2_PREFACE[..n]), Detected::NeedMore, "{n}");
        }
    }

    const QUICK: Policy = Policy {
        opaque_fallback: true,
        header_timeout: Duration::from_millis(1500),
        window: Duration::from_millis(200),
    };

    /// A monoio server socket connected to a std client socket.
    async fn pair() -> (TcpStream, StdStream) {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let client = StdStream::connect(address).expect("connect");
        client.set_nodelay(true).expect("nodelay");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    /// Writes `pieces` from a thread, sleeping `pause` before each but the first.
    fn send_with_pauses(
        mut client: StdStream,
        pieces: &'static [&'static [u8]],
        pause: Duration,
    ) -> std::thread::JoinHandle<StdStream> {
        std::thread::spawn(move || {
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                client.write_all(piece).expect("write");
            }
            client
        })
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn silence_for_the_whole_window_is_opaque() {
        let (mut server, _client) = pair().await;
        let detection = detect_connection(&mut server, &QUICK).await;
        assert_eq!(detection.verdict, Verdict::Opaque);
        assert!(detection.initial.is_empty());
        assert_eq!(detection.first_byte_at, None);
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn without_a_fallback_silence_closes() {
        let (mut server, _client) = pair().await;
        let policy = Policy {
            opaque_fallback: false,
            header_timeout: Duration::from_millis(200),
            ..QUICK
        };
        let detection = detect_connection(&mut server, &policy).await;
        assert_eq!(detection.verdict, Verdict::Close);
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn a_method_prefix_then_a_pause_longer_than_the_window_stays_http() {
        let (mut server, client) = pair().await;
        // The pause is longer than the window but shorter than the header timeout.
        let sender = send_with_pauses(
            client,
            &[b"G", b"ET / HTTP/1.1\r\n"],
            Duration::from_millis(500),
        );
        let detection = detect_connection(&mut server, &QUICK).await;
        let _client = sender.join().expect("sender");
        assert_eq!(detection.verdict, Verdict::Http1);
        assert!(
            detection.initial.starts_with(b"GET / HTTP/1.1"),
            "{:?}",
            String::from_utf8_lossy(&detection.initial)
        );
        assert!(detection.first_byte_at.is_some());
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn a_split_preface_is_http2() {
        let (mut server, client) = pair().await;
        let sender = send_with_pauses(
            client,
            &[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"],
            Duration::from_millis(400),
        );
        let detection = detect_connection(&mut server, &QUICK).await;
        let _client = sender.join().expect("sender");
        assert_eq!(detection.verdict, Verdict::Http2);
        assert_eq!(detection.initial, H2_PREFACE);
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn a_method_prefix_past_the_header_timeout_goes_to_http_for_its_408() {
        let (mut server, client) = pair().await;
        // "GE", then nothing more until well after the header timeout.
        let sender = send_with_pauses(client, &[b"GE", b"T"], Duration::from_millis(2500));
        let detection = detect_connection(&mut server, &QUICK).await;
        assert_eq!(detection.verdict, Verdict::Http1);
        assert_eq!(detection.initial, b"GE");
        let _client = sender.join().expect("sender");
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn a_method_prefix_cut_short_by_a_close_goes_to_http_for_its_400() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"POS").expect("write");
        drop(client);
        let detection = detect_connection(&mut server, &QUICK).await;
        assert_eq!(detection.verdict, Verdict::Http1);
        assert_eq!(detection.initial, b"POS");
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn non_http_bytes_are_opaque_at_once_and_kept() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"\x16\x03\x01hello").expect("write");
        let detection = detect_connection(&mut server, &QUICK).await;
        assert_eq!(detection.verdict, Verdict::Opaque);
        assert_eq!(detection.initial, b"\x16\x03\x01hello");
    }

    #[monoio::test_all(timer_enabled = true)]
    async fn a_close_before_any_byte_closes() {
        let (mut server, client) = pair().await;
        drop(client);
        let detection = detect_connection(&mut server, &QUICK).await;
        assert_eq!(detection.verdict, Verdict::Close);
        assert!(detection.initial.is_empty());
    }
}
