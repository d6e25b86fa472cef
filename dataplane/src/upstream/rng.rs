//! A per-core random number generator: wyrand, one 64-bit word of state in a `Cell`, so a draw is
//! a few arithmetic instructions with no thread-local lookup, lock or atomic. Not for secrets.

use std::cell::Cell;
use std::hash::BuildHasher;

/// A fast non-cryptographic generator owned by one worker thread (`!Sync`).
#[derive(Debug)]
pub struct FastRng(Cell<u64>);

impl FastRng {
    /// A generator seeded from the process's random hash keys (the OS's entropy, read by std).
    pub fn new() -> Self {
        Self::with_seed(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }

    /// A generator with a fixed seed (tests, benchmarks).
    pub fn with_seed(seed: u64) -> Self {
        Self(Cell::new(seed))
    }

    /// The next uniformly distributed `u64`.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        let s = self.0.get().wrapping_add(0xa076_1d64_78bd_642f);
        self.0.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A uniformly distributed number in `0..n` (`0` when `n` is 0), by multiply-shift on the top
    /// 32 bits: no division, bias below 2^-32 · n.
    #[inline]
    pub fn below(&self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_generators_repeat_and_cover_the_range() {
        let a = FastRng::with_seed(1);
        let b = FastRng::with_seed(1);
        assert_eq!(a.next_u64(), b.next_u64());
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[a.below(10)] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(a.below(0), 0);
        assert_ne!(FastRng::new().next_u64(), FastRng::new().next_u64());
    }
}
