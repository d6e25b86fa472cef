//! Latency histograms: HdrHistogram in nanoseconds, summarised in microseconds.
//!
//! Every latency the generator observes goes into an [`hdrhistogram::Histogram`] with three
//! significant digits, so p99.9 of a 40 µs distribution is exact to ~40 ns and the max is kept
//! exactly (HdrHistogram's highest-equivalent value). Histograms from several generator threads,
//! or from several rounds of the same target, merge without loss, which is why the generator
//! never averages percentiles: it merges histograms and reads percentiles from the merge.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded: one minute. Slower answers are clamped (and are a failed run anyway).
const HIGHEST_NS: u64 = 60_000_000_000;

/// Percentiles shown in latency curves: evenly spaced on the "nines" axis (1 / (1 - p)).
pub const CURVE_PERCENTILES: [f64; 15] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 99.9999,
    100.0,
];

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct LatencyHist {
    inner: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHist {
    /// An empty histogram covering 1 ns to 60 s at three significant digits.
    pub fn new() -> Self {
        let inner = Histogram::new_with_bounds(1, HIGHEST_NS, 3)
            .expect("constant bounds 1..60 s with 3 significant digits are valid");
        Self { inner }
    }

    /// Records one latency; zero becomes 1 ns and anything above 60 s is clamped to 60 s.
    pub fn record(&mut self, latency: std::time::Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(HIGHEST_NS);
        self.inner.saturating_record(ns.clamp(1, HIGHEST_NS));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHist) {
        // Both histograms have the same bounds, so `add` cannot fail; saturate defensively.
        if self.inner.add(&other.inner).is_err() {
            for v in other.inner.iter_recorded() {
                self.inner
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.inner.len()
    }

    /// The latency at `percentile` (0–100) in microseconds; `None` when empty.
    pub fn percentile_us(&self, percentile: f64) -> Option<f64> {
        if self.inner.is_empty() {
            return None;
        }
        let ns = if percentile >= 100.0 {
            self.inner.max()
        } else if percentile <= 0.0 {
            self.inner.min()
        } else {
            self.inner.value_at_quantile(percentile / 100.0)
        };
        Some(ns as f64 / 1000.0)
    }

    /// The usual summary: count, mean, p50, p90, p99, p99.9, max.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.inner.is_empty() {
            return None;
        }
        let p = |q: f64| self.percentile_us(q).unwrap_or_default();
        Some(Percentiles {
            count: self.count(),
            min_us: p(0.0),
            mean_us: self.inner.mean() / 1000.0,
            p50_us: p(50.0),
            p90_us: p(90.0),
            p99_us: p(99.0),
            p999_us: p(99.9),
            max_us: p(100.0),
        })
    }

    /// Points of the percentile curve, `(percentile, microseconds)`, for plots. Percentiles beyond
    /// what the sample count can resolve (p99.99 of 1,000 samples) are left out.
    pub fn curve(&self) -> Vec<CurvePoint> {
        let count = self.count() as f64;
        CURVE_PERCENTILES
            .iter()
            .filter(|&&p| p >= 100.0 || count * (1.0 - p / 100.0) >= 1.0 - 1e-6)
            .filter_map(|&p| {
                self.percentile_us(p)
                    .map(|us| CurvePoint { percentile: p, us })
            })
            .collect()
    }
}

/// A summary of one latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Fastest.
    pub min_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Percentiles {
    /// The named percentile (`p50`, `p90`, `p99`, `p99.9`, `max`).
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "p50" => Some(self.p50_us),
            "p90" => Some(self.p90_us),
            "p99" => Some(self.p99_us),
            "p99.9" => Some(self.p999_us),
            "max" => Some(self.max_us),
            "mean" => Some(self.mean_us),
            _ => None,
        }
    }
}

/// One point of a latency percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Percentile, 0–100.
    pub percentile: f64,
    /// Latency in microseconds.
    pub us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = LatencyHist::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary().expect("not empty");
        assert_eq!(s.count, 1000);
        // Three significant digits: within 0.1 % of the true value, give or take the one sample
        // a tail percentile of 1,000 samples rests on.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1.0;
        assert!(close(s.p50_us, 500.0), "{}", s.p50_us);
        assert!(close(s.p90_us, 900.0), "{}", s.p90_us);
        assert!(close(s.p99_us, 990.0), "{}", s.p99_us);
        assert!(close(s.p999_us, 999.0), "{}", s.p999_us);
        assert!(close(s.max_us, 1000.0), "{}", s.max_us);
        assert!(close(s.min_us, 1.0), "{}", s.min_us);
        assert!(close(s.mean_us, 500.5), "{}", s.mean_us);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = LatencyHist::new();
        let mut b = LatencyHist::new();
        let mut all = LatencyHist::new();
        for i in 0..500u64 {
            a.record(Duration::from_micros(10 + i));
            b.record(Duration::from_micros(2000 + i * 3));
            all.record(Duration::from_micros(10 + i));
            all.record(Duration::from_micros(2000 + i * 3));
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut h = LatencyHist::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.count(), 2);
        let s = h.summary().expect("not empty");
        assert!(s.min_us > 0.0);
        assert!((s.max_us - 60_000_000.0).abs() / 60_000_000.0 < 0.001);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        let h = LatencyHist::new();
        assert!(h.summary().is_none());
        assert!(h.curve().is_empty());
    }

    #[test]
    fn curve_stops_where_samples_cannot_resolve() {
        let mut h = LatencyHist::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let curve = h.curve();
        let percentiles: Vec<f64> = curve.iter().map(|p| p.percentile).collect();
        assert!(percentiles.contains(&99.9));
        assert!(!percentiles.contains(&99.99), "{percentiles:?}");
        assert_eq!(percentiles.last(), Some(&100.0));
        // Monotone: a percentile curve never goes down.
        assert!(curve.windows(2).all(|w| w[0].us <= w[1].us));
    }
}
