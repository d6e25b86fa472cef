//! An in-test HTTP/1.1 upstream: keep-alive connections, one thread each, every request recorded
//! (head byte for byte, decoded body, trailers, which connection it came on), answered by a
//! handler that can also misbehave on purpose (raw bytes, close, reset).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::message::{Request, Response, Wire, has_token, read_request};
use crate::upstream::{Upstream, reset};
use crate::wait::{PATIENCE, wait_until};

/// What the upstream does after receiving a request.
#[derive(Debug)]
pub enum Reply {
    /// Sends this response (the head only if the request was HEAD) and keeps the connection.
    Send(Response),
    /// Sends these exact bytes and keeps the connection.
    Raw(Vec<u8>),
    /// Sends these exact bytes, then a FIN, and stops reading.
    RawThenClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Resets the connection without answering.
    Reset,
    /// Runs this on the connection (to write in several steps with pauses, say), then keeps
    /// serving it.
    Write(Writer),
}

/// A custom answer: it writes on the connection's socket.
pub type WriteFn = dyn FnOnce(&mut TcpStream) -> io::Result<()> + Send;

/// A custom way of answering: it gets the connection's socket.
pub struct Writer(pub Box<WriteFn>);

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer(..)")
    }
}

impl Reply {
    /// [`Reply::Write`] from a closure.
    pub fn write(f: impl FnOnce(&mut TcpStream) -> io::Result<()> + Send + 'static) -> Self {
        Reply::Write(Writer(Box::new(f)))
    }
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply::Send(response)
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Mutex<Vec<Request>>,
    bytes: Arc<AtomicUsize>,
}

/// An HTTP/1.1 server on `127.0.0.1:0`.
#[derive(Debug)]
pub struct HttpUpstream {
    server: Upstream,
    log: Arc<Log>,
}

impl HttpUpstream {
    /// Answers every request with `handler(request)`.
    pub fn start<F>(handler: F) -> Self
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        let log = Arc::new(Log::default());
        let server = {
            let log = Arc::clone(&log);
            Upstream::spawn(move |stream, index| serve(stream, index, &handler, &log))
        };
        Self { server, log }
    }

    /// Answers every request with 200, body `name` and `x-upstream: name`.
    pub fn named(name: &str) -> Self {
        let name = name.to_owned();
        Self::start(move |_| {
            Response::ok(name.clone())
                .with_header("x-upstream", &name)
                .into()
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.server.address()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.accepted()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.requests.lock().expect("request log").clone()
    }

    /// How many requests have arrived.
    pub fn request_count(&self) -> usize {
        self.log.requests.lock().expect("request log").len()
    }

    /// Bytes received on all connections, whether or not they formed a request.
    pub fn bytes_received(&self) -> usize {
        self.log.bytes.load(Ordering::Acquire)
    }

    /// Waits until at least `n` requests have arrived (at most `PATIENCE`); returns them all.
    pub fn wait_for_requests(&self, n: usize) -> Vec<Request> {
        wait_until(PATIENCE, format!("{n} requests at the upstream"), || {
            let requests = self.requests();
            if requests.len() >= n {
                Ok(requests)
            } else {
                Err(format!("{} so far", requests.len()))
            }
        })
    }
}

fn serve<F>(stream: TcpStream, index: usize, handler: &F, log: &Log)
where
    F: Fn(&Request) -> Reply,
{
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut wire = Wire::counting(stream, Arc::clone(&log.bytes));
    for sequence in 0.. {
        let request = match read_request(&mut wire, index, sequence) {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => return,
        };
        log.requests
            .lock()
            .expect("request log")
            .push(request.clone());
        let close = request
            .header("connection")
            .is_some_and(|c| has_token(c, "close"));
        let written = match handler(&request) {
            Reply::Send(response) => {
                wire.write_all(&response.to_bytes(request.method.eq_ignore_ascii_case("HEAD")))
            }
            Reply::Raw(bytes) => wire.write_all(&bytes),
            Reply::RawThenClose(bytes) => {
                let _ = wire.write_all(&bytes);
                let _ = wire.stream.shutdown(Shutdown::Write);
                return;
            }
            Reply::Close => return,
            Reply::Reset => {
                reset(wire.stream);
                return;
            }
            Reply::Write(Writer(write)) => write(&mut wire.stream),
        };
        if written.is_err() {
            return;
        }
        if close {
            let _ = wire.stream.shutdown(Shutdown::Write);
            return;
        }
    }
}
