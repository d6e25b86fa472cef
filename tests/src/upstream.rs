//! In-test upstreams on plain std threads: one thread accepts, one thread serves each connection.
//!
//! Small servers whose behaviour a test must observe byte by byte: an echo server, a server that
//! runs any handler per connection (record what arrives, answer with a payload, half-close,
//! reset), a recording server that may speak first (a server-first protocol's banner), and two
//! addresses that are not servers at all: one that refuses connections and one that drops SYNs
//! so that connects time out.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

/// A TCP server on `127.0.0.1:0` that runs a handler on its own thread for each connection.
///
/// Dropping it stops accepting; connections being served run until their handlers return.
#[derive(Debug)]
pub struct Upstream {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Serves each connection with `handler(stream, index)`, `index` counting connections from 0.
    pub fn spawn<F>(handler: F) -> Self
    where
        F: Fn(TcpStream, usize) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
        let address = listener.local_addr().expect("upstream address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let acceptor = {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("upstream-{}", address.port()))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let index = accepted.fetch_add(1, Ordering::AcqRel);
                        let handler = Arc::clone(&handler);
                        std::thread::Builder::new()
                            .name(format!("upstream-conn-{index}"))
                            .stack_size(256 * 1024)
                            .spawn(move || handler(stream, index))
                            .expect("spawn an upstream connection thread");
                    }
                })
                .expect("spawn the upstream accept thread")
        };
        Self {
            address,
            accepted,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Echoes every byte back; passes a FIN on after echoing everything before it.
    pub fn echo() -> Self {
        Self::spawn(|mut stream, _| {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => {
                        let _ = stream.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        })
    }

    /// Sends `reply` (then a FIN) while recording everything received until the peer's FIN; each
    /// connection's recording is sent on the returned channel as `(index, bytes)`.
    pub fn send_and_record(reply: Arc<Vec<u8>>) -> (Self, mpsc::Receiver<(usize, Vec<u8>)>) {
        let (recordings, received) = mpsc::channel();
        let upstream = Self::spawn(move |stream, index| {
            let reply = Arc::clone(&reply);
            let mut writer = stream.try_clone().expect("clone the upstream stream");
            let sending = std::thread::spawn(move || {
                if writer.write_all(&reply).is_ok() {
                    let _ = writer.shutdown(Shutdown::Write);
                }
            });
            let recorded = read_all(&stream);
            let _ = sending.join();
            let _ = recordings.send((index, recorded));
        });
        (upstream, received)
    }

    /// Records every byte each connection sends, as it arrives. If `banner` is not empty it is
    /// sent first, as server-first protocols (SMTP, MySQL) do; if `line_reply` is not empty it
    /// is sent after each received `\n`. Connections end at the peer's FIN.
    pub fn recording(banner: &'static [u8], line_reply: &'static [u8]) -> (Self, Recorded) {
        let recorded = Recorded::default();
        let upstream = {
            let recorded = recorded.clone();
            Self::spawn(move |mut stream, index| {
                recorded.grow(index);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                if !banner.is_empty() && stream.write_all(banner).is_err() {
                    return;
                }
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            recorded.append(index, &buffer[..n]);
                            let lines = buffer[..n].iter().filter(|&&b| b == b'\n').count();
                            for _ in 0..if line_reply.is_empty() { 0 } else { lines } {
                                if stream.write_all(line_reply).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            })
        };
        (upstream, recorded)
    }

    /// Resets every connection as soon as it is accepted.
    pub fn reset_on_accept() -> Self {
        Self::spawn(|stream, _| reset(stream))
    }

    /// Reads until some bytes arrive, then resets the connection.
    pub fn reset_after_first_read() -> Self {
        Self::spawn(|mut stream, _| {
            let mut buffer = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = stream.read(&mut buffer);
            reset(stream);
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept call so that the thread sees `stop` and exits.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// What each connection of [`Upstream::recording`] sent so far, by connection index.
#[derive(Debug, Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

impl Recorded {
    fn grow(&self, index: usize) {
        let mut connections = self.0.lock().expect("recording");
        if connections.len() <= index {
            connections.resize(index + 1, Vec::new());
        }
    }

    fn append(&self, index: usize, bytes: &[u8]) {
        self.grow(index);
        self.0.lock().expect("recording")[index].extend_from_slice(bytes);
    }

    /// The bytes of every connection, by index.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.0.lock().expect("recording").clone()
    }

    /// Bytes received over all connections.
    pub fn total_bytes(&self) -> usize {
        self.0.lock().expect("recording").iter().map(Vec::len).sum()
    }
}

/// Reads until end of stream or an error; returns what arrived.
pub fn read_all(mut stream: &TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Closes `stream` with a RST instead of a FIN (SO_LINGER with a zero timeout).
pub fn reset(stream: TcpStream) {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER");
    drop(stream);
}

/// An address where nothing listens: connects to it are refused.
pub fn refused_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let address = listener.local_addr().expect("probe address");
    drop(listener);
    match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => address,
        other => panic!("expected {address} to refuse connections, got {other:?}"),
    }
}

/// An address whose connects time out: a listener with a backlog of 0 whose accept queue is
/// already full and never accepted from, so that the kernel drops further SYNs.
///
/// Construction checks that a connect really times out, and panics otherwise.
#[derive(Debug)]
pub struct Blackhole {
    address: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Creates and verifies a blackhole on `127.0.0.1`.
    pub fn new() -> Self {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind the blackhole");
        listener.listen(0).expect("listen with backlog 0");
        let address = listener
            .local_addr()
            .expect("blackhole address")
            .as_socket()
            .expect("an IP address");
        // Linux queues backlog + 1 connections; fill the queue until a connect times out.
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
                Ok(filler) => fillers.push(filler),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Self {
                        address,
                        _listener: listener,
                        _fillers: fillers,
                    };
                }
                Err(e) => panic!("unexpected error while filling the blackhole's backlog: {e}"),
            }
        }
        panic!(
            "{address} still accepts connections after {} with a backlog of 0: this kernel does \
             not drop SYNs on a full accept queue, so connect timeouts cannot be tested this way",
            fillers.len()
        );
    }

    /// The address that does not answer.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_echoes_and_counts() {
        let echo = Upstream::echo();
        let mut stream = TcpStream::connect(echo.address()).expect("connect");
        stream.write_all(b"ping").expect("write");
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).expect("read");
        assert_eq!(&answer, b"ping");
        assert_eq!(echo.accepted(), 1);
    }

    #[test]
    fn blackhole_connects_time_out() {
        let hole = Blackhole::new();
        let error = TcpStream::connect_timeout(&hole.address(), Duration::from_millis(200))
            .expect_err("the blackhole must not accept");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn refused_address_refuses() {
        let address = refused_address();
        let error = TcpStream::connect(address).expect_err("nothing listens");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn reset_on_accept_resets() {
        let upstream = Upstream::reset_on_accept();
        let mut stream = TcpStream::connect(upstream.address()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buffer = [0u8; 1];
        let error = stream
            .read(&mut buffer)
            .expect_err("a reset, not data or EOF");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
