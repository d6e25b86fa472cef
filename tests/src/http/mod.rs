//! Support for the HTTP/1.1 black-box tests (`tests/tests/http_*.rs`).
//!
//! - [`message`]: HTTP/1.1 on the wire: a buffered stream, heads, bodies (length, chunked with
//!   trailers, until close), requests and responses.
//! - [`upstream`]: [`HttpUpstream`], an in-test keep-alive server that records every request
//!   byte for byte and answers through a handler that may misbehave on purpose.
//! - [`client`]: a raw keep-alive [`Client`], and [`curl`].
//! - [`nginx`]: Debian's nginx as a real upstream on a free port.
//! - [`websocket`]: handshake and frames for a WebSocket echo.
//! - here: config snippets, the JSON access log, the proxy's memory, and [`Pattern`], a
//!   deterministic byte stream for transfers too large to hold in memory twice (written to a file
//!   for curl by [`write_pattern_file`], compared by [`sha256_file`]).

pub mod client;
pub mod message;
pub mod nginx;
pub mod upstream;
pub mod websocket;

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

pub use client::{Client, Curl, curl};
pub use message::{Request, Response, request_bytes};
pub use nginx::Nginx;
pub use upstream::{HttpUpstream, Reply};

use crate::wait::{PATIENCE, wait_until};

/// `[[listeners]]` for an `http` listener `name` on `127.0.0.1:0`; `extra` lines go into its
/// table.
pub fn http_listener(name: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "{name}"
address = "127.0.0.1:0"
protocol = "http"
{extra}
"#
    )
}

/// `[[clusters]]` named `name` with `endpoints`; `extra` lines go into its table.
pub fn cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[[clusters]]
name = "{name}"
endpoints = [{endpoints}]
{extra}
"#,
        endpoints = endpoints.join(", ")
    )
}

/// `[[virtual_hosts]]` named `name` for `domains`, followed by `routes` (see [`route`]).
pub fn virtual_host(name: &str, domains: &[&str], routes: &str) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"
[[virtual_hosts]]
name = "{name}"
domains = [{domains}]
{routes}
"#,
        domains = domains.join(", ")
    )
}

/// One `[[virtual_hosts.routes]]` table named `name` with `lines` (TOML key = value lines).
pub fn route(name: &str, lines: &str) -> String {
    format!(
        r#"
[[virtual_hosts.routes]]
name = "{name}"
{lines}
"#
    )
}

/// `[telemetry]` writing the JSON access log to `path`.
pub fn access_log_config(path: &Path) -> String {
    format!(
        "\n[telemetry]\naccess_log = {{ path = \"{}\" }}\n",
        path.display()
    )
}

/// The entries of the JSON access log at `path`, once it holds at least `at_least` of them
/// (workers flush every 200 ms). Every line must be a JSON object.
pub fn access_log(path: &Path, at_least: usize) -> Vec<Value> {
    wait_until(
        PATIENCE,
        format!("{at_least} access-log entries in {}", path.display()),
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let entries: Vec<Value> = text
                .lines()
                .map(|line| {
                    let value: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("access-log line is not JSON ({e}): {line}"));
                    assert!(
                        value.is_object(),
                        "access-log line is not an object: {line}"
                    );
                    value
                })
                .collect();
            if entries.len() >= at_least {
                Ok(entries)
            } else {
                Err(format!("{} entries", entries.len()))
            }
        },
    )
}

/// A process's memory, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub hwm_kib: u64,
}

/// The memory of process `pid`.
pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    }
}

/// A deterministic pseudo-random byte stream, the same bytes as
/// [`crate::client::payload`] for the same seed, produced piece by piece so that a 100 MB
/// transfer can be generated and checked without holding it in memory.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    produced: u64,
}

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            produced: 0,
        }
    }

    /// Fills `out` with the next bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for byte in out.iter_mut() {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            *byte = (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
        self.produced += out.len() as u64;
    }

    /// Bytes produced (or checked) so far.
    pub fn position(&self) -> u64 {
        self.produced
    }
}

/// Writes `len` bytes of the [`Pattern`] for `seed` to a new file at `path`, piece by piece (a
/// request body for curl's `-T` or `--data-binary @FILE`).
pub fn write_pattern_file(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display())),
    );
    let mut pattern = Pattern::new(seed);
    let mut piece = vec![0u8; 1 << 20];
    while pattern.position() < len {
        let n = (len - pattern.position()).min(piece.len() as u64) as usize;
        pattern.fill(&mut piece[..n]);
        file.write_all(&piece[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    file.flush()
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The SHA-256 of the file at `path`, in lower-case hex (by coreutils' `sha256sum`).
pub fn sha256_file(path: &Path) -> String {
    let output = std::process::Command::new(crate::tool("sha256sum"))
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(
        output.status.success(),
        "sha256sum {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Checks that a stream of bytes is exactly a [`Pattern`], piece by piece.
#[derive(Debug, Clone)]
pub struct PatternCheck {
    expected: Pattern,
    scratch: Vec<u8>,
    /// Offset of the first differing byte, if any.
    pub first_difference: Option<u64>,
}

impl PatternCheck {
    /// A check against the stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            expected: Pattern::new(seed),
            scratch: Vec::new(),
            first_difference: None,
        }
    }

    /// Checks the next bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.scratch.resize(data.len(), 0);
        let at = self.expected.position();
        self.expected.fill(&mut self.scratch);
        if self.first_difference.is_none()
            && let Some(i) = self.scratch.iter().zip(data).position(|(a, b)| a != b)
        {
            self.first_difference = Some(at + i as u64);
        }
    }

    /// Bytes checked so far.
    pub fn len(&self) -> u64 {
        self.expected.position()
    }

    /// Whether nothing was checked yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_payload_however_it_is_split() {
        let whole = crate::client::payload(10_000, 7);
        let mut pattern = Pattern::new(7);
        let mut pieces = vec![0u8; 10_000];
        let (a, b) = pieces.split_at_mut(3_333);
        pattern.fill(a);
        pattern.fill(b);
        assert_eq!(pieces, whole);
        let mut check = PatternCheck::new(7);
        check.feed(&whole[..17]);
        check.feed(&whole[17..]);
        assert_eq!(check.first_difference, None);
        assert_eq!(check.len(), 10_000);
        let mut wrong = PatternCheck::new(7);
        let mut altered = whole.clone();
        altered[5_000] ^= 1;
        wrong.feed(&altered);
        assert_eq!(wrong.first_difference, Some(5_000));
    }
}
