//! Medians, spreads and ratios over rounds.
//!
//! The machine is shared and noisy, so one run says little. `compare` runs every target once per
//! round, several rounds, and summarises each metric by its median (robust to one disturbed
//! round) and its spread (min and max, and (max − min) / median). Ratios between two targets are
//! taken *within* each round — both sides saw the same background noise — and the median of those
//! paired ratios is reported, which is steadier than a ratio of medians.

use serde::{Deserialize, Serialize};

/// The median of the finite values; `None` when there are none. The mean of the middle two for
/// an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// A metric over rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median over rounds.
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
    /// Rounds that contributed.
    pub n: usize,
}

impl Spread {
    /// Summarises the finite values; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let median = median(&finite)?;
        Some(Self {
            median,
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: finite.len(),
        })
    }

    /// (max − min) / |median|, as a fraction; 0 for one round; `None` for a zero median.
    pub fn relative(&self) -> Option<f64> {
        (self.median != 0.0).then(|| (self.max - self.min) / self.median.abs())
    }
}

/// `a / b`, or `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Ratios `a[i] / b[i]` for the rounds where both exist, summarised.
pub fn paired_ratio(a: &[Option<f64>], b: &[Option<f64>]) -> Option<Spread> {
    let ratios: Vec<f64> = a.iter().zip(b).filter_map(|(&a, &b)| ratio(a, b)).collect();
    Spread::of(&ratios)
}

/// Differences `a[i] − b[i]` for the rounds where both exist, summarised (added latency).
pub fn paired_difference(a: &[Option<f64>], b: &[Option<f64>]) -> Option<Spread> {
    let diffs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(a, b)| Some((*a)? - (*b)?))
        .collect();
    Spread::of(&diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        // A NaN from a failed round is ignored, not sorted somewhere arbitrary.
        assert_eq!(median(&[f64::NAN, 5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn spread_reports_the_range() {
        let s = Spread::of(&[100.0, 90.0, 120.0]).expect("values");
        assert_eq!(s.median, 100.0);
        assert_eq!(s.min, 90.0);
        assert_eq!(s.max, 120.0);
        assert_eq!(s.n, 3);
        assert!((s.relative().expect("nonzero") - 0.3).abs() < 1e-12);
        assert!(Spread::of(&[]).is_none());
        assert_eq!(Spread::of(&[0.0]).and_then(|s| s.relative()), None);
    }

    #[test]
    fn ratio_guards_missing_and_zero() {
        assert_eq!(ratio(Some(6.0), Some(3.0)), Some(2.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(3.0)), None);
        assert_eq!(ratio(Some(f64::INFINITY), Some(3.0)), None);
    }

    #[test]
    fn paired_ratios_use_rounds_where_both_ran() {
        // Round 2 of b failed; the ratio uses rounds 1 and 3 only. Pairing removes the shared
        // slow-down of round 3: both halved, the ratio did not change.
        let a = [Some(100.0), Some(100.0), Some(50.0)];
        let b = [Some(50.0), None, Some(25.0)];
        let r = paired_ratio(&a, &b).expect("two rounds");
        assert_eq!(r.n, 2);
        assert_eq!(r.median, 2.0);
        assert_eq!(r.min, 2.0);
        assert_eq!(r.max, 2.0);
    }

    #[test]
    fn paired_difference_is_added_latency() {
        let proxied = [Some(150.0), Some(170.0), Some(160.0)];
        let direct = [Some(50.0), Some(60.0), Some(55.0)];
        let d = paired_difference(&proxied, &direct).expect("rounds");
        assert_eq!(d.median, 105.0);
        assert_eq!(d.min, 100.0);
        assert_eq!(d.max, 110.0);
    }
}
