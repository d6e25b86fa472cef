//! The one place HTTP/2 meets a socket.
//!
//! The `h2` crate speaks tokio's poll-based `AsyncRead`/`AsyncWrite`; monoio's completion-based
//! sockets are bridged with its `poll-io` feature (readiness plus plain `recv`/`send`), which
//! measured fastest for `h2` on this project's machines (257–277k req/s for a minimal h2c server,
//! against 193–208k through `monoio-compat`). Keeping the bridge here means the io_uring path can be
//! swapped in later without touching the protocol code.
//!
//! [`H2Io`] also replays bytes that protocol detection already read (the client preface), and,
//! on inbound server connections, shows every received byte to the connection's [`FrameGuard`].

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use monoio::io::IntoPollIo;
use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use monoio::net::tcp::stream_poll::TcpStreamPoll;

use super::guard::FrameGuard;
use crate::event::Event;
use crate::tls::TlsStream;
use crate::tls::transport::Transport;

/// The socket under `h2`: plain, or a TLS session over the same bridge.
#[derive(Debug)]
enum Socket {
    Plain(TcpStreamPoll),
    Tls(Box<TlsStream>),
}

impl Socket {
    fn new(transport: Transport) -> io::Result<Self> {
        match transport {
            Transport::Plain(stream) => Ok(Socket::Plain(stream.into_poll_io()?)),
            Transport::Tls(stream, _) => Ok(Socket::Tls(stream)),
        }
    }
}

/// Bytes a connection moved, for the listener's byte counters (the connection task adds them to
/// the counters as streams end).
#[derive(Debug, Default)]
pub struct ByteTally {
    received: Cell<u64>,
    sent: Cell<u64>,
}

impl ByteTally {
    /// Bytes received and sent since the last call.
    pub fn take(&self) -> (u64, u64) {
        (self.received.take(), self.sent.take())
    }
}

/// A socket for `h2`.
#[derive(Debug)]
pub struct H2Io {
    inner: Socket,
    /// Inbound connections only: what the connection moved.
    tally: Option<Rc<ByteTally>>,
    /// Bytes read before the connection was handed to `h2`, replayed first.
    replay: Vec<u8>,
    replayed: usize,
    /// Inbound connections only: the abuse guard, and the event fired when it trips.
    guard: Option<(Rc<RefCell<FrameGuard>>, Rc<Event>)>,
}

impl H2Io {
    /// An inbound connection: replays `initial`, and checks every byte with `guard`, firing
    /// `tripped` when a limit breaks.
    pub fn server(
        stream: Transport,
        initial: Vec<u8>,
        guard: Rc<RefCell<FrameGuard>>,
        tripped: Rc<Event>,
        tally: Rc<ByteTally>,
    ) -> io::Result<Self> {
        Ok(Self {
            inner: Socket::new(stream)?,
            tally: Some(tally),
            replay: initial,
            replayed: 0,
            guard: Some((guard, tripped)),
        })
    }

    /// An outbound connection to an upstream.
    pub fn client(stream: Transport) -> io::Result<Self> {
        Ok(Self {
            inner: Socket::new(stream)?,
            tally: None,
            replay: Vec::new(),
            replayed: 0,
            guard: None,
        })
    }

    fn count(&self, received: usize, sent: usize) {
        if let Some(tally) = &self.tally {
            tally.received.set(tally.received.get() + received as u64);
            tally.sent.set(tally.sent.get() + sent as u64);
        }
    }

    fn inspect(&self, bytes: &[u8]) {
        if let Some((guard, tripped)) = &self.guard
            && guard.borrow_mut().inspect(bytes).is_some()
        {
            tripped.fire();
        }
    }

    /// Shows the guard what the server wrote: WINDOW_UPDATEs that answer its DATA are free.
    fn written(&self, bytes: &[u8]) {
        if let Some((guard, _)) = &self.guard {
            guard.borrow_mut().outbound(bytes);
        }
    }

    fn tripped(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|(guard, _)| guard.borrow().broken().is_some())
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tripped() {
            // Read nothing more from an abusive peer; the connection task is closing it.
            return Poll::Pending;
        }
        if this.replayed < this.replay.len() {
            let n = (this.replay.len() - this.replayed).min(buf.remaining());
            let chunk = &this.replay[this.replayed..this.replayed + n];
            buf.put_slice(chunk);
            this.replayed += n;
            let chunk = &this.replay[this.replayed - n..this.replayed];
            this.inspect(chunk);
            this.count(n, 0);
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = match &mut this.inner {
            Socket::Plain(socket) => Pin::new(socket).poll_read(cx, buf),
            Socket::Tls(socket) => Pin::new(&mut **socket).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) => {
                this.inspect(&buf.filled()[before..]);
                this.count(buf.filled().len() - before, 0);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match &mut this.inner {
            Socket::Plain(socket) => Pin::new(socket).poll_write(cx, buf),
            Socket::Tls(socket) => Pin::new(&mut **socket).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = written {
            this.written(&buf[..n.min(buf.len())]);
            this.count(0, n);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = match &mut this.inner {
            Socket::Plain(socket) => Pin::new(socket).poll_write_vectored(cx, bufs),
            Socket::Tls(socket) => Pin::new(&mut **socket).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = written {
            let mut left = n;
            for buf in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(buf.len());
                this.written(&buf[..take]);
                left -= take;
            }
            this.count(0, n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self.inner, Socket::Plain(_))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Socket::Plain(socket) => Pin::new(socket).poll_flush(cx),
            Socket::Tls(socket) => Pin::new(&mut **socket).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Socket::Plain(socket) => Pin::new(socket).poll_shutdown(cx),
            Socket::Tls(socket) => Pin::new(&mut **socket).poll_shutdown(cx),
        }
    }
}
