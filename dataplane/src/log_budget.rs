//! A budget for log lines that a peer can trigger at will (a refused handshake, a connection an
//! authorization policy denies): a token bucket per worker, so a flood costs a counter each and
//! not a log line each, with no lock. The lines skipped are reported in the next line written.

/// A token bucket for log lines: [`LogBudget::BURST`] at once, then
/// [`LogBudget::PER_SECOND`]; per worker, so it needs no lock.
#[derive(Debug)]
pub struct LogBudget {
    /// Tokens left and when they were last refilled.
    state: std::cell::Cell<(u32, Option<std::time::Instant>)>,
    /// Lines skipped since the last one written.
    suppressed: std::cell::Cell<u64>,
}

impl LogBudget {
    const BURST: u32 = 32;
    const PER_SECOND: u32 = 4;

    /// A full budget.
    pub const fn new() -> Self {
        Self {
            state: std::cell::Cell::new((Self::BURST, None)),
            suppressed: std::cell::Cell::new(0),
        }
    }

    /// `Some(lines skipped before this one)` if a line may be written now.
    pub fn admit(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let (tokens, since) = self.state.get();
        let refill = since.map_or(0, |since| {
            let elapsed = now.saturating_duration_since(since);
            u32::try_from(elapsed.as_millis() * u128::from(Self::PER_SECOND) / 1000)
                .unwrap_or(u32::MAX)
        });
        let tokens = tokens.saturating_add(refill).min(Self::BURST);
        // Only move the refill clock when tokens were added, so slow trickles still accrue.
        let since = if refill > 0 || since.is_none() {
            Some(now)
        } else {
            since
        };
        if tokens == 0 {
            self.state.set((0, since));
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.state.set((tokens - 1, since));
        Some(self.suppressed.replace(0))
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::LogBudget;

    #[test]
    fn lines_are_rate_limited_and_count_what_they_skip() {
        let log = LogBudget::new();
        for _ in 0..LogBudget::BURST {
            assert_eq!(log.admit(), Some(0), "the burst is written");
        }
        for _ in 0..10 {
            assert_eq!(log.admit(), None, "then lines are skipped");
        }
        // A token comes back after 1/PER_SECOND s; the next line says how many were skipped.
        let (tokens, since) = log.state.get();
        let earlier =
            since.map(|t| t - Duration::from_millis(1000 / u64::from(LogBudget::PER_SECOND) + 1));
        log.state.set((tokens, earlier));
        assert_eq!(log.admit(), Some(10));
        assert_eq!(log.admit(), None);
    }
}
