//! Consistent-hash tables: a Ketama-style ring and Google's Maglev. Both are built once per
//! config generation from the endpoint list and shared read-only by all workers.
//!
//! An endpoint's places depend only on its own address (and weight), never on its index or on
//! the other endpoints, so removing one endpoint moves only the keys it held (ring) or few more
//! (Maglev), and every worker and node computes the same table.

use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

/// Ring points per unit of weight (Ketama uses 160 per server).
const POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound on ring points (12 bytes each).
const MAX_RING_POINTS: u64 = 1 << 20;

/// A hash ring: sorted point hashes and the endpoint at each point. A lookup finds its bucket
/// (the top bits of the hash) in a small index, then binary-searches the few points in it: a
/// plain binary search over a large ring (400 000 points at 1 000 endpoints) costs a cache miss
/// per step.
#[derive(Debug)]
pub(crate) struct Ring {
    hashes: Box<[u64]>,
    endpoints: Box<[u32]>,
    /// `buckets[b]` is the first point whose hash has top bits `>= b`.
    buckets: Box<[u32]>,
    /// 64 minus the number of top bits that pick a bucket.
    shift: u32,
}

impl Ring {
    /// Builds the ring: `POINTS_PER_WEIGHT × weight / gcd(weights)` points per endpoint, each the
    /// xxHash64 of `"<address>_<n>"`. Rings that would exceed `MAX_RING_POINTS` are scaled down
    /// (then points also depend on the other endpoints' weights).
    pub(crate) fn new(endpoints: &[(SocketAddr, u32)]) -> Self {
        let divisor = endpoints.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let wanted: Vec<u64> = endpoints
            .iter()
            .map(|&(_, w)| u64::from(w / divisor) * POINTS_PER_WEIGHT)
            .collect();
        let total: u64 = wanted.iter().sum();
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(total.min(MAX_RING_POINTS) as usize);
        let mut key = Vec::with_capacity(64);
        for (index, (&(address, _), &want)) in endpoints.iter().zip(&wanted).enumerate() {
            let count = if total > MAX_RING_POINTS {
                (want * MAX_RING_POINTS / total).max(1)
            } else {
                want
            };
            let index = u32::try_from(index).expect("fewer than 2^32 endpoints");
            for n in 0..count {
                key.clear();
                key.extend_from_slice(address.to_string().as_bytes());
                key.push(b'_');
                key.extend_from_slice(n.to_string().as_bytes());
                points.push((xxh64(&key, 0), index));
            }
        }
        points.sort_unstable();
        let (hashes, endpoints) = points.into_iter().unzip::<_, _, Vec<u64>, Vec<u32>>();
        // About four points per bucket, at most 2^16 buckets (256 KiB).
        let bits = (hashes.len() / 4)
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .min(16);
        let shift = 64 - bits;
        let buckets = (0..1u64 << bits)
            .map(|b| {
                let at = hashes.partition_point(|&h| h.checked_shr(shift).unwrap_or(0) < b);
                u32::try_from(at).expect("ring points are capped well below 2^32")
            })
            .collect();
        Self {
            hashes: hashes.into(),
            endpoints: endpoints.into(),
            buckets,
            shift,
        }
    }

    /// The endpoint owning `hash`: the first point at or after it, wrapping around.
    #[inline]
    pub(crate) fn pick(&self, hash: u64) -> Option<usize> {
        let bucket = hash.checked_shr(self.shift).unwrap_or(0) as usize;
        let lo = self.buckets.get(bucket).map_or(0, |&i| i as usize);
        let hi = self
            .buckets
            .get(bucket + 1)
            .map_or(self.hashes.len(), |&i| i as usize);
        let at = lo + self.hashes.get(lo..hi)?.partition_point(|&h| h < hash);
        let at = if at == self.hashes.len() { 0 } else { at };
        self.endpoints.get(at).map(|&e| e as usize)
    }

    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016): a prime-sized table filled by each
/// endpoint's permutation in turn; lookup is one modulo and one load.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

/// Envoy's default Maglev table size, prime.
const MIN_TABLE_SIZE: u64 = 65_537;

impl Maglev {
    /// Builds the table: size is the smallest prime ≥ max(65537, 100 × endpoints). Endpoint `i`
    /// probes `(offset_i + j × skip_i) mod M` with offset and skip from two seeds of xxHash64 of
    /// its address; weights are honoured by letting an endpoint take a turn only when it has
    /// earned one (`round × weight ≥ taken × max_weight`, as in Envoy).
    pub(crate) fn new(endpoints: &[(SocketAddr, u32)]) -> Self {
        if endpoints.is_empty() {
            return Self {
                table: Box::new([]),
            };
        }
        let size = next_prime(MIN_TABLE_SIZE.max(100 * endpoints.len() as u64));
        let max_weight = endpoints.iter().map(|&(_, w)| u64::from(w.max(1))).max();
        let max_weight = max_weight.expect("endpoints is not empty");
        struct Probe {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            taken: u64,
        }
        let mut probes: Vec<Probe> = endpoints
            .iter()
            .map(|&(address, weight)| {
                let key = address.to_string();
                Probe {
                    offset: xxh64(key.as_bytes(), 0) % size,
                    skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                    next: 0,
                    weight: u64::from(weight.max(1)),
                    taken: 0,
                }
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < size {
            round += 1;
            for (index, probe) in probes.iter_mut().enumerate() {
                if filled == size {
                    break;
                }
                if round * probe.weight < probe.taken * max_weight {
                    continue;
                }
                let slot = loop {
                    let slot = (probe.offset + probe.next * probe.skip) % size;
                    probe.next += 1;
                    if table[slot as usize] == EMPTY {
                        break slot;
                    }
                };
                table[slot as usize] = u32::try_from(index).expect("fewer than 2^32 endpoints");
                probe.taken += 1;
                filled += 1;
            }
        }
        Self {
            table: table.into(),
        }
    }

    /// The endpoint for `hash`.
    #[inline]
    pub(crate) fn pick(&self, hash: u64) -> Option<usize> {
        let len = self.table.len() as u64;
        if len == 0 {
            return None;
        }
        self.table.get((hash % len) as usize).map(|&e| e as usize)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

fn next_prime(from: u64) -> u64 {
    (from..)
        .find(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .expect("there is always a larger prime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buckets_agree_with_a_plain_binary_search() {
        let endpoints: Vec<(SocketAddr, u32)> = (1..=50)
            .map(|i| (format!("10.0.0.{i}:80").parse().expect("addr"), i % 3 + 1))
            .collect();
        let ring = Ring::new(&endpoints);
        assert!(ring.buckets.len() > 1);
        let plain = |hash: u64| {
            let at = ring.hashes.partition_point(|&h| h < hash);
            let at = if at == ring.hashes.len() { 0 } else { at };
            ring.endpoints[at] as usize
        };
        let mut h: u64 = 1;
        for _ in 0..100_000 {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert_eq!(ring.pick(h), Some(plain(h)));
        }
        for edge in [
            0,
            u64::MAX,
            ring.hashes[0],
            ring.hashes[ring.hashes.len() - 1],
        ] {
            assert_eq!(ring.pick(edge), Some(plain(edge)));
        }
        let tiny = Ring::new(&endpoints[..1]);
        assert_eq!(tiny.pick(u64::MAX), Some(0));
        assert_eq!(Ring::new(&[]).pick(5), None);
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100_000), 100_003);
        assert_eq!(next_prime(2), 2);
    }
}
