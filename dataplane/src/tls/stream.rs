//! A TLS session over monoio's poll-io bridge: rustls's `Connection` driven from poll functions
//! (`read_tls` → `process_new_packets` → `reader()`, `writer()` → `write_tls`), as tokio-rustls
//! does.
//!
//! The bridge (`TcpStreamPoll`: readiness plus plain `recv`/`send`) exists on both drivers, so one
//! adapter serves io_uring and epoll. Being readiness-based, it is also cancel-safe: a read that
//! is abandoned mid-way (a timeout, a drain) loses nothing — decrypted bytes stay in rustls's
//! plaintext buffer and undelivered bytes stay in the kernel until the next read. That is why the
//! HTTP/1.1 code's cancel-and-await dance for io_uring reads is not needed here.
//!
//! Wakers: the bridge keeps one waker per direction. A read that finds TLS records to send (a
//! KeyUpdate reply, an alert) flushes them only opportunistically, with a no-op waker, so that a
//! reading task never replaces the waker of a task that waits to write on the same socket; the
//! records leave with the next write or flush.

use std::io::{self, Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use rustls::Connection;

/// Plaintext bytes rustls buffers for sending before `poll_write` waits for the socket.
const SEND_BUFFER_LIMIT: usize = 256 * 1024;

/// One TLS session on one TCP connection.
#[derive(Debug)]
pub struct TlsStream {
    io: TcpStreamPoll,
    conn: Connection,
    /// The peer's side has ended (close_notify or FIN): reads return 0 from now on.
    read_closed: bool,
    /// close_notify has been queued.
    close_sent: bool,
}

/// `io::Read`/`io::Write` over the bridge for rustls, turning `Pending` into `WouldBlock`.
struct SyncIo<'a, 'b> {
    io: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl io::Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl io::Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns a `WouldBlock` from the bridge back into `Pending`.
fn pending_on_block<T>(result: io::Result<T>) -> Poll<io::Result<T>> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl TlsStream {
    /// A session on `io` that has not shaken hands yet: run [`Self::handshake`] first.
    pub fn new(io: TcpStreamPoll, conn: impl Into<Connection>) -> Self {
        let mut conn = conn.into();
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Self {
            io,
            conn,
            read_closed: false,
            close_sent: false,
        }
    }

    /// The rustls session (ALPN, SNI, peer certificates).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The underlying socket.
    pub fn socket(&self) -> &TcpStreamPoll {
        &self.io
    }

    /// Runs the handshake to its end, including sending the last flight (and a TLS 1.3 server's
    /// session tickets). A failure comes back as `InvalidData` carrying rustls's reason, after an
    /// attempt to send the alert that tells the peer why.
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.conn.wants_write() {
                std::task::ready!(self.poll_write_tls(cx))?;
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.conn.wants_read() {
                let n = std::task::ready!(self.poll_read_tls(cx))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed during the TLS handshake",
                    )));
                }
            }
        }
    }

    /// Reads TLS records from the socket and processes them. `Ok(0)`: the socket reached EOF.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sync = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = std::task::ready!(pending_on_block(self.conn.read_tls(&mut sync)))?;
        if let Err(e) = self.conn.process_new_packets() {
            // Tell the peer why (the alert rustls queued), without waiting for the socket.
            self.flush_opportunistically();
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(n))
    }

    /// Writes queued TLS records to the socket once.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sync = SyncIo {
            io: &mut self.io,
            cx,
        };
        match pending_on_block(self.conn.write_tls(&mut sync)) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            other => other,
        }
    }

    /// Sends what rustls has queued as far as the socket takes it now, registering no waker.
    fn flush_opportunistically(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while self.conn.wants_write() {
            match self.poll_write_tls(&mut cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) | Poll::Pending => return,
            }
        }
    }

    /// Reads decrypted bytes into `buf`. `Ok(0)`: the peer ended its side (close_notify, or a FIN
    /// without one, which HTTP framing or the L4 peer judges as for plaintext).
    pub fn poll_read_plain(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => {
                    if n == 0 {
                        self.read_closed = true;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.read_closed = true;
                    return Poll::Ready(Ok(0));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.read_closed {
                return Poll::Ready(Ok(0));
            }
            let n = std::task::ready!(self.poll_read_tls(cx))?;
            if self.conn.wants_write() {
                self.flush_opportunistically();
            }
            if n == 0 {
                self.read_closed = true;
                return Poll::Ready(Ok(0));
            }
        }
    }

    /// Encrypts bytes of `buf` and sends them; returns how many plaintext bytes were taken. Some
    /// records may still be queued: [`Self::poll_flush_tls`] sends the rest.
    pub fn poll_write_plain(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Twice at most: a full plaintext buffer (nothing taken) is emptied by the flush in
        // between, and the second write takes bytes.
        for _ in 0..2 {
            let taken = self.conn.writer().write(buf)?;
            // Push records out; a full socket is fine once something was taken.
            while self.conn.wants_write() {
                match self.poll_write_tls(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if taken > 0 => return Poll::Ready(Ok(taken)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if taken > 0 {
                return Poll::Ready(Ok(taken));
            }
        }
        Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
    }

    /// Sends every queued record.
    pub fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            std::task::ready!(self.poll_write_tls(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends close_notify, flushes, and half-closes the socket (FIN).
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            self.conn.send_close_notify();
            self.close_sent = true;
        }
        std::task::ready!(self.poll_flush_tls(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = std::task::ready!(this.poll_read_plain(cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plain(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close(cx)
    }
}
