//! Fault injection (Istio `HTTPFaultInjection`): a route's delay and abort, each drawn on its own
//! for every request that meets the fault's header conditions.
//!
//! The draws need no shared state: each worker's random numbers are independent, so the share
//! of requests delayed or aborted is binomial with the configured probability whatever worker
//! serves them.

use std::time::Duration;

use crate::routing::{FaultPolicy, Share};

/// What the fault does to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Wait this long before going upstream (or before the abort's answer).
    pub delay: Option<Duration>,
    /// Answer with this HTTP status and, to gRPC clients, this gRPC status instead of
    /// forwarding.
    pub abort: Option<(u16, Option<u32>)>,
}

/// Draws the fault for one request. `random` is a uniformly random `u64`: its low half decides
/// the delay and its high half the abort, so the two are independent.
#[inline]
pub fn draw(fault: &FaultPolicy, random: u64) -> Injected {
    let delay = fault
        .delay
        .filter(|(share, _)| share.sample(random))
        .map(|(_, delay)| delay);
    let abort = fault
        .abort
        .as_ref()
        .filter(|abort| sample_high(abort.share, random))
        .map(|abort| (abort.status, abort.grpc_status));
    Injected { delay, abort }
}

fn sample_high(share: Share, random: u64) -> bool {
    share.sample(random >> 32)
}
