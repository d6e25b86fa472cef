//! Client-side helpers: connections with timeouts, byte-exact exchanges, waiting for a close, and
//! client threads pinned to cores.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Read and write timeout of client sockets: a test that waits this long has failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects with a timeout and sets read/write timeouts, so that no test blocks forever.
pub fn connect(address: SocketAddr) -> TcpStream {
    try_connect(address).unwrap_or_else(|e| panic!("connect to {address}: {e}"))
}

/// Like [`connect`], returning the error.
pub fn try_connect(address: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `len` deterministic pseudo-random bytes; different seeds give different bytes, so a payload
/// that arrives shifted, truncated or from the wrong connection does not compare equal.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64*: cheap, and no run of equal bytes that would hide an offset error.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Writes `message` and expects exactly the same bytes back (through an echo upstream).
pub fn echo(stream: &mut TcpStream, message: &[u8]) {
    try_echo(stream, message).unwrap_or_else(|e| panic!("echo of {} bytes: {e}", message.len()));
}

/// Like [`echo`], returning what went wrong.
pub fn try_echo(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message)?;
    let mut answer = vec![0u8; message.len()];
    stream.read_exact(&mut answer)?;
    if answer != message {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "echo differs from what was sent",
        ));
    }
    Ok(())
}

/// Sends `data` then a FIN on one thread while reading everything until the peer's FIN on this
/// one; returns what was read. Both directions run at once, so neither side's buffers can fill up
/// and deadlock the exchange.
pub fn exchange(stream: &TcpStream, data: &[u8]) -> Vec<u8> {
    std::thread::scope(|scope| {
        let mut writer = stream.try_clone().expect("clone the client stream");
        let sending = scope.spawn(move || {
            writer.write_all(data)?;
            writer.shutdown(Shutdown::Write)
        });
        let received = read_to_end(stream);
        sending
            .join()
            .expect("sender thread")
            .expect("send the whole payload and a FIN");
        received
    })
}

/// Reads until end of stream; panics on an error or timeout.
pub fn read_to_end(mut stream: &TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("read to end (after {} bytes): {e}", bytes.len()));
    bytes
}

/// How the other side ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A FIN.
    Eof,
    /// A RST.
    Reset,
}

/// Waits until the peer closes `stream`, at most `timeout`; panics if bytes arrive instead or
/// nothing happens in time.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Closed {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set the read timeout");
    let mut buffer = [0u8; 4096];
    let started = Instant::now();
    let result = match stream.read(&mut buffer) {
        Ok(0) => Closed::Eof,
        Ok(n) => panic!("expected the connection to close, got {n} bytes"),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Closed::Reset,
        Err(e) => panic!(
            "expected the connection to close within {timeout:?}; after {:?}: {e}",
            started.elapsed()
        ),
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    result
}

/// True when a connect to `address` is refused now.
pub fn is_refused(address: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&address, IO_TIMEOUT),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// The cores this process may run on.
pub fn cores() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Runs `f(core)` on one thread per core, each pinned to its core, all at once; returns the
/// results in core order.
///
/// On loopback the kernel handles a SYN on the connecting thread's CPU, and ringmesh's listening
/// sockets set `SO_INCOMING_CPU`, so (since Linux 6.2) a connection made from core k is accepted
/// by the worker pinned to core k: this is how a test reaches every worker.
pub fn on_each_core<T, F>(f: F) -> Vec<(usize, T)>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let f = &f;
    std::thread::scope(|scope| {
        let threads: Vec<_> = cores()
            .into_iter()
            .map(|core| {
                let thread = scope.spawn(move || {
                    assert!(
                        core_affinity::set_for_current(core),
                        "could not pin a client thread to core {}",
                        core.id
                    );
                    f(core.id)
                });
                (core.id, thread)
            })
            .collect();
        threads
            .into_iter()
            .map(|(core, thread)| {
                let result = thread
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
                (core, result)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_deterministic_and_seeded() {
        assert_eq!(payload(1000, 1), payload(1000, 1));
        assert_ne!(payload(1000, 1), payload(1000, 2));
        let p = payload(1 << 16, 3);
        let distinct = p.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(
            distinct > 200,
            "payload bytes are spread out ({distinct} distinct)"
        );
        assert!(p.windows(2).filter(|w| w[0] == w[1]).count() < 1000);
    }

    #[test]
    fn on_each_core_runs_on_every_core() {
        let results = on_each_core(|core| core * 10);
        assert_eq!(results.len(), cores().len());
        for (core, value) in results {
            assert_eq!(value, core * 10);
        }
    }
}
