//! Bytes between an HTTP/2 stream and a local TCP/TLS connection, for both ends of a tunnel.
//!
//! Two directions run side by side until both have ended, one fails, or the close signal fires:
//! - tunnel → local: each DATA frame is written out, and only then released to flow control,
//!   so the peer can never have more in flight than the stream window. END_STREAM becomes FIN.
//! - local → tunnel: a read of up to [`CHUNK`] bytes, sent as the peer's window grants
//!   capacity (never queued beyond it). EOF becomes END_STREAM.
//!
//! No copy in user space on a plain local connection: DATA frames' `Bytes` are written to the
//! socket as they are, and a local read lands in a `BytesMut` whose filled part is handed to
//! `h2` as `Bytes` (the allocation comes back for the next read once `h2` has sent it). A TLS
//! local connection goes through the session's buffers.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};

use crate::event::Signal;
use crate::tls::transport::{ReadHalf, Transport, WriteHalf};

/// Largest read from the local connection.
const CHUNK: usize = 256 * 1024;

/// How a tunnel stream ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions ended with END_STREAM and FIN.
    Done,
    /// The close signal fired (the live authorization re-check): stream reset with CANCEL.
    Revoked,
    /// The tunnel side failed or its peer reset the stream.
    Tunnel(h2::Error),
    /// The local connection failed (reset, broken pipe): stream reset with CANCEL.
    Local(io::Error),
}

impl Ended {
    /// Whether both directions ended cleanly.
    pub fn is_done(&self) -> bool {
        matches!(self, Ended::Done)
    }
}

/// What a tunnel stream moved, and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes received through the tunnel and written to the local connection.
    pub from_tunnel: u64,
    /// Bytes read from the local connection and sent through the tunnel.
    pub into_tunnel: u64,
    /// How it ended.
    pub ended: Ended,
}

/// Copies between the stream (`send`, `recv`) and `local` until both directions end, one fails,
/// or `close` fires.
pub(crate) async fn run(
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    local: Transport,
    close: Option<&Signal>,
) -> Outcome {
    let (mut read, mut write) = local.split();
    let from_tunnel = Cell::new(0u64);
    let into_tunnel = Cell::new(0u64);
    let result = {
        let mut inbound = pin!(tunnel_to_local(&mut recv, &mut write, &from_tunnel));
        let mut outbound = pin!(local_to_tunnel(&mut read, &mut send, &into_tunnel));
        let mut revoked = pin!(async {
            match close {
                Some(signal) => signal.wait().await,
                None => std::future::pending().await,
            }
        });
        let (mut inbound_done, mut outbound_done) = (false, false);
        poll_fn(|cx| {
            if revoked.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Ended::Revoked));
            }
            if !inbound_done && let Poll::Ready(result) = inbound.as_mut().poll(cx) {
                result?;
                inbound_done = true;
            }
            if !outbound_done && let Poll::Ready(result) = outbound.as_mut().poll(cx) {
                result?;
                outbound_done = true;
            }
            if inbound_done && outbound_done {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    };
    let ended = match result {
        Ok(()) => Ended::Done,
        Err(ended) => {
            if matches!(ended, Ended::Revoked | Ended::Local(_)) {
                send.send_reset(Reason::CANCEL);
            }
            ended
        }
    };
    // The halves drop here: the local connection closes.
    Outcome {
        from_tunnel: from_tunnel.get(),
        into_tunnel: into_tunnel.get(),
        ended,
    }
}

/// DATA frames to the local connection; END_STREAM to FIN.
async fn tunnel_to_local(
    recv: &mut RecvStream,
    write: &mut WriteHalf,
    moved: &Cell<u64>,
) -> Result<(), Ended> {
    loop {
        match poll_fn(|cx| recv.poll_data(cx)).await {
            None => {
                // The peer may have gone already; its FIN is all that is left to give.
                return match write.shutdown().await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                    Err(e) => Err(Ended::Local(e)),
                };
            }
            Some(Err(e)) => return Err(Ended::Tunnel(e)),
            Some(Ok(data)) => {
                let n = data.len();
                if n == 0 {
                    continue;
                }
                write.write_bytes(data).await.map_err(Ended::Local)?;
                moved.set(moved.get() + n as u64);
                // Only now may the peer send more.
                recv.flow_control()
                    .release_capacity(n)
                    .map_err(Ended::Tunnel)?;
            }
        }
    }
}

/// Local bytes to DATA frames within the peer's window; EOF to END_STREAM.
async fn local_to_tunnel(
    read: &mut ReadHalf,
    send: &mut SendStream<Bytes>,
    moved: &Cell<u64>,
) -> Result<(), Ended> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        // A peer that resets the stream while the local side is quiet is noticed here.
        let n = monoio::select! {
            read = read.read_bytes(&mut buf, CHUNK) => read.map_err(Ended::Local)?,
            reset = poll_fn(|cx| send.poll_reset(cx)) => {
                return Err(match reset {
                    Ok(reason) => Ended::Tunnel(h2::Error::from(reason)),
                    Err(e) => Ended::Tunnel(e),
                });
            }
        };
        if n == 0 {
            return send.send_data(Bytes::new(), true).map_err(Ended::Tunnel);
        }
        // The bytes read, without a copy: `buf` gets its allocation back once h2 has sent them.
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(e)) => return Err(Ended::Tunnel(e)),
                None => return Err(Ended::Tunnel(h2::Error::from(Reason::STREAM_CLOSED))),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(Ended::Tunnel)?;
        }
        moved.set(moved.get() + n as u64);
    }
}
