//! Reading from a socket under a deadline without losing a byte, for the code that looks at a
//! connection's first bytes before deciding what it is: HTTP protocol detection
//! (`http::detect`) and the TLS passthrough ClientHello (`l4::passthrough`).
//!
//! A read that times out is cancelled and awaited, never dropped: with io_uring, a dropped read
//! that the kernel had already completed takes the bytes it read with it.

use std::io;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

/// Reads more bytes from an unsplit stream into `buf` (with at least `min_spare` bytes of room,
/// and never more than `at_most` bytes), giving up after `timeout` (`TimedOut`).
pub async fn read_within(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    at_most: usize,
    timeout: Duration,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let end = len.saturating_add(at_most).min(buf.capacity());
    let owned = std::mem::take(buf);
    let canceller = Canceller::new();
    let mut read =
        std::pin::pin!(stream.cancelable_read(owned.slice_mut(len..end), canceller.handle()));
    let (timed_out, (result, slice)) = monoio::select! {
        biased;
        done = &mut read => (false, done),
        () = monoio::time::sleep(timeout) => {
            let _ = canceller.cancel();
            (true, read.await)
        }
    };
    *buf = slice.into_inner();
    match result {
        Err(e) if timed_out && e.raw_os_error() == Some(libc::ECANCELED) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
        }
        result => result,
    }
}
