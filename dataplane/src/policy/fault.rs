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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::FaultAbort;

    fn policy(delay_percent: f64, abort_percent: f64) -> FaultPolicy {
        FaultPolicy {
            delay: Some((Share::from_percent(delay_percent), Duration::from_millis(5))),
            abort: Some(FaultAbort {
                share: Share::from_percent(abort_percent),
                status: 503,
                grpc_status: Some(14),
            }),
            when: Default::default(),
        }
    }

    #[test]
    fn delay_and_abort_are_drawn_independently() {
        // Low half decides the delay, high half the abort.
        let half = policy(50.0, 50.0);
        let low = 0x0000_0001_u64;
        let high = 0xffff_ffff_u64;
        assert_eq!(
            draw(&half, low | (high << 32)),
            Injected {
                delay: Some(Duration::from_millis(5)),
                abort: None
            }
        );
        assert_eq!(
            draw(&half, high | (low << 32)),
            Injected {
                delay: None,
                abort: Some((503, Some(14)))
            }
        );
        assert_eq!(draw(&policy(0.0, 100.0), 0).delay, None);
        assert_eq!(draw(&policy(100.0, 0.0), u64::MAX).abort, None);
    }
}
