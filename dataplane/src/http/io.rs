//! Socket plumbing for HTTP/1.1 with owned buffers: append-reads, whole writes, and streaming a
//! message body from one socket to another.
//!
//! monoio's I/O takes buffers by value and hands them back (the kernel owns them while io_uring
//! works on them), so these helpers take `&mut Vec<u8>` and put the buffer back in place whatever
//! happens. A connection's buffer is reused for every request it carries.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use super::chunked::{ChunkError, ChunkedDecoder};
use super::h1::BodyFraming;
use crate::event::Event;

/// Body bytes moved per read.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Reads more bytes into the spare capacity of `buf`, growing it to at least `min_spare` free
/// bytes first. Returns the number of bytes read; 0 means the peer closed its side.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let owned = std::mem::take(buf);
    let (result, slice) = stream.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    result
}

/// Like [`read_more`], giving up after `timeout` when one is set.
pub async fn read_more_within(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    match timeout {
        None => read_more(stream, buf, min_spare).await,
        Some(limit) => monoio::time::timeout(limit, read_more(stream, buf, min_spare))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))?,
    }
}

/// Why [`read_more_until`] returned without bytes.
pub const STOPPED: i32 = libc::ECANCELED;

/// Like [`read_more_within`], and also ends when `stop` fires. Either way the read is cancelled
/// and awaited, never dropped: with io_uring, a dropped read that the kernel had already completed
/// would take the bytes it read with it. Returns `Ok` with the bytes that arrived in time, an
/// error with the raw OS error [`STOPPED`] when `stop` ended the wait, or `TimedOut`.
pub async fn read_more_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    timeout: Option<Duration>,
    stop: &Event,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let owned = std::mem::take(buf);
    let canceller = Canceller::new();
    let mut read =
        std::pin::pin!(stream.cancelable_read(owned.slice_mut(len..), canceller.handle()));
    let timer = async {
        match timeout {
            Some(limit) => monoio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let (stopped, (result, slice)) = monoio::select! {
        done = &mut read => (None, done),
        () = stop.wait() => {
            let _ = canceller.cancel();
            (Some(io::Error::from_raw_os_error(STOPPED)), read.await)
        }
        () = timer => {
            let _ = canceller.cancel();
            (Some(io::Error::new(io::ErrorKind::TimedOut, "read timed out")), read.await)
        }
    };
    *buf = slice.into_inner();
    match (result, stopped) {
        (Err(e), Some(why)) if e.raw_os_error() == Some(libc::ECANCELED) => Err(why),
        (result, _) => result,
    }
}

/// Writes all of `buf`; the buffer comes back in place, unchanged.
pub async fn write_all(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let owned = std::mem::take(buf);
    let (result, owned) = stream.write_all(owned).await;
    *buf = owned;
    result.map(drop)
}

/// Writes `buf[..n]`; the buffer comes back in place, unchanged.
pub async fn write_prefix(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let owned = std::mem::take(buf);
    let (result, slice) = stream.write_all(owned.slice(..n)).await;
    *buf = slice.into_inner();
    result.map(drop)
}

/// Why a body could not be moved.
#[derive(Debug)]
pub enum BodyError {
    /// The source closed before the body ended.
    SourceClosed,
    /// Reading the source failed (reset, timeout).
    Source(io::Error),
    /// Writing the destination failed.
    Destination(io::Error),
    /// The body broke chunked framing.
    Malformed(ChunkError),
    /// The body grew past the limit.
    TooLarge,
}

/// How to move one body.
#[derive(Debug)]
pub struct BodyCopy<'a> {
    /// How the body is delimited on the source.
    pub framing: BodyFraming,
    /// Largest body allowed (payload bytes); `None` = unlimited.
    pub limit: Option<u64>,
    /// Idle limit for each read from the source.
    pub read_timeout: Option<Duration>,
    /// Remove chunked framing on the way (for HTTP/1.0 clients).
    pub dechunk: bool,
    /// Also copy the bytes sent into this buffer, up to its capacity (request mirroring); set to
    /// `None` by the copy if the body outgrows it.
    pub tee: Option<&'a mut Vec<u8>>,
}

/// Moves a body from `src` to `dst`.
///
/// `src_buf` holds bytes already read from `src`, starting with the body; when the copy returns,
/// it holds whatever followed the body (a pipelined request, for instance). `prefix` (a message
/// head) is sent before the body, in the same write as the body bytes already at hand. Returns
/// the number of payload bytes.
pub async fn copy_body(
    src: &mut TcpStream,
    src_buf: &mut Vec<u8>,
    dst: &mut TcpStream,
    prefix: &mut Vec<u8>,
    mut options: BodyCopy<'_>,
) -> Result<u64, BodyError> {
    let mut remaining = match options.framing {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let mut decoder = ChunkedDecoder::new();
    let mut payload_bytes: u64 = 0;
    let mut decoded: Vec<u8> = Vec::new();
    let mut first_write = true;
    loop {
        // How many buffered bytes belong to this body, and whether it ends within them.
        let (take, done) = match options.framing {
            BodyFraming::None => (0, true),
            BodyFraming::Length(_) => {
                let take = remaining.min(src_buf.len() as u64) as usize;
                remaining -= take as u64;
                payload_bytes += take as u64;
                (take, remaining == 0)
            }
            BodyFraming::Chunked => {
                decoded.clear();
                let sink = options.dechunk.then_some(&mut decoded);
                let progress = decoder.feed(src_buf, sink).map_err(BodyError::Malformed)?;
                payload_bytes = decoder.data_len();
                (progress.consumed, progress.done)
            }
            BodyFraming::UntilClose => {
                payload_bytes += src_buf.len() as u64;
                (src_buf.len(), false)
            }
        };
        if options.limit.is_some_and(|limit| payload_bytes > limit) {
            return Err(BodyError::TooLarge);
        }
        if let Some(tee) = options.tee.as_deref_mut() {
            if tee.len() + take <= tee.capacity() {
                tee.extend_from_slice(&src_buf[..take]);
            } else {
                options.tee = None;
            }
        }

        let out: &[u8] = if options.dechunk && options.framing == BodyFraming::Chunked {
            &decoded
        } else {
            &src_buf[..take]
        };
        if first_write {
            // The head and the body bytes already here go out in one write.
            prefix.extend_from_slice(out);
            write_all(dst, prefix)
                .await
                .map_err(BodyError::Destination)?;
            first_write = false;
        } else if !out.is_empty() {
            if options.dechunk && options.framing == BodyFraming::Chunked {
                write_all(dst, &mut decoded)
                    .await
                    .map_err(BodyError::Destination)?;
            } else {
                write_prefix(dst, src_buf, take)
                    .await
                    .map_err(BodyError::Destination)?;
            }
        }
        src_buf.drain(..take);
        if done {
            return Ok(payload_bytes);
        }

        let read = read_more_within(src, src_buf, BODY_CHUNK, options.read_timeout)
            .await
            .map_err(BodyError::Source)?;
        if read == 0 {
            return if options.framing == BodyFraming::UntilClose {
                Ok(payload_bytes)
            } else {
                Err(BodyError::SourceClosed)
            };
        }
    }
}

/// Reads and throws away a body (a mirrored request's response).
pub async fn discard_body(
    src: &mut TcpStream,
    src_buf: &mut Vec<u8>,
    framing: BodyFraming,
) -> Result<(), BodyError> {
    let mut remaining = match framing {
        BodyFraming::None => return Ok(()),
        BodyFraming::Length(n) => n,
        BodyFraming::Chunked | BodyFraming::UntilClose => u64::MAX,
    };
    let mut decoder = ChunkedDecoder::new();
    loop {
        let (take, done) = match framing {
            BodyFraming::Chunked => {
                let progress = decoder.feed(src_buf, None).map_err(BodyError::Malformed)?;
                (progress.consumed, progress.done)
            }
            _ => {
                let take = remaining.min(src_buf.len() as u64) as usize;
                remaining -= take as u64;
                (take, remaining == 0)
            }
        };
        src_buf.drain(..take);
        if done {
            return Ok(());
        }
        match read_more(src, src_buf, BODY_CHUNK).await {
            Ok(0) if framing == BodyFraming::UntilClose => return Ok(()),
            Ok(0) => return Err(BodyError::SourceClosed),
            Ok(_) => {}
            Err(e) => return Err(BodyError::Source(e)),
        }
    }
}
