//! Node mode's transparent capture: the sockets and the rules that bring connections which local
//! workloads open (and plaintext sent to them) to ringmesh, and the connections ringmesh opens to
//! workloads with the original source address.
//!
//! - [`original_destination`]: where a captured connection was going. With `redirect` (nftables
//!   REDIRECT, a NAT) the kernel rewrote the destination and keeps the original in conntrack,
//!   read with `SO_ORIGINAL_DST`; with `tproxy` the socket was never rewritten and its local
//!   address *is* the original destination.
//! - [`set_transparent`]: `IP_TRANSPARENT`, which [`crate::listener::bind_per_worker`] sets on
//!   `[node]` listeners in `tproxy` mode (a TPROXY'd connection is addressed to a non-local
//!   address, which only a transparent socket may accept).
//! - [`connect_from`]: a connection to a workload that keeps the source pod's address
//!   (`IP_TRANSPARENT` bound to it) and carries `SO_MARK`, so that the capture rules let it pass
//!   and route its replies back to ringmesh (see [`rules`]).
//!
//! All of it runs on both I/O drivers: sockets are made non-blocking with `socket2`, and the
//! connect completes by waiting for writability through monoio, which is a poll on either driver.

pub mod rules;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use config_schema::CaptureMode;
use monoio::net::TcpStream;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// The destination a captured connection was opened to, before the capture rules sent it here.
///
/// `redirect`: `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6), read from conntrack.
/// `tproxy`: the accepted socket's local address.
pub fn original_destination(stream: &TcpStream, mode: CaptureMode) -> io::Result<SocketAddr> {
    original_destination_of(SockRef::from(&borrow_fd(stream)), mode)
}

/// The descriptor of a monoio stream, for socket options (monoio implements `AsRawFd` only).
#[allow(unsafe_code)]
fn borrow_fd(stream: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `stream`, and the returned borrow cannot outlive
    // `stream` (same lifetime), so it stays open for as long as it is used; a `BorrowedFd`
    // never closes it.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// [`original_destination`] for any socket (a std stream in tests, a monoio one in workers).
pub fn original_destination_of(socket: SockRef<'_>, mode: CaptureMode) -> io::Result<SocketAddr> {
    let address = match mode {
        CaptureMode::Tproxy => socket.local_addr()?,
        CaptureMode::Redirect => {
            let local = socket.local_addr()?;
            if local.is_ipv6() && !is_v4_mapped(&local) {
                socket.original_dst_v6()?
            } else {
                socket.original_dst_v4()?
            }
        }
    };
    as_socket_addr(&address)
}

fn is_v4_mapped(address: &SockAddr) -> bool {
    match address.as_socket() {
        Some(SocketAddr::V6(v6)) => v6.ip().to_ipv4_mapped().is_some(),
        _ => false,
    }
}

fn as_socket_addr(address: &SockAddr) -> io::Result<SocketAddr> {
    address
        .as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// `IP_TRANSPARENT` (or its IPv6 twin) for a socket of `address`'s family. Needs CAP_NET_ADMIN.
pub(crate) fn set_transparent(socket: &Socket, address: SocketAddr) -> io::Result<()> {
    match address {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true),
    }
}

/// Connects to `target` within `timeout`, from `source` (any port) when given, with `SO_MARK` =
/// `mark` and TCP_NODELAY.
///
/// With a source, the socket is `IP_TRANSPARENT` so it may bind an address this host does not
/// own: the source pod's, so the workload sees its real peer. The capture rules route the replies
/// to such sockets locally (`socket transparent 1`). A mark of 0 sets none.
pub async fn connect_from(
    source: Option<IpAddr>,
    target: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if mark != 0 {
        socket.set_mark(mark)?;
    }
    if let Some(source) = source {
        let source = SocketAddr::new(same_family(source, target)?, 0);
        set_transparent(&socket, source)?;
        socket.bind(&source.into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    // Writable means connected or failed; SO_ERROR says which. Not relaxed: on epoll the first
    // readiness state is a guess, and only a real poll knows.
    monoio::time::timeout(timeout, stream.writable(false))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    if let Some(e) = SockRef::from(&borrow_fd(&stream)).take_error()? {
        return Err(e);
    }
    Ok(stream)
}

/// `source` in `target`'s family: an IPv4 source for an IPv6 target is written v4-mapped.
fn same_family(source: IpAddr, target: SocketAddr) -> io::Result<IpAddr> {
    match (source, target) {
        (IpAddr::V4(_), SocketAddr::V4(_)) | (IpAddr::V6(_), SocketAddr::V6(_)) => Ok(source),
        (IpAddr::V4(v4), SocketAddr::V6(_)) => Ok(IpAddr::V6(v4.to_ipv6_mapped())),
        (IpAddr::V6(v6), SocketAddr::V4(_)) => {
            v6.to_ipv4_mapped().map(IpAddr::V4).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "IPv6 source for an IPv4 target",
                )
            })
        }
    }
}

/// The unspecified address of `address`'s family, to bind capture listeners on every address.
pub fn unspecified_like(address: SocketAddr) -> IpAddr {
    match address {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener as StdListener;

    use super::*;
    use crate::driver::{self, IoDriver};

    fn drivers() -> Vec<IoDriver> {
        let mut drivers = vec![IoDriver::Epoll];
        if let Ok(choice) = driver::choose(
            config_schema::IoMode::Uring,
            config_schema::UringSetup::CoopTaskrun,
            64,
        ) {
            drivers.push(choice.driver);
        }
        drivers
    }

    /// A server on loopback that answers each connection with its peer address, then closes.
    fn peer_echo() -> (SocketAddr, std::thread::JoinHandle<()>) {
        let server = StdListener::bind("127.0.0.1:0").expect("bind");
        let address = server.local_addr().expect("local address");
        let handle = std::thread::spawn(move || {
            if let Ok((mut stream, peer)) = server.accept() {
                let _ = stream.write_all(peer.to_string().as_bytes());
            }
        });
        (address, handle)
    }

    /// Reads until the peer closes.
    async fn read_all(stream: &mut TcpStream) -> String {
        use monoio::io::AsyncReadRent;
        let mut text = Vec::new();
        for _ in 0..64 {
            let (read, buffer) = stream.read(Vec::with_capacity(256)).await;
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => text.extend_from_slice(&buffer),
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn connect_from_binds_the_source_and_sets_mark_and_nodelay_on_both_drivers() {
        for io in drivers() {
            let (address, server) = peer_echo();
            let text = driver::block_on(io, 64, || async move {
                // 127.0.0.2 is not an address of this host's sockets until bound: IP_TRANSPARENT
                // (root) makes the bind legal anywhere; on loopback every 127/8 is local anyway.
                let source: IpAddr = "127.0.0.2".parse().expect("ip");
                let mut stream = connect_from(Some(source), address, 0x539, Duration::from_secs(5))
                    .await
                    .expect("connect");
                let fd = borrow_fd(&stream);
                let socket = SockRef::from(&fd);
                assert_eq!(socket.mark().expect("mark"), 0x539, "{io}");
                assert!(socket.tcp_nodelay().expect("nodelay"), "{io}");
                assert!(socket.ip_transparent_v4().expect("transparent"), "{io}");
                read_all(&mut stream).await
            })
            .expect("runtime");
            server.join().expect("server");
            assert!(text.starts_with("127.0.0.2:"), "{io}: peer was {text}");
        }
    }

    #[test]
    fn connect_from_reports_refusal_and_timeout_on_both_drivers() {
        for io in drivers() {
            // A port nobody listens on: bind, note it, close.
            let refused = StdListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port");
            let result = driver::block_on(io, 64, || async move {
                connect_from(None, refused, 0, Duration::from_secs(5)).await
            })
            .expect("runtime");
            let Err(error) = result else {
                panic!("{io}: connected to a closed port")
            };
            assert_eq!(
                error.kind(),
                io::ErrorKind::ConnectionRefused,
                "{io}: {error}"
            );

            // A full backlog never completes the handshake: the timeout answers.
            let blackhole = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            blackhole
                .bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
                .expect("bind");
            blackhole.listen(0).expect("listen");
            let address = blackhole
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .expect("addr");
            let mut fillers = Vec::new();
            for _ in 0..4 {
                if let Ok(s) =
                    std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                {
                    fillers.push(s);
                }
            }
            let result = driver::block_on(io, 64, || async move {
                connect_from(None, address, 0, Duration::from_millis(300)).await
            })
            .expect("runtime");
            let Err(error) = result else {
                panic!("{io}: connected through a full backlog")
            };
            assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{io}: {error}");
        }
    }

    #[test]
    fn a_tproxy_listener_is_transparent_and_its_destination_is_the_local_address() {
        let listener = crate::listener::bind_one("127.0.0.1:0".parse().expect("addr"), None, true)
            .expect("transparent bind (root)");
        assert!(
            SockRef::from(&listener)
                .ip_transparent_v4()
                .expect("getsockopt")
        );
        let address = listener.local_addr().expect("local");
        let client = std::net::TcpStream::connect(address).expect("connect");
        listener.set_nonblocking(false).expect("blocking");
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(
            original_destination_of(SockRef::from(&accepted), CaptureMode::Tproxy)
                .expect("local address"),
            address
        );
        drop(client);
    }

    #[test]
    fn original_destination_reads_a_monoio_stream_on_both_drivers() {
        for io in drivers() {
            let listener = StdListener::bind("127.0.0.1:0").expect("bind");
            let address = listener.local_addr().expect("local");
            let client = std::net::TcpStream::connect(address).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            let got = driver::block_on(io, 64, || async move {
                accepted.set_nonblocking(true).expect("nonblocking");
                let stream = TcpStream::from_std(accepted).expect("register");
                original_destination(&stream, CaptureMode::Tproxy)
            })
            .expect("runtime");
            assert_eq!(got.expect("address"), address, "{io}");
            drop(client);
        }
    }

    #[test]
    fn sources_are_written_in_the_target_family() {
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        let v6_target: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(
            same_family(v4, v6_target).expect("mapped"),
            "::ffff:10.0.0.1".parse::<IpAddr>().expect("ip")
        );
        let v6: IpAddr = "fd00::1".parse().expect("ip");
        assert!(same_family(v6, "10.0.0.2:80".parse().expect("addr")).is_err());
    }
}
