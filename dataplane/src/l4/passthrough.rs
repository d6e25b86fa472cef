//! TLS passthrough: route a connection by the SNI of its ClientHello without terminating TLS.
//!
//! [`serve`] reads from the client until [`sni::parse`] decides (a whole ClientHello, however
//! many records and reads it spans, or bytes that are not one), within the listener's
//! `request_header_timeout` counted from accept and [`sni::MAX_HELLO`] bytes, then picks the
//! cluster: the SNI route, else the listener's `cluster` (the default), else the connection is
//! closed. Every byte read is forwarded to the chosen upstream first, untouched: the proxy never
//! holds a key and never sees plaintext.
//!
//! What is counted (per listener, `ringmesh_listener_sni_*`): routed by an SNI route, sent to the
//! default (no SNI, an SNI no route names, not a ClientHello, or the client ended its side after
//! part of one), closed for want of a default, and closed because the ClientHello did not arrive
//! within the timeout (as Envoy's TLS inspector does when its listener-filter timeout passes).
//! A client that resets, or closes without sending a byte, is simply closed.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;
use tracing::debug;

use super::sni::{self, Hello, ServerName};
use crate::core::Core;
use crate::snapshot::{Listener, PassthroughSettings, Snapshot};

/// Bytes asked of each read while the ClientHello comes in: most arrive in one read of this.
const READ_SIZE: usize = 4096;

/// Why the ClientHello read ended without a decision of [`sni::parse`].
enum Ended {
    /// The client closed its side (FIN) first.
    Closed,
    /// The connection failed (reset).
    Failed,
    /// The timeout passed.
    TimedOut,
}

/// Reads the ClientHello of a connection on a passthrough listener, picks its cluster and
/// forwards it there with the bytes read.
pub async fn serve(
    core: &Core,
    snapshot: &Snapshot,
    listener: &Listener,
    listener_name: &Rc<str>,
    passthrough: &PassthroughSettings,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let counters = listener.stats.workers.slot(core.id);
    let deadline = Instant::now() + passthrough.hello_timeout;
    let mut buf = Vec::with_capacity(READ_SIZE);
    let hello = loop {
        match sni::parse(&buf) {
            Hello::Incomplete => {}
            decided => break Ok(decided),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(Ended::TimedOut);
        }
        let spare = READ_SIZE.min(sni::MAX_HELLO.saturating_sub(buf.len()));
        // Never read past the size limit: the bytes beyond it would still have to be forwarded,
        // and the parser would not look at them.
        let room = spare.max(1);
        match crate::net::read_within(&mut downstream, &mut buf, room, room, left).await {
            Ok(0) => break Err(Ended::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => break Err(Ended::TimedOut),
            Err(_) => break Err(Ended::Failed),
        }
    };
    // A client that is gone, or that closed without a byte, has nothing to forward.
    if matches!(hello, Err(Ended::Failed))
        || (buf.is_empty() && matches!(hello, Err(Ended::Closed)))
    {
        counters.bytes_received.add(buf.len() as u64);
        debug!(listener = %listener.name, %peer, read = buf.len(), "client gone before its ClientHello");
        return;
    }
    let (name, why): (Option<ServerName>, &str) = match hello {
        Ok(Hello::Complete(Some(name))) => (Some(name), "no SNI route"),
        Ok(Hello::Complete(None)) => (None, "no SNI"),
        Ok(Hello::Invalid(why)) => (None, why),
        Ok(Hello::Incomplete) | Err(Ended::Closed | Ended::Failed) => {
            (None, "the client ended its side before a whole ClientHello")
        }
        Err(Ended::TimedOut) => {
            counters.sni_timeouts.inc();
            // Bytes read count as received even though they go nowhere.
            counters.bytes_received.add(buf.len() as u64);
            debug!(listener = %listener.name, %peer, read = buf.len(), "no whole ClientHello within the timeout; closing");
            return;
        }
    };
    let routed = name.and_then(|n| passthrough.routes.find(n.as_str()));
    let sni = name.as_ref().map_or("", ServerName::as_str);
    let cluster = match (routed, listener.cluster) {
        (Some(index), _) => {
            counters.sni_routed.inc();
            index
        }
        (None, Some(default)) => {
            counters.sni_defaulted.inc();
            debug!(listener = %listener.name, %peer, sni, reason = why, "to the default cluster");
            default
        }
        (None, None) => {
            counters.sni_no_route.inc();
            counters.bytes_received.add(buf.len() as u64);
            let security = crate::tls::SecurityPolicy::None;
            super::account::no_route(core, listener, peer, sni, security, buf.len() as u64);
            debug!(listener = %listener.name, %peer, sni, reason = why, "no SNI route and no default cluster; closing");
            return;
        }
    };
    let Some(cluster) = snapshot.clusters.get(cluster) else {
        return;
    };
    debug!(listener = %listener.name, %peer, sni, cluster = %cluster.name, "TLS passthrough");
    let inbound = super::Inbound {
        stream: crate::tls::transport::Transport::Plain(downstream),
        peer,
        initial: buf,
        sni: name.map(|n| n.as_str().into()),
        // Not terminated: the proxy sees no certificate.
        principal: None,
        security: crate::tls::SecurityPolicy::None,
    };
    super::forward(core, snapshot, listener, listener_name, cluster, inbound).await;
}
