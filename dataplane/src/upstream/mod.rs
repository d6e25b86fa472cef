//! Upstream selection: which endpoint of a cluster serves a request.
//!
//! - [`lb`]: load balancers — immutable per-cluster [`Balancer`]s built per config generation,
//!   and per-core [`LbState`] (cursors, in-flight counts, RNG) carried across reloads.
//! - [`hash`]: request hashing for consistent-hash policies (header, cookie, source IP).
//! - [`rng`]: the per-core random generator.
//! - [`connect()`]: opening a TCP connection to an endpoint (every upstream path uses it).
//! - [`budget`]: a cluster's retry budget, shared by the workers.
//! - [`breaker`]: circuit breakers, process-wide per cluster.
//! - [`outlier`]: which endpoints may take traffic — outlier detection, health-check verdicts,
//!   the panic threshold — process-wide per endpoint.

pub mod breaker;
pub mod budget;
mod connect;
mod consistent;
pub mod hash;
pub mod lb;
pub mod outlier;
pub mod rng;
#[cfg(test)]
mod tests;

pub use breaker::{Breaker, Permit};
pub use budget::RetryBudget;
pub use connect::connect;
pub use hash::HashOn;
pub use lb::{Balancer, InFlightGuard, LbError, LbState, LbStates};
pub use rng::FastRng;

/// What an upstream connection pool is keyed by: the endpoint and the TLS it is spoken with, so
/// that a plaintext connection and a TLS one (or two with different TLS settings: CA, client
/// certificate, SNI, ALPN) to the same address never stand in for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The endpoint.
    pub address: std::net::SocketAddr,
    /// 0 for plaintext; else the cluster's TLS fingerprint ([`crate::snapshot::Cluster::tls_key`]).
    pub tls: u64,
}

impl From<std::net::SocketAddr> for PoolKey {
    fn from(address: std::net::SocketAddr) -> Self {
        Self { address, tls: 0 }
    }
}
