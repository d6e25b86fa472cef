//! The `ringmesh` process under test.
//!
//! [`Proxy`] writes a config into a temporary directory, starts the binary on the requested I/O
//! driver with its log going to a file, waits until `/ready` answers 200, and learns the address
//! bound for each listener (configs use port 0). Dropping it kills the process; if the test is
//! failing at that moment, the proxy's log is printed, which usually explains the failure.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, SysconfVar, sysconf};
use serde_json::Value;

use crate::admin::{self, HttpResponse, Metrics, Stats};
use crate::wait::{PATIENCE, wait_until};

/// The I/O driver a proxy runs on (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring.
    Uring,
    /// epoll.
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

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// Config text for one `tcp` listener `name` on `127.0.0.1:0` forwarding to a cluster also named
/// `name` with `endpoints`. `listener_extra` and `cluster_extra` are TOML lines added to each
/// table (`idle_timeout = "1s"`, `connect_timeout = "300ms"`); concatenate several for more
/// listeners, and put top-level tables such as `[runtime]` in front.
pub fn tcp_listener(
    name: &str,
    endpoints: &[SocketAddr],
    listener_extra: &str,
    cluster_extra: &str,
) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[[listeners]]
name = "{name}"
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "{name}"
{listener_extra}

[[clusters]]
name = "{name}"
endpoints = [{endpoints}]
{cluster_extra}
"#,
        endpoints = endpoints.join(", ")
    )
}

/// The `ringmesh` binary: `RINGMESH_BIN` if set, else `ringmesh` in the target directory profile
/// that built this test (then the other profile).
///
/// Panics when it is missing or older than the dataplane and config-schema sources, because a
/// stale binary makes test results meaningless.
pub fn ringmesh_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGMESH_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "RINGMESH_BIN={} does not exist",
            path.display()
        );
        return path;
    }
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let candidates = [
        profile_dir.join("ringmesh"),
        target_dir.join("debug/ringmesh"),
        target_dir.join("release/ringmesh"),
    ];
    let Some(binary) = candidates.iter().find(|p| p.is_file()) else {
        panic!(
            "the ringmesh binary is not built (looked at {candidates:?}): run `cargo build --bins` \
             first, or use `scripts/test`, or set RINGMESH_BIN"
        );
    };
    check_fresh(binary);
    binary.clone()
}

/// Panics when a source file of the binary is newer than the binary.
fn check_fresh(binary: &Path) {
    let built = modified(binary);
    let root = repo_root();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for dir in ["dataplane", "config-schema"] {
        newest_file(&root.join(dir), &mut newest);
    }
    if let Some((time, path)) = newest
        && time > built
    {
        panic!(
            "{} is older than {}: run `cargo build --bins` (or `scripts/test`) so the tests run \
             the current code",
            binary.display(),
            path.display()
        );
    }
}

fn newest_file(dir: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n != "tests" && n != "target")
            {
                newest_file(&path, newest);
            }
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            let time = modified(&path);
            if newest.as_ref().is_none_or(|(t, _)| time > *t) {
                *newest = Some((time, path));
            }
        }
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// How to start a [`Proxy`]; see [`Proxy::builder`].
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    config: String,
    driver: Driver,
    workers: usize,
    nofile: Option<u32>,
    log_level: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    netns: Option<String>,
}

impl ProxyBuilder {
    /// Runs the proxy in network namespace `ns` (`ip netns exec NS ringmesh ...`, which execs,
    /// so [`Proxy::pid`] is ringmesh's). Its admin API then listens on a Unix socket in the
    /// proxy's temporary directory (the test, in the root namespace, cannot reach the
    /// namespace's loopback), unless the config has its own `[admin]` section.
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_owned());
        self
    }

    /// Worker threads (`--workers`); default 2.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Runs the proxy under `prlimit --nofile=N` (soft and hard limit of open files).
    pub fn nofile(mut self, limit: u32) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// `--log-level` (default `debug`, or `RINGMESH_TEST_LOG` when set).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// An extra command-line argument (`--watch`, `--upgrade-from PATH`...).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts the proxy and waits until it is ready; panics (printing its log) if it is not.
    pub fn start(self) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-test-")
            .tempdir()
            .expect("create a temporary directory");
        let config_path = dir.path().join("ringmesh.toml");
        let log_path = dir.path().join("ringmesh.log");
        let admin_file = dir.path().join("admin-address");
        let admin_socket = dir.path().join("admin.sock");
        let admin_section = match self.netns {
            Some(_) => format!("[admin]\naddress = \"unix:{}\"\n", admin_socket.display()),
            None => "[admin]\naddress = \"127.0.0.1:0\"\n".to_owned(),
        };
        let admin_unix = (self.netns.is_some() && !self.config.contains("[admin]"))
            .then(|| admin_socket.clone());
        std::fs::write(&config_path, with_admin(&self.config, &admin_section))
            .expect("write the config");

        let log = File::create(&log_path).expect("create the log file");
        // [ip netns exec NS] [prlimit --nofile=N --] ringmesh
        let mut line: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            line.extend([
                crate::tool("ip").into(),
                "netns".into(),
                "exec".into(),
                ns.into(),
            ]);
        }
        if let Some(limit) = self.nofile {
            line.extend([
                crate::tool("prlimit").into(),
                format!("--nofile={limit}").into(),
                "--".into(),
            ]);
        }
        line.push(ringmesh_bin().into());
        let mut command = Command::new(&line[0]);
        command.args(&line[1..]);
        command
            .arg("--config")
            .arg(&config_path)
            .args(["--io", self.driver.flag()])
            .args(["--workers", &self.workers.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--log-level", &self.log_level])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        let child = command.spawn().expect("spawn ringmesh");

        let mut proxy = Proxy {
            child,
            exit: None,
            _dir: dir,
            config_path,
            log_path,
            driver: self.driver,
            workers: self.workers,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_unix,
            admin_section,
            listeners: HashMap::new(),
        };
        proxy.admin = proxy.wait_for_admin_address(&admin_file);
        proxy.wait_ready();
        proxy.listeners = proxy.read_listeners();
        let stats = proxy.stats();
        assert_eq!(
            stats.driver(),
            self.driver.stats_name(),
            "the proxy runs a different driver than asked for"
        );
        assert_eq!(stats.workers().len(), self.workers, "worker count");
        proxy
    }
}

/// `config`, with `admin_section` (an `[admin]` section listening on `127.0.0.1:0`, or on a Unix
/// socket for a proxy in a network namespace) in front if it has none.
fn with_admin(config: &str, admin_section: &str) -> String {
    if config.contains("[admin]") {
        config.to_owned()
    } else {
        format!("{admin_section}\n{config}")
    }
}

/// A running `ringmesh` process.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    exit: Option<ExitStatus>,
    // Holds the config and the log; removed on drop.
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    driver: Driver,
    workers: usize,
    admin: SocketAddr,
    /// The admin API's Unix socket, for a proxy in a network namespace (then `admin` is unused).
    admin_unix: Option<PathBuf>,
    /// The `[admin]` section put in front of configs without one.
    admin_section: String,
    listeners: HashMap<String, SocketAddr>,
}

impl Proxy {
    /// Starts `config` on `driver` with `workers` workers and waits until it is ready.
    ///
    /// Without an `[admin]` section, one listening on `127.0.0.1:0` is added in front of the
    /// config.
    pub fn start(config: &str, driver: Driver, workers: usize) -> Proxy {
        Self::builder(config, driver).workers(workers).start()
    }

    /// A builder for proxies that need more than [`Proxy::start`] offers.
    pub fn builder(config: &str, driver: Driver) -> ProxyBuilder {
        ProxyBuilder {
            config: config.to_owned(),
            driver,
            workers: 2,
            nofile: None,
            log_level: std::env::var("RINGMESH_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            args: Vec::new(),
            envs: Vec::new(),
            netns: None,
        }
    }

    fn wait_for_admin_address(&mut self, file: &Path) -> SocketAddr {
        if self.admin_unix.is_some() {
            // The file then says `unix:PATH`: the socket is listening once it is written.
            wait_until(PATIENCE, "the admin address file", || {
                self.fail_if_exited("while starting");
                match std::fs::read_to_string(file) {
                    Ok(text) if text.starts_with("unix:") => Ok(()),
                    Ok(text) => Err(format!("unexpected admin address {text:?}")),
                    Err(e) => Err(e.to_string()),
                }
            });
            return self.admin;
        }
        wait_until(PATIENCE, "the admin address file", || {
            self.fail_if_exited("while starting");
            // The file may be seen empty or half-written: retry until it parses.
            std::fs::read_to_string(file)
                .map_err(|e| e.to_string())?
                .trim()
                .parse()
                .map_err(|e| format!("{e}"))
        })
    }

    fn wait_ready(&mut self) {
        wait_until(PATIENCE, "/ready to answer 200", || {
            self.fail_if_exited("before it was ready");
            match self.try_admin_get("/ready") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn read_listeners(&self) -> HashMap<String, SocketAddr> {
        let body = self.admin_get("/listeners").body;
        let listeners: Value = serde_json::from_str(&body).expect("/listeners is JSON");
        listeners
            .as_array()
            .expect("/listeners is an array")
            .iter()
            .filter_map(|l| {
                let name = l["name"].as_str().expect("listener name").to_owned();
                // Node mode's listeners may report something else; `listener` names what is
                // there when a test asks for a missing one.
                let address = l["local_address"].as_str()?.parse().ok()?;
                Some((name, address))
            })
            .collect()
    }

    fn fail_if_exited(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.exit = Some(status);
            panic!("ringmesh exited {when} with {status}");
        }
    }

    /// The address the listener `name` is bound to.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?}; the proxy has {:?}", self.listeners))
    }

    /// The admin API's address. Panics for a proxy whose admin API is on a Unix socket (see
    /// [`ProxyBuilder::netns`]); [`Proxy::admin_request`] reaches either.
    pub fn admin_address(&self) -> SocketAddr {
        assert!(
            self.admin_unix.is_none(),
            "this proxy's admin API is on a Unix socket: use admin_get or admin_request"
        );
        self.admin
    }

    /// Sends `raw` (a whole HTTP/1.1 request, `Connection: close`) to the admin API, over TCP
    /// or its Unix socket.
    pub fn admin_request(&self, raw: &str) -> std::io::Result<HttpResponse> {
        match &self.admin_unix {
            Some(path) => admin::request_unix(path, raw),
            None => admin::request(self.admin, raw),
        }
    }

    /// The driver it was started on.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The config file it was started with (rewrite it and send SIGHUP to reload).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `GET path` on the admin API; panics if the request fails.
    pub fn admin_get(&self, path: &str) -> HttpResponse {
        self.try_admin_get(path)
            .unwrap_or_else(|e| panic!("admin GET {path} failed: {e}"))
    }

    /// `GET path` on the admin API.
    pub fn try_admin_get(&self, path: &str) -> std::io::Result<HttpResponse> {
        self.admin_request(&format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ))
    }

    /// `/stats`, which must answer 200.
    pub fn stats(&self) -> Stats {
        let response = self.admin_get("/stats");
        assert_eq!(response.status, 200, "/stats: {}", response.body);
        Stats::parse(&response.body)
    }

    /// Waits until `/stats` shows the listener counter `counter` of `listener` at `expected`.
    /// Counters are updated as connections end, slightly after the client sees the end.
    pub fn wait_listener_counter(&self, listener: &str, counter: &str, expected: u64) {
        wait_until(
            PATIENCE,
            format!("listener {listener} {counter} == {expected}"),
            || match self.stats().listener_counter(listener, counter) {
                value if value == expected => Ok(()),
                value => Err(format!("{counter} = {value}")),
            },
        );
    }

    /// `/stats/prometheus`, parsed; panics if it does not parse.
    pub fn metrics(&self) -> Metrics {
        let response = self.admin_get("/stats/prometheus");
        assert_eq!(response.status, 200, "/stats/prometheus: {}", response.body);
        Metrics::parse(&response.body)
            .unwrap_or_else(|e| panic!("/stats/prometheus does not parse: {e}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("send a signal to ringmesh");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit.is_none()
    }

    /// Waits for the process to exit, at most `timeout`; panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until(timeout, "ringmesh to exit", || {
            if self.is_running() {
                Err("still running".into())
            } else {
                Ok(())
            }
        });
        self.exit.expect("exited")
    }

    /// CPU time (user + system) the process has used so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the command name, which is in parentheses and may contain spaces; utime
        // and stime are fields 14 and 15 of the whole line, so 12th and 13th after ")".
        let after_name = &stat[stat.rfind(')').expect("stat has (comm)") + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_second = sysconf(SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .unwrap_or(100) as u64;
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// The number of files the process has open, from `/proc/PID/fd`.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// The files the process has open, sorted out: its TCP connections (from `/proc/PID/fd`,
    /// looked up in `/proc/PID/net/tcp` and `tcp6`; connections to the admin API included, with
    /// [`TcpConnection::local`] then [`Self::admin_address`]), sockets whose connection has ended
    /// but which are still open, and everything else.
    pub fn open_files(&self) -> OpenFiles {
        let pid = self.pid();
        let mut tcp: HashMap<u64, TcpConnection> = HashMap::new();
        for table in ["tcp", "tcp6"] {
            let text =
                std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            for connection in text.lines().skip(1).filter_map(TcpConnection::parse) {
                tcp.insert(connection.inode, connection);
            }
        }
        let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
        let unix: Vec<u64> = unix
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().nth(6)?.parse().ok())
            .collect();
        let mut files = OpenFiles::default();
        let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd");
        for target in entries
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
        {
            let inode: Option<u64> = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
            match inode {
                Some(inode) => match tcp.get(&inode) {
                    Some(c) if c.state == "LISTEN" => files.other += 1,
                    Some(c) => files.connections.push(c.clone()),
                    None if unix.contains(&inode) => files.other += 1,
                    None => files.ended += 1,
                },
                None => files.other += 1,
            }
        }
        files
    }

    /// The config generation the proxy runs, and the one each worker has applied, by worker id
    /// (`/config_dump`).
    pub fn generations(&self) -> (u64, Vec<u64>) {
        let dump: Value = serde_json::from_str(&self.admin_get("/config_dump").body)
            .expect("/config_dump is JSON");
        let workers = dump["workers"]
            .as_array()
            .expect("/config_dump has workers")
            .iter()
            .map(|w| w["generation"].as_u64().expect("a worker's generation"))
            .collect();
        (
            dump["generation"]
                .as_u64()
                .expect("/config_dump has a generation"),
            workers,
        )
    }

    /// Reloads through the file: rewrites it with `config` (with an `[admin]` section in front
    /// when it has none, as at the start), sends SIGHUP, and waits until every worker runs the
    /// next generation (a worker has closed the pooled connections to removed endpoints by
    /// then). Returns that generation; panics if the reload is not applied.
    pub fn reload_with_sighup(&self, config: &str) -> u64 {
        let (current, _) = self.generations();
        std::fs::write(&self.config_path, with_admin(config, &self.admin_section))
            .expect("rewrite the config");
        self.signal(Signal::SIGHUP);
        let next = current + 1;
        wait_until(
            PATIENCE,
            format!("every worker to run generation {next}"),
            || match self.generations() {
                (generation, workers)
                    if generation == next && workers.iter().all(|&g| g == next) =>
                {
                    Ok(next)
                }
                (generation, workers) => {
                    Err(format!("generation {generation}, workers {workers:?}"))
                }
            },
        )
    }

    /// Everything the proxy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<no log: {e}>"))
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
                "\n===== ringmesh log ({} driver, {}) =====\n{}===== end of ringmesh log =====",
                self.driver.flag(),
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// The files a process has open, sorted out (see [`Proxy::open_files`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenFiles {
    /// TCP connections, in any state but `LISTEN`.
    pub connections: Vec<TcpConnection>,
    /// Sockets in none of the kernel's TCP or Unix tables: TCP connections that have ended (they
    /// leave the tables) while their file is still open.
    pub ended: usize,
    /// Everything else: listening and Unix sockets, files, pipes, event and io_uring fds.
    pub other: usize,
}

/// A TCP socket of the proxy, from a line of `/proc/PID/net/tcp` or `tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnection {
    /// The proxy's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// `ESTABLISHED`, `CLOSE_WAIT`, `FIN_WAIT2`...
    pub state: &'static str,
    /// The socket's inode (`socket:[INODE]` in `/proc/PID/fd`).
    pub inode: u64,
}

impl TcpConnection {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let state = match u8::from_str_radix(fields.get(3)?, 16).ok()? {
            0x01 => "ESTABLISHED",
            0x02 => "SYN_SENT",
            0x03 => "SYN_RECV",
            0x04 => "FIN_WAIT1",
            0x05 => "FIN_WAIT2",
            0x06 => "TIME_WAIT",
            0x07 => "CLOSE",
            0x08 => "CLOSE_WAIT",
            0x09 => "LAST_ACK",
            0x0A => "LISTEN",
            0x0B => "CLOSING",
            _ => "UNKNOWN",
        };
        Some(Self {
            local: parse_proc_address(fields.get(1)?)?,
            remote: parse_proc_address(fields.get(2)?)?,
            state,
            inode: fields.get(9)?.parse().ok()?,
        })
    }
}

impl std::fmt::Display for TcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.local, self.remote, self.state)
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel prints
/// it, 32-bit words in host (little-endian) order.
fn parse_proc_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..address.len() / 8)
        .map(|i| u32::from_str_radix(address.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// What a finished `ringmesh` command printed.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `ringmesh ARGS` to completion, killing it after `timeout` (then panicking).
pub fn run_ringmesh<I, S>(args: I, timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(ringmesh_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("spawn ringmesh");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ringmesh did not exit within {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let v4 = "   0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000 \
                  0        0 12345 1 0000000000000000 20 4 30 10 -1";
        let parsed = TcpConnection::parse(v4).expect("an IPv4 line parses");
        assert_eq!(
            parsed.to_string(),
            "127.0.0.1:8080 -> 127.0.0.1:50000 ESTABLISHED"
        );
        assert_eq!(parsed.inode, 12345);
        let v6 = "   1: 00000000000000000000000001000000:1F90 \
                  00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 \
                  00000000     0        0 678 1 0000000000000000 100 0 0 10 0";
        let parsed = TcpConnection::parse(v6).expect("an IPv6 line parses");
        assert_eq!(parsed.to_string(), "[::1]:8080 -> [::]:0 LISTEN");
        assert!(TcpConnection::parse("  sl  local_address rem_address   st").is_none());
    }
}
