//! HTTP routing: virtual hosts by Host, routes by path, method, headers and query, and the
//! precompiled actions of the chosen route. (The SNI routes of TLS passthrough listeners are in
//! [`sni`].)
//!
//! # Semantics
//! - **Virtual host** by Host (case-insensitive, port ignored): an exact domain, else the longest
//!   `*.suffix` (at least one character before the suffix; it may span several labels, as in
//!   Envoy), else `*`. A listener serves the virtual hosts it lists, or all of them.
//! - **Route**, by path class first, as Kubernetes Ingress is programmed by Cilium: exact path,
//!   then regex (full match), then prefix (longest first), then `/` and routes without a path
//!   condition. A longer regex such as `/impl.*` therefore shadows a prefix `/impl`. Within a
//!   class, routes with more conditions (headers + query parameters + one for a method list) come
//!   first, then config order. If the best path match fails its other conditions, the next
//!   candidate in this order is tried.
//! - **Prefixes** are segment-wise and ignore a trailing slash (Ingress and Gateway API do the
//!   same): `/api` and `/api/` both match `/api`, `/api/` and `/api/x`, never `/apix`.
//! - **Headers**: names case-insensitive; exact, prefix and regex conditions test the first
//!   value. **Query**: the first parameter with the name, percent-decoded (`+` stays `+`).
//!   Paths are matched as sent, case-sensitively.
//!
//! # Data structures, and why
//! Per virtual host, one structure per path class, each yielding candidates best first:
//! - exact paths: a hash map (one xxh3 hash and compare);
//! - prefixes: a hash map keyed by normalised prefix, probed with the request path cut at each
//!   `/` from the right, so candidates come longest first at one probe per path segment; a bit
//!   set of configured prefix lengths skips probes that cannot hit (a segment trie gives the same
//!   order but chases a pointer per segment);
//! - regexes: grouped by the literal text every match must start with (from the regex parser),
//!   cut back to a `/` (`/svc1/items/[0-9]+` → group `/svc1/items`; `/impl.*` → the root group),
//!   probed like prefixes; a group of several patterns is one leftmost-first lazy DFA whose
//!   pattern numbers follow precedence, so one anchored search finds the group's best route.
//!   Thousands of regex routes therefore cost a few searches per request, not thousands, and no
//!   search can fall back to an engine whose memory grows with the pattern count.
//!
//! Candidate lists are pre-sorted at compile time, so the request path never sorts (except the
//! rare fall-through among regex routes). Regexes live in one arena per config, with per-worker
//! caches in [`MatchScratch`] (see the `regex` module for why). A lookup allocates nothing
//! once the scratch is warm and takes no lock.
//!
//! # Use
//! [`compile`] once per config generation → [`RouteConfig`]; per connection,
//! [`RouteConfig::listener`] → `Arc<RouteTable>`; per request, [`RouteTable::find`] with a
//! [`RequestView`] (e.g. [`H1Request`]) and the worker's [`MatchScratch`].

mod action;
mod compile;
mod matcher;
mod regex;
mod request;
pub mod sni;
mod table;
#[cfg(test)]
mod tests;

pub use action::{
    DirectResponse, FaultAbort, FaultPolicy, HeaderMutation, Mirror, PathRewrite, RateLimit,
    RateLimitKey, Redirect, RetryOnSet, RetryPolicy, Route, RouteAction, Share, WeightedClusters,
    shadow_host,
};
pub use compile::{RouteCompileError, compile, rate_limit};
pub use regex::MatchScratch;
pub use request::{H1Request, RequestView, split_target};
pub use table::{NoRoute, RouteConfig, RouteMatch, RouteTable, VirtualHost};
