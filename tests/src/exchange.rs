//! The four protocol pairs of the HTTP request path, and one client that speaks either protocol.
//!
//! A request reaches the proxy as HTTP/1.1 or HTTP/2 (h2c with prior knowledge) and leaves it
//! toward a cluster whose `protocol` is `h1` or `h2`: four [`Pair`]s. A behaviour of the request
//! path is specified once, as `fn name(pair: Pair, driver: Driver)`, and [`exchange_pairs!`]
//! generates `name::{h1_h1,h1_h2,h2_h1,h2_h2}::{uring,epoll}` from it, so that a failure names
//! both the pair and the driver.
//!
//! [`call`] sends one request in the pair's client protocol and reports what came back in one
//! shape for both: status, headers, body, trailers, and whether the response ended as framed or
//! was cut off (a connection closed before the body completed, an RST_STREAM). HTTP/1.1 goes over
//! a raw socket, read byte by byte against the response's own framing; HTTP/2 goes through
//! `tests/python/h2_client.py` (python-h2). [`hold`] starts a request and leaves it open. A
//! [`Call::paced`] body trickles, one byte at a time.
//!
//! [`Setup`] is the usual stage for such a test: a one-worker proxy routing everything to one
//! `tests/python/h2_upstream.py` in the pair's cluster protocol, with a JSON access log, and
//! [`Extra`] lines for the listener, the cluster and the route.
//!
//! Request bodies are the deterministic pattern `h2_client.py --body-size N` sends (byte `i` is
//! `(i % 251) * 7 % 251`), so both clients send the same bytes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::connect;
use crate::h2::{Background, PyServer, python_command, run_json};
use crate::http::{access_log_config, cluster, http_listener, route, virtual_host};
use crate::wait::{PATIENCE, wait_until};
use crate::{Driver, Proxy};

/// How long one [`call`] may take, connect to last byte: a test that waits this long has failed.
pub const CALL_LIMIT: Duration = Duration::from_secs(40);

/// A client protocol and a cluster protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// HTTP/1.1 client, `protocol = "h1"` cluster.
    H1H1,
    /// HTTP/1.1 client, `protocol = "h2"` cluster.
    H1H2,
    /// HTTP/2 client, `protocol = "h1"` cluster.
    H2H1,
    /// HTTP/2 client, `protocol = "h2"` cluster.
    H2H2,
}

impl Pair {
    /// Whether the client speaks HTTP/2.
    pub fn h2_client(self) -> bool {
        matches!(self, Pair::H2H1 | Pair::H2H2)
    }

    /// Whether the cluster speaks HTTP/2.
    pub fn h2_cluster(self) -> bool {
        matches!(self, Pair::H1H2 | Pair::H2H2)
    }

    /// The cluster's `protocol` value.
    pub fn cluster_protocol(self) -> &'static str {
        if self.h2_cluster() { "h2" } else { "h1" }
    }

    /// The protocol `h2_upstream.py` reports for requests arriving from this pair's cluster.
    pub fn upstream_protocol(self) -> &'static str {
        if self.h2_cluster() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        }
    }
}

/// Generates, for each `fn name(pair: Pair, driver: Driver)`, the module `name` with one module
/// per pair (`h1_h1`, `h1_h2`, `h2_h1`, `h2_h2`) holding the tests `uring` and `epoll`.
///
/// ```ignore
/// fn stale_connection_is_retried(pair: Pair, driver: Driver) { /* ... */ }
/// tests::exchange_pairs!(stale_connection_is_retried);
/// // Only some pairs: gRPC needs an HTTP/2 client.
/// tests::exchange_pairs!(@h2_clients grpc_no_route);
/// tests::exchange_pairs!(@h2_h2 grpc_deadline);
/// tests::exchange_pairs!(@h2_clusters refused_stream_is_retried);
/// ```
#[macro_export]
macro_rules! exchange_pairs {
    (@h2_clients $($name:ident),+ $(,)?) => {$(
        $crate::exchange_pairs!(@gen $name [h2_h1 H2H1, h2_h2 H2H2]);
    )+};
    (@h2_clusters $($name:ident),+ $(,)?) => {$(
        $crate::exchange_pairs!(@gen $name [h1_h2 H1H2, h2_h2 H2H2]);
    )+};
    (@h2_h2 $($name:ident),+ $(,)?) => {$(
        $crate::exchange_pairs!(@gen $name [h2_h2 H2H2]);
    )+};
    (@gen $name:ident [$($pair:ident $variant:ident),+]) => {
        mod $name {
            $(
                mod $pair {
                    #[test]
                    fn uring() {
                        super::super::$name(
                            $crate::exchange::Pair::$variant,
                            $crate::Driver::Uring,
                        )
                    }

                    #[test]
                    fn epoll() {
                        super::super::$name(
                            $crate::exchange::Pair::$variant,
                            $crate::Driver::Epoll,
                        )
                    }
                }
            )+
        }
    };
    ($($name:ident),+ $(,)?) => {$(
        $crate::exchange_pairs!(@gen $name [h1_h1 H1H1, h1_h2 H1H2, h2_h1 H2H1, h2_h2 H2H2]);
    )+};
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    /// More header fields (names in lower case).
    pub headers: Vec<(String, String)>,
    /// A body: this many bytes of the pattern.
    pub body_len: usize,
    /// A body given as bytes (a gRPC frame, say); overrides `body_len`.
    pub body: Option<Vec<u8>>,
    /// Send the body one byte at a time, this long apart (an upload that trickles); `None`: all
    /// at once. [`call`] honours it; [`hold`] over HTTP/1.1 sends the body at once.
    pub pace: Option<Duration>,
}

impl Call {
    /// `GET path` to `host`.
    pub fn get(host: &str, path: &str) -> Self {
        Self {
            method: "GET".to_owned(),
            path: path.to_owned(),
            host: host.to_owned(),
            headers: Vec::new(),
            body_len: 0,
            body: None,
            pace: None,
        }
    }

    /// `POST path` to `host` with `body_len` pattern bytes.
    pub fn post(host: &str, path: &str, body_len: usize) -> Self {
        Self {
            method: "POST".to_owned(),
            body_len,
            ..Self::get(host, path)
        }
    }

    /// A unary gRPC call (`content-type: application/grpc`, `te: trailers`) to `path` whose
    /// body is one empty-message frame.
    pub fn grpc(host: &str, path: &str) -> Self {
        Self {
            method: "POST".to_owned(),
            body: Some(vec![0, 0, 0, 0, 0]),
            ..Self::get(host, path)
        }
        .header("content-type", "application/grpc")
        .header("te", "trailers")
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends the body one byte at a time, `every` apart, while the answer is read.
    pub fn paced(mut self, every: Duration) -> Self {
        self.pace = Some(every);
        self
    }

    /// The body bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            Some(body) => body.clone(),
            None => pattern(self.body_len),
        }
    }
}

/// The body `h2_client.py --body-size n` sends.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i % 251) * 7 % 251) as u8).collect()
}

/// What came back.
#[derive(Clone, Default)]
pub struct Answer {
    /// The final status, if a response head arrived.
    pub status: Option<u16>,
    /// Response header fields, names in lower case (HTTP/2 pseudo-headers left out).
    pub headers: Vec<(String, String)>,
    /// The body bytes received (HTTP/2: at most the first 4 KiB; see `body_len`).
    pub body: Vec<u8>,
    /// How many body bytes arrived.
    pub body_len: u64,
    /// Trailer fields (chunked trailers, or HTTP/2 trailers).
    pub trailers: Vec<(String, String)>,
    /// The response ended as its framing said (Content-Length reached, last chunk, END_STREAM).
    pub complete: bool,
    /// How it was cut off, when it was: `closed`, `reset`, `RST_STREAM(code)`, `GOAWAY(code)`,
    /// or the client's error.
    pub abort: Option<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("body_len", &self.body_len)
            .field("trailers", &self.trailers)
            .field("complete", &self.complete)
            .field("abort", &self.abort)
            .finish()
    }
}

impl Answer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A gRPC "trailers-only" answer: HTTP 200, `content-type: application/grpc`, `grpc-status`
    /// in the one HEADERS frame that ends the stream, no body, no trailers. Returns the
    /// `grpc-status`, or why it is not such an answer.
    pub fn trailers_only_grpc_status(&self) -> Result<String, String> {
        if self.status != Some(200) {
            return Err(format!("HTTP status {:?}, not 200", self.status));
        }
        if self.header("content-type") != Some("application/grpc") {
            return Err(format!(
                "content-type {:?}, not application/grpc",
                self.header("content-type")
            ));
        }
        if self.body_len != 0 || !self.trailers.is_empty() || !self.complete {
            return Err(format!(
                "not trailers-only: {} body bytes, trailers {:?}, complete {}",
                self.body_len, self.trailers, self.complete
            ));
        }
        self.header("grpc-status")
            .map(str::to_owned)
            .ok_or_else(|| "no grpc-status in the headers".to_owned())
    }
}

/// Sends `call` to `proxy` in the pair's client protocol and reads the answer.
pub fn call(pair: Pair, proxy: SocketAddr, call: &Call) -> Answer {
    if pair.h2_client() {
        h2_call(proxy, call)
    } else {
        h1_call(proxy, call)
    }
}

/// A request started and left open; dropping it abandons it (closes the connection, or kills
/// the HTTP/2 client).
#[derive(Debug)]
pub enum Held {
    /// The HTTP/1.1 connection the request went out on.
    H1(TcpStream),
    /// The running HTTP/2 client.
    H2(Background),
}

/// Starts `call` and returns without waiting for the answer.
pub fn hold(pair: Pair, proxy: SocketAddr, call: &Call) -> Held {
    if pair.h2_client() {
        Held::H2(Background::start(python_command(
            "h2_client.py",
            &h2_args(proxy, call)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )))
    } else {
        let mut stream = connect(proxy);
        stream
            .write_all(&h1_request(call))
            .expect("send the held request");
        Held::H1(stream)
    }
}

/// The HTTP/1.1 request bytes: head and body.
fn h1_request(call: &Call) -> Vec<u8> {
    let mut out = h1_head(call);
    out.extend_from_slice(&call.body_bytes());
    out
}

/// The HTTP/1.1 request head, framing the body by its length.
fn h1_head(call: &Call) -> Vec<u8> {
    let body = call.body_bytes();
    let mut out = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        call.method, call.path, call.host
    )
    .into_bytes();
    for (name, value) in &call.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() || call.method == "POST" {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the request: at once, or (a paced call) the head and then the body byte by byte. A
/// paced write ends at the first error: the proxy answered and closed, or the reader finished.
fn h1_send(writer: &mut TcpStream, call: &Call) -> io::Result<()> {
    let Some(pace) = call.pace else {
        return writer.write_all(&h1_request(call));
    };
    writer.write_all(&h1_head(call))?;
    for (i, byte) in call.body_bytes().iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pace);
        }
        writer.write_all(std::slice::from_ref(byte))?;
    }
    Ok(())
}

fn h1_call(proxy: SocketAddr, call: &Call) -> Answer {
    let deadline = Instant::now() + CALL_LIMIT;
    let mut stream = connect(proxy);
    // The body goes out on its own thread while the answer is read: an early answer (a local
    // reply before the body was read) must not deadlock against a full send buffer, and a paced
    // body must not hold up the answer.
    let mut writer = stream.try_clone().expect("clone the client socket");
    let request = call.clone();
    let sender = std::thread::spawn(move || h1_send(&mut writer, &request));
    let mut answer = Answer::default();
    let mut reader = Reader {
        stream: &mut stream,
        buf: Vec::new(),
        deadline,
    };
    let result = read_h1_answer(&mut reader, call.method == "HEAD", &mut answer);
    if let Err(e) = result {
        answer.abort = Some(match e.kind() {
            io::ErrorKind::UnexpectedEof => "closed".to_owned(),
            io::ErrorKind::ConnectionReset => "reset".to_owned(),
            _ => format!("error: {e}"),
        });
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    answer
}

struct Reader<'a> {
    stream: &'a mut TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Reader<'_> {
    /// Reads more bytes; `UnexpectedEof` at end of stream, `TimedOut` past the deadline.
    fn fill(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete answer within {CALL_LIMIT:?}"),
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete answer within {CALL_LIMIT:?}"),
            )),
            Err(e) => Err(e),
        }
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }
}

fn fields(lines: &[Vec<u8>]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|line| {
            let line = String::from_utf8_lossy(line);
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

fn read_h1_answer(reader: &mut Reader<'_>, head_only: bool, answer: &mut Answer) -> io::Result<()> {
    // The head, skipping interim 1xx answers.
    let (status, headers) = loop {
        let status_line = reader.line()?;
        let mut lines = Vec::new();
        loop {
            let line = reader.line()?;
            if line.is_empty() {
                break;
            }
            lines.push(line);
        }
        let text = String::from_utf8_lossy(&status_line).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("status line {text:?}"))
            })?;
        if (100..200).contains(&status) {
            continue;
        }
        break (status, fields(&lines));
    };
    answer.status = Some(status);
    answer.headers = headers;
    let chunked = answer
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let length = answer
        .header("content-length")
        .and_then(|n| n.parse::<u64>().ok());
    if head_only || status == 204 || status == 304 {
        answer.complete = true;
        return Ok(());
    }
    if chunked {
        loop {
            let size_line = String::from_utf8_lossy(&reader.line()?).into_owned();
            let size = u64::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("chunk {size_line:?}"))
                })?;
            if size == 0 {
                let mut lines = Vec::new();
                loop {
                    let line = reader.line()?;
                    if line.is_empty() {
                        break;
                    }
                    lines.push(line);
                }
                answer.trailers = fields(&lines);
                answer.complete = true;
                return Ok(());
            }
            take_body(reader, size, answer)?;
            reader.line()?;
        }
    }
    match length {
        Some(n) => {
            take_body(reader, n, answer)?;
            answer.complete = true;
            Ok(())
        }
        None => loop {
            answer.body.append(&mut reader.buf);
            answer.body_len = answer.body.len() as u64;
            match reader.fill() {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    answer.complete = true;
                    return Ok(());
                }
                other => other?,
            }
        },
    }
}

fn take_body(reader: &mut Reader<'_>, mut n: u64, answer: &mut Answer) -> io::Result<()> {
    loop {
        let take = n.min(reader.buf.len() as u64) as usize;
        answer.body.extend(reader.buf.drain(..take));
        answer.body_len += take as u64;
        n -= take as u64;
        if n == 0 {
            return Ok(());
        }
        reader.fill()?;
    }
}

fn h2_args(proxy: SocketAddr, call: &Call) -> Vec<String> {
    let mut args = vec![
        proxy.port().to_string(),
        "--method".to_owned(),
        call.method.clone(),
        "--path".to_owned(),
        call.path.clone(),
        "--authority".to_owned(),
        call.host.clone(),
        "--timeout".to_owned(),
        (CALL_LIMIT.as_secs() - 5).to_string(),
    ];
    for (name, value) in &call.headers {
        args.push("--header".to_owned());
        args.push(format!("{name}:{value}"));
    }
    match &call.body {
        Some(body) => {
            args.push("--body-hex".to_owned());
            args.push(body.iter().map(|b| format!("{b:02x}")).collect());
        }
        None if call.body_len > 0 => {
            args.push("--body-size".to_owned());
            args.push(call.body_len.to_string());
        }
        None => {}
    }
    if let Some(pace) = call.pace {
        args.push("--body-pace-ms".to_owned());
        args.push(pace.as_millis().to_string());
    }
    args
}

fn h2_call(proxy: SocketAddr, call: &Call) -> Answer {
    let args = h2_args(proxy, call);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = run_json("h2_client.py", &args, CALL_LIMIT + Duration::from_secs(20));
    let pairs = |value: &Value| -> Vec<(String, String)> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_ascii_lowercase(),
                            p[1].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .filter(|(n, _)| !n.starts_with(':'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let abort = if let Some(code) = result["reset"].as_u64() {
        Some(format!("RST_STREAM({code})"))
    } else if let Some(code) = result["goaway"].as_u64() {
        Some(format!("GOAWAY({code})"))
    } else {
        result["error"].as_str().map(|e| format!("error: {e}"))
    };
    Answer {
        status: result["status"].as_u64().map(|s| s as u16),
        headers: pairs(&result["headers"]),
        body: result["body"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
        body_len: result["body_len"].as_u64().unwrap_or(0),
        trailers: pairs(&result["trailers"]),
        complete: abort.is_none() && result["status"].is_u64(),
        abort,
    }
}

/// Lines added to the tables of a [`Setup`]'s config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// In the `http` listener `main` (`stream_idle_timeout = "1s"`).
    pub listener: &'a str,
    /// In the cluster `backend` (`pool = { idle_timeout = "1s" }`).
    pub cluster: &'a str,
    /// In the catch-all route to `backend` (`timeout = "1s"`).
    pub route: &'a str,
    /// After everything (another cluster, say).
    pub more: &'a str,
}

/// A proxy with one worker (consecutive requests share one per-core pool), an `http` listener
/// `main` whose every request goes to the cluster `backend`, spoken to in the pair's cluster
/// protocol, on one `tests/python/h2_upstream.py`; and a JSON access log.
#[derive(Debug)]
pub struct Setup {
    /// The proxy.
    pub proxy: Proxy,
    /// `h2_upstream.py --name primary`.
    pub upstream: PyServer,
    /// The config it started with (without the `[admin]` section [`Proxy::start`] adds).
    pub config: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Starts the upstream and the proxy for `pair` on `driver`, with `extra` lines.
    pub fn start(pair: Pair, driver: Driver, extra: Extra<'_>) -> Self {
        let upstream = PyServer::start("h2_upstream.py", &["--name", "primary"]);
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join("access.log");
        let config = [
            access_log_config(&log),
            http_listener("main", extra.listener),
            cluster(
                "backend",
                &[upstream.address()],
                &format!(
                    "protocol = \"{}\"\n{}",
                    pair.cluster_protocol(),
                    extra.cluster
                ),
            ),
            virtual_host(
                "all",
                &["*"],
                &route("all", &format!("cluster = \"backend\"\n{}", extra.route)),
            ),
            extra.more.to_owned(),
        ]
        .concat();
        let proxy = Proxy::start(&config, driver, 1);
        Self {
            proxy,
            upstream,
            config,
            log,
            _dir: dir,
        }
    }

    /// The listener's address.
    pub fn address(&self) -> SocketAddr {
        self.proxy.listener("main")
    }

    /// Sends `request` in the pair's client protocol.
    pub fn call(&self, pair: Pair, request: &Call) -> Answer {
        call(pair, self.address(), request)
    }

    /// The access-log entry whose path is `path` (waits for it).
    pub fn log_entry(&self, path: &str) -> Value {
        wait_until(PATIENCE, format!("an access-log entry for {path}"), || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|entry| entry["path"] == path)
                .ok_or_else(|| format!("log so far:\n{text}"))
        })
    }

    /// Waits until the upstream has seen the request it got on connection `conn` abandoned by
    /// the proxy: an `event` line about that connection (`trickle-stopped`, `stall-gone`), its
    /// stream reset, or the connection closed.
    pub fn wait_abandoned(&self, conn: &str, event: &str) {
        wait_until(
            PATIENCE,
            format!("the upstream to see its request on connection {conn} abandoned"),
            || {
                let seen = [event, "reset", "close"]
                    .iter()
                    .any(|e| self.upstream.events(e).iter().any(|w| w[1] == conn));
                if seen {
                    Ok(())
                } else {
                    Err(self.upstream.stdout())
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_matches_the_python_clients() {
        assert_eq!(&pattern(4)[..], &[0, 7, 14, 21]);
        assert_eq!(pattern(252)[251], 0);
    }

    #[test]
    fn http1_requests_frame_their_bodies() {
        let call = Call::post("h.test", "/p", 3).header("x-a", "b");
        assert_eq!(
            h1_request(&call),
            b"POST /p HTTP/1.1\r\nhost: h.test\r\nx-a: b\r\ncontent-length: 3\r\n\r\n\x00\x07\x0e"
        );
    }
}
