//! What a matched route tells the proxy to do, precompiled: cluster indices instead of names,
//! byte strings instead of `String`s, shares as fixed-point thresholds, and writers that build a
//! rewritten path or a `Location` into a caller's reused buffer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config_schema::RetryOn;

use super::matcher::Conditions;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// `RouteSpec::name`, or `"<virtual host>#<index>"`. Per-route state (rate-limit buckets,
    /// stats) is keyed by it across reloads.
    pub name: Arc<str>,
    /// Dense index of the route in its config generation (0..number of routes), for per-route
    /// state kept in vectors rather than looked up by name on every request.
    pub id: usize,
    /// What to do with a matching request.
    pub action: RouteAction,
    /// Path rewrite before forwarding.
    pub rewrite: Option<PathRewrite>,
    /// Header changes on the request sent upstream.
    pub request_headers: HeaderMutation,
    /// Header changes on the response sent downstream.
    pub response_headers: HeaderMutation,
    /// Shadow traffic.
    pub mirror: Option<Mirror>,
    /// Total time for the request, retries included; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<RetryPolicy>,
    /// Fault injection.
    pub fault: Option<FaultPolicy>,
    /// Local rate limit of this route (its state lives in `policy`, by route id).
    pub rate_limit: Option<RateLimit>,
    /// Largest request body in bytes (0 = unlimited); `None` = the listener's limit.
    pub max_request_body: Option<u64>,
    pub(crate) conditions: Conditions,
}

impl Route {
    /// The cluster to forward to: the cluster, or the weighted split's pick for `random` (any
    /// uniformly random `u64`). `None` for redirects and direct responses.
    #[inline]
    pub fn pick_cluster(&self, random: u64) -> Option<usize> {
        match &self.action {
            RouteAction::Cluster(cluster) => Some(*cluster),
            RouteAction::WeightedClusters(split) => Some(split.pick(random)),
            RouteAction::Redirect(_) | RouteAction::DirectResponse(_) => None,
        }
    }
}

/// A route's action.
#[derive(Debug)]
pub enum RouteAction {
    /// Forward to this cluster (index into the snapshot's clusters).
    Cluster(usize),
    /// Forward to one of several clusters, by weight.
    WeightedClusters(WeightedClusters),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    DirectResponse(DirectResponse),
}

/// A weighted split across clusters.
#[derive(Debug)]
pub struct WeightedClusters {
    /// (cluster index, running total of weights up to and including this arm).
    arms: Box<[(usize, u32)]>,
    total: u32,
}

impl WeightedClusters {
    /// A split from (cluster index, weight) arms; `None` if the weights add up to 0 or overflow.
    pub fn new(arms: impl IntoIterator<Item = (usize, u32)>) -> Option<Self> {
        let mut total: u32 = 0;
        let arms: Box<[(usize, u32)]> = arms
            .into_iter()
            .map(|(cluster, weight)| {
                total = total.checked_add(weight)?;
                Some((cluster, total))
            })
            .collect::<Option<_>>()?;
        (total > 0).then_some(Self { arms, total })
    }

    /// The cluster for `random`, a uniformly random `u64`: arm `i` is chosen with probability
    /// `weight_i / total`. Only the top 32 bits are used.
    #[inline]
    pub fn pick(&self, random: u64) -> usize {
        // Multiply-shift maps the top 32 bits evenly onto 0..total without a division.
        let point = ((random >> 32) * u64::from(self.total)) >> 32;
        let point = point as u32;
        self.arms
            .iter()
            .find(|&&(_, upto)| point < upto)
            .or(self.arms.last())
            .map(|&(cluster, _)| cluster)
            .expect("a split has at least one arm (total > 0)")
    }

    /// Every (cluster, weight) arm, in config order.
    pub fn arms(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        let mut before = 0;
        self.arms.iter().map(move |&(cluster, upto)| {
            let weight = upto - before;
            before = upto;
            (cluster, weight)
        })
    }
}

/// A redirect answer. Unset parts keep the request's values.
#[derive(Debug)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// New scheme.
    pub scheme: Option<Box<str>>,
    /// New host (without port).
    pub host: Option<Box<str>>,
    /// New port.
    pub port: Option<u16>,
    /// New path; the query is kept.
    pub path: Option<Box<str>>,
}

impl Redirect {
    /// Writes the `Location` value into `out` (cleared first).
    ///
    /// `scheme` is the request's (`http`/`https`), `host` its Host header (port included if sent).
    /// The host is the configured one, or the request's; the port is the configured one, else the
    /// request's unless the host was replaced or the scheme changed away from the request
    /// port's default (`:80` for http, `:443` for https, as Envoy does); a port equal to the new
    /// scheme's default is left out. The path is the configured one or the request's, and the
    /// request's query is kept.
    pub fn write_location(
        &self,
        scheme: &str,
        host: &[u8],
        path: &[u8],
        query: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.clear();
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let request_host = super::request::strip_port(host);
        let request_port = host
            .get(request_host.len() + 1..)
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<u16>().ok());
        let port = match (self.port, &self.host) {
            (Some(port), _) => Some(port),
            (None, Some(_)) => None,
            (None, None) => {
                request_port.filter(|&p| new_scheme == scheme || Some(p) != default_port(scheme))
            }
        };
        out.extend_from_slice(new_scheme.as_bytes());
        out.extend_from_slice(b"://");
        match &self.host {
            Some(h) => out.extend_from_slice(h.as_bytes()),
            None => out.extend_from_slice(request_host),
        }
        if let Some(port) = port.filter(|&p| Some(p) != default_port(new_scheme)) {
            out.push(b':');
            push_decimal(out, port);
        }
        match &self.path {
            Some(p) => out.extend_from_slice(p.as_bytes()),
            None => out.extend_from_slice(path),
        }
        if !query.is_empty() {
            out.push(b'?');
            out.extend_from_slice(query);
        }
    }
}

/// Appends `n` in decimal without going through a `String`.
fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A fixed answer.
#[derive(Debug)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body (cheap to clone into a response).
    pub body: Bytes,
    /// Content-Type of the body.
    pub content_type: Box<str>,
}

/// A path rewrite.
#[derive(Debug)]
pub enum PathRewrite {
    /// Replace the matched path prefix.
    Prefix {
        /// The route's normalised `path_prefix` (no trailing `/`; `/` for the root).
        matched: Box<[u8]>,
        /// What replaces it.
        replacement: Box<[u8]>,
    },
    /// Replace the whole path.
    FullPath(Box<[u8]>),
}

impl PathRewrite {
    /// Writes the rewritten path and the request's query (`path?query`) into `out` (cleared
    /// first).
    ///
    /// A prefix rewrite replaces whole segments: with prefix `/api`, `/api/x` becomes
    /// `<replacement>/x` and `/api` becomes `<replacement>`. A replacement ending in `/` does not
    /// double the slash (`/` turns `/api/x` into `/x`), and an empty result becomes `/`. A path
    /// that does not start with the prefix (impossible for the route that matched it) is kept.
    pub fn write(&self, path: &[u8], query: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self {
            PathRewrite::FullPath(full) => out.extend_from_slice(full),
            PathRewrite::Prefix {
                matched,
                replacement,
            } => {
                let rest = if **matched == *b"/" {
                    // The root prefix matches "" before the path's own leading slash.
                    Some(if path == b"/" { &b""[..] } else { path })
                } else {
                    path.strip_prefix(&**matched)
                        .filter(|rest| rest.is_empty() || rest[0] == b'/')
                };
                match rest {
                    Some(rest) => {
                        out.extend_from_slice(replacement);
                        let rest = if out.last() == Some(&b'/') {
                            rest.strip_prefix(b"/").unwrap_or(rest)
                        } else {
                            rest
                        };
                        out.extend_from_slice(rest);
                        if out.is_empty() {
                            out.push(b'/');
                        }
                    }
                    None => out.extend_from_slice(path),
                }
            }
        }
        if !query.is_empty() {
            out.push(b'?');
            out.extend_from_slice(query);
        }
    }
}

/// Header changes, applied in the order remove, set, add. Names are lower case.
#[derive(Debug, Default)]
pub struct HeaderMutation {
    /// Headers removed.
    pub remove: Box<[Box<str>]>,
    /// Headers replaced: existing values are dropped, then this one is added.
    pub set: Box<[(Box<str>, Bytes)]>,
    /// Headers appended; existing values are kept.
    pub add: Box<[(Box<str>, Bytes)]>,
}

impl HeaderMutation {
    /// Whether there is nothing to do (the common case: skip the header pass entirely).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Whether a header named `lower_name` from the original message is dropped (removed or
    /// replaced by `set`), for a single pass that copies the surviving headers.
    pub fn drops(&self, lower_name: &str) -> bool {
        self.remove
            .iter()
            .any(|n| n.eq_ignore_ascii_case(lower_name))
            || self
                .set
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(lower_name))
    }
}

/// Request mirroring to a shadow cluster.
#[derive(Debug)]
pub struct Mirror {
    /// Shadow cluster (index into the snapshot's clusters).
    pub cluster: usize,
    /// Share of requests mirrored.
    pub share: Share,
}

/// A share of requests (a percentage), as a threshold on a random number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Parts per million, 0..=1_000_000.
    pub per_million: u32,
}

impl Share {
    /// From a percentage (clamped to 0–100).
    pub fn from_percent(percent: f64) -> Self {
        let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        Self { per_million }
    }

    /// Whether the request that drew `random` (uniform `u64`) falls in the share. Only the low
    /// 32 bits are used, so the same random number can also drive a weighted pick (top bits).
    #[inline]
    pub fn sample(self, random: u64) -> bool {
        let point = ((random & 0xffff_ffff) * 1_000_000) >> 32;
        point < u64::from(self.per_million)
    }
}

/// The Host for a mirrored request, as Envoy writes it: `-shadow` goes after the host and before
/// any port (`foo.com:8080` → `foo.com-shadow:8080`, `[::1]:80` → `[::1]-shadow:80`). Writes into
/// `out` (cleared first).
pub fn shadow_host(host: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let name = super::request::strip_port(host);
    out.extend_from_slice(name);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&host[name.len()..]);
}

/// Retries, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Time per try; `None` = only the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Conditions that allow a retry.
    pub retry_on: RetryOnSet,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Box<[u16]>,
    /// First backoff interval (later ones double, with jitter).
    pub backoff: Duration,
    /// Longest backoff interval.
    pub max_backoff: Duration,
}

/// A set of [`RetryOn`] conditions as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOnSet(u16);

impl RetryOnSet {
    fn bit(on: RetryOn) -> u16 {
        1 << match on {
            RetryOn::ServerError => 0,
            RetryOn::GatewayError => 1,
            RetryOn::ConnectFailure => 2,
            RetryOn::Reset => 3,
            RetryOn::RefusedStream => 4,
            RetryOn::Retriable4xx => 5,
            RetryOn::RetriableStatusCodes => 6,
            RetryOn::Cancelled => 7,
            RetryOn::DeadlineExceeded => 8,
            RetryOn::ResourceExhausted => 9,
            RetryOn::Unavailable => 10,
        }
    }

    /// The set of `conditions`.
    pub fn new(conditions: &[RetryOn]) -> Self {
        Self(conditions.iter().fold(0, |set, &on| set | Self::bit(on)))
    }

    /// Whether `on` is in the set.
    #[inline]
    pub fn contains(self, on: RetryOn) -> bool {
        self.0 & Self::bit(on) != 0
    }
}

/// Fault injection, compiled.
#[derive(Debug)]
pub struct FaultPolicy {
    /// Delay `share` of requests by the duration.
    pub delay: Option<(Share, Duration)>,
    /// Answer `share` of requests with an error instead of forwarding.
    pub abort: Option<FaultAbort>,
    /// Only requests meeting these header conditions are subject to the fault (none: all).
    pub(crate) when: Conditions,
}

/// An injected error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    /// Share of requests aborted.
    pub share: Share,
    /// HTTP status.
    pub status: u16,
    /// gRPC status for gRPC requests (`None` = derived from `status`).
    pub grpc_status: Option<u32>,
}

/// A local rate limit's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Bucket size (defaults to one second of requests).
    pub burst: u32,
    /// What the buckets are kept per.
    pub key: RateLimitKey,
}

/// What a rate limit keeps one bucket per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateLimitKey {
    /// One bucket for every request.
    Global,
    /// One per client IP.
    ClientIp,
    /// One per value of this (lower-case) request header.
    Header(Box<str>),
}
