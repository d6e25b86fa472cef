//! What the reload, admin, upgrade and control tests need beyond the shared test library
//! (`tests/src`): admin calls with a method, a body and the bearer token; HTTP upstreams that
//! answer with their name; a constant-rate HTTP load client that reconnects after
//! `connection: close` and classifies every failure (refused, reset, closed without an answer);
//! h2load's summary; the `ringmesh-control` binary.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::Proxy;
use tests::admin::HttpResponse;

/// The admin token of the test configs.
pub const TOKEN: &str = "test-token";

/// The `ringmesh-control` binary, next to `ringmesh` (`cargo build --bins`).
pub fn control_bin() -> PathBuf {
    let path = tests::ringmesh_bin().with_file_name("ringmesh-control");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --bins` first",
        path.display()
    );
    path
}

// === the admin API ===

/// Any admin request; `token` goes into `Authorization: Bearer`.
pub fn admin_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    host: &str,
    body: &str,
) -> io::Result<HttpResponse> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(token) = token {
        raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    tests::admin::request(address, &raw)
}

/// `GET path` on the admin API.
pub fn admin_get(address: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    tests::admin::get(address, path)
}

/// One request through the proxy on a fresh connection (`Connection: close`).
pub fn get(address: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    raw_request(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `raw` and reads until the server closes.
pub fn raw_request(address: SocketAddr, raw: &str) -> io::Result<HttpResponse> {
    tests::admin::request(address, raw)
}

/// A response body as JSON.
pub trait Json {
    fn json(&self) -> Value;
}

impl Json for HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Reload-related calls on a running proxy.
pub trait Admin {
    /// `method path` with the token and `body`; panics if the request fails.
    fn admin_call(&self, method: &str, path: &str, body: &str) -> HttpResponse;
    /// `PUT /config` with `config`.
    fn put_config(&self, config: &str) -> HttpResponse;
    /// The published generation.
    fn generation(&self) -> u64;
    /// The generation each worker acknowledged.
    fn worker_generations(&self) -> Vec<u64>;
    /// One unlabelled metric.
    fn metric(&self, name: &str) -> f64;
    /// Listener names and bound addresses, read now (they change with reloads).
    fn listeners_now(&self) -> HashMap<String, SocketAddr>;
}

impl Admin for Proxy {
    fn admin_call(&self, method: &str, path: &str, body: &str) -> HttpResponse {
        admin_request(
            self.admin_address(),
            method,
            path,
            Some(TOKEN),
            "127.0.0.1",
            body,
        )
        .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
    }

    fn put_config(&self, config: &str) -> HttpResponse {
        self.admin_call("PUT", "/config", config)
    }

    fn generation(&self) -> u64 {
        self.stats().0["generation"].as_u64().expect("generation")
    }

    fn worker_generations(&self) -> Vec<u64> {
        self.stats()
            .workers()
            .iter()
            .map(|w| w.generation)
            .collect()
    }

    fn metric(&self, name: &str) -> f64 {
        self.metrics().value(name, &[])
    }

    fn listeners_now(&self) -> HashMap<String, SocketAddr> {
        let listeners = self.admin_get("/listeners").json();
        listeners
            .as_array()
            .expect("an array")
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().expect("name").to_owned(),
                    l["local_address"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .expect("local_address"),
                )
            })
            .collect()
    }
}

// === upstreams ===

/// An HTTP/1.1 upstream on `127.0.0.1:0` that answers every request with `200` and its `name` as
/// the body, keeping connections alive; a request for a path starting with `/slow` is answered
/// after `slow` (to hold requests in flight).
#[derive(Debug)]
pub struct HttpUpstream {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl HttpUpstream {
    pub fn http(name: &str) -> Self {
        Self::http_with_delay(name, Duration::from_millis(500))
    }

    pub fn http_with_delay(name: &str, slow: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
        let address = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let name = name.to_owned();
        {
            let stop = Arc::clone(&stop);
            let served = Arc::clone(&served);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let name = name.clone();
                    let served = Arc::clone(&served);
                    std::thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || serve_http(stream, &name, slow, &served))
                        .expect("spawn an upstream connection thread");
                }
            });
        }
        Self {
            address,
            stop,
            served,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
    }
}

fn serve_http(mut stream: TcpStream, name: &str, slow: Duration, served: &AtomicU64) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        buffer.drain(..end);
        if head
            .split(' ')
            .nth(1)
            .is_some_and(|p| p.starts_with("/slow"))
        {
            std::thread::sleep(slow);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        served.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

// === load ===

/// How to load a listener.
#[derive(Debug, Clone)]
pub struct Load {
    pub address: SocketAddr,
    /// Concurrent connections, each an open-loop sender at `rate / connections`.
    pub connections: usize,
    /// Requests per second, all connections together.
    pub rate: f64,
    /// A new connection for every request (exercises accept), instead of keep-alive.
    pub connection_per_request: bool,
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When it was sent.
    pub sent: Instant,
    /// When its answer was complete.
    pub received: Instant,
    pub status: u16,
    /// The body (the upstream's name).
    pub body: String,
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub sent: u64,
    pub answers: Vec<Answer>,
    /// Connects refused (ECONNREFUSED).
    pub refused: u64,
    /// Connections reset (ECONNRESET, EPIPE) with a request outstanding.
    pub resets: u64,
    /// Connections closed (FIN) with a request outstanding.
    pub closed_early: u64,
    /// Anything else (timeouts, garbage).
    pub other_errors: Vec<String>,
    /// Connections opened.
    pub connects: u64,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn failures(&self) -> u64 {
        self.refused + self.resets + self.closed_early + self.other_errors.len() as u64
    }

    pub fn non_2xx(&self) -> usize {
        self.answers
            .iter()
            .filter(|a| !(200..300).contains(&a.status))
            .count()
    }

    pub fn summary(&self) -> String {
        format!(
            "sent {}, answered {} ({} non-2xx), refused {}, resets {}, closed early {}, other {:?}, connects {}, {:.0} req/s",
            self.sent,
            self.answers.len(),
            self.non_2xx(),
            self.refused,
            self.resets,
            self.closed_early,
            self.other_errors.iter().take(5).collect::<Vec<_>>(),
            self.connects,
            self.answers.len() as f64 / self.elapsed.as_secs_f64().max(0.001)
        )
    }
}

/// A load running on background threads until [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
    started: Instant,
}

impl Load {
    pub fn start(self) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(self.connections as f64 / self.rate);
        let started = Instant::now();
        let threads = (0..self.connections)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let load = self.clone();
                // Spread the connections' schedules over one interval.
                let first = started + interval.mul_f64(i as f64 / self.connections as f64);
                std::thread::spawn(move || load.run_connection(first, interval, &stop))
            })
            .collect();
        Running {
            stop,
            threads,
            started,
        }
    }

    fn run_connection(&self, first: Instant, interval: Duration, stop: &AtomicBool) -> LoadReport {
        let mut report = LoadReport::default();
        let mut stream: Option<(TcpStream, Vec<u8>)> = None;
        let mut next = first;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            if stream.is_none() {
                match TcpStream::connect_timeout(&self.address, Duration::from_secs(5)) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        report.connects += 1;
                        stream = Some((s, Vec::with_capacity(4096)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        report.refused += 1;
                        continue;
                    }
                    Err(e) => {
                        report.other_errors.push(format!("connect: {e}"));
                        continue;
                    }
                }
            }
            let Some((s, buffer)) = stream.as_mut() else {
                continue;
            };
            let close = if self.connection_per_request {
                "Connection: close\r\n"
            } else {
                ""
            };
            let request = format!("GET / HTTP/1.1\r\nHost: load\r\n{close}\r\n");
            let sent = Instant::now();
            report.sent += 1;
            let outcome = s
                .write_all(request.as_bytes())
                .and_then(|()| read_one_response(s, buffer));
            match outcome {
                Ok((status, body, keep_alive)) => {
                    report.answers.push(Answer {
                        sent,
                        received: Instant::now(),
                        status,
                        body,
                    });
                    if (!keep_alive || self.connection_per_request)
                        && let Some((s, _)) = stream.take()
                    {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Err(e) => {
                    match e.kind() {
                        io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionAborted => report.resets += 1,
                        io::ErrorKind::UnexpectedEof => report.closed_early += 1,
                        _ => report.other_errors.push(e.to_string()),
                    }
                    stream = None;
                }
            }
        }
        report
    }
}

/// Reads one response with a Content-Length body; returns status, body and keep-alive.
fn read_one_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> io::Result<(u16, String, bool)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad head {head:?}")))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no length {head:?}")))?;
    let keep_alive = !head.contains("\r\nconnection: close");
    while buffer.len() < end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in the body",
            ));
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[end..end + length]).into_owned();
    buffer.drain(..end + length);
    Ok((status, body, keep_alive))
}

impl Running {
    /// Stops the load and merges the connections' reports.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Release);
        let mut total = LoadReport {
            elapsed: self.started.elapsed(),
            ..LoadReport::default()
        };
        for thread in self.threads {
            let r = thread.join().expect("load thread");
            total.sent += r.sent;
            total.answers.extend(r.answers);
            total.refused += r.refused;
            total.resets += r.resets;
            total.closed_early += r.closed_early;
            total.other_errors.extend(r.other_errors);
            total.connects += r.connects;
        }
        total.answers.sort_by_key(|a| a.sent);
        total
    }
}

/// The output of `h2load`, with the numbers the tests check.
#[derive(Debug, Clone)]
pub struct H2load {
    pub output: String,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    pub status_2xx: u64,
    pub rate: f64,
}

impl H2load {
    pub fn parse(output: String) -> Self {
        let number_before = |line: &str, word: &str| -> u64 {
            line.split(',')
                .find_map(|part| {
                    let part = part.trim();
                    part.strip_suffix(word)
                        .and_then(|n| n.trim().split(' ').next_back())
                        .and_then(|n| n.parse().ok())
                })
                .unwrap_or(0)
        };
        let requests = output
            .lines()
            .find(|l| l.starts_with("requests:"))
            .unwrap_or_default()
            .to_owned();
        let statuses = output
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .unwrap_or_default()
            .to_owned();
        let rate = output
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|r| r.trim().split(' ').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0);
        Self {
            succeeded: number_before(&requests, "succeeded"),
            failed: number_before(&requests, "failed"),
            errored: number_before(&requests, "errored"),
            timeout: number_before(&requests, "timeout"),
            status_2xx: statuses
                .trim_start_matches("status codes:")
                .split(',')
                .next()
                .and_then(|p| p.trim().strip_suffix("2xx"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0),
            rate,
            output,
        }
    }
}
