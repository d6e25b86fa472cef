//! HTTP/1.1 clients for the tests: a raw keep-alive [`Client`] that sends exact bytes and reads
//! exactly one response at a time, and [`curl`], the client users actually run.

use std::io;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::message::{Response, Wire, read_response, request_bytes};
use crate::client::{Closed, connect, wait_closed};

/// A client connection that speaks raw bytes and parses responses.
#[derive(Debug)]
pub struct Client {
    wire: Wire,
}

impl Client {
    /// Connects (with the timeouts of [`crate::client::connect`]).
    pub fn connect(address: SocketAddr) -> Self {
        Self {
            wire: Wire::new(connect(address)),
        }
    }

    /// Sends `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.wire
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
    }

    /// Reads one response (an interim 1xx one included) to a request with `method`.
    pub fn read_response(&mut self, method: &str) -> Response {
        self.try_read_response(method)
            .unwrap_or_else(|e| panic!("read a response to {method}: {e}"))
    }

    /// Like [`Self::read_response`], returning the error.
    pub fn try_read_response(&mut self, method: &str) -> io::Result<Response> {
        read_response(&mut self.wire, method)
    }

    /// Sends `raw` (a whole request) and reads the response, skipping interim 1xx answers.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        let method = raw
            .split(|&b| b == b' ')
            .next()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default();
        loop {
            let response = self.read_response(&method);
            if !(100..200).contains(&response.status) || response.status == 101 {
                return response;
            }
        }
    }

    /// `GET target` with `host`.
    pub fn get(&mut self, host: &str, target: &str) -> Response {
        self.request(&request_bytes("GET", target, host, &[], b""))
    }

    /// Asserts that the server sends nothing more and closes the connection (FIN or RST)
    /// within `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> Closed {
        assert!(
            self.wire.buf.is_empty(),
            "unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&self.wire.buf)
        );
        wait_closed(&mut self.wire.stream, timeout)
    }

    /// The underlying buffered stream.
    pub fn wire(&mut self) -> &mut Wire {
        &mut self.wire
    }
}

/// What a `curl` run produced.
#[derive(Debug)]
pub struct Curl {
    /// How curl exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
}

impl Curl {
    /// The standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Parses the output of `curl -i` (heads included, interim 1xx heads skipped) as the final
    /// response. Panics if curl failed.
    pub fn response(&self) -> Response {
        assert!(
            self.status.success(),
            "curl failed ({}): {}",
            self.status,
            self.stderr
        );
        let mut rest: &[u8] = &self.stdout;
        loop {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or_else(|| panic!("no head in curl output: {}", self.stdout_text()));
            let head = super::message::parse_head(&rest[..end + 4]).expect("curl printed a head");
            let mut parts = head.first_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default().to_owned();
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {:?}", head.first_line));
            let raw_head = rest[..end + 4].to_vec();
            rest = &rest[end + 4..];
            if (100..200).contains(&status) {
                continue;
            }
            return Response {
                status,
                reason: parts.next().unwrap_or_default().to_owned(),
                version,
                headers: head.fields,
                body: rest.to_vec(),
                trailers: Vec::new(),
                chunked: false,
                raw_head,
            };
        }
    }
}

/// Runs `curl -sS --noproxy '*' --max-time 60 ARGS` to completion.
pub fn curl<I, S>(args: I) -> Curl
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = Command::new(crate::tool("curl"))
        .args(["-sS", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    Curl {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
