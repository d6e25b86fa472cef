//! Binary upgrade without refusing a connection: a new `ringmesh` process takes over the
//! listening sockets of the running one, as Envoy's hot restart, HAProxy's `-x` and Pingora's
//! upgrade socket do.
//!
//! Why hand sockets over rather than bind new ones: every worker's socket of a listener is in
//! the kernel's `SO_REUSEPORT` group and has its own accept queue; when a process closes its
//! socket, the connections waiting in that queue are reset. So the new process must hold *the
//! same* sockets; then the old process closing its copies closes nothing, and queued connections
//! are accepted by whichever process gets to them first.
//!
//! The running process serves a unix `SOCK_SEQPACKET` socket (`[runtime] upgrade_socket` or
//! `--upgrade-socket`; mode 0600, and only a peer of the same user, or root, is served).
//! `ringmesh --config F --upgrade-from PATH` then runs:
//!
//! ```text
//! new process                                   old process
//!   parse and validate F, start workers
//!   connect to PATH, send Hello        ──────▶  copy every listening socket (all workers')
//!                                      ◀──────  Listener {name, addresses} + fds (SCM_RIGHTS), ...
//!                                      ◀──────  End
//!   apply F: adopt sockets whose name and
//!   configured address match, bind the rest;
//!   wait until every worker accepts
//!   send Ready                          ──────▶  close the admin API and the upgrade socket
//!                                      ◀──────  Done
//!   bind the admin API and upgrade socket        stop accepting, drain, exit
//! ```
//!
//! Until `Ready`, the old process serves as before: if the new one fails (bad config, crash), it
//! keeps running and says so in its log. A worker-count change is handled by `listener::adopt`
//! (extra sockets are shared out, missing ones joined to the group).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{error, info, warn};

use crate::reload::{ControlRequest, ListenerSockets};

/// Protocol version, in `Hello`.
const VERSION: u32 = 1;
/// File descriptors per message; the kernel's limit (`SCM_MAX_FD`) is 253.
const FDS_PER_MESSAGE: usize = 200;
/// Largest message.
const MAX_MESSAGE: usize = 64 * 1024;
/// How long each side waits for the other's next message during the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the old process waits for the new one to start serving after the handover.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One protocol message; file descriptors travel alongside as `SCM_RIGHTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// New → old: asks for the sockets.
    Hello {
        /// Protocol version.
        version: u32,
        /// The new process.
        pid: u32,
    },
    /// Old → new: one listener, with `sockets` descriptors attached (a listener with more than
    /// [`FDS_PER_MESSAGE`] sockets is sent in several messages with the same name).
    Listener {
        name: String,
        configured: SocketAddr,
        local: SocketAddr,
        sockets: usize,
    },
    /// Old → new: all listeners sent.
    End { listeners: usize },
    /// New → old: serving on the sockets; stop.
    Ready,
    /// Old → new: admin API and upgrade socket closed; draining.
    Done,
    /// Either way: giving up.
    Error { message: String },
}

/// A connected upgrade channel.
#[derive(Debug)]
struct Channel(Socket);

impl Channel {
    fn send(&self, message: &Message, fds: &[RawFd]) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
        Ok(())
    }

    fn recv(&self, timeout: Duration) -> io::Result<(Message, Vec<OwnedFd>)> {
        self.0.set_read_timeout(Some(timeout))?;
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = recvmsg::<()>(
            self.0.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        // Own every descriptor first, so that each is closed on any error below.
        let mut fds = Vec::new();
        for cmsg in received.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel has just installed `fd` in this process's table for this
                    // SCM_RIGHTS message; nothing else knows the number yet, so this is its only
                    // owner and closing it on drop is right.
                    #[allow(unsafe_code)]
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if received
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upgrade message truncated",
            ));
        }
        let length = received.bytes;
        if length == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other process closed the upgrade connection",
            ));
        }
        let message = serde_json::from_slice(&buffer[..length])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((message, fds))
    }
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

// === the running (old) process ===

/// Serves the upgrade socket at `path` on its own thread until a new process has taken over.
pub fn serve(path: &Path, control: flume::Sender<ControlRequest>) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = seqpacket()?;
    listener.bind(&SockAddr::unix(path)?)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    listener.listen(4)?;
    let path = path.to_path_buf();
    info!(socket = %path.display(), "upgrade socket listening");
    std::thread::Builder::new()
        .name("ringmesh-upgrade".into())
        .spawn(move || {
            loop {
                let connection = match listener.accept() {
                    Ok((connection, _)) => connection,
                    Err(e) => {
                        warn!(error = %e, "upgrade socket: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if let Err(e) = authorized(&connection) {
                    warn!(error = %e, "upgrade socket: refused a peer");
                    continue;
                }
                match hand_over(Channel(connection), &control, &path) {
                    Ok(()) => return,
                    Err(e) => error!(
                        error = %e,
                        "binary upgrade aborted; this process keeps serving"
                    ),
                }
            }
        })?;
    Ok(())
}

/// Only the same user (or root) may take the sockets.
fn authorized(connection: &Socket) -> io::Result<()> {
    let peer =
        nix::sys::socket::getsockopt(connection, nix::sys::socket::sockopt::PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid() == me || peer.uid() == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("peer uid {} is not this process's uid {me}", peer.uid()),
        ))
    }
}

fn hand_over(
    channel: Channel,
    control: &flume::Sender<ControlRequest>,
    path: &Path,
) -> io::Result<()> {
    let (hello, _) = channel.recv(STEP_TIMEOUT)?;
    let Message::Hello { version, pid } = hello else {
        return Err(protocol_error("expected Hello", &hello));
    };
    if version != VERSION {
        let message = format!("protocol version {version} is not {VERSION}");
        let _ = channel.send(
            &Message::Error {
                message: message.clone(),
            },
            &[],
        );
        return Err(io::Error::new(io::ErrorKind::InvalidData, message));
    }
    info!(
        pid,
        "binary upgrade: a new process asks for the listening sockets"
    );
    let (reply, answer) = flume::bounded(1);
    control
        .send(ControlRequest::Handover { reply })
        .map_err(|_| io::Error::other("control thread gone"))?;
    let listeners = answer
        .recv()
        .map_err(|_| io::Error::other("control thread gone"))??;
    let mut sent = 0;
    for l in &listeners {
        for chunk in l.sockets.chunks(FDS_PER_MESSAGE) {
            let fds: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
            let message = Message::Listener {
                name: l.name.clone(),
                configured: l.configured,
                local: l.local,
                sockets: fds.len(),
            };
            channel.send(&message, &fds)?;
            sent += fds.len();
        }
    }
    channel.send(
        &Message::End {
            listeners: listeners.len(),
        },
        &[],
    )?;
    // Our copies close here; the workers' sockets are untouched.
    drop(listeners);
    info!(
        pid,
        listeners = sent,
        "binary upgrade: sockets sent; waiting for the new process to serve"
    );
    let (ready, _) = channel.recv(READY_TIMEOUT)?;
    if ready != Message::Ready {
        return Err(protocol_error("expected Ready", &ready));
    }
    info!(
        pid,
        "binary upgrade: the new process serves; this one stops accepting and drains"
    );
    let (reply, answer) = flume::bounded(1);
    control
        .send(ControlRequest::HandedOver { reply })
        .map_err(|_| io::Error::other("control thread gone"))?;
    let _ = answer.recv();
    // The new process binds the path next; this thread returns and closes the listener.
    let _ = std::fs::remove_file(path);
    channel.send(&Message::Done, &[])?;
    Ok(())
}

fn protocol_error(expected: &str, got: &Message) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upgrade protocol: {expected}, got {got:?}"),
    )
}

// === the new process ===

/// The new process's side of an upgrade in progress.
#[derive(Debug)]
pub struct Takeover {
    channel: Channel,
    path: PathBuf,
}

/// Connects to the running process's upgrade socket at `path` and receives every listening
/// socket it has, grouped by listener.
pub fn take_over(path: &Path) -> io::Result<(Takeover, Vec<ListenerSockets>)> {
    let socket = seqpacket()?;
    socket.connect(&SockAddr::unix(path)?)?;
    let channel = Channel(socket);
    channel.send(
        &Message::Hello {
            version: VERSION,
            pid: std::process::id(),
        },
        &[],
    )?;
    let mut listeners: Vec<ListenerSockets> = Vec::new();
    loop {
        let (message, fds) = channel.recv(STEP_TIMEOUT)?;
        match message {
            Message::Listener {
                name,
                configured,
                local,
                sockets,
            } => {
                if fds.len() != sockets {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "listener {name}: {} descriptors for {sockets} sockets",
                            fds.len()
                        ),
                    ));
                }
                let received = fds
                    .into_iter()
                    .map(|fd| listening_socket(fd, local))
                    .collect::<io::Result<Vec<_>>>()?;
                match listeners.iter_mut().find(|l| l.name == name) {
                    Some(l) => l.sockets.extend(received),
                    None => listeners.push(ListenerSockets {
                        name,
                        configured,
                        local,
                        sockets: received,
                    }),
                }
            }
            Message::End { .. } => break,
            Message::Error { message } => {
                return Err(io::Error::other(format!(
                    "the running process refused: {message}"
                )));
            }
            other => return Err(protocol_error("expected Listener or End", &other)),
        }
    }
    for l in &listeners {
        info!(listener = %l.name, address = %l.local, sockets = l.sockets.len(), "binary upgrade: received listening sockets");
    }
    Ok((
        Takeover {
            channel,
            path: path.to_path_buf(),
        },
        listeners,
    ))
}

/// Checks that a received descriptor is a TCP listening socket on `local`.
fn listening_socket(fd: OwnedFd, local: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::from(fd);
    let is_listener = socket.is_listener()?;
    let address = socket.local_addr()?.as_socket();
    if !is_listener || address != Some(local) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("received a descriptor that is not a socket listening on {local}"),
        ));
    }
    Ok(socket.into())
}

impl Takeover {
    /// Tells the old process that this one serves, and waits until it has released its admin
    /// address and upgrade socket (it then drains and exits on its own).
    pub fn finish(self) -> io::Result<PathBuf> {
        self.channel.send(&Message::Ready, &[])?;
        let (done, _) = self.channel.recv(STEP_TIMEOUT)?;
        if done != Message::Done {
            return Err(protocol_error("expected Done", &done));
        }
        info!(socket = %self.path.display(), "binary upgrade: the previous process stopped accepting and drains");
        Ok(self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pair() -> (Channel, Channel) {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None).expect("pair");
        (Channel(a), Channel(b))
    }

    #[test]
    fn listening_sockets_cross_to_the_other_side_and_keep_their_queue() {
        let (old, new) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = listener.local_addr().expect("addr");
        // A connection waits in the queue before the handover.
        let mut client = std::net::TcpStream::connect(local).expect("connect");
        let message = Message::Listener {
            name: "web".into(),
            configured: "127.0.0.1:0".parse().expect("addr"),
            local,
            sockets: 1,
        };
        old.send(&message, &[listener.as_raw_fd()]).expect("send");
        // The sender closes its copy: the socket and its queue live on in the receiver's.
        drop(listener);
        let (received, fds) = new.recv(Duration::from_secs(5)).expect("recv");
        assert_eq!(received, message);
        assert_eq!(fds.len(), 1);
        let adopted = listening_socket(fds.into_iter().next().expect("fd"), local).expect("ok");
        let (mut server, _) = adopted
            .accept()
            .expect("the queued connection is still there");
        client.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn descriptors_that_are_not_the_announced_listener_are_refused() {
        let (old, new) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let elsewhere: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        old.send(&Message::Ready, &[listener.as_raw_fd()])
            .expect("send");
        let (_, fds) = new.recv(Duration::from_secs(5)).expect("recv");
        let fd = fds.into_iter().next().expect("fd");
        assert!(listening_socket(fd, elsewhere).is_err());
        let (a, _b) = pair();
        assert!(listening_socket(OwnedFd::from(a.0), elsewhere).is_err());
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_message() {
        let (old, new) = pair();
        drop(old);
        let error = new.recv(Duration::from_secs(5)).expect_err("eof");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_whole_exchange_runs_between_two_threads() {
        let dir = std::env::temp_dir().join(format!("ringmesh-upgrade-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("upgrade.sock");
        let (control, requests) = flume::unbounded();
        serve(&path, control).expect("serve");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = listener.local_addr().expect("addr");
        // The old process's control thread.
        let old = std::thread::spawn(move || {
            let mut handed_over = false;
            while let Ok(request) = requests.recv_timeout(Duration::from_secs(20)) {
                match request {
                    ControlRequest::Handover { reply } => {
                        // Two workers' sockets, as the reloader hands them over.
                        let _ = reply.send(Ok(vec![ListenerSockets {
                            name: "web".into(),
                            configured: "127.0.0.1:0".parse().expect("addr"),
                            local,
                            sockets: vec![
                                listener.try_clone().expect("dup"),
                                listener.try_clone().expect("dup"),
                            ],
                        }]));
                    }
                    ControlRequest::HandedOver { reply } => {
                        handed_over = true;
                        let _ = reply.send(());
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            handed_over
        });
        let (takeover, listeners) = take_over(&path).expect("take over");
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].name, "web");
        assert_eq!(listeners[0].sockets.len(), 2);
        assert_eq!(takeover.finish().expect("finish"), path);
        assert!(old.join().expect("old"), "the old side was told to stop");
        assert!(!path.exists(), "the old process removed its upgrade socket");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
