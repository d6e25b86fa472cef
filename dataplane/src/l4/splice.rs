//! Zero-copy L4 forwarding with `splice(2)`: socket → pipe → socket, the bytes never entering user
//! space.
//!
//! monoio's own splice moves 4 KiB at a time and, on io_uring, the kernel hands each splice to an
//! unpinned `iou-wrk` thread (measured here: 0.7 Gbit/s). This path waits for readiness through the
//! runtime (a poll on io_uring, epoll on the legacy driver) and then calls `splice` directly with
//! `SPLICE_F_NONBLOCK` on non-blocking sockets, through a pipe enlarged to 1 MiB, so one call moves
//! as much as the socket has. `runtime.l4_copy` chooses it; `BENCHMARKS.md` has the measurements
//! against the buffered loop of `copy.rs`.
//!
//! Semantics match `copy.rs`: half-close passes a FIN on; an error ends both directions; the idle
//! timeout watches both.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::copy::{CopyError, Moved, Tally};
use crate::stats::{ListenerCounters, TcpMetrics};

/// Pipe capacity asked for; the kernel caps it at `/proc/sys/fs/pipe-max-size` for non-root users.
const PIPE_SIZE: usize = 1024 * 1024;

/// A pipe used as the in-kernel buffer of one direction.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill; the flags are constants.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else; OwnedFd takes
        // sole ownership and closes them on drop.
        #[allow(unsafe_code)]
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Enlarging may be refused (pipe-max-size); the default 64 KiB pipe still works, slower.
        // SAFETY: fcntl on an fd we own, with an integer argument.
        #[allow(unsafe_code)]
        let size = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let capacity = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

/// `splice` between two fds, at most `len` bytes, never blocking on the pipe.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call (owned by the caller's streams and
    // pipe); null offsets mean "current position", as sockets and pipes require.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on an fd the caller keeps open; no pointers involved.
    #[allow(unsafe_code)]
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown on an open socket fd; failure (already closed by the peer) is harmless.
    #[allow(unsafe_code)]
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Forwards between `downstream` and `upstream` with splice until both directions end, one fails,
/// or nothing moves for `idle_timeout`.
pub async fn bidirectional(
    downstream: TcpStream,
    upstream: TcpStream,
    idle_timeout: Option<Duration>,
    counters: &ListenerCounters,
    moved: &Moved,
    series: Option<&TcpMetrics>,
) -> Result<(), CopyError> {
    set_nonblocking(downstream.as_raw_fd()).map_err(CopyError::Io)?;
    set_nonblocking(upstream.as_raw_fd()).map_err(CopyError::Io)?;
    let (up_pipe, down_pipe) = (
        Pipe::new().map_err(CopyError::Io)?,
        Pipe::new().map_err(CopyError::Io)?,
    );
    let last_activity = Cell::new(Instant::now());
    let upload = one_way(
        &downstream,
        &upstream,
        &up_pipe,
        Tally::received(counters, moved, series),
        &last_activity,
    );
    let download = one_way(
        &upstream,
        &downstream,
        &down_pipe,
        Tally::sent(counters, moved, series),
        &last_activity,
    );
    let both = async {
        let mut upload = pin!(upload);
        let mut download = pin!(download);
        monoio::select! {
            result = &mut upload => {
                result?;
                download.await
            }
            result = &mut download => {
                result?;
                upload.await
            }
        }
    };
    let Some(idle) = idle_timeout else {
        return both.await.map_err(CopyError::Io);
    };
    monoio::select! {
        result = both => result.map_err(CopyError::Io),
        () = super::copy::idle_expired(&last_activity, idle) => {
            counters.idle_timeouts.inc();
            Err(CopyError::Idle(idle))
        }
    }
}

/// One direction: socket → pipe as much as is readable, then pipe → socket until the pipe is empty.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    bytes: Tally<'_>,
    last_activity: &Cell<Instant>,
) -> io::Result<()> {
    let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
    loop {
        let filled = match splice(from_fd, pipe.write.as_raw_fd(), pipe.capacity) {
            Ok(0) => {
                // End of stream: pass the FIN on, keep the other direction open.
                shutdown_write(to_fd);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                from.readable(false).await?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        last_activity.set(Instant::now());
        bytes.add(filled as u64);
        let mut left = filled;
        while left > 0 {
            match splice(pipe.read.as_raw_fd(), to_fd, left) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable(false).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        last_activity.set(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn splice_moves_bytes_through_a_pipe() {
        // Exercises pipe2, F_SETPIPE_SZ and splice (the unsafe calls of this module).
        let pipe = Pipe::new().expect("pipe");
        assert!(pipe.capacity >= 64 * 1024);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.write_all(b"hello splice").expect("write");
        let mut moved = 0;
        for _ in 0..1000 {
            moved = splice(server.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity).unwrap_or(0);
            if moved > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(moved, 12);
        let mut out = [0u8; 32];
        let mut read_end = std::fs::File::from(pipe.read.try_clone().expect("dup"));
        let n = read_end.read(&mut out).expect("read pipe");
        assert_eq!(&out[..n], b"hello splice");
        set_nonblocking(server.as_raw_fd()).expect("nonblocking");
        shutdown_write(server.as_raw_fd());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("FIN arrives");
        assert!(rest.is_empty());
    }
}
