//! Private support for the reload, admin, upgrade and control tests.
//!
//! The shared test library (`tests/src`, branch `tests-foundation`) was not merged when these tests
//! were written; this module mirrors its names (`Driver`, `Proxy`, `both_drivers!`, `wait_until`,
//! `Upstream`) so that switching to it is mostly deleting this file. What it adds and the shared
//! library lacks: starting a proxy with extra arguments (`--upgrade-from`), an admin client that
//! sends any method, body and token, HTTP upstreams that answer with their name, and an HTTP load
//! client that keeps a constant rate, reconnects after `connection: close`, and classifies every
//! failure (refused, reset, closed without an answer).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long tests wait for something that normally takes milliseconds (2 shared cores).
pub const PATIENCE: Duration = Duration::from_secs(20);
/// The admin token of the test configs.
pub const TOKEN: &str = "test-token";

/// Generates `name::uring` and `name::epoll` for each `fn name(driver: Driver)`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name($crate::support::Driver::Uring)
            }

            #[test]
            fn epoll() {
                super::$name($crate::support::Driver::Epoll)
            }
        }
    )+};
}

/// Polls `check` until it returns `Ok`, for at most `timeout`; panics with the last state.
pub fn wait_until<T>(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(state) => state,
        };
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The I/O driver a proxy runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Uring,
    Epoll,
}

impl Driver {
    /// The value of `--io`.
    pub fn flag(self) -> &'static str {
        match self {
            Driver::Uring => "uring",
            Driver::Epoll => "epoll",
        }
    }

    /// The name `/stats` reports.
    pub fn stats_name(self) -> &'static str {
        match self {
            Driver::Uring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// A binary built by `cargo build --bins`, next to this test's profile directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests live in target/<profile>/deps");
    let candidate = profile.join(name);
    assert!(
        candidate.is_file(),
        "{} is not built: run `cargo build --bins` first",
        candidate.display()
    );
    candidate
}

/// An external tool, found on PATH.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed (apt-get install nghttp2-client)"))
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringmesh-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === the proxy ===

/// A running `ringmesh` process; killed on drop, its log printed if the test is failing.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    exit: Option<ExitStatus>,
    dir: Arc<TempDir>,
    name: String,
    config_path: PathBuf,
    log_path: PathBuf,
    driver: Driver,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

/// How to start a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    config: String,
    driver: Driver,
    workers: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: Option<Arc<TempDir>>,
    name: String,
    wait_ready: bool,
}

impl ProxyBuilder {
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Extra command-line arguments.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Uses `dir` for the config and log (so that several processes can share paths), naming the
    /// files after `name`.
    pub fn in_dir(mut self, dir: &Arc<TempDir>, name: &str) -> Self {
        self.dir = Some(Arc::clone(dir));
        self.name = name.to_owned();
        self
    }

    /// Starts it and waits until `/ready` answers 200.
    pub fn start(self) -> Proxy {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| Arc::new(TempDir::new("proxy")));
        let config_path = dir.path().join(format!("{}.toml", self.name));
        let log_path = dir.path().join(format!("{}.log", self.name));
        let admin_file = dir.path().join(format!("{}.admin", self.name));
        let _ = std::fs::remove_file(&admin_file);
        std::fs::write(&config_path, &self.config).expect("write the config");
        let log = File::create(&log_path).expect("create the log");
        let child = Command::new(binary("ringmesh"))
            .arg("--config")
            .arg(&config_path)
            .args(["--io", self.driver.flag()])
            .args(["--workers", &self.workers.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--log-level", "info"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn ringmesh");
        let mut proxy = Proxy {
            child,
            exit: None,
            dir,
            name: self.name,
            config_path,
            log_path,
            driver: self.driver,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: HashMap::new(),
        };
        proxy.admin = wait_until(PATIENCE, "the admin address file", || {
            proxy.fail_if_exited("while starting");
            std::fs::read_to_string(&admin_file)
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .map_err(|e| format!("{e}"))
        });
        if self.wait_ready {
            proxy.wait_ready();
        }
        proxy.refresh_listeners();
        let stats = proxy.stats();
        assert_eq!(stats["driver"], self.driver.stats_name(), "driver");
        assert_eq!(
            stats["workers"].as_array().map(Vec::len),
            Some(self.workers),
            "worker count"
        );
        proxy
    }
}

impl Proxy {
    /// Starts `config` on `driver` with `workers` workers and waits until it is ready.
    pub fn start(config: &str, driver: Driver, workers: usize) -> Proxy {
        Self::builder(config, driver).workers(workers).start()
    }

    pub fn builder(config: &str, driver: Driver) -> ProxyBuilder {
        ProxyBuilder {
            config: config.to_owned(),
            driver,
            workers: 2,
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            name: "ringmesh".into(),
            wait_ready: true,
        }
    }

    fn fail_if_exited(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.exit = Some(status);
            panic!("ringmesh exited {when} with {status}");
        }
    }

    pub fn wait_ready(&mut self) {
        wait_until(PATIENCE, "/ready to answer 200", || {
            self.fail_if_exited("before it was ready");
            match admin_get(self.admin, "/ready") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// Rereads `/listeners`.
    pub fn refresh_listeners(&mut self) {
        let body = self.admin_get("/listeners").body;
        let listeners: Value = serde_json::from_str(&body).expect("/listeners is JSON");
        self.listeners = listeners
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
            .collect();
    }

    /// The address of listener `name` (as of the last refresh).
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners))
    }

    pub fn listener_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.listeners.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn dir(&self) -> &Arc<TempDir> {
        &self.dir
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path`; panics if the request fails.
    pub fn admin_get(&self, path: &str) -> HttpResponse {
        admin_get(self.admin, path).unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// `method path` with the token and `body`.
    pub fn admin_call(&self, method: &str, path: &str, body: &str) -> HttpResponse {
        admin_request(self.admin, method, path, Some(TOKEN), "127.0.0.1", body)
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
    }

    /// `PUT /config` with `config`.
    pub fn put_config(&self, config: &str) -> HttpResponse {
        self.admin_call("PUT", "/config", config)
    }

    /// `/stats` as JSON.
    pub fn stats(&self) -> Value {
        let r = self.admin_get("/stats");
        assert_eq!(r.status, 200, "/stats: {}", r.body);
        serde_json::from_str(&r.body).expect("/stats is JSON")
    }

    /// The published generation.
    pub fn generation(&self) -> u64 {
        self.stats()["generation"].as_u64().expect("generation")
    }

    /// The generation each worker acknowledged.
    pub fn worker_generations(&self) -> Vec<u64> {
        self.stats()["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| w["generation"].as_u64().expect("generation"))
            .collect()
    }

    /// One unlabelled sample of `/stats/prometheus`.
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.admin_get("/stats/prometheus").body;
        body.lines()
            .find_map(|line| {
                let (n, v) = line.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no sample {name}"))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("send a signal");
    }

    pub fn is_running(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit.is_none()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until(timeout, format!("{} to exit", self.name), || {
            if self.is_running() {
                Err("still running".into())
            } else {
                Ok(())
            }
        });
        self.exit.expect("exited")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} log ({}) =====\n{}===== end =====",
                self.name,
                self.driver.flag(),
                self.log()
            );
        }
    }
}

// === HTTP clients ===

/// A response read to the end of the connection.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn admin_get(address: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    admin_request(address, "GET", path, None, "127.0.0.1", "")
}

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
    raw_request(address, raw.as_bytes())
}

/// Sends `raw` and reads until the server closes.
pub fn raw_request(address: SocketAddr, raw: &[u8]) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&address, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(raw)?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse_response(&bytes)
}

fn parse_response(bytes: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no head: {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// One request on a fresh connection through the proxy: `GET path` with Host `host`; returns the
/// status and body.
pub fn get(address: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    raw_request(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

// === upstreams ===

/// An HTTP/1.1 upstream on `127.0.0.1:0` that answers every request with `200` and its `name` as
/// the body, keeping connections alive; a request for a path starting with `/slow` is answered
/// after `slow` (to hold requests in flight).
#[derive(Debug)]
pub struct Upstream {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl Upstream {
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

impl Drop for Upstream {
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

/// Shared, thread-safe log of events with their time (reloads in the storm test).
#[derive(Debug, Default, Clone)]
pub struct Timeline(pub Arc<Mutex<Vec<(Instant, Instant, String)>>>);

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
