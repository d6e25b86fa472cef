//! Debian's nginx as a real upstream: its own instance with a generated config in a temporary
//! directory, logging every request with the serial number of the connection it came on.
//!
//! nginx cannot listen on port 0 portably, so a free port is found by binding one and closing
//! it just before nginx starts; if another process takes it in between, nginx fails to bind and
//! is started again on another port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::{PATIENCE, wait_until};

/// Attempts at finding a port nobody else takes first.
const START_ATTEMPTS: usize = 5;

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    address: SocketAddr,
}

/// One line of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxLogLine {
    /// nginx's serial number of the connection.
    pub connection: u64,
    /// Requests served on that connection so far, this one included.
    pub connection_requests: u64,
    /// Method.
    pub method: String,
    /// Target as received.
    pub uri: String,
    /// Status sent.
    pub status: u16,
}

impl Nginx {
    /// Starts nginx with `locations` (text inside its `server { }` block) and `root` as its
    /// document root (a directory inside the instance's own directory, created empty and
    /// filled by `fill_root` before the start).
    pub fn start(locations: &str, fill_root: impl Fn(&Path)) -> Self {
        Self::start_inner(None, locations, fill_root)
    }

    /// Like [`Nginx::start`], serving HTTPS only, with the PEM certificate chain and key at
    /// `cert` and `key` (TLS 1.2 and 1.3).
    pub fn start_tls(cert: &Path, key: &Path, locations: &str, fill_root: impl Fn(&Path)) -> Self {
        Self::start_inner(Some((cert, key, false)), locations, fill_root)
    }

    /// Like [`Nginx::start_tls`], offering HTTP/2 by ALPN as well.
    pub fn start_tls_h2(
        cert: &Path,
        key: &Path,
        locations: &str,
        fill_root: impl Fn(&Path),
    ) -> Self {
        Self::start_inner(Some((cert, key, true)), locations, fill_root)
    }

    fn start_inner(
        tls: Option<(&Path, &Path, bool)>,
        locations: &str,
        fill_root: impl Fn(&Path),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-nginx-")
            .tempdir()
            .expect("create nginx's directory");
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root).expect("create the document root");
        fill_root(&root);
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            write_config(dir.path(), address, tls, locations);
            let _ = std::fs::remove_file(dir.path().join("error.log"));
            let mut child = Command::new(crate::tool("nginx"))
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let started = wait_until(PATIENCE, "nginx to listen or exit", || {
                if let Some(status) = child.try_wait().expect("try_wait nginx") {
                    return Ok(Err(status));
                }
                match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                    Ok(_) => Ok(Ok(())),
                    Err(e) => Err(e.to_string()),
                }
            });
            match started {
                Ok(()) => {
                    return Self {
                        child,
                        dir,
                        address,
                    };
                }
                Err(status) => {
                    last_error = format!(
                        "nginx exited with {status}: {}",
                        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                    );
                    if !last_error.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("could not start nginx: {last_error}");
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its directory (config, logs, document root in `www/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The access log so far, parsed.
    pub fn access_log(&self) -> Vec<NginxLogLine> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let number = |i: usize| -> u64 {
                    fields
                        .get(i)
                        .and_then(|f| f.parse().ok())
                        .unwrap_or_else(|| panic!("bad nginx log line {line:?}"))
                };
                NginxLogLine {
                    connection: number(0),
                    connection_requests: number(1),
                    method: fields.get(2).copied().unwrap_or_default().to_owned(),
                    uri: fields.get(3).copied().unwrap_or_default().to_owned(),
                    status: number(4) as u16,
                }
            })
            .collect()
    }

    /// Waits until the access log holds at least `n` lines; returns them.
    pub fn wait_for_log(&self, n: usize) -> Vec<NginxLogLine> {
        wait_until(PATIENCE, format!("{n} lines in nginx's access log"), || {
            let lines = self.access_log();
            if lines.len() >= n {
                Ok(lines)
            } else {
                Err(format!("{} lines", lines.len()))
            }
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "\n===== nginx error log =====\n{}===== end of nginx error log =====",
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            );
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    listener.local_addr().expect("probe address").port()
}

fn write_config(
    dir: &Path,
    address: SocketAddr,
    tls: Option<(&Path, &Path, bool)>,
    locations: &str,
) {
    let path = |name: &str| -> PathBuf { dir.join(name) };
    let listen = match tls {
        None => format!("listen {address};"),
        Some((cert, key, http2)) => format!(
            "listen {address} ssl{};\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3;",
            if http2 { " http2" } else { "" },
            cert.display(),
            key.display()
        ),
    };
    let config = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {error_log} info;
events {{
    worker_connections 1024;
}}
http {{
    log_format ringmesh '$connection $connection_requests $request_method $request_uri $status';
    access_log {access_log} ringmesh;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    default_type text/plain;
    server {{
        {listen}
        root {root};
{locations}
    }}
}}
"#,
        pid = path("nginx.pid").display(),
        error_log = path("error.log").display(),
        access_log = path("access.log").display(),
        tmp = path("tmp").display(),
        root = path("www").display(),
    );
    std::fs::create_dir_all(path("tmp")).expect("create nginx's temp directory");
    std::fs::write(path("nginx.conf"), config).expect("write nginx.conf");
}
