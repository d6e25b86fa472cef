//! A connection that is plain TCP or TLS, and its two halves.
//!
//! The plain variants are monoio's own owned-buffer halves, untouched, so a plaintext connection
//! costs exactly what it did before TLS existed (one enum match per call). The TLS halves share
//! one [`TlsStream`] through an `Rc<RefCell<..>>`: each borrow lasts one poll, never across an
//! await, and the session's reading and writing sides keep their own wakers (see
//! [`super::stream`]).

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::rc::Rc;

use monoio::io::{OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use super::{TlsInfo, TlsStream};

/// A connection as accepted or opened.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, after its handshake.
    Tls(Box<TlsStream>, Box<TlsInfo>),
}

/// The receiving half of a [`Transport`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf<TcpStream>),
    /// TLS; shares the session with the sending half.
    Tls(Rc<RefCell<TlsStream>>),
}

/// The sending half of a [`Transport`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf<TcpStream>),
    /// TLS; shares the session with the receiving half.
    Tls(Rc<RefCell<TlsStream>>),
}

impl Transport {
    /// The TLS details, for a TLS connection.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(_, info) => Some(info),
        }
    }

    /// Moves the TLS details out (the transport keeps empty ones), for a server that splits
    /// the connection and keeps its details for every request; `None` on plaintext.
    pub fn take_tls_info(&mut self) -> Option<TlsInfo> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(_, info) => Some(std::mem::take(&mut **info)),
        }
    }

    /// Splits the connection into its two halves.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Plain(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            Transport::Tls(stream, _) => {
                let shared = Rc::new(RefCell::new(*stream));
                (ReadHalf::Tls(Rc::clone(&shared)), WriteHalf::Tls(shared))
            }
        }
    }
}

/// Joins two halves again; `None` if they are of different connections.
pub fn reunite(read: ReadHalf, write: WriteHalf) -> Option<Transport> {
    match (read, write) {
        (ReadHalf::Plain(read), WriteHalf::Plain(write)) => {
            read.reunite(write).ok().map(Transport::Plain)
        }
        (ReadHalf::Tls(read), WriteHalf::Tls(write)) if Rc::ptr_eq(&read, &write) => {
            drop(write);
            let stream = Rc::into_inner(read)?.into_inner();
            Some(Transport::Tls(Box::new(stream), Box::default()))
        }
        _ => None,
    }
}

/// Truncates a buffer back to what holds data when a read ends, however it ends (also when its
/// future is dropped), so zeroed spare bytes never pass for data.
struct Spare<'a> {
    buf: &'a mut Vec<u8>,
    keep: usize,
}

impl Drop for Spare<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.keep);
    }
}

/// Reads decrypted bytes from `stream` into the spare capacity of `buf` (which the caller has
/// reserved), unless `stop` resolves first with the error to return. Cancel-safe: nothing is lost
/// when `stop` wins or the future is dropped.
pub async fn read_tls(
    stream: &RefCell<TlsStream>,
    buf: &mut Vec<u8>,
    stop: impl Future<Output = io::Error>,
) -> io::Result<usize> {
    let len = buf.len();
    let capacity = buf.capacity();
    buf.resize(capacity, 0);
    let mut spare = Spare { buf, keep: len };
    let result = {
        let target = &mut spare.buf[len..];
        let read = poll_fn(|cx| stream.borrow_mut().poll_read_plain(cx, target));
        monoio::select! {
            biased;
            result = read => result,
            why = stop => Err(why),
        }
    };
    if let Ok(n) = result {
        spare.keep = len + n;
    }
    result
}

/// Writes all of `bytes` to `stream` and flushes the TLS records.
pub async fn write_tls(stream: &RefCell<TlsStream>, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        let rest = &bytes[written..];
        written += poll_fn(|cx| stream.borrow_mut().poll_write_plain(cx, rest)).await?;
    }
    poll_fn(|cx| stream.borrow_mut().poll_flush_tls(cx)).await
}

/// Sends close_notify and FIN.
pub async fn shutdown_tls(stream: &RefCell<TlsStream>) -> io::Result<()> {
    poll_fn(|cx| stream.borrow_mut().poll_close(cx)).await
}

impl ReadHalf {
    /// Reads into the spare capacity of `buf` (at least `min_spare` bytes of it). `Ok(0)`: the
    /// peer ended its side.
    pub async fn read_vec(&mut self, buf: &mut Vec<u8>, min_spare: usize) -> io::Result<usize> {
        use monoio::buf::IoBufMut as _;
        use monoio::io::AsyncReadRent as _;
        if buf.capacity() - buf.len() < min_spare {
            buf.reserve(min_spare);
        }
        match self {
            ReadHalf::Plain(half) => {
                let len = buf.len();
                let owned = std::mem::take(buf);
                let (result, slice) = half.read(owned.slice_mut(len..)).await;
                *buf = slice.into_inner();
                result
            }
            ReadHalf::Tls(stream) => read_tls(stream, buf, std::future::pending()).await,
        }
    }
}

impl ReadHalf {
    /// Reads into the spare capacity of `buf` (at least `min_spare` bytes of it), for callers
    /// that hand the bytes on as [`bytes::Bytes`] (`buf.split().freeze()`, no copy on plain
    /// TCP; TLS reads through a copy). `Ok(0)`: the peer ended its side.
    pub async fn read_bytes(
        &mut self,
        buf: &mut bytes::BytesMut,
        min_spare: usize,
    ) -> io::Result<usize> {
        use monoio::buf::IoBufMut as _;
        use monoio::io::AsyncReadRent as _;
        // Reclaims the allocation when the bytes split off before are gone.
        buf.reserve(min_spare);
        match self {
            ReadHalf::Plain(half) => {
                let len = buf.len();
                let owned = std::mem::take(buf);
                let (result, slice) = half.read(owned.slice_mut(len..)).await;
                *buf = slice.into_inner();
                result
            }
            ReadHalf::Tls(stream) => {
                let mut plain = Vec::with_capacity(min_spare);
                let n = read_tls(stream, &mut plain, std::future::pending()).await?;
                buf.extend_from_slice(&plain);
                Ok(n)
            }
        }
    }
}

impl WriteHalf {
    /// Writes all of `bytes` (no copy on plain TCP: the ring owns them while the write runs).
    pub async fn write_bytes(&mut self, bytes: bytes::Bytes) -> io::Result<()> {
        use monoio::io::AsyncWriteRentExt as _;
        match self {
            WriteHalf::Plain(half) => half.write_all(bytes).await.0.map(drop),
            WriteHalf::Tls(stream) => write_tls(stream, &bytes).await,
        }
    }

    /// Writes all of `buf`, which comes back in place, unchanged.
    pub async fn write_vec(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        use monoio::io::AsyncWriteRentExt as _;
        match self {
            WriteHalf::Plain(half) => {
                let (result, owned) = half.write_all(std::mem::take(buf)).await;
                *buf = owned;
                result.map(drop)
            }
            WriteHalf::Tls(stream) => write_tls(stream, buf).await,
        }
    }

    /// Sends FIN (after close_notify on TLS).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        use monoio::io::AsyncWriteRent as _;
        match self {
            WriteHalf::Plain(half) => half.shutdown().await,
            WriteHalf::Tls(stream) => shutdown_tls(stream).await,
        }
    }
}
