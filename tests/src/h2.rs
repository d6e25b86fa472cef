//! Support for the HTTP/2 and gRPC tests: the Python peers in `tests/python/`, h2load, and the
//! proxy's memory.
//!
//! - [`PyServer`]: a long-running Python peer (`h2_upstream.py`, `grpc_echo.py server`) that binds
//!   port 0, prints `listening PORT`, then one event line per thing it saw; tests count those
//!   lines. [`PyServer::steered`] runs a client the same way, told what to do on its stdin.
//! - [`run`] / [`run_json`]: a command to completion within a timeout (Python clients and
//!   attackers print one JSON object), output in files so nothing can block on a pipe.
//! - [`Background`]: the same, started now and collected later (h2load next to an attack).
//! - [`H2load`]: h2load's summary, parsed.
//! - [`watch_connection_end`]: requests on one connection, then how the server ends it once idle
//!   (`h2_idle.py`: GOAWAY, close).
//! - [`rss`] and [`RssSampler`]: the proxy's resident memory, read from `/proc`.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::wait::{PATIENCE, wait_until};

/// A script in `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    crate::repo_root().join("tests/python").join(name)
}

/// A command running the test virtualenv's Python on `tests/python/NAME` with `args`.
pub fn python_command(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(crate::python());
    command.arg(script(name)).args(args);
    command
}

/// A long-running Python peer. Dropping it kills it; if the test is failing at that moment, its
/// output is printed.
#[derive(Debug)]
pub struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    name: String,
    port: u16,
}

impl PyServer {
    /// Starts `tests/python/NAME ARGS` and waits until it prints `listening PORT`.
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut server = Self::spawn(name, args, Stdio::null());
        server.port = wait_until(PATIENCE, format!("{} to listen", server.name), || {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!(
                    "{} exited with {status} before listening:\n{}",
                    server.name,
                    server.stderr()
                );
            }
            server
                .stdout()
                .lines()
                .find_map(|line| line.strip_prefix("listening ")?.trim().parse().ok())
                .ok_or_else(|| "no `listening` line yet".to_owned())
        });
        server
    }

    /// Starts `tests/python/NAME ARGS` with a pipe to its standard input, and waits for nothing:
    /// a client that the test steers with [`Self::tell`] and follows through its event lines.
    pub fn steered(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, args, Stdio::piped())
    }

    fn spawn(name: &str, args: &[&str], stdin: Stdio) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-py-")
            .tempdir()
            .expect("create a temporary directory");
        let mut child = python_command(name, args)
            .stdin(stdin)
            .stdout(File::create(dir.path().join("stdout")).expect("create stdout file"))
            .stderr(File::create(dir.path().join("stderr")).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            stdin: child.stdin.take(),
            child,
            dir,
            name: format!("{name} {}", args.join(" ")),
            port: 0,
        }
    }

    /// Writes `line` and a newline to its standard input (see [`Self::steered`]).
    pub fn tell(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{} was not started steered", self.name));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("tell {} {line:?}: {e}", self.name));
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything it printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Its standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The event lines whose first word is `event`, split into words.
    pub fn events(&self, event: &str) -> Vec<Vec<String>> {
        self.stdout()
            .lines()
            .filter(|line| line.split_whitespace().next() == Some(event))
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    /// How many `event` lines it printed.
    pub fn count(&self, event: &str) -> usize {
        self.events(event).len()
    }

    /// Waits until an `event` line satisfying `accept` appears, and returns it.
    pub fn wait_event(&self, event: &str, accept: impl Fn(&[String]) -> bool) -> Vec<String> {
        wait_until(PATIENCE, format!("{event:?} from {}", self.name), || {
            self.events(event)
                .into_iter()
                .find(|words| accept(words))
                .ok_or_else(|| format!("output so far:\n{}", tail(&self.stdout(), 20)))
        })
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} =====\nstdout (tail):\n{}\nstderr:\n{}\n===== end of {} =====",
                self.name,
                tail(&self.stdout(), 40),
                tail(&self.stderr(), 40),
                self.name
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A command running in the background, its output going to files.
#[derive(Debug)]
pub struct Background {
    child: Child,
    dir: tempfile::TempDir,
    what: String,
    started: Instant,
}

impl Background {
    /// Starts `command`.
    pub fn start(mut command: Command) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-cmd-")
            .tempdir()
            .expect("create a temporary directory");
        let what = format!("{command:?}");
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("create stdout file"))
            .stderr(File::create(dir.path().join("stderr")).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Self {
            child,
            dir,
            what,
            started: Instant::now(),
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// What it printed on standard error so far.
    pub fn stderr(&self) -> String {
        read(self.dir.path(), "stderr")
    }

    /// Waits for it to exit, at most `timeout` from its start; kills it and panics after that.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if self.started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    tail(&read(self.dir.path(), "stdout"), 40),
                    tail(&read(self.dir.path(), "stderr"), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: read(self.dir.path(), "stdout"),
            stderr: read(self.dir.path(), "stderr"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Runs `command` to completion within `timeout`.
pub fn run(command: Command, timeout: Duration) -> Output {
    Background::start(command).finish(timeout)
}

/// Runs `tests/python/NAME ARGS`, which must exit 0 within `timeout` and print a JSON object as
/// its last line; returns that object.
pub fn run_json(name: &str, args: &[&str], timeout: Duration) -> Value {
    let output = run(python_command(name, args), timeout);
    let last = output.stdout.lines().last().unwrap_or_default();
    assert!(
        output.status.success(),
        "{name} {args:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        output.stdout,
        tail(&output.stderr, 40)
    );
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{name} {args:?} did not print JSON ({e}):\n{}\nstderr:\n{}",
            output.stdout,
            tail(&output.stderr, 40)
        )
    })
}

/// What `h2_idle.py` saw on one HTTP/2 connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEnd {
    /// `response ID STATUS`, `end ID` (END_STREAM), `reset ID CODE` (RST_STREAM),
    /// `goaway CODE LAST`, `ping`, and last `eof` or `reset` when the server closed it.
    pub events: Vec<String>,
    /// `eof` (FIN) or `reset` (RST); `None` when it was still open at the end of the wait.
    pub closed: Option<String>,
}

impl ConnectionEnd {
    /// The index of the first event starting with `prefix` (`"goaway"`, `"end 1"`).
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.events.iter().position(|e| e.starts_with(prefix))
    }
}

/// Opens one h2c connection to `port` on 127.0.0.1, GETs `paths` on it one after the other (each
/// once the previous response has ended; a response may take up to 20 s), then sends nothing and
/// waits at most `wait` for the server to end the connection (`tests/python/h2_idle.py`).
pub fn watch_connection_end(port: u16, paths: &[&str], wait: Duration) -> ConnectionEnd {
    let mut args = vec![
        port.to_string(),
        "--wait".to_owned(),
        format!("{}", wait.as_secs_f64()),
    ];
    for path in paths {
        args.push("--path".to_owned());
        args.push((*path).to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = run_json("h2_idle.py", &args, wait + Duration::from_secs(40));
    ConnectionEnd {
        events: result["events"]
            .as_array()
            .expect("h2_idle.py prints its events")
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect(),
        closed: result["closed"].as_str().map(str::to_owned),
    }
}

/// h2load's summary of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2load {
    /// Requests planned.
    pub total: u64,
    /// Requests that got a response.
    pub succeeded: u64,
    /// Requests that failed (no response, or stream/connection error).
    pub failed: u64,
    /// Requests that errored (connection-level).
    pub errored: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Responses by status class: 2xx, 3xx, 4xx, 5xx.
    pub status: [u64; 4],
    /// The whole output, for messages.
    pub output: String,
}

impl H2load {
    /// Parses h2load's standard output.
    pub fn parse(output: &str) -> Self {
        let mut parsed = H2load {
            output: output.to_owned(),
            ..H2load::default()
        };
        for line in output.lines() {
            if let Some(rest) = line.strip_prefix("requests: ") {
                for part in rest.split(", ") {
                    let mut words = part.split_whitespace();
                    let (Some(n), Some(what)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "total" => parsed.total = n,
                        "succeeded" => parsed.succeeded = n,
                        "failed" => parsed.failed = n,
                        "errored" => parsed.errored = n,
                        "timeout" => parsed.timeout = n,
                        _ => {}
                    }
                }
            } else if let Some(rest) = line.strip_prefix("status codes: ") {
                for (i, part) in rest.split(", ").enumerate().take(4) {
                    parsed.status[i] = part
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
        }
        parsed
    }

    /// Panics unless every one of `expected` requests got a 2xx answer.
    pub fn assert_all_ok(&self, expected: u64) {
        assert!(
            self.total == expected
                && self.succeeded == expected
                && self.failed == 0
                && self.errored == 0
                && self.timeout == 0
                && self.status == [expected, 0, 0, 0],
            "h2load: expected {expected} requests, all 2xx; got {self:?}"
        );
    }
}

/// A command running h2load with `args`.
pub fn h2load_command(args: &[&str]) -> Command {
    let mut command = Command::new(crate::tool("h2load"));
    command.args(args);
    command
}

/// Runs h2load with `args` within `timeout`; it must exit 0.
pub fn h2load(args: &[&str], timeout: Duration) -> H2load {
    let output = run(h2load_command(args), timeout);
    assert!(
        output.status.success(),
        "h2load {args:?} exited with {}:\n{}\n{}",
        output.status,
        output.stdout,
        output.stderr
    );
    H2load::parse(&output.stdout)
}

/// Resident memory of process `pid`, in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status")
        * 1024
}

/// Samples a process's resident memory every 10 ms on a thread, keeping the largest value seen.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut peak = rss(pid);
                while !stop.load(Ordering::Acquire) {
                    peak = peak.max(rss(pid));
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak.max(rss(pid))
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the peak.
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("sampling thread")
            .join()
            .expect("the sampling thread does not panic")
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One MiB.
pub const MIB: u64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summaries_parse() {
        let out = "finished in 1.00s, 100.00 req/s, 1KB/s\n\
                   requests: 100 total, 100 started, 99 done, 98 succeeded, 2 failed, 1 errored, 0 timeout\n\
                   status codes: 97 2xx, 0 3xx, 1 4xx, 0 5xx\n";
        let parsed = H2load::parse(out);
        assert_eq!(
            (
                parsed.total,
                parsed.succeeded,
                parsed.failed,
                parsed.errored
            ),
            (100, 98, 2, 1)
        );
        assert_eq!(parsed.status, [97, 0, 1, 0]);
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(rss(std::process::id()) > 0);
    }
}
