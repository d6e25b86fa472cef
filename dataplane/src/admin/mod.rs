//! The admin API: health, readiness, stats, config dump.
//!
//! It runs on its own thread with its own (epoll) runtime, never on a worker core's runtime, so a
//! flood of data-plane traffic cannot starve it and a slow scrape cannot stall a worker. It binds
//! loopback by default, serves a small number of connections at once, answers one request per
//! connection, and refuses requests whose Host is not a loopback name (DNS rebinding).
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /ready` | 200 when every worker runs the current config and the process is not draining |
//! | `GET /stats` | JSON: driver, workers and their generations, per-listener and per-cluster counters |
//! | `GET /stats/prometheus` | Prometheus text format |
//! | `GET /config_dump` | the active config as JSON, with its generation |
//! | `GET /listeners` | listener names and the addresses actually bound |

mod prometheus;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, UnixListener};
use serde_json::json;
use tracing::{error, info, warn};

use crate::shared::Shared;

/// Largest request head the admin API reads.
const MAX_HEAD: usize = 16 * 1024;
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

/// Binds the admin socket and serves it on a new thread. Returns the bound address (useful when
/// the config asks for port 0), which is also written to `address_file` when given.
pub fn start(
    address: &AdminAddress,
    max_connections: u32,
    shared: Arc<Shared>,
    address_file: Option<&Path>,
) -> io::Result<AdminAddress> {
    let (bound, socket) = match address {
        AdminAddress::Tcp(addr) => {
            let socket = std::net::TcpListener::bind(addr)?;
            socket.set_nonblocking(true)?;
            (AdminAddress::Tcp(socket.local_addr()?), Socket::Tcp(socket))
        }
        AdminAddress::Unix(path) => {
            // A stale socket file from a previous run would make bind fail.
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
    std::thread::Builder::new()
        .name("ringmesh-admin".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match runtime {
                Ok(mut runtime) => runtime.block_on(serve(socket, max_connections, shared)),
                Err(e) => error!(error = %e, "admin runtime failed to start"),
            }
        })?;
    Ok(bound)
}

enum Socket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

async fn serve(socket: Socket, max_connections: u32, shared: Arc<Shared>) {
    let open = Rc::new(Cell::new(0u32));
    match socket {
        Socket::Tcp(std_socket) => {
            let Ok(socket) = TcpListener::from_std(std_socket) else {
                error!("admin socket could not be registered");
                return;
            };
            loop {
                match socket.accept().await {
                    Ok((stream, _)) => spawn_connection(stream, &open, max_connections, &shared),
                    Err(e) => accept_failed(e).await,
                }
            }
        }
        Socket::Unix(std_socket) => {
            let Ok(socket) = UnixListener::from_std(std_socket) else {
                error!("admin socket could not be registered");
                return;
            };
            loop {
                match socket.accept().await {
                    Ok((stream, _)) => spawn_connection(stream, &open, max_connections, &shared),
                    Err(e) => accept_failed(e).await,
                }
            }
        }
    }
}

async fn accept_failed(error: io::Error) {
    warn!(%error, "admin accept failed");
    monoio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_connection<S>(stream: S, open: &Rc<Cell<u32>>, max: u32, shared: &Arc<Shared>)
where
    S: AsyncReadRent + AsyncWriteRent + 'static,
{
    let over_limit = open.get() >= max;
    open.set(open.get() + 1);
    let open = Rc::clone(open);
    let shared = Arc::clone(shared);
    monoio::spawn(async move {
        let mut stream = stream;
        let response = if over_limit {
            Response::text(503, "admin connection limit reached\n")
        } else {
            match monoio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
                Ok(Ok(request)) => handle(&shared, &request),
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
}

/// Reads one request head; a body is not needed by any endpoint yet.
async fn read_request<S: AsyncReadRent>(stream: &mut S) -> Result<Request, Response> {
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => {
                let host = parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                return Ok(Request {
                    method: parsed.method.unwrap_or_default().to_owned(),
                    path: parsed.path.unwrap_or_default().to_owned(),
                    host,
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(Response::text(400, "malformed request\n")),
        }
        if buffer.len() >= MAX_HEAD {
            return Err(Response::text(431, "request head too large\n"));
        }
        let chunk = Vec::with_capacity(4096);
        let (result, chunk) = stream.read(chunk).await;
        match result {
            Ok(0) | Err(_) => return Err(Response::text(400, "incomplete request\n")),
            Ok(_) => buffer.extend_from_slice(&chunk),
        }
    }
}

fn handle(shared: &Shared, request: &Request) -> Response {
    if !host_is_loopback(request.host.as_deref()) {
        return Response::text(403, "the admin API answers only to loopback host names\n");
    }
    let path = request.path.split('?').next().unwrap_or_default();
    if request.method != "GET" && request.method != "HEAD" {
        return Response::text(405, "method not allowed\n");
    }
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/ready" if shared.is_ready() => Response::text(200, "ready\n"),
        "/ready" => Response::text(503, "not ready\n"),
        "/stats/prometheus" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: prometheus::render(shared),
        },
        "/stats" => Response::json(stats_json(shared)),
        "/config_dump" => {
            let snapshot = shared.store.load();
            let mut config = serde_json::to_value(&*snapshot.spec).unwrap_or_default();
            if let Some(token) = config.pointer_mut("/admin/token")
                && !token.is_null()
            {
                *token = json!("<redacted>");
            }
            Response::json(json!({ "generation": snapshot.generation, "config": config }))
        }
        "/listeners" => {
            let snapshot = shared.store.load();
            let listeners: Vec<_> = snapshot
                .listeners
                .iter()
                .map(|l| {
                    json!({
                        "name": &*l.name,
                        "address": l.address.to_string(),
                        "local_address": l.local_addr.to_string(),
                        "protocol": l.protocol,
                    })
                })
                .collect();
            Response::json(json!(listeners))
        }
        _ => Response::text(404, "not found\n"),
    }
}

/// DNS rebinding defence: a browser tricked into calling the admin API sends the attacker's host
/// name, never a loopback one.
fn host_is_loopback(host: Option<&str>) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 clients and unix-socket tools may omit Host; they are not browsers.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn stats_json(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.store.load();
    let workers: Vec<_> = shared
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| {
            let open: u64 = snapshot
                .listeners
                .iter()
                .map(|l| l.stats.workers.slot(id).active())
                .sum();
            json!({
                "id": id,
                "core": w.core,
                "generation": w.generation.load(Ordering::Acquire),
                "open_connections": open,
            })
        })
        .collect();
    let listeners: Vec<_> = snapshot
        .listeners
        .iter()
        .map(|l| {
            let per_worker: Vec<_> = l
                .stats
                .workers
                .iter()
                .map(|c| {
                    json!({
                        "accepted": c.accepted.get(),
                        "active": c.active(),
                        "closed": c.closed.get(),
                        "rejected": c.rejected.get(),
                    })
                })
                .collect();
            let w = &l.stats.workers;
            json!({
                "name": &*l.name,
                "local_address": l.local_addr.to_string(),
                "accepted": w.sum(|c| c.accepted.get()),
                "active": w.sum(|c| c.active()),
                "closed": w.sum(|c| c.closed.get()),
                "rejected": w.sum(|c| c.rejected.get()),
                "accept_errors": w.sum(|c| c.accept_errors.get()),
                "idle_timeouts": w.sum(|c| c.idle_timeouts.get()),
                "bytes_received": w.sum(|c| c.bytes_received.get()),
                "bytes_sent": w.sum(|c| c.bytes_sent.get()),
                "http2": {
                    "streams": w.sum(|c| c.h2_streams.get()),
                    "protocol_errors": w.sum(|c| c.h2_protocol_errors.get()),
                    "rapid_reset": w.sum(|c| c.h2_abuse_rapid_reset.get()),
                    "control_flood": w.sum(|c| c.h2_abuse_control_flood.get()),
                    "continuation_flood": w.sum(|c| c.h2_abuse_continuation_flood.get()),
                    "empty_frames": w.sum(|c| c.h2_abuse_empty_frames.get()),
                },
                "per_worker": per_worker,
            })
        })
        .collect();
    let clusters: Vec<_> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let s = &c.stats;
            json!({
                "name": &*c.name,
                "endpoints": c.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
                "upstream_connections": s.sum(|x| x.connections.get()),
                "upstream_connect_failures": s.sum(|x| x.connect_failures.get()),
                "upstream_connect_timeouts": s.sum(|x| x.connect_timeouts.get()),
                "no_endpoint": s.sum(|x| x.no_endpoint.get()),
            })
        })
        .collect();
    let uptime = shared
        .started_at
        .elapsed()
        .map(|d| d.as_secs())
        .unwrap_or_default();
    json!({
        "driver": shared.driver.name(),
        "driver_detail": shared.driver.to_string(),
        "generation": snapshot.generation,
        "reloads": shared.reloads.load(Ordering::Relaxed),
        "reload_failures": shared.reload_failures.load(Ordering::Relaxed),
        "draining": shared.draining.load(Ordering::Acquire),
        "uptime_seconds": uptime,
        "workers": workers,
        "listeners": listeners,
        "clusters": clusters,
    })
}

/// An admin response.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
        }
    }

    fn json(value: serde_json::Value) -> Self {
        let mut body = serde_json::to_string_pretty(&value).unwrap_or_default();
        body.push('\n');
        Self {
            status: 200,
            content_type: "application/json",
            body,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut bytes = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted_and_others_refused() {
        for ok in [
            None,
            Some("localhost"),
            Some("localhost:15000"),
            Some("127.0.0.1:15000"),
            Some("[::1]:15000"),
            Some("127.0.0.2"),
        ] {
            assert!(host_is_loopback(ok), "{ok:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:15000"),
            Some("10.0.0.1:15000"),
            Some("[2001:db8::1]:80"),
        ] {
            assert!(!host_is_loopback(bad), "{bad:?}");
        }
    }

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
}
