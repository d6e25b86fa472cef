//! Upstream selection: which endpoint of a cluster serves a request.
//!
//! - [`lb`]: load balancers — immutable per-cluster [`Balancer`]s built per config generation,
//!   and per-core [`LbState`] (cursors, in-flight counts, RNG) carried across reloads.
//! - [`hash`]: request hashing for consistent-hash policies (header, cookie, source IP).
//! - [`rng`]: the per-core random generator.
//! - [`connect()`]: opening a TCP connection to an endpoint (every upstream path uses it).
//! - [`budget`]: a cluster's retry budget, shared by the workers.

pub mod budget;
mod connect;
mod consistent;
pub mod hash;
pub mod lb;
pub mod rng;
#[cfg(test)]
mod tests;

pub use budget::RetryBudget;
pub use connect::connect;
pub use hash::HashOn;
pub use lb::{Balancer, InFlightGuard, LbError, LbState, LbStates};
pub use rng::FastRng;
