//! 100 MB through the HTTP/1.1 proxy each way, chunked, with curl as the client: both bodies
//! arrive byte for byte (checked as they stream, never held whole), and the proxy's peak
//! resident memory (`VmHWM`) grows by far less than the body — it streams, it does not buffer.
//! This is a behaviour bound, not a speed test. Runs on io_uring and on epoll.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use tests::http::Pattern;
use tests::http::message::{Framing, Wire, parse_head, request_framing};
use tests::http::{PatternCheck, cluster, http_listener, memory, route, virtual_host};
use tests::upstream::Upstream;
use tests::{Driver, Proxy, both_drivers};

both_drivers!(hundred_megabytes_chunked_both_ways_with_bounded_proxy_memory);

/// Bytes each way.
const SIZE: u64 = 100 * 1000 * 1000;
/// Payload of each chunk the upstream sends.
const CHUNK: usize = 64 * 1024;
/// How much the proxy's peak RSS may grow while moving 2 × 100 MB.
const MAX_GROWTH_KIB: u64 = 64 * 1024;
const UPLOAD_SEED: u64 = 61;
const DOWNLOAD_SEED: u64 = 62;

/// `PUT /upload`: checks a chunked body against the upload pattern as it streams in, and
/// answers `<bytes> <first difference or "exact">`. `GET /download`: sends the download
/// pattern chunked. Anything else: 200 "warm".
fn bulk_upstream() -> Upstream {
    Upstream::spawn(|stream, _| {
        let mut wire = Wire::new(stream);
        while let Ok(Some(raw)) = wire.read_head() {
            let Ok(head) = parse_head(&raw) else { return };
            let Ok(framing) = request_framing(&head.fields) else {
                return;
            };
            let answer = if head.first_line.starts_with("PUT /upload ") {
                let chunked = framing == Framing::Chunked;
                let mut check = PatternCheck::new(UPLOAD_SEED);
                if wire
                    .read_body_with(framing, &mut |data| check.feed(data))
                    .is_err()
                {
                    return;
                }
                let verdict = match check.first_difference {
                    Some(at) => format!("differs at {at}"),
                    None => "exact".to_owned(),
                };
                let body = format!("{} {verdict} chunked={chunked}", check.len());
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else if head.first_line.starts_with("GET /download ") {
                if wire
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .is_err()
                {
                    return;
                }
                let mut pattern = Pattern::new(DOWNLOAD_SEED);
                let mut chunk = vec![0u8; CHUNK];
                let mut framed = Vec::with_capacity(CHUNK + 16);
                let mut left = SIZE;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    pattern.fill(&mut chunk[..n]);
                    framed.clear();
                    framed.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    framed.extend_from_slice(&chunk[..n]);
                    framed.extend_from_slice(b"\r\n");
                    if wire.write_all(&framed).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                "0\r\n\r\n".to_owned()
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwarm".to_owned()
            };
            if wire.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// Runs curl with `args`, feeding `upload` bytes of the upload pattern to its stdin when set,
/// and handing its stdout to `sink` as it arrives; panics if curl fails.
fn run_curl(args: &[String], upload: Option<u64>, sink: &mut dyn FnMut(&[u8])) {
    let errors = tempfile::NamedTempFile::new().expect("temp file for curl's stderr");
    let mut child = Command::new(tests::tool("curl"))
        .args(["-sS", "--noproxy", "*", "--max-time", "120"])
        .args(args)
        .stdin(if upload.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(errors.reopen().expect("reopen the stderr file"))
        .spawn()
        .expect("spawn curl");
    let feeder = child.stdin.take().map(|mut stdin| {
        let total = upload.unwrap_or(0);
        std::thread::spawn(move || {
            let mut pattern = Pattern::new(UPLOAD_SEED);
            let mut buffer = vec![0u8; CHUNK];
            let mut left = total;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                pattern.fill(&mut buffer[..n]);
                stdin.write_all(&buffer[..n])?;
                left -= n as u64;
            }
            Ok::<(), std::io::Error>(())
        })
    });
    let mut stdout = child.stdout.take().expect("curl's stdout");
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = stdout.read(&mut buffer).expect("read curl's output");
        if n == 0 {
            break;
        }
        sink(&buffer[..n]);
    }
    let status = child.wait().expect("wait for curl");
    if let Some(feeder) = feeder {
        feeder
            .join()
            .expect("feeder thread")
            .expect("feed curl's stdin");
    }
    let stderr = std::fs::read_to_string(errors.path()).unwrap_or_default();
    assert!(
        status.success(),
        "curl {args:?} failed with {status}: {stderr}"
    );
}

/// `curl -T -` uploads 100 MB chunked (it does not know the length) and `curl` downloads
/// 100 MB the upstream sends chunked. Both arrive exactly, both stay chunked end to end, and
/// the proxy's peak resident memory grows by less than 64 MiB over the two.
fn hundred_megabytes_chunked_both_ways_with_bounded_proxy_memory(driver: Driver) {
    let upstream = bulk_upstream();
    let config = [
        http_listener("web", ""),
        cluster("backend", &[upstream.address()], ""),
        virtual_host("default", &["*"], &route("all", "cluster = \"backend\"")),
    ]
    .concat();
    let proxy = Proxy::builder(&config, driver).log_level("info").start();
    let base = format!("http://{}", proxy.listener("web"));

    // Warm up both workers' buffers and pools before taking the baseline.
    for _ in 0..4 {
        let mut warm = Vec::new();
        run_curl(&[format!("{base}/warm")], None, &mut |d| {
            warm.extend_from_slice(d)
        });
        assert_eq!(warm, b"warm");
    }
    let before = memory(proxy.pid());

    let dir = tempfile::tempdir().expect("temp dir");
    let mut answer = Vec::new();
    run_curl(
        &["-T".into(), "-".into(), format!("{base}/upload")],
        Some(SIZE),
        &mut |d| answer.extend_from_slice(d),
    );
    assert_eq!(
        String::from_utf8_lossy(&answer),
        format!("{SIZE} exact chunked=true"),
        "the upload as the upstream checked it"
    );

    let download_headers = dir.path().join("download-headers");
    let mut check = PatternCheck::new(DOWNLOAD_SEED);
    run_curl(
        &[
            "-D".into(),
            download_headers.display().to_string(),
            format!("{base}/download"),
        ],
        None,
        &mut |d| check.feed(d),
    );
    assert_eq!(check.len(), SIZE, "bytes downloaded");
    assert_eq!(check.first_difference, None, "the download arrived altered");
    let headers = std::fs::read_to_string(&download_headers).expect("download headers");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{headers}"
    );

    let after = memory(proxy.pid());
    let growth = after.hwm_kib.saturating_sub(before.hwm_kib);
    eprintln!("proxy memory before {before:?}, after {after:?}: peak grew by {growth} KiB");
    assert!(
        growth < MAX_GROWTH_KIB,
        "the proxy's peak RSS grew by {growth} KiB moving 2 x {SIZE} bytes ({before:?} -> {after:?})"
    );
}
