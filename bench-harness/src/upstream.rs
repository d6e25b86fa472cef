//! The built-in upstream: HTTP/1.1, h2c and TCP echo servers on monoio.
//!
//! Every target in a comparison forwards to this one server, so its speed is the same for all of
//! them and results do not depend on another server's tuning. It is deliberately minimal: no
//! routing, no headers beyond Content-Length, one write per batch of responses, buffers reused per
//! connection. The response body size is the server's default, or `N` for a `/payload/N` path
//! (capped at [`MAX_PAYLOAD`]), so one upstream serves runs of any payload size.
//!
//! For the `tls` and `mtls` scenarios it also serves HTTPS/1.1 ([`UpstreamTls`]): the same
//! responses over rustls, on one listener without and one with client certificates required, so
//! that `direct` has a TLS baseline and the generator's headroom can be checked with its TLS
//! client. The proxies still forward to the plaintext HTTP/1.1 listener.
//!
//! Each thread runs its own runtime, optionally pinned, and accepts on a duplicate of the same
//! listening socket.
//!
//! For the `flapping` benchmark the HTTP/1.1 listener can *flap* ([`Flap`]): during the "down"
//! part of a fixed cycle it answers every request with a 503, or closes the connection without
//! answering (a reset), and serves normally otherwise. The cycle is anchored to the Unix epoch of
//! the wall clock, not to the process start, so that several processes (the upstream and the load
//! generator, which aligns its measurement window to the cycle) agree on the phase without talking
//! to each other.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Socket, Type};

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::{TcpListener, TcpStream};
use serde::{Deserialize, Serialize};

use crate::http1::{self, BodyReader};
use crate::runtime::{self, Io};
use crate::tls::{self, Conn, TlsConn};

/// Largest response body the upstream will produce for a `/payload/N` request.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Largest request head; longer ones close the connection.
const MAX_HEAD: usize = 64 << 10;
/// Read buffer per connection.
const READ_BUF: usize = 64 << 10;

/// What to serve, and where.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// HTTP/1.1 listener address (port 0 for any).
    pub http: Option<SocketAddr>,
    /// h2c (prior knowledge) listener address.
    pub h2: Option<SocketAddr>,
    /// TCP echo listener address.
    pub echo: Option<SocketAddr>,
    /// Server threads.
    pub threads: usize,
    /// Cores to pin the threads to, round robin; empty = unpinned.
    pub cores: Vec<usize>,
    /// I/O driver.
    pub io: Io,
    /// Response body size when the path does not ask for one.
    pub payload: usize,
    /// Make the HTTP/1.1 listener flap (h2c and echo never do).
    pub flap: Option<Flap>,
    /// HTTPS/1.1 listener address (needs `tls`).
    pub https: Option<SocketAddr>,
    /// HTTPS/1.1 listener that requires a client certificate (needs `tls`).
    pub https_mtls: Option<SocketAddr>,
    /// Certificates of the HTTPS listeners.
    pub tls: Option<UpstreamTls>,
}

/// PEM files of the HTTPS listeners.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to (the `https_mtls` listener).
    pub client_ca: PathBuf,
}

/// What a flapping upstream does to a request during a down phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FlapMode {
    /// Answer `503 Service Unavailable` (the connection stays open).
    #[value(name = "503")]
    #[serde(rename = "503")]
    Status503,
    /// Close the connection without answering; the listener has `SO_LINGER` 0 (accepted sockets
    /// inherit it), so the close is a TCP reset.
    Reset,
}

impl FlapMode {
    /// Name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FlapMode::Status503 => "503",
            FlapMode::Reset => "reset",
        }
    }
}

/// A fixed flapping cycle: down during `[k·period, k·period + down)` after the Unix epoch, for
/// every whole `k`, up otherwise. Deterministic: the phase is a function of the wall clock only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flap {
    /// Length of one cycle.
    pub period: Duration,
    /// The down part at the start of each cycle (`< period`).
    pub down: Duration,
    /// What happens to requests while down.
    pub mode: FlapMode,
}

impl Flap {
    /// Whether the upstream is down `since_epoch` after the Unix epoch.
    pub fn is_down_at(&self, since_epoch: Duration) -> bool {
        let period = self.period.as_nanos();
        period > 0 && since_epoch.as_nanos() % period < self.down.as_nanos()
    }

    /// Whether the upstream is down now.
    pub fn is_down(&self) -> bool {
        // A clock before 1970 is not a flapping phase: serve.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|t| self.is_down_at(t))
    }

    /// Checks `0 < down < period`.
    pub fn validate(&self) -> Result<(), String> {
        if self.down.is_zero() || self.down >= self.period {
            return Err(format!(
                "flap down time ({:?}) must be above 0 and below the period ({:?})",
                self.down, self.period
            ));
        }
        Ok(())
    }
}

/// The answer of a flapping upstream during a down phase.
const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";

/// The addresses actually bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamAddrs {
    /// HTTP/1.1.
    pub http: Option<SocketAddr>,
    /// h2c.
    pub h2: Option<SocketAddr>,
    /// TCP echo.
    pub echo: Option<SocketAddr>,
    /// HTTPS/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<SocketAddr>,
    /// HTTPS/1.1 with client certificates required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_mtls: Option<SocketAddr>,
}

/// Accept queue of each listener. A proxy that fans HTTP/2 streams out over HTTP/1.1 opens hundreds
/// of upstream connections at once; std's default backlog (128) drops their SYNs, and a dropped SYN
/// costs a 1 s retransmission, which measures the upstream, not the proxy.
const BACKLOG: i32 = 4096;

/// Binds the listeners and starts the server threads; they serve until the process exits.
pub fn start(spec: &UpstreamSpec) -> io::Result<UpstreamAddrs> {
    if let Some(flap) = &spec.flap {
        flap.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    let flap_resets = spec.flap.is_some_and(|f| f.mode == FlapMode::Reset);
    let bind = |addr: Option<SocketAddr>, resets: bool| -> io::Result<Option<StdListener>> {
        addr.map(|a| {
            let socket = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            if resets {
                // Inherited by accepted sockets: closing one mid-request sends a reset.
                socket.set_linger(Some(Duration::ZERO))?;
            }
            socket.bind(&a.into())?;
            socket.listen(BACKLOG)?;
            socket.set_nonblocking(true)?;
            Ok(StdListener::from(socket))
        })
        .transpose()
    };
    let http = bind(spec.http, flap_resets)?;
    let h2 = bind(spec.h2, false)?;
    let echo = bind(spec.echo, false)?;
    let https = bind(spec.https, false)?;
    let https_mtls = bind(spec.https_mtls, false)?;
    let invalid = |e: anyhow::Error| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:#}"));
    let server_config = |listener: Option<SocketAddr>, mtls: bool| {
        let Some(_) = listener else {
            return Ok(None);
        };
        let Some(t) = &spec.tls else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an HTTPS listener needs a certificate and key",
            ));
        };
        let ca = mtls.then_some(t.client_ca.as_path());
        tls::server_config(&t.cert, &t.key, ca)
            .map(Some)
            .map_err(invalid)
    };
    let tls_config = server_config(spec.https, false)?;
    let mtls_config = server_config(spec.https_mtls, true)?;
    let addrs = UpstreamAddrs {
        http: http.as_ref().map(StdListener::local_addr).transpose()?,
        h2: h2.as_ref().map(StdListener::local_addr).transpose()?,
        echo: echo.as_ref().map(StdListener::local_addr).transpose()?,
        https: https.as_ref().map(StdListener::local_addr).transpose()?,
        https_mtls: https_mtls
            .as_ref()
            .map(StdListener::local_addr)
            .transpose()?,
    };
    for t in 0..spec.threads.max(1) {
        let clone = |l: &Option<StdListener>| l.as_ref().map(StdListener::try_clone).transpose();
        let (http, h2, echo) = (clone(&http)?, clone(&h2)?, clone(&echo)?);
        let (https, https_mtls) = (clone(&https)?, clone(&https_mtls)?);
        let (tls_config, mtls_config) = (tls_config.clone(), mtls_config.clone());
        let core = (!spec.cores.is_empty()).then(|| spec.cores[t % spec.cores.len()]);
        let (io, payload, flap) = (spec.io, spec.payload, spec.flap);
        std::thread::Builder::new()
            .name(format!("upstream-{t}"))
            .spawn(move || {
                if let Some(core) = core {
                    runtime::pin_current_thread(core);
                }
                let served = runtime::block_on(io, async move {
                    let responses = Rc::new(Responses::new(payload));
                    if let Some(l) = http {
                        let flapping = Rc::new(Responses {
                            flap,
                            ..Responses::new(payload)
                        });
                        monoio::spawn(accept_loop(l, flapping, Protocol::Http(None)));
                    }
                    if let Some(l) = h2 {
                        monoio::spawn(accept_loop(l, responses.clone(), Protocol::H2));
                    }
                    if let Some(l) = echo {
                        monoio::spawn(accept_loop(l, responses.clone(), Protocol::Echo));
                    }
                    for (l, config) in [(https, tls_config), (https_mtls, mtls_config)] {
                        if let (Some(l), Some(config)) = (l, config) {
                            let protocol = Protocol::Http(Some(config));
                            monoio::spawn(accept_loop(l, responses.clone(), protocol));
                        }
                    }
                    std::future::pending::<()>().await;
                });
                if let Err(e) = served {
                    eprintln!("upstream thread {t}: runtime failed: {e}");
                }
            })?;
    }
    Ok(addrs)
}

#[derive(Debug, Clone)]
enum Protocol {
    /// HTTP/1.1, over TLS with this config.
    Http(Option<Arc<rustls::ServerConfig>>),
    H2,
    Echo,
}

async fn accept_loop(listener: StdListener, responses: Rc<Responses>, protocol: Protocol) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: cannot use listener: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let responses = responses.clone();
                let protocol = protocol.clone();
                monoio::spawn(async move {
                    // Connection errors (resets by a proxy under test) end that connection only.
                    let _ = match protocol {
                        Protocol::Http(None) => serve_http(Conn::Plain(stream), &responses).await,
                        Protocol::Http(Some(config)) => match TlsConn::accept(stream, config).await
                        {
                            Ok(tls) => serve_http(Conn::Tls(Box::new(tls)), &responses).await,
                            Err(e) => Err(e),
                        },
                        Protocol::H2 => serve_h2(stream, responses).await,
                        Protocol::Echo => serve_echo(stream).await,
                    };
                });
            }
            Err(e) => {
                // Out of descriptors: the connection stays queued; pause instead of spinning.
                eprintln!("upstream: accept failed: {e}");
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Prebuilt responses per body size, per thread.
#[derive(Debug)]
struct Responses {
    default: usize,
    /// The flapping cycle of this listener, if it flaps.
    flap: Option<Flap>,
    http: RefCell<HashMap<usize, Rc<[u8]>>>,
    bodies: RefCell<HashMap<usize, Bytes>>,
}

impl Responses {
    fn new(default: usize) -> Self {
        Self {
            default: default.min(MAX_PAYLOAD),
            flap: None,
            http: RefCell::new(HashMap::new()),
            bodies: RefCell::new(HashMap::new()),
        }
    }

    fn size(&self, asked: Option<usize>) -> usize {
        asked.unwrap_or(self.default).min(MAX_PAYLOAD)
    }

    /// The whole HTTP/1.1 response (head and body) for a body of `size` bytes.
    fn http(&self, size: usize) -> Rc<[u8]> {
        self.http
            .borrow_mut()
            .entry(size)
            .or_insert_with(|| {
                let mut r = http1::response_head(size).into_bytes();
                r.resize(r.len() + size, b'x');
                r.into()
            })
            .clone()
    }

    fn body(&self, size: usize) -> Bytes {
        self.bodies
            .borrow_mut()
            .entry(size)
            .or_insert_with(|| Bytes::from(vec![b'x'; size]))
            .clone()
    }
}

/// Serves HTTP/1.1 keep-alive requests, pipelined or not, until the client closes.
async fn serve_http(mut stream: Conn, responses: &Responses) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut out: Vec<u8> = Vec::with_capacity(READ_BUF);
    // The request whose body is still arriving: its body reader, response size, close flag.
    let mut pending: Option<(BodyReader, usize, bool)> = None;
    loop {
        let mut used = 0;
        let mut close = false;
        loop {
            if let Some((reader, size, closing)) = &mut pending {
                used += reader
                    .feed(&buf[used..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if !reader.is_done() {
                    break;
                }
                // Judged when the request is complete, i.e. when it would be answered.
                match responses.flap.filter(Flap::is_down).map(|f| f.mode) {
                    None => out.extend_from_slice(&responses.http(*size)),
                    Some(FlapMode::Status503) => out.extend_from_slice(UNAVAILABLE),
                    Some(FlapMode::Reset) => {
                        // Answers already batched go out; this request gets none.
                        if !out.is_empty() {
                            let (res, _) = stream.write_all(out).await;
                            res?;
                        }
                        return Ok(());
                    }
                }
                close = *closing;
                pending = None;
                if close {
                    break;
                }
            }
            if used == buf.len() {
                break;
            }
            match http1::parse_request(&buf[used..]) {
                Ok(Some(head)) => {
                    used += head.len;
                    pending = Some((
                        BodyReader::new(head.framing),
                        responses.size(head.payload),
                        head.close,
                    ));
                }
                Ok(None) if buf.len() - used > MAX_HEAD => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
                }
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        if !out.is_empty() {
            let (res, back) = stream.write_all(out).await;
            out = back;
            out.clear();
            res?;
        }
        if close {
            return Ok(());
        }
        buf.drain(..used);
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_BUF);
        }
        let (res, back) = stream.read_append(buf).await;
        buf = back;
        if res? == 0 {
            return Ok(());
        }
    }
}

/// Serves h2c: one task per stream (awaiting a body inside the accept loop would deadlock).
async fn serve_h2(stream: TcpStream, responses: Rc<Responses>) -> io::Result<()> {
    let io = stream.into_poll_io()?;
    let mut conn = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(1024)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(io::Error::other)?;
    while let Some(accepted) = conn.accept().await {
        let (request, respond) = accepted.map_err(io::Error::other)?;
        let responses = responses.clone();
        monoio::spawn(async move {
            let _ = answer_h2(request, respond, &responses).await;
        });
    }
    Ok(())
}

async fn answer_h2(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    responses: &Responses,
) -> Result<(), h2::Error> {
    let size = responses.size(http1::payload_from_path(request.uri().path()));
    let mut body = request.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let mut head = http::Response::new(());
    head.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(size));
    let mut send = respond.send_response(head, size == 0)?;
    if size > 0 {
        send.send_data(responses.body(size), true)?;
    }
    Ok(())
}

/// Echoes bytes back until the client closes.
async fn serve_echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        let (res, back) = stream.read(buf).await;
        buf = back;
        if res? == 0 {
            return Ok(());
        }
        let (res, back) = stream.write_all(buf).await;
        buf = back;
        res?;
    }
}
