//! A small blocking HTTP/1.1 client for the admin API, over TCP or a unix socket.
//!
//! One request per connection (`Connection: close`), the answer read to the end: the admin API
//! answers every request that way, and a control tool sends a handful of requests, so simplicity
//! wins over connection reuse.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Largest response read; admin answers are small.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// A proxy's admin API address: `http://HOST:PORT`, `HOST:PORT`, or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Over TCP; `authority` is sent as the Host header.
    Tcp {
        /// `host:port` as given.
        authority: String,
    },
    /// Over a unix socket.
    Unix(PathBuf),
}

impl Target {
    /// Parses a target as given on the command line.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{text:?}: empty unix socket path"));
            }
            return Ok(Self::Unix(path.into()));
        }
        let rest = text.strip_prefix("http://").unwrap_or(text);
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(format!(
                "{text:?}: expected http://HOST:PORT, HOST:PORT or unix:/path"
            ));
        }
        Ok(Self::Tcp {
            authority: authority.to_owned(),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { authority } => write!(f, "http://{authority}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Body, sent with a Content-Length.
    pub body: Option<&'a [u8]>,
    /// Bearer token for mutating endpoints.
    pub token: Option<&'a str>,
    /// Connect, read and write timeout each.
    pub timeout: Duration,
}

/// Sends `request` to `target` and reads the whole response.
pub fn send(target: &Target, request: &Request<'_>) -> io::Result<Response> {
    let host = match target {
        Target::Tcp { authority } => authority.as_str(),
        Target::Unix(_) => "localhost",
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: ringmesh-control\r\n",
        request.method, request.path
    );
    if let Some(token) = request.token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = request.body {
        head.push_str(&format!(
            "Content-Type: application/toml\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(request.body.unwrap_or_default());

    let raw = match target {
        Target::Tcp { authority } => {
            let address = resolve(authority)?;
            let mut stream = TcpStream::connect_timeout(&address, request.timeout)?;
            stream.set_read_timeout(Some(request.timeout))?;
            stream.set_write_timeout(Some(request.timeout))?;
            exchange(&mut stream, &bytes)?
        }
        Target::Unix(path) => {
            let mut stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(request.timeout))?;
            stream.set_write_timeout(Some(request.timeout))?;
            exchange(&mut stream, &bytes)?
        }
    };
    parse_response(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn resolve(authority: &str) -> io::Result<SocketAddr> {
    authority.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{authority} has no address"),
        )
    })
}

fn exchange<S: Read + Write>(stream: &mut S, request: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    Ok(raw)
}

/// Parses a whole `Connection: close` response.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            if raw.is_empty() {
                "connection closed without a response".to_owned()
            } else {
                "response head incomplete".to_owned()
            }
        })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut body = &raw[end + 4..];
    let length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(length) = length {
        if body.len() < length {
            return Err(format!(
                "response body cut short: {} of {length} bytes",
                body.len()
            ));
        }
        body = &body[..length];
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("http://127.0.0.1:15000/"),
            Ok(Target::Tcp {
                authority: "127.0.0.1:15000".into()
            })
        );
        assert_eq!(
            Target::parse("localhost:15000"),
            Ok(Target::Tcp {
                authority: "localhost:15000".into()
            })
        );
        assert_eq!(
            Target::parse("unix:/run/ringmesh/admin.sock"),
            Ok(Target::Unix("/run/ringmesh/admin.sock".into()))
        );
        for bad in ["", "http://", "unix:", "127.0.0.1", "http://h:1/path"] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Target::parse("127.0.0.1:1").expect("valid").to_string(),
            "http://127.0.0.1:1"
        );
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}")
            .expect("valid");
        assert_eq!(r.status, 400);
        assert_eq!(r.body, "{}");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn a_request_goes_out_as_written_and_the_answer_comes_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"body") {
                let n = stream.read(&mut buf).expect("read");
                assert!(
                    n > 0,
                    "request cut short: {:?}",
                    String::from_utf8_lossy(&seen)
                );
                seen.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"generation\":7}")
                .expect("write");
            String::from_utf8(seen).expect("utf-8")
        });
        let target = Target::parse(&address.to_string()).expect("target");
        let response = send(
            &target,
            &Request {
                method: "PUT",
                path: "/config",
                body: Some(b"body"),
                token: Some("s3cret"),
                timeout: Duration::from_secs(10),
            },
        )
        .expect("send");
        assert_eq!(response.status, 200);
        assert_eq!(response.json().expect("json")["generation"], 7);
        let request = server.join().expect("server");
        assert!(request.starts_with("PUT /config HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("Host: {address}\r\n")));
        assert!(request.contains("Authorization: Bearer s3cret\r\n"));
        assert!(request.contains("Content-Length: 4\r\n"));
    }
}
