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
//! stalled connection (Gil Tene's "coordinated omission"). Like wrk2, this generator measures every
//! latency from the intended send time and sends a late request at once.
//!
//! **Generator lag.** A request can also go out late because the generator itself was busy (its
//! core saturated) or its timer woke late. That is the generator's fault, not the target's, so the
//! lateness of requests whose lane was idle at the intended time is kept separately
//! ([`Timing::generator_lag`]) and reported: a large generator lag means the numbers measure the
//! generator.
//!
//! **Timer precision.** monoio's timer wheel has a resolution of one millisecond, far coarser than
//! the 20–200 µs latencies measured here; sleeping on it would bunch requests into bursts at each
//! millisecond and add up to 1 ms to every latency. [`PreciseTimer`] waits on a `timerfd` instead
//! (nanosecond resolution) and uses the wheel only for the bulk of long waits.

use std::fs::File;
use std::io::{self, Read};
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

/// The three instants of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the schedule wanted it sent (closed loop: when it was sent).
    pub intended: Instant,
    /// When the lane became free to send it: the previous response's arrival, or the start.
    pub lane_free: Instant,
    /// When it was actually written.
    pub sent: Instant,
    /// When its response was complete.
    pub done: Instant,
}

impl Timing {
    /// Latency corrected for coordinated omission: from the intended send time.
    pub fn corrected(&self) -> Duration {
        self.done.saturating_duration_since(self.intended)
    }

    /// Service time: from the actual send. This is what a closed-loop tool (or h2load) reports.
    pub fn uncorrected(&self) -> Duration {
        self.done.saturating_duration_since(self.sent)
    }

    /// How late the generator itself sent the request: `Some` only when the lane was already free
    /// at the intended time, so that any lateness is the generator's (timer, busy core), not the
    /// target's. `None` when the lane was still waiting for the previous response.
    pub fn generator_lag(&self) -> Option<Duration> {
        (self.lane_free <= self.intended)
            .then(|| self.sent.saturating_duration_since(self.intended))
    }
}

/// Sleeps until an instant with nanosecond resolution, on either I/O driver.
///
/// The timer is a `timerfd`. monoio has no public readiness API for arbitrary descriptors, but
/// [`monoio::net::TcpStream::readable`] is exactly that: an io_uring `POLL_ADD` (or an epoll
/// readiness wait) on its descriptor, issuing no socket calls. So a duplicate of the timerfd is
/// wrapped in a `TcpStream` used only for `readable`; the expiration count is read (and so
/// cleared) through a `File` on a second duplicate.
#[derive(Debug)]
pub struct PreciseTimer {
    timer: TimerFd,
    waiter: monoio::net::TcpStream,
    reader: File,
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
        let for_read = timer.as_fd().try_clone_to_owned()?;
        let waiter = monoio::net::TcpStream::from_std(std::net::TcpStream::from(for_wait))?;
        Ok(Self {
            timer,
            waiter,
            reader: File::from(for_read),
        })
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
            let mut expirations = [0u8; 8];
            match self.reader.read(&mut expirations) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Simulates one open-loop lane against a target with the given service times, exactly as the
/// generator's lane loop times requests (send at `max(intended, lane free)`), and returns each
/// request's timing. Used to test the coordinated-omission arithmetic without sockets.
pub fn simulate_lane(schedule: &LaneSchedule, service: &[Duration]) -> Vec<Timing> {
    let mut lane_free = schedule.intended(0);
    let mut timings = Vec::with_capacity(service.len());
    for (k, &took) in service.iter().enumerate() {
        let intended = schedule.intended(k as u64);
        let sent = intended.max(lane_free);
        let done = sent + took;
        timings.push(Timing {
            intended,
            lane_free,
            sent,
            done,
        });
        lane_free = done;
    }
    timings
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
        let t = simulate_lane(&s, &service);
        let corrected: Vec<u64> = t.iter().map(|t| t.corrected().as_micros() as u64).collect();
        assert_eq!(
            corrected,
            vec![
                100, 10_000, 9_100, 8_200, 7_300, 6_400, 5_500, 4_600, 3_700, 2_800, 1_900, 1_000,
                100, 100
            ]
        );
        // The naive (uncorrected) view sees one slow request only.
        let slow_naive = t.iter().filter(|t| t.uncorrected() > ms(1)).count();
        assert_eq!(slow_naive, 1);
        // Requests sent late because the lane was busy are the target's fault, not generator lag.
        assert_eq!(t[2].generator_lag(), None);
        assert_eq!(t[0].generator_lag(), Some(Duration::ZERO));
        assert_eq!(t[13].generator_lag(), Some(Duration::ZERO));
    }

    #[test]
    fn generator_lateness_is_counted_as_lag_and_latency() {
        let start = Instant::now();
        let t = Timing {
            intended: start,
            lane_free: start - ms(1),
            sent: start + Duration::from_micros(30),
            done: start + Duration::from_micros(80),
        };
        assert_eq!(t.generator_lag(), Some(Duration::from_micros(30)));
        assert_eq!(t.corrected(), Duration::from_micros(80));
        assert_eq!(t.uncorrected(), Duration::from_micros(50));
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
