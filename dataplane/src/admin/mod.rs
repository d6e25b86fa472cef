//! The admin API: health, readiness, stats, config dump, and reloads.
//!
//! It runs on its own thread with its own (epoll) runtime, never on a worker core's runtime, so a
//! flood of data-plane traffic cannot starve it and a slow scrape cannot stall a worker. It binds
//! loopback (or a unix socket) by default, serves a small number of connections at once
//! (`admin.max_connections`), answers one request per connection, and refuses requests whose Host
//! is not a loopback name (DNS rebinding; see `auth`). `GET` never changes anything; the
//! endpoints that do need their own method and the bearer token (`mutate`).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /ready` | 200 when every worker runs the current config and the process is not draining |
//! | `GET /stats` | JSON: driver, workers and their generations, per-listener and per-cluster counters |
//! | `GET /stats/prometheus` | Prometheus text format |
//! | `GET /config_dump` | the active config as JSON, with its generation and each worker's |
//! | `GET /listeners` | listener names and the addresses actually bound |
//! | `GET /certs` | the node's SPIFFE identity (serial, ID, validity, seconds to expiry) and each trust bundle's CAs, as Envoy's `/certs`; empty lists when no `[identity]` is served |
//! | `GET /service_graph` | the service map over a recent window (`?window=SECONDS`, `?format=dot`): clients, services, and per edge request rate, error rate, p50/p99 latency and bytes (`graph`) |
//! | `GET /ui` | one self-contained HTML page drawing the service map, refreshing itself |
//! | `POST /reload` | reread the config file; `{"generation": N}` once every worker runs it, or 400 `{"errors": [...]}` |
//! | `PUT /config` | apply the TOML config in the body (the file is not changed); answers as `/reload` |
//! | `POST /drain` | stop accepting, finish open connections, exit (as SIGTERM) |

mod auth;
mod exposition;
mod graph;
pub mod istio;
mod mutate;
mod prometheus;
mod views;

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, UnixListener};
use tracing::{error, info, warn};

use crate::reload::ControlRequest;
use crate::shared::Shared;

/// Largest request head the admin API reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (a config for `PUT /config`).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    /// A TCP address (loopback by default).
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(std::path::PathBuf),
}

impl AdminAddress {
    /// Parses `IP:port` or `unix:/path` (already validated by config-schema).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix("unix:") {
            Some(path) => Ok(Self::Unix(path.into())),
            None => text
                .parse()
                .map(Self::Tcp)
                .map_err(|_| format!("invalid admin address {text:?}")),
        }
    }
}

impl std::fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddress::Tcp(addr) => write!(f, "{addr}"),
            AdminAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The running admin API. Keep it: dropping it stops the API.
#[derive(Debug)]
pub struct AdminServer {
    address: AdminAddress,
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// The address bound (useful when the config asked for port 0).
    pub fn address(&self) -> &AdminAddress {
        &self.address
    }

    /// Closes the listening socket and ends the admin thread (binary upgrade: the new process
    /// takes the address). Requests in progress are cut short.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("admin thread panicked");
        }
        info!(address = %self.address, "admin API closed");
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        // Dropping the sender ends the serve loop; the thread is not joined here, so that a
        // process exiting does not wait for slow admin clients.
        self.stop.take();
    }
}

/// What the admin connections share: state to read, and the way to the control thread.
struct Admin {
    shared: Arc<Shared>,
    control: flume::Sender<ControlRequest>,
    /// Samples of the counters for the service map's rates (admin thread only).
    graph: graph::History,
}

/// Binds the admin socket and serves it on a new thread. The bound address (useful when the config
/// asks for port 0) is also written to `address_file` when given.
pub fn start(
    address: &AdminAddress,
    max_connections: u32,
    shared: Arc<Shared>,
    control: flume::Sender<ControlRequest>,
    address_file: Option<&Path>,
) -> io::Result<AdminServer> {
    let (bound, socket) = match address {
        AdminAddress::Tcp(addr) => {
            let socket = std::net::TcpListener::bind(addr)?;
            socket.set_nonblocking(true)?;
            (AdminAddress::Tcp(socket.local_addr()?), Socket::Tcp(socket))
        }
        AdminAddress::Unix(path) => {
            // A stale socket file from a previous run (or the process this one replaces, which
            // has closed it) would make bind fail.
            let _ = std::fs::remove_file(path);
            let socket = std::os::unix::net::UnixListener::bind(path)?;
            socket.set_nonblocking(true)?;
            (address.clone(), Socket::Unix(socket))
        }
    };
    if let Some(file) = address_file {
        // Write then rename, so a reader never sees a half-written file.
        let partial = file.with_extension("partial");
        std::fs::write(&partial, bound.to_string())?;
        std::fs::rename(&partial, file)?;
    }
    info!(address = %bound, "admin API listening");
    let (stop, stopped) = flume::bounded::<()>(1);
    let admin = Admin {
        shared,
        control,
        graph: graph::History::new(),
    };
    let thread = std::thread::Builder::new()
        .name("ringmesh-admin".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match runtime {
                Ok(mut runtime) => {
                    runtime.block_on(serve(socket, max_connections, Rc::new(admin), stopped));
                }
                Err(e) => error!(error = %e, "admin runtime failed to start"),
            }
        })?;
    Ok(AdminServer {
        address: bound,
        stop: Some(stop),
        thread: Some(thread),
    })
}

enum Socket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

async fn serve(
    socket: Socket,
    max_connections: u32,
    admin: Rc<Admin>,
    stopped: flume::Receiver<()>,
) {
    let open = Rc::new(Cell::new(0u32));
    // The service map's sampler: a timer task on this runtime, ended with it.
    monoio::spawn(graph::sample(Rc::clone(&admin)));
    match socket {
        Socket::Tcp(std_socket) => {
            let Ok(socket) = TcpListener::from_std(std_socket) else {
                error!("admin socket could not be registered");
                return;
            };
            loop {
                monoio::select! {
                    _ = stopped.recv_async() => return,
                    accepted = socket.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let local = stream.local_addr().ok().map(|a| a.ip());
                            let client = Client { peer: peer.to_string(), local };
                            spawn_connection(stream, client, &open, max_connections, &admin);
                        }
                        Err(e) => accept_failed(e).await,
                    },
                }
            }
        }
        Socket::Unix(std_socket) => {
            let Ok(socket) = UnixListener::from_std(std_socket) else {
                error!("admin socket could not be registered");
                return;
            };
            loop {
                monoio::select! {
                    _ = stopped.recv_async() => return,
                    accepted = socket.accept() => match accepted {
                        Ok((stream, _)) => {
                            let client = Client { peer: "unix".into(), local: None };
                            spawn_connection(stream, client, &open, max_connections, &admin);
                        }
                        Err(e) => accept_failed(e).await,
                    },
                }
            }
        }
    }
}

async fn accept_failed(error: io::Error) {
    warn!(%error, "admin accept failed");
    monoio::time::sleep(Duration::from_millis(100)).await;
}

/// Where a connection comes from, for the Host check and the audit log.
struct Client {
    peer: String,
    local: Option<IpAddr>,
}

fn spawn_connection<S>(stream: S, client: Client, open: &Rc<Cell<u32>>, max: u32, admin: &Rc<Admin>)
where
    S: AsyncReadRent + AsyncWriteRent + 'static,
{
    let over_limit = open.get() >= max;
    open.set(open.get() + 1);
    let open = Rc::clone(open);
    let admin = Rc::clone(admin);
    monoio::spawn(async move {
        let mut stream = stream;
        let response = if over_limit {
            Response::text(503, "admin connection limit reached\n")
        } else {
            match monoio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream, client)).await {
                Ok(Ok(request)) => handle(&admin, &request).await,
                Ok(Err(response)) => response,
                Err(_) => Response::text(408, "request timeout\n"),
            }
        };
        let _ = stream.write_all(response.into_bytes()).await;
        let _ = stream.shutdown().await;
        open.set(open.get() - 1);
    });
}

/// An admin request: what the handlers need of it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    host: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
    /// The client, for the audit log.
    peer: String,
    /// The local address of a TCP connection, for the Host check.
    local: Option<IpAddr>,
}

impl Request {
    /// The path without its query.
    fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Reads one request: the head, then a body of `Content-Length` bytes (up to [`MAX_BODY`]).
async fn read_request<S>(stream: &mut S, client: Client) -> Result<Request, Response>
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let (mut request, head_len, length, expect_continue) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                if header("transfer-encoding").is_some() {
                    return Err(Response::text(411, "send the body with a Content-Length\n"));
                }
                let length = match header("content-length").map(|v| v.trim().parse::<usize>()) {
                    None => 0,
                    Some(Ok(n)) if n <= MAX_BODY => n,
                    Some(Ok(_)) => return Err(Response::text(413, "request body too large\n")),
                    Some(Err(_)) => return Err(Response::text(400, "bad content-length\n")),
                };
                let expect_continue =
                    header("expect").is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
                let request = Request {
                    method: parsed.method.unwrap_or_default().to_owned(),
                    path: parsed.path.unwrap_or_default().to_owned(),
                    host: header("host"),
                    authorization: header("authorization"),
                    body: Vec::new(),
                    peer: client.peer,
                    local: client.local,
                };
                break (request, head_len, length, expect_continue);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(Response::text(400, "malformed request\n")),
        }
        if buffer.len() >= MAX_HEAD {
            return Err(Response::text(431, "request head too large\n"));
        }
        read_some(stream, &mut buffer).await?;
    };
    if expect_continue && buffer.len() < head_len + length {
        let (result, _) = stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await;
        result.map_err(|_| Response::text(400, "incomplete request\n"))?;
    }
    while buffer.len() < head_len + length {
        read_some(stream, &mut buffer).await?;
    }
    request.body = buffer[head_len..head_len + length].to_vec();
    Ok(request)
}

async fn read_some<S: AsyncReadRent>(stream: &mut S, buffer: &mut Vec<u8>) -> Result<(), Response> {
    let chunk = Vec::with_capacity(64 * 1024);
    let (result, chunk) = stream.read(chunk).await;
    match result {
        Ok(0) | Err(_) => Err(Response::text(400, "incomplete request\n")),
        Ok(_) => {
            buffer.extend_from_slice(&chunk);
            Ok(())
        }
    }
}

async fn handle(admin: &Admin, request: &Request) -> Response {
    if !auth::host_allowed(request.host.as_deref(), request.local) {
        warn!(peer = %request.peer, host = ?request.host, "admin: refused a request for a non-loopback host name");
        return Response::text(403, "the admin API answers only to loopback host names\n");
    }
    let path = request.route();
    if mutate::is_mutating(path) {
        return mutate::handle(admin, request, path).await;
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(405, "method not allowed\n").with_header("allow", "GET, HEAD");
    }
    let shared = &admin.shared;
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/ready" if shared.is_ready() => Response::text(200, "ready\n"),
        "/ready" => Response::text(503, "not ready\n"),
        "/stats/prometheus" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            headers: Vec::new(),
            body: prometheus::render(shared),
        },
        "/stats" => Response::json(views::stats_json(shared)),
        "/config_dump" => Response::json(views::config_dump(shared)),
        "/listeners" => Response::json(views::listeners(shared)),
        "/certs" => Response::json(views::certs(shared)),
        "/service_graph" => {
            let query = request.path.split_once('?').map_or("", |(_, q)| q);
            match graph::Query::parse(query) {
                Ok(query) => {
                    let (content_type, body) = graph::render(admin, &query);
                    Response {
                        status: 200,
                        content_type,
                        headers: Vec::new(),
                        body,
                    }
                }
                Err(message) => Response::text(400, &format!("{message}\n")),
            }
        }
        "/ui" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            headers: vec![("content-security-policy", graph::UI_CSP.to_owned())],
            body: graph::UI_PAGE.to_owned(),
        },
        _ => Response::text(404, "not found\n"),
    }
}

/// An admin response.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn json(value: serde_json::Value) -> Self {
        Self::json_with_status(200, &value)
    }

    fn json_with_status(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
        body.push('\n');
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn into_bytes(self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            202 => "Accepted",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            411 => "Length Required",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_parse() {
        assert_eq!(
            AdminAddress::parse("127.0.0.1:15000"),
            Ok(AdminAddress::Tcp("127.0.0.1:15000".parse().expect("addr")))
        );
        assert_eq!(
            AdminAddress::parse("unix:/run/ringmesh.sock"),
            Ok(AdminAddress::Unix("/run/ringmesh.sock".into()))
        );
        assert!(AdminAddress::parse("localhost:15000").is_err());
    }

    #[test]
    fn certs_and_metrics_show_the_identity_once_a_store_is_set() {
        use crate::identity::{IdentityFiles, IdentityMetrics, Store};
        let shared = Shared::new(
            crate::snapshot::SnapshotStore::new(crate::snapshot::Snapshot::empty()),
            crate::driver::IoDriver::Epoll,
            &[None],
        );
        let empty = views::certs(&shared);
        assert_eq!(empty["identities"], serde_json::json!([]));
        assert!(!prometheus::render(&shared).contains("ringmesh_cert_expiry_seconds"));

        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::default();
        let id = "spiffe://cluster.local/ns/default/sa/node";
        leaf.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("ia5"))];
        leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let leaf = leaf.signed_by(&key, &ca).expect("leaf");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = IdentityFiles {
            trust_domain: "cluster.local".into(),
            cert: dir.path().join("svid.pem"),
            key: dir.path().join("key.pem"),
            ca_bundle: dir.path().join("bundle.pem"),
            trust_bundles: Vec::new(),
            service_accounts: Vec::new(),
        };
        std::fs::write(&files.cert, leaf.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        std::fs::write(&files.ca_bundle, ca.pem()).expect("write");
        let store = Store::open(files, std::sync::Arc::new(IdentityMetrics::new())).expect("open");
        shared.identity.store(Some(store));

        let certs = views::certs(&shared);
        assert_eq!(certs["identities"][0]["spiffe_id"], id);
        assert_eq!(certs["trust_bundles"][0]["trust_domain"], "cluster.local");
        let text = prometheus::render(&shared);
        assert!(
            text.contains(
                "ringmesh_cert_expiry_seconds{cert=\"identity\",trust_domain=\"cluster.local\""
            ),
            "{text}"
        );
        assert!(
            text.contains("ringmesh_tls_handshake_failures_total{reason=\"untrusted_root\"} 0\n")
        );
    }

    #[test]
    fn responses_carry_extra_headers() {
        let bytes = Response::text(405, "no\n")
            .with_header("allow", "POST")
            .into_bytes();
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nallow: POST\r\n"));
        assert!(text.ends_with("\r\n\r\nno\n"));
    }
}
