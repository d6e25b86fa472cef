//! The admin API from the outside: a minimal HTTP/1.1 client, `/stats` JSON access and a
//! Prometheus text-format parser.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Time allowed for one admin request, connect to last byte.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response, read to the end of the connection.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as text (admin bodies are UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Host: 127.0.0.1`.
pub fn get(address: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    request(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `raw` (a whole request) and reads the response until the server closes.
pub fn request(address: SocketAddr, raw: &str) -> io::Result<HttpResponse> {
    let stream = TcpStream::connect_timeout(&address, ADMIN_TIMEOUT)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    exchange(stream, raw)
}

/// [`request`] to an admin API on a Unix socket (`[admin] address = "unix:PATH"`), the way to
/// reach a proxy in another network namespace.
pub fn request_unix(path: &std::path::Path, raw: &str) -> io::Result<HttpResponse> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    exchange(stream, raw)
}

fn exchange(mut stream: impl Read + Write, raw: &str) -> io::Result<HttpResponse> {
    stream.write_all(raw.as_bytes())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse_response(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn parse_response(bytes: &[u8]) -> Result<HttpResponse, String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let response = HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    };
    if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if length != response.body.len() {
            return Err(format!(
                "content-length {length} but {} body bytes",
                response.body.len()
            ));
        }
    }
    Ok(response)
}

/// The `/stats` JSON document, with accessors that fail with a clear message when the document
/// lacks what a test asks for.
#[derive(Debug, Clone)]
pub struct Stats(pub Value);

/// One worker as `/stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker index (its slot in `per_worker` arrays).
    pub id: usize,
    /// The core it is pinned to, if pinned.
    pub core: Option<usize>,
    /// The config generation it has applied.
    pub generation: u64,
}

impl Stats {
    /// Parses a `/stats` body.
    pub fn parse(body: &str) -> Self {
        Self(
            serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("/stats is not JSON ({e}): {body}")),
        )
    }

    /// `io_uring` or `epoll`.
    pub fn driver(&self) -> &str {
        self.0["driver"]
            .as_str()
            .expect("/stats has a driver string")
    }

    /// The workers, in id order.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.0["workers"]
            .as_array()
            .expect("/stats has a workers array")
            .iter()
            .map(|w| WorkerInfo {
                id: as_u64(&w["id"], "workers[].id") as usize,
                core: w["core"].as_u64().map(|c| c as usize),
                generation: as_u64(&w["generation"], "workers[].generation"),
            })
            .collect()
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> &Value {
        find_named(&self.0["listeners"], name, "listener", &self.0)
    }

    /// A listener counter summed over workers (`accepted`, `active`, `closed`, `rejected`,
    /// `accept_errors`, `idle_timeouts`, `bytes_received`, `bytes_sent`).
    pub fn listener_counter(&self, name: &str, counter: &str) -> u64 {
        as_u64(&self.listener(name)[counter], counter)
    }

    /// A per-worker listener counter (`accepted`, `active`, `closed`, `rejected`), by worker id.
    pub fn per_worker(&self, name: &str, counter: &str) -> Vec<u64> {
        self.listener(name)["per_worker"]
            .as_array()
            .expect("listener has per_worker")
            .iter()
            .map(|w| as_u64(&w[counter], counter))
            .collect()
    }

    /// A cluster counter (`upstream_connections`, `upstream_connect_failures`,
    /// `upstream_connect_timeouts`, `no_endpoint`).
    pub fn cluster_counter(&self, name: &str, counter: &str) -> u64 {
        as_u64(
            &find_named(&self.0["clusters"], name, "cluster", &self.0)[counter],
            counter,
        )
    }
}

fn find_named<'a>(list: &'a Value, name: &str, kind: &str, whole: &Value) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|item| item["name"] == name))
        .unwrap_or_else(|| panic!("/stats has no {kind} named {name:?}: {whole:#}"))
}

fn as_u64(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("/stats field {what} is not a number: {value}"))
}

/// Samples parsed from the Prometheus text exposition format (version 0.0.4).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every sample, in the order exposed.
    pub samples: Vec<Sample>,
}

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Metrics {
    /// Parses exposition text; every non-comment line must be a valid sample.
    pub fn parse(text: &str) -> Result<Self, String> {
        let samples = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|(i, line)| {
                parse_sample(line).map_err(|e| format!("line {}: {e}: {line:?}", i + 1))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { samples })
    }

    /// Samples of metric `name` whose labels include every pair in `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The value of the one sample of `name` with `labels`; panics when there is none or several.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        match found.as_slice() {
            [one] => one.value,
            _ => panic!(
                "expected exactly one sample {name}{labels:?}, found {}: {found:?}",
                found.len()
            ),
        }
    }

    /// The sum over the samples of `name` with `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = rest.split_once("=\"").ok_or("label without =\"")?;
            let (value, after_value) = unescape_label(after_key)?;
            labels.insert(key.trim().to_owned(), value);
            rest = after_value;
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    // An optional timestamp may follow; nothing else may.
    if fields.nth(1).is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads a label value up to its closing quote; returns it unescaped and the text after the quote.
fn unescape_label(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                other => return Err(format!("bad escape {other:?}")),
            },
            c => value.push(c),
        }
    }
    Err("unterminated label value".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_labels_and_escapes() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\n\
                    a_total{listener=\"x\",worker=\"0\"} 3\n\
                    a_total{listener=\"x\",worker=\"1\"} 4 1700000000\n\
                    b{v=\"q\\\"uote\\\\back\\nline\"} 1.5\n\
                    c 7\n";
        let m = Metrics::parse(text).expect("valid");
        assert_eq!(m.samples.len(), 4);
        assert_eq!(m.value("a_total", &[("worker", "1")]), 4.0);
        assert_eq!(m.sum("a_total", &[("listener", "x")]), 7.0);
        assert_eq!(m.value("b", &[("v", "q\"uote\\back\nline")]), 1.5);
        assert_eq!(m.value("c", &[]), 7.0);
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "a{x=\"1\" 2",
            "a{x=1} 2",
            "a 1 2 3",
            "a notanumber",
            "a{x=\"\\q\"} 1",
            "9-bad 1",
        ] {
            assert!(Metrics::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    #[should_panic(expected = "expected exactly one sample")]
    fn value_refuses_ambiguous_queries() {
        let m = Metrics::parse("a{w=\"0\"} 1\na{w=\"1\"} 2\n").expect("valid");
        m.value("a", &[]);
    }

    #[test]
    fn responses_are_parsed_and_checked_against_content_length() {
        let ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nok\n")
            .expect("valid");
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("x-a"), Some("b"));
        assert_eq!(ok.body, "ok\n");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok\n").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
