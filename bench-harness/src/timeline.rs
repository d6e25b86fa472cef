//! Per-time-bucket results of one open-loop run: how many requests succeeded and failed, and the
//! latency of the successful ones, for every slice (e.g. 250 ms) of the measurement window.
//!
//! A request belongs to the bucket of its *intended* send time (as in the totals of
//! [`crate::load`]), so a stall shows up where the requests that waited for it were due, not where
//! their answers finally arrived. Each bucket keeps its own small HdrHistogram (microseconds, two
//! significant digits: ~1 % resolution, ~20 KiB per bucket) so that buckets of several generator
//! threads merge without loss, like the run's main histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a bucket records, in microseconds (one minute); slower ones are clamped.
const HIGHEST_US: u64 = 60_000_000;

/// The buckets of one generator thread (or, merged, of the whole run).
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    width: Duration,
    buckets: Vec<Bucket>,
}

#[derive(Debug, Clone)]
struct Bucket {
    ok: u64,
    failed: u64,
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        Self {
            ok: 0,
            failed: 0,
            latency: Histogram::new_with_bounds(1, HIGHEST_US, 2)
                .expect("constant bounds 1 µs..60 s with 2 significant digits are valid"),
        }
    }
}

/// One bucket, as written to reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketSummary {
    /// Start of the bucket, seconds after the start of the measurement window.
    pub t_s: f64,
    /// Requests intended in the bucket that got a 2xx answer.
    pub ok: u64,
    /// Requests intended in the bucket that failed (non-2xx, reset, timeout, …).
    pub failed: u64,
    /// `ok / (ok + failed)`; `None` when nothing was intended there (or nothing finished).
    pub success_rate: Option<f64>,
    /// Median latency of the successful requests, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency of the successful requests, µs.
    pub p99_us: Option<f64>,
}

impl Timeline {
    /// Buckets of `width` covering `[start, start + duration)`; the last may be partial.
    pub fn new(start: Instant, width: Duration, duration: Duration) -> Self {
        let width = width.max(Duration::from_millis(1));
        let n = duration.as_nanos().div_ceil(width.as_nanos());
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(100_000);
        Self {
            start,
            width,
            buckets: (0..n).map(|_| Bucket::new()).collect(),
        }
    }

    /// The bucket of `intended`, if it is inside the timeline.
    fn index(&self, intended: Instant) -> Option<usize> {
        let since = intended.checked_duration_since(self.start)?;
        let i = usize::try_from(since.as_nanos() / self.width.as_nanos()).ok()?;
        (i < self.buckets.len()).then_some(i)
    }

    /// Counts a request intended at `intended`: `Some(latency)` when it succeeded, `None` when
    /// it failed. Requests outside the timeline are ignored.
    pub fn record(&mut self, intended: Instant, latency: Option<Duration>) {
        let Some(i) = self.index(intended) else {
            return;
        };
        let b = &mut self.buckets[i];
        match latency {
            Some(l) => {
                b.ok += 1;
                let us = u64::try_from(l.as_micros()).unwrap_or(HIGHEST_US);
                b.latency.saturating_record(us.clamp(1, HIGHEST_US));
            }
            None => b.failed += 1,
        }
    }

    /// Adds `other`'s counts bucket by bucket (same start and width: threads of one run).
    pub fn merge(&mut self, other: &Timeline) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.ok += theirs.ok;
            mine.failed += theirs.failed;
            // Same bounds, so `add` cannot fail; saturate defensively.
            if mine.latency.add(&theirs.latency).is_err() {
                for v in theirs.latency.iter_recorded() {
                    mine.latency
                        .saturating_record_n(v.value_iterated_to(), v.count_at_value());
                }
            }
        }
    }

    /// Every bucket, in time order.
    pub fn summary(&self) -> Vec<BucketSummary> {
        let width = self.width.as_secs_f64();
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let total = b.ok + b.failed;
                let p =
                    |q: f64| (!b.latency.is_empty()).then(|| b.latency.value_at_quantile(q) as f64);
                BucketSummary {
                    t_s: i as f64 * width,
                    ok: b.ok,
                    failed: b.failed,
                    success_rate: (total > 0).then(|| b.ok as f64 / total as f64),
                    p50_us: p(0.50),
                    p99_us: p(0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_the_bucket_of_their_intended_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Timeline::new(t0, ms(250), ms(1100));
        assert_eq!(
            a.buckets.len(),
            5,
            "1.1 s in 250 ms buckets: 4 whole and 1 partial"
        );
        a.record(t0, Some(ms(1)));
        a.record(t0 + ms(249), Some(ms(3)));
        a.record(t0 + ms(250), None);
        a.record(t0 + ms(1099), Some(ms(2)));
        // Outside: before the start, after the end.
        a.record(t0 + ms(1250), Some(ms(2)));
        let mut b = Timeline::new(t0, ms(250), ms(1100));
        b.record(t0 + ms(300), Some(ms(10)));
        b.record(t0 + ms(100), None);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.len(), 5);
        assert_eq!((s[0].ok, s[0].failed), (2, 1));
        assert_eq!(s[0].t_s, 0.0);
        assert!((s[0].success_rate.expect("requests") - 2.0 / 3.0).abs() < 1e-9);
        let p99 = s[0].p99_us.expect("latency");
        assert!((2970.0..=3030.0).contains(&p99), "{p99}");
        assert_eq!((s[1].ok, s[1].failed), (1, 1));
        assert_eq!(s[1].t_s, 0.25);
        assert_eq!(s[2].success_rate, None);
        assert_eq!(s[2].p50_us, None);
        assert_eq!((s[4].ok, s[4].failed), (1, 0));
        assert_eq!(s[4].success_rate, Some(1.0));
    }

    #[test]
    fn a_request_before_the_start_is_ignored() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut t = Timeline::new(t0, Duration::from_secs(1), Duration::from_secs(2));
        t.record(Instant::now(), None);
        assert!(t.summary().iter().all(|b| b.ok + b.failed == 0));
    }
}
