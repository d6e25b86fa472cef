//! Socket plumbing for HTTP/1.1 connections, with owned buffers.
//!
//! An HTTP/1.1 connection (client or upstream) is split into a [`Reader`] and a [`Writer`] once,
//! when it is accepted or opened, so that an exchange can read one direction while it writes the
//! other: a response may start streaming while its request body is still being sent (an echo, a
//! transcoder), and a proxy that does one after the other deadlocks with both socket buffers full.
//! Both halves count the bytes they move, for the listener's byte counters.
//!
//! monoio's I/O takes buffers by value and hands them back (the kernel owns them while io_uring
//! works on them), so these helpers take `&mut Vec<u8>` and put the buffer back in place whatever
//! happens. A read that may be abandoned is cancelled and awaited, never dropped: with io_uring, a
//! dropped read that the kernel had already completed takes the bytes it read with it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller,
};
use monoio::net::TcpStream;

use crate::event::{Event, Signal};
use crate::tls::transport::{self, ReadHalf, Transport, WriteHalf};

/// Body bytes moved per read.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Why [`Reader::read_more_until`] returned without bytes.
pub const STOPPED: i32 = libc::ECANCELED;

/// Splits a plain TCP connection into its two halves.
pub fn split(stream: TcpStream) -> (Reader, Writer) {
    split_transport(Transport::Plain(stream))
}

/// Splits a connection, plain or TLS, into its two halves.
pub fn split_transport(transport: Transport) -> (Reader, Writer) {
    let fd = match &transport {
        Transport::Plain(stream) => stream.as_raw_fd(),
        Transport::Tls(stream, _) => stream.socket().as_raw_fd(),
    };
    let (read, write) = transport.split();
    (
        Reader {
            half: read,
            fd,
            received: 0,
        },
        Writer {
            half: write,
            sent: 0,
        },
    )
}

/// Joins the halves of one connection again (to hand it to a byte tunnel). `None` if they belong
/// to different connections, which the callers never do.
pub fn reunite(reader: Reader, writer: Writer) -> Option<Transport> {
    transport::reunite(reader.half, writer.half)
}

/// The receiving half of a connection.
#[derive(Debug)]
pub struct Reader {
    half: ReadHalf,
    fd: RawFd,
    received: u64,
}

/// The sending half of a connection.
#[derive(Debug)]
pub struct Writer {
    half: WriteHalf,
    sent: u64,
}

impl Reader {
    /// The connection's descriptor (for a non-blocking peek).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Counts `n` bytes received before the connection was split (protocol detection read them).
    pub fn count_received(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// Bytes received since the last call.
    pub fn take_received(&mut self) -> u64 {
        std::mem::take(&mut self.received)
    }

    /// Reads more bytes into the spare capacity of `buf`, growing it to at least `min_spare` free
    /// bytes first. Returns the number of bytes read; 0 means the peer closed its side.
    pub async fn read_more(&mut self, buf: &mut Vec<u8>, min_spare: usize) -> io::Result<usize> {
        reserve(buf, min_spare);
        let result = match &mut self.half {
            ReadHalf::Plain(half) => {
                let len = buf.len();
                let owned = std::mem::take(buf);
                let (result, slice) = half.read(owned.slice_mut(len..)).await;
                *buf = slice.into_inner();
                result
            }
            ReadHalf::Tls(stream) => transport::read_tls(stream, buf, std::future::pending()).await,
        };
        if let Ok(n) = result {
            self.received += n as u64;
        }
        result
    }

    /// Like [`Self::read_more`], ending early — without losing a byte — when `timeout` passes
    /// (`TimedOut`) or `stop` fires (the raw OS error [`STOPPED`]). Bytes that arrived in time
    /// are returned as usual.
    pub async fn read_more_until(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Option<Duration>,
        stop: Option<&Event>,
    ) -> io::Result<usize> {
        reserve(buf, min_spare);
        let timer = async {
            match timeout {
                Some(limit) => monoio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let stopped = async {
            match stop {
                Some(stop) => stop.wait().await,
                None => std::future::pending().await,
            }
        };
        let half = match &mut self.half {
            ReadHalf::Plain(half) => half,
            ReadHalf::Tls(stream) => {
                // The TLS read is cancel-safe: racing it is enough.
                let why = async {
                    monoio::select! {
                        biased;
                        () = stopped => io::Error::from_raw_os_error(STOPPED),
                        () = timer => io::Error::new(io::ErrorKind::TimedOut, "read timed out"),
                    }
                };
                let result = transport::read_tls(stream, buf, why).await;
                if let Ok(n) = result {
                    self.received += n as u64;
                }
                return result;
            }
        };
        let len = buf.len();
        let owned = std::mem::take(buf);
        let canceller = Canceller::new();
        let mut read =
            std::pin::pin!(half.cancelable_read(owned.slice_mut(len..), canceller.handle()));
        let (why, (result, slice)) = monoio::select! {
            biased;
            done = &mut read => (None, done),
            () = stopped => {
                let _ = canceller.cancel();
                (Some(io::Error::from_raw_os_error(STOPPED)), read.await)
            }
            () = timer => {
                let _ = canceller.cancel();
                (Some(io::Error::new(io::ErrorKind::TimedOut, "read timed out")), read.await)
            }
        };
        *buf = slice.into_inner();
        match (result, why) {
            (Err(e), Some(why)) if e.raw_os_error() == Some(libc::ECANCELED) => Err(why),
            (Ok(n), _) => {
                self.received += n as u64;
                Ok(n)
            }
            (Err(e), _) => Err(e),
        }
    }
}

impl Reader {
    /// Like [`Self::read_more_until`] with only `stop` (no timer: a smaller future, for a wait
    /// that runs beside every exchange).
    pub async fn read_more_unless(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        stop: &Signal,
    ) -> io::Result<usize> {
        reserve(buf, min_spare);
        let half = match &mut self.half {
            ReadHalf::Plain(half) => half,
            ReadHalf::Tls(stream) => {
                let why = async {
                    stop.wait().await;
                    io::Error::from_raw_os_error(STOPPED)
                };
                let result = transport::read_tls(stream, buf, why).await;
                if let Ok(n) = result {
                    self.received += n as u64;
                }
                return result;
            }
        };
        let len = buf.len();
        let owned = std::mem::take(buf);
        let canceller = Canceller::new();
        let mut read =
            std::pin::pin!(half.cancelable_read(owned.slice_mut(len..), canceller.handle()));
        let (stopped, (result, slice)) = monoio::select! {
            biased;
            done = &mut read => (false, done),
            () = stop.wait() => {
                let _ = canceller.cancel();
                (true, read.await)
            }
        };
        *buf = slice.into_inner();
        match result {
            Err(e) if stopped && e.raw_os_error() == Some(libc::ECANCELED) => {
                Err(io::Error::from_raw_os_error(STOPPED))
            }
            Ok(n) => {
                self.received += n as u64;
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }
}

impl Writer {
    /// Bytes sent since the last call.
    pub fn take_sent(&mut self) -> u64 {
        std::mem::take(&mut self.sent)
    }

    /// Writes all of `buf`; the buffer comes back in place, unchanged.
    pub async fn write_all(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let n = buf.len();
        self.write_prefix(buf, n).await
    }

    /// Writes `buf[..n]`; the buffer comes back in place, unchanged.
    pub async fn write_prefix(&mut self, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
        let result = match &mut self.half {
            WriteHalf::Plain(half) => {
                let owned = std::mem::take(buf);
                let (result, slice) = half.write_all(owned.slice(..n)).await;
                *buf = slice.into_inner();
                result.map(drop)
            }
            WriteHalf::Tls(stream) => match buf.get(..n) {
                Some(bytes) => transport::write_tls(stream, bytes).await,
                None => Err(io::ErrorKind::InvalidInput.into()),
            },
        };
        result.map(|()| self.sent += n as u64)
    }

    /// Writes `bytes` (an HTTP/2 DATA frame's payload) without copying it.
    pub async fn write_bytes(&mut self, bytes: bytes::Bytes) -> io::Result<()> {
        let n = bytes.len();
        let result = match &mut self.half {
            WriteHalf::Plain(half) => half.write_all(bytes).await.0.map(drop),
            WriteHalf::Tls(stream) => transport::write_tls(stream, &bytes).await,
        };
        result.map(|()| self.sent += n as u64)
    }

    /// Sends FIN (after close_notify on TLS): the peer sees the end of what this side sends.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.half {
            WriteHalf::Plain(half) => half.shutdown().await,
            WriteHalf::Tls(stream) => transport::shutdown_tls(stream).await,
        }
    }
}

fn reserve(buf: &mut Vec<u8>, min_spare: usize) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test_all(timer_enabled = true)]
    async fn halves_count_what_they_move_and_reunite() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let stream = TcpStream::connect_addr(address).await.expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let (mut reader, mut writer) = split(stream);
        let mut out = b"hello".to_vec();
        writer.write_all(&mut out).await.expect("write");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).expect("peer reads");
        assert_eq!(&got, b"hello");
        peer.write_all(b"abc").expect("peer writes");
        let mut buf = Vec::new();
        let n = reader.read_more(&mut buf, 64).await.expect("read");
        assert_eq!(&buf[..n], b"abc");
        assert_eq!(writer.take_sent(), 5);
        assert_eq!(reader.take_received(), 3);
        assert_eq!(reader.take_received(), 0);

        // A read stopped by an event returns STOPPED and keeps the buffer intact.
        let stop = Event::new();
        stop.fire();
        let error = reader
            .read_more_until(&mut buf, 64, None, Some(&stop))
            .await
            .expect_err("stopped");
        assert_eq!(error.raw_os_error(), Some(STOPPED));
        assert_eq!(&buf[..], b"abc");
        assert!(reunite(reader, writer).is_some());
    }
}
