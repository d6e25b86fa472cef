//! Request mirroring: a copy of a request to a shadow cluster, whose answer nobody waits for.
//!
//! One sender for every protocol pair. The shadow request is built with the primary's (the
//! header rules of `headers.rs`, `-shadow` appended to the host, as Envoy does) in the shadow
//! cluster's own protocol, and it goes out only once the request body is complete and within
//! [`BODY_LIMIT`], with its exact length: a shadow never receives a partial
//! body under a head that promises the whole, and never waits for body bytes. Its outcome shows
//! only in the shadow cluster's counters.

use std::rc::Rc;
use std::time::Duration;

use super::body::{self, Recording};
use super::error::Failure;
use super::h1::BodyFraming;
use super::h1::client::{RequestLine, write_request_head};
use super::h2::client::write_h2_request;
use super::headers::RequestRules;
use super::request::RequestHead;
use super::upstream::{Upstream, UpstreamRequest, Wire};
use crate::core::Core;
use crate::snapshot::SnapshotRef;

/// The largest request body mirrored; bigger bodies are not mirrored at all.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// A request's shadow copy, built while the request head is at hand.
#[derive(Debug)]
pub struct Shadow {
    cluster: usize,
    request: ShadowRequest,
}

#[derive(Debug)]
enum ShadowRequest {
    /// An HTTP/1.1 head up to (not including) its framing field and final CRLF, which are
    /// written once the body's length is known.
    H1(Vec<u8>),
    /// An HTTP/2 head (`content-length` is added once known).
    H2(http::Request<()>),
}

impl Shadow {
    /// The shadow of `head` for cluster `cluster` (an index into the snapshot's clusters),
    /// speaking `wire`, addressed to `authority`. `None` if HTTP/2 cannot carry it.
    pub fn build(
        cluster: usize,
        wire: Wire,
        head: &RequestHead<'_>,
        target: &[u8],
        authority: &[u8],
        rules: &RequestRules<'_>,
        values: &mut Vec<u8>,
    ) -> Option<Box<Self>> {
        let request = match wire {
            Wire::H1 => {
                let mut bytes = Vec::with_capacity(512);
                let line = RequestLine {
                    target,
                    host: authority,
                    framing: BodyFraming::None,
                    upgrade: None,
                };
                write_request_head(&mut bytes, head, &line, rules, values);
                bytes.truncate(bytes.len().saturating_sub(2));
                ShadowRequest::H1(bytes)
            }
            Wire::H2 => ShadowRequest::H2(write_h2_request(
                head,
                target,
                authority,
                BodyFraming::None,
                rules,
                values,
            )?),
        };
        // Boxed: mirrored requests are few, and inline a shadow would grow every plan.
        Some(Box::new(Self { cluster, request }))
    }
}

/// Sends `shadow` with `body` (`None`: the request had none) on a task of its own.
pub fn send(
    core: &Rc<Core>,
    snapshot: &SnapshotRef,
    shadow: Box<Shadow>,
    body: Option<&Recording>,
) {
    let core = Rc::clone(core);
    let snapshot = snapshot.clone();
    let body = body.cloned();
    monoio::spawn(crate::contain::contained("mirror", async move {
        let _ = monoio::time::timeout(
            MIRROR_TIMEOUT,
            exchange_once(&core, &snapshot, shadow, body),
        )
        .await;
    }));
}

async fn exchange_once(
    core: &Core,
    snapshot: &SnapshotRef,
    shadow: Box<Shadow>,
    body: Option<Recording>,
) -> Result<(), Failure> {
    let Some(cluster) = snapshot.clusters.get(shadow.cluster) else {
        return Ok(());
    };
    let length = body.as_ref().map_or(0, |b| b.len() as u64);
    let framing = if length > 0 {
        BodyFraming::Length(length)
    } else {
        BodyFraming::None
    };
    let (wire, request, mut head) = match shadow.request {
        ShadowRequest::H1(mut head) => {
            if length > 0 {
                head.extend_from_slice(b"content-length: ");
                super::h1::push_decimal(&mut head, length);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            (Wire::H1, UpstreamRequest::H1(framing), head)
        }
        ShadowRequest::H2(mut request) => {
            if length > 0 {
                request.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(length),
                );
            }
            (Wire::H2, UpstreamRequest::H2(request), Vec::new())
        }
    };
    let counters = cluster.stats.slot(core.id);
    let mut upstream = Upstream::checkout(core, snapshot, cluster, wire, None, false, None).await?;
    counters.requests.inc();
    let mut pending = Vec::new();
    upstream
        .send_head(&request, &head, &[], b"", &mut pending, length == 0)
        .await?;
    head.clear();
    let complete = {
        let (mut sink, mut up_in) = upstream.split(&mut pending, framing);
        match (body.as_ref(), sink.as_mut()) {
            (Some(body), Some(sink)) if !body.is_empty() => body::replay(body, sink)
                .await
                .map_err(|_| Failure::UpstreamReset {
                    retry: super::error::Retry::No,
                })?,
            (_, Some(sink)) => body::flush(sink)
                .await
                .map_err(|_| Failure::UpstreamReset {
                    retry: super::error::Retry::No,
                })?,
            (_, None) => {}
        }
        up_in.read_head().await?;
        up_in.relay_head(false, false, |_| ())?;
        match up_in.source() {
            Some(mut source) => body::discard(&mut source).await.is_ok(),
            None => true,
        }
    };
    upstream.finish(core, cluster, complete);
    Ok(())
}
