//! Open-loop pacing: when each request should be sent, and how its latency is counted.
//!
//! The generator runs `L` *lanes* (an HTTP/1.1 or echo connection is one lane; an HTTP/2
//! connection with `S` concurrent streams is `S` lanes). A lane sends one request at a time.
//! At a target rate `R`, lane `i` sends its `k`-th request at the *intended* time
//!
//! ```text
//! start + i / R + k * L / R
//! ```
//!
//! so the lanes interleave into one evenly spaced stream of `R` requests per second.
//!
//! **Coordinated omission.** When a response is late, the lane's next intended time has already
//! passed; a naive generator would wait for the response and then measure the next request from
//! when it actually went out, silently dropping the time the request spent waiting for the
//! stalled connection (Gil Tene's "coordinated omission"). Like wrk2, this generator sends a late
//! request at once and charges the wait to it: its latency counts from the intended send time.
//!
//! **Generator lag.** A request can also go out late because of the generator itself: its timer
//! woke late (a wake-up from idle takes ~20 µs on this project's VMs), or its thread was
//! descheduled for milliseconds by other work on the core. wrk2 charges that to the target too,
//! which adds the same ~20 µs to every target and turns every hiccup of the generator into a
//! queue of "slow" requests. Here the correction is computed on the lane's *ideal* timeline
//! instead ([`LaneClock`]): each request starts at `max(intended, ideal completion of the
//! previous request)` and takes the service time the target actually gave it (response minus
//! actual send), which is Lindley's recursion for a queue with the target as the server. A stall
//! of the target delays every later request on the lane, exactly as wrk2 counts it; a stall of
//! the generator delays none. The generator's own lateness, `sent − max(intended, lane free)`,
//! goes into a separate histogram ([`Timing::generator_lag`]), which `compare` checks: a large
//! generator lag means the generator, not the target, is the bottleneck.
//!
//! **Timer precision.** monoio's timer wheel has a resolution of one millisecond, far coarser than
//! the 20–200 µs latencies measured here; sleeping on it would bunch requests into bursts at each
//! millisecond and add up to 1 ms to every latency. [`PreciseTimer`] waits on a `timerfd` instead
//! (nanosecond resolution) and uses the wheel only for the bulk of long waits.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// The open-loop schedule of one lane.
#[derive(Debug, Clone, Copy)]
pub struct LaneSchedule {
    start: Instant,
    phase_ns: f64,
    interval_ns: f64,
}

impl LaneSchedule {
    /// Lane `lane` of `lanes`, together sending `rate` requests per second from `start`.
    pub fn new(start: Instant, rate: f64, lanes: usize, lane: usize) -> Self {
        let rate = rate.max(f64::MIN_POSITIVE);
        Self {
            start,
            phase_ns: lane as f64 * 1e9 / rate,
            interval_ns: lanes.max(1) as f64 * 1e9 / rate,
        }
    }

    /// When request `k` of this lane should be sent. Computed from `start` each time (not by
    /// adding intervals), so rounding never accumulates into drift.
    pub fn intended(&self, k: u64) -> Instant {
        let offset = self.phase_ns + k as f64 * self.interval_ns;
        self.start + Duration::from_nanos(offset.round() as u64)
    }

    /// How many of this lane's requests are intended in `[from, to)`.
    pub fn scheduled_between(&self, from: Instant, to: Instant) -> u64 {
        let index_at = |t: Instant| -> u64 {
            // First k with intended(k) >= t.
            let since = t.saturating_duration_since(self.start).as_nanos() as f64;
            let k = ((since - self.phase_ns) / self.interval_ns).ceil().max(0.0) as u64;
            // Correct for rounding in `intended` at the boundary.
            let mut k = k.saturating_sub(1);
            while self.intended(k) < t {
                k += 1;
            }
            k
        };
        index_at(to).saturating_sub(index_at(from))
    }
}

/// The instants of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the schedule wanted it sent (closed loop: when it was sent).
    pub intended: Instant,
    /// When the lane became free to send it: the previous response's arrival, or the start.
    pub lane_free: Instant,
    /// When the generator started on it (reconnecting first if the last request failed).
    pub sent: Instant,
    /// When its response was complete (or it failed).
    pub done: Instant,
}

impl Timing {
    /// Service time: from the actual send. This is what a closed-loop tool (or h2load) reports.
    pub fn uncorrected(&self) -> Duration {
        self.done.saturating_duration_since(self.sent)
    }

    /// How late the generator sent the request after it could have: after the intended time, or
    /// after the lane became free if that was later.
    pub fn generator_lag(&self) -> Duration {
        self.sent
            .saturating_duration_since(self.intended.max(self.lane_free))
    }
}

/// A lane's ideal timeline, for latency corrected for coordinated omission but not charged with
/// the generator's own lateness (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct LaneClock {
    /// When the previous request would have completed had every request been sent on time.
    ideal_free: Option<Instant>,
}

impl LaneClock {
    /// A lane with nothing sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The corrected latency of `t`, advancing the ideal timeline by its service time. Call for
    /// every request in order, failed ones included (the time a failure took delays later
    /// requests, as it would for a real client).
    pub fn corrected(&mut self, t: &Timing) -> Duration {
        let start = self.ideal_free.map_or(t.intended, |f| f.max(t.intended));
        let done = start + t.uncorrected();
        self.ideal_free = Some(done);
        done.saturating_duration_since(t.intended)
    }
}

/// Sleeps until an instant with nanosecond resolution, on either I/O driver.
///
/// The timer is a `timerfd`. monoio has no public readiness API for arbitrary descriptors, but
/// [`monoio::net::TcpStream::readable`] is exactly that: an io_uring `POLL_ADD` (or an epoll
/// readiness wait followed by a `poll` check) on its descriptor, issuing no socket calls. So a
/// duplicate of the timerfd is wrapped in a `TcpStream` used only for `readable`. The expiration
/// count is never read: re-arming the timer resets it (the kernel's `timerfd_setup` zeroes the
/// ticks), which saves a syscall per request.
#[derive(Debug)]
pub struct PreciseTimer {
    timer: TimerFd,
    waiter: monoio::net::TcpStream,
}

/// Waits longer than this start on monoio's (cheap, millisecond) wheel.
const COARSE_ABOVE: Duration = Duration::from_millis(3);
/// How much of a long wait is left for the timerfd.
const COARSE_MARGIN: Duration = Duration::from_millis(2);

impl PreciseTimer {
    /// Creates the timer; call inside a monoio runtime.
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let for_wait = timer.as_fd().try_clone_to_owned()?;
        let waiter = monoio::net::TcpStream::from_std(std::net::TcpStream::from(for_wait))?;
        Ok(Self { timer, waiter })
    }

    /// Returns at `deadline` or (by a few microseconds) after it; at once if it has passed.
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if deadline <= now {
                return Ok(());
            }
            let wait = deadline - now;
            if wait > COARSE_ABOVE {
                monoio::time::sleep(wait - COARSE_MARGIN).await;
                continue;
            }
            // Relative expiry: std's Instant is CLOCK_MONOTONIC, the same clock as the timer.
            self.timer
                .set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                )
                .map_err(io::Error::from)?;
            self.waiter.readable(false).await?;
        }
    }
}

/// Simulates one open-loop lane against a target with the given service times, and a generator
/// that is late by `lag[k]` for request `k` (beyond when it could send), exactly as the
/// generator's lane loop times requests. Returns each request's timing and corrected latency.
/// Used to test the coordinated-omission arithmetic without sockets.
pub fn simulate_lane(
    schedule: &LaneSchedule,
    service: &[Duration],
    lag: &[Duration],
) -> Vec<(Timing, Duration)> {
    let mut lane_free = schedule.intended(0);
    let mut clock = LaneClock::new();
    let mut out = Vec::with_capacity(service.len());
    for (k, &took) in service.iter().enumerate() {
        let intended = schedule.intended(k as u64);
        let sent = intended.max(lane_free) + lag.get(k).copied().unwrap_or_default();
        let done = sent + took;
        let timing = Timing {
            intended,
            lane_free,
            sent,
            done,
        };
        out.push((timing, clock.corrected(&timing)));
        lane_free = done;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lanes_interleave_into_an_even_stream() {
        let start = Instant::now();
        // 4 lanes at 1000 req/s: one request every 1 ms overall, every 4 ms per lane.
        let mut sends: Vec<Duration> = (0..4)
            .flat_map(|lane| {
                let s = LaneSchedule::new(start, 1000.0, 4, lane);
                (0..5).map(move |k| s.intended(k) - start)
            })
            .collect();
        sends.sort();
        let expected: Vec<Duration> = (0..20).map(ms).collect();
        assert_eq!(sends, expected);
    }

    #[test]
    fn no_drift_over_many_intervals() {
        let start = Instant::now();
        // 3 req/s does not divide a second into whole nanoseconds.
        let s = LaneSchedule::new(start, 3.0, 1, 0);
        let t = s.intended(3_000_000) - start;
        assert_eq!(t, Duration::from_secs(1_000_000));
    }

    #[test]
    fn scheduled_count_matches_the_rate() {
        let start = Instant::now();
        let lanes = 16;
        let rate = 10_000.0;
        let from = start + Duration::from_secs(1);
        let to = start + Duration::from_secs(3);
        let total: u64 = (0..lanes)
            .map(|i| LaneSchedule::new(start, rate, lanes, i).scheduled_between(from, to))
            .sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn a_stall_is_charged_to_every_request_that_waited_for_it() {
        // One lane, a request every 1 ms; the second request stalls for 10 ms. The requests
        // scheduled during the stall were delayed by it, and their latency must say so (wrk2's
        // correction): 9.1 ms, 8.1 ms, ... rather than 0.1 ms each.
        let start = Instant::now();
        let s = LaneSchedule::new(start, 1000.0, 1, 0);
        let mut service = vec![Duration::from_micros(100); 14];
        service[1] = ms(10);
        let t = simulate_lane(&s, &service, &[]);
        let corrected: Vec<u64> = t.iter().map(|(_, c)| c.as_micros() as u64).collect();
        assert_eq!(
            corrected,
            vec![
                100, 10_000, 9_100, 8_200, 7_300, 6_400, 5_500, 4_600, 3_700, 2_800, 1_900, 1_000,
                100, 100
            ]
        );
        // The naive (uncorrected) view sees one slow request only.
        let slow_naive = t.iter().filter(|(t, _)| t.uncorrected() > ms(1)).count();
        assert_eq!(slow_naive, 1);
        // Waiting for the target is not generator lag.
        assert!(t.iter().all(|(t, _)| t.generator_lag() == Duration::ZERO));
    }

    #[test]
    fn a_generator_stall_is_lag_not_latency() {
        // Same lane, a fast target (100 µs), but the generator is descheduled for 10 ms before
        // its second request and then catches up with back-to-back sends. No request waited
        // for the *target*: every corrected latency is the 100 µs service time; the 10 ms shows
        // up as generator lag.
        let start = Instant::now();
        let s = LaneSchedule::new(start, 1000.0, 1, 0);
        let service = vec![Duration::from_micros(100); 14];
        let mut lag = vec![Duration::ZERO; 14];
        lag[1] = ms(10);
        let t = simulate_lane(&s, &service, &lag);
        assert!(
            t.iter().all(|(_, c)| *c == Duration::from_micros(100)),
            "{t:?}"
        );
        assert_eq!(t[1].0.generator_lag(), ms(10));
        // The catch-up sends were not late beyond the lane being busy.
        assert!(
            t[2..]
                .iter()
                .all(|(t, _)| t.generator_lag() == Duration::ZERO)
        );
        // Had wrk2's rule (done − intended) been used, the catch-up requests would have been
        // charged ~9 ms each.
        assert!(t[2].0.done - t[2].0.intended > ms(8));
    }

    #[test]
    fn both_stalls_together() {
        // The generator is 2 ms late for request 1, which the target then holds for 5 ms: only
        // the target's 5 ms propagates to the requests behind it.
        let start = Instant::now();
        let s = LaneSchedule::new(start, 1000.0, 1, 0);
        let mut service = vec![Duration::from_micros(100); 8];
        service[1] = ms(5);
        let mut lag = vec![Duration::ZERO; 8];
        lag[1] = ms(2);
        let t = simulate_lane(&s, &service, &lag);
        let corrected: Vec<u64> = t.iter().map(|(_, c)| c.as_micros() as u64).collect();
        assert_eq!(
            corrected,
            vec![100, 5_000, 4_100, 3_200, 2_300, 1_400, 500, 100]
        );
    }

    fn timer_sleeps_precisely(driver: crate::runtime::Io) {
        crate::runtime::block_on(driver, async {
            let mut timer = PreciseTimer::new().expect("timerfd");
            // Past deadlines return at once; future ones never early.
            timer
                .sleep_until(Instant::now() - ms(1))
                .await
                .expect("sleep");
            for wait in [Duration::from_micros(200), ms(1), ms(7)] {
                let deadline = Instant::now() + wait;
                timer.sleep_until(deadline).await.expect("sleep");
                assert!(Instant::now() >= deadline);
            }
        })
        .expect("runtime");
    }

    #[test]
    fn precise_timer_on_uring() {
        if !crate::runtime::uring_available() {
            eprintln!("skipped: io_uring is not available here");
            return;
        }
        timer_sleeps_precisely(crate::runtime::Io::Uring);
    }

    #[test]
    fn precise_timer_on_epoll() {
        timer_sleeps_precisely(crate::runtime::Io::Epoll);
    }
}
