//! The one error type of the HTTP request path.
//!
//! Every stage below the exchange core (the codecs, the pools, the body pumps) reports a
//! [`Failure`]; only the core turns one into an answer for the client ([`Failure::reply`]), a
//! response flag for the access log, a counter, and a decision about retrying. A failure says where
//! the fault lies (the client, the upstream, or the proxy itself) and whether the request may be
//! sent again.

use std::time::Duration;

use crate::access_log::ResponseFlags;
use crate::http::grpc;
use crate::policy::Limited;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client: a malformed or oversized request, or it went away.
    Downstream,
    /// The upstream: unreachable, slow, reset, or it broke the protocol.
    Upstream,
    /// The proxy's own state: no route, no endpoint, a full pool.
    Local,
}

/// Whether a failed attempt may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: the upstream may have acted on it, or the fault is not the upstream's.
    No,
    /// The upstream provably did not process the request (HTTP/2 REFUSED_STREAM or a GOAWAY
    /// that excludes the stream; nothing was sent at all): safe for any method.
    Unprocessed,
    /// A reused connection failed before any response byte: the request may or may not have
    /// been seen, so only an idempotent one is sent again (RFC 9110 §9.2.2).
    IfIdempotent,
}

/// Why an exchange did not complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No route matched.
    NoRoute,
    /// The cluster has no endpoint to send to.
    NoHealthyUpstream,
    /// Every endpoint tried was at its connection (or stream) limit.
    Overflow,
    /// Every endpoint tried refused, failed or timed out on connect.
    ConnectFailed,
    /// The upstream closed or reset before its response head.
    UpstreamReset {
        /// See [`Retry`].
        retry: Retry,
    },
    /// The upstream's response broke HTTP.
    UpstreamProtocol(&'static str),
    /// The upstream cut its response off after the head was relayed.
    UpstreamAborted,
    /// The route (or gRPC) deadline passed.
    Timeout,
    /// The attempt ran out of its route's `per_try_timeout`.
    PerTryTimeout,
    /// No byte moved either way for the listener's `stream_idle_timeout`.
    StreamIdle,
    /// The request body outgrew the limit.
    BodyTooLarge,
    /// The request head is too large (HTTP/2; HTTP/1.1 heads are refused by the parser).
    HeadTooLarge,
    /// The request is malformed (a broken chunked body, a target HTTP/2 cannot carry).
    BadRequest(&'static str),
    /// The client went away (closed, reset its stream) before the exchange ended.
    ClientGone,
    /// The request cannot be carried to this cluster (an upgrade toward HTTP/2).
    Unsupported(&'static str),
    /// A local rate limit refused the request (429, flag `RL`, gRPC `RESOURCE_EXHAUSTED`).
    RateLimited(Limited),
    /// An authorization policy refused the request (403, flag `RBAC`, gRPC
    /// `PERMISSION_DENIED`).
    Denied,
    /// Fault injection answered instead of forwarding (flag `FI`).
    FaultAbort {
        /// The HTTP status.
        status: u16,
        /// The gRPC status for gRPC clients (`None`: derived from `status`).
        grpc_status: Option<u32>,
    },
}

impl Failure {
    /// Who caused it.
    pub fn fault(self) -> Fault {
        match self {
            Failure::NoRoute
            | Failure::NoHealthyUpstream
            | Failure::Overflow
            | Failure::RateLimited(_)
            | Failure::Denied
            | Failure::FaultAbort { .. } => Fault::Local,
            Failure::ConnectFailed
            | Failure::UpstreamReset { .. }
            | Failure::UpstreamProtocol(_)
            | Failure::UpstreamAborted
            | Failure::Timeout
            | Failure::PerTryTimeout
            | Failure::StreamIdle
            | Failure::Unsupported(_) => Fault::Upstream,
            Failure::BodyTooLarge
            | Failure::HeadTooLarge
            | Failure::BadRequest(_)
            | Failure::ClientGone => Fault::Downstream,
        }
    }

    /// Whether the request may be sent again after this failure.
    pub fn retry(self) -> Retry {
        match self {
            Failure::UpstreamReset { retry } => retry,
            _ => Retry::No,
        }
    }

    /// The HTTP status the client gets, when it can still get one.
    pub fn status(self) -> u16 {
        match self {
            Failure::NoRoute => 404,
            Failure::NoHealthyUpstream | Failure::Overflow => 503,
            Failure::ConnectFailed
            | Failure::UpstreamReset { .. }
            | Failure::UpstreamProtocol(_)
            | Failure::UpstreamAborted
            | Failure::Unsupported(_) => 502,
            Failure::Timeout | Failure::PerTryTimeout | Failure::StreamIdle => 504,
            Failure::BodyTooLarge => 413,
            Failure::HeadTooLarge => 431,
            Failure::BadRequest(_) => 400,
            // Nobody reads it; the access log shows what the proxy would have answered.
            Failure::ClientGone => 499,
            Failure::RateLimited(_) => 429,
            Failure::Denied => 403,
            Failure::FaultAbort { status, .. } => status,
        }
    }

    /// The short text of the local reply body and the gRPC message.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::NoRoute => "no route",
            Failure::NoHealthyUpstream => "no healthy upstream",
            Failure::Overflow => "upstream connection limit reached",
            Failure::ConnectFailed => "upstream connect error",
            Failure::UpstreamReset { .. } => "upstream reset before response",
            Failure::UpstreamProtocol(reason)
            | Failure::BadRequest(reason)
            | Failure::Unsupported(reason) => reason,
            Failure::UpstreamAborted => "upstream reset mid-response",
            Failure::Timeout => "upstream request timeout",
            Failure::PerTryTimeout => "upstream per-try timeout",
            Failure::StreamIdle => "stream idle timeout",
            Failure::BodyTooLarge => "request body too large",
            Failure::HeadTooLarge => "request head too large",
            Failure::ClientGone => "client went away",
            // Envoy's texts, which clients and dashboards already match on.
            Failure::RateLimited(_) => "local_rate_limited",
            Failure::Denied => "RBAC: access denied",
            Failure::FaultAbort { .. } => "fault filter abort",
        }
    }

    /// The access log's response flag.
    pub fn flag(self) -> ResponseFlags {
        match self {
            Failure::NoRoute => ResponseFlags::NO_ROUTE,
            Failure::NoHealthyUpstream => ResponseFlags::NO_HEALTHY_UPSTREAM,
            Failure::Overflow => ResponseFlags::UPSTREAM_OVERFLOW,
            Failure::ConnectFailed => ResponseFlags::UPSTREAM_CONNECT_FAILURE,
            Failure::UpstreamReset { .. } | Failure::UpstreamAborted => {
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION
            }
            Failure::UpstreamProtocol(_) | Failure::Unsupported(_) => {
                ResponseFlags::UPSTREAM_PROTOCOL_ERROR
            }
            Failure::Timeout | Failure::PerTryTimeout => ResponseFlags::UPSTREAM_TIMEOUT,
            Failure::StreamIdle => ResponseFlags::STREAM_IDLE_TIMEOUT,
            Failure::BodyTooLarge | Failure::HeadTooLarge | Failure::BadRequest(_) => {
                ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR
            }
            Failure::ClientGone => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            Failure::RateLimited(_) => ResponseFlags::RATE_LIMITED,
            Failure::Denied => ResponseFlags::RBAC_DENIED,
            Failure::FaultAbort { .. } => ResponseFlags::FAULT_INJECTED,
        }
    }

    /// The gRPC status a gRPC client gets instead of the HTTP status.
    pub fn grpc_status(self) -> u32 {
        match self {
            Failure::Overflow | Failure::NoHealthyUpstream | Failure::ConnectFailed => {
                grpc::code::UNAVAILABLE
            }
            Failure::Timeout | Failure::PerTryTimeout => grpc::code::DEADLINE_EXCEEDED,
            Failure::RateLimited(_) => grpc::code::RESOURCE_EXHAUSTED,
            Failure::Denied => grpc::code::PERMISSION_DENIED,
            Failure::FaultAbort {
                grpc_status: Some(code),
                ..
            } => code,
            other => grpc::status_for_http(other.status()),
        }
    }

    /// Whether the reply carries `x-envoy-overloaded: true` (Envoy's signal that the proxy shed
    /// the request, so a client does not retry into the overload).
    pub fn overloaded(self) -> bool {
        self == Failure::Overflow
    }
}

/// Why one endpoint could not take a request (the exchange core then tries the next one).
#[derive(Debug)]
pub enum Unavailable {
    /// The endpoint is at its connection (or, for HTTP/2, stream) limit on this core.
    Exhausted,
    /// Connecting (or the HTTP/2 handshake) failed or timed out.
    Connect(std::io::Error),
    /// A new connection would exceed the cluster's `circuit_breaker.max_connections`.
    CircuitOpen,
    /// The TLS handshake with the endpoint failed or timed out (an untrusted certificate, a
    /// name mismatch, a refused client certificate, ALPN not agreed).
    Tls(std::io::Error),
}

/// A `grpc-timeout` value for `remaining` (at most 8 digits, in the coarsest unit that keeps
/// millisecond precision), as the proxy propagates a client's deadline upstream.
pub fn grpc_timeout_value(remaining: Duration, out: &mut Vec<u8>) {
    let millis = remaining.as_millis().max(1);
    let (value, unit) = if millis < 100_000_000 {
        (millis, b'm')
    } else {
        (remaining.as_secs().min(99_999_999) as u128, b'S')
    };
    let mut digits = itoa::Buffer::new();
    out.clear();
    out.extend_from_slice(digits.format(value).as_bytes());
    out.push(unit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_is_the_same_answer_everywhere() {
        assert_eq!(Failure::Overflow.status(), 503);
        assert_eq!(Failure::Overflow.flag(), ResponseFlags::UPSTREAM_OVERFLOW);
        assert!(Failure::Overflow.overloaded());
        assert_eq!(Failure::Overflow.grpc_status(), grpc::code::UNAVAILABLE);
        assert_eq!(Failure::Timeout.status(), 504);
        assert_eq!(
            Failure::Timeout.grpc_status(),
            grpc::code::DEADLINE_EXCEEDED
        );
        assert_eq!(Failure::NoRoute.grpc_status(), grpc::code::UNIMPLEMENTED);
        assert_eq!(Failure::ConnectFailed.status(), 502);
        assert_eq!(Failure::ClientGone.fault(), Fault::Downstream);
    }

    #[test]
    fn only_upstream_resets_before_the_head_retry() {
        let reset = Failure::UpstreamReset {
            retry: Retry::IfIdempotent,
        };
        assert_eq!(reset.retry(), Retry::IfIdempotent);
        assert_eq!(Failure::Timeout.retry(), Retry::No);
        assert_eq!(Failure::UpstreamAborted.retry(), Retry::No);
    }

    #[test]
    fn grpc_timeouts_are_written_within_eight_digits() {
        let mut out = Vec::new();
        grpc_timeout_value(Duration::from_millis(1500), &mut out);
        assert_eq!(out, b"1500m");
        grpc_timeout_value(Duration::from_micros(10), &mut out);
        assert_eq!(out, b"1m");
        grpc_timeout_value(Duration::from_secs(200_000), &mut out);
        assert_eq!(out, b"200000S");
    }
}
