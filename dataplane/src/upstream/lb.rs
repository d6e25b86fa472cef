//! Load balancing: which endpoint of a cluster gets the next request or connection.
//!
//! Split in two, as the thread-per-core design asks:
//! - [`Balancer`]: immutable, built once per config generation per cluster and shared by all
//!   workers through the snapshot — endpoint weights, the smooth weighted round-robin schedule,
//!   the hash ring, the Maglev table.
//! - [`LbState`]: mutable, one per cluster per worker core, touched only by that core (`Cell`,
//!   `!Send`): the round-robin cursor, in-flight counts for least-request, the random generator.
//!   [`LbState::carry_over`] keeps it across a reload when the cluster keeps its endpoints.
//!
//! A pick reads the shared tables and writes only core-local cells: no lock, no atomic, no
//! allocation.
//!
//! | policy | pick | cost |
//! |---|---|---|
//! | round robin | cursor, per core (each core starts at a random offset) | O(1) |
//! | weighted round robin | nginx's smooth WRR, precomputed into one period of its schedule (period = sum of weights / gcd ≤ 65 536), then a cursor; larger periods run the algorithm per core | O(1) (O(n) beyond) |
//! | least request | power of two choices on this core's in-flight counts; with unequal weights the lower `(in_flight + 1) / weight` wins | O(1) |
//! | ring hash | Ketama ring, binary search | O(log points) |
//! | maglev | Maglev table (prime size ≥ 100 × endpoints, at least 65 537) | O(1) |
//! | random | uniform | O(1) |
//!
//! Consistent-hash policies without a hash for the request (header or cookie absent) pick at
//! random, as Envoy does.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use config_schema::{ClusterSpec, LbPolicy};
use xxhash_rust::xxh64::xxh64;

use super::consistent::{Maglev, Ring};
use super::hash::HashOn;
use super::rng::FastRng;
use crate::routing::RequestView;

/// Longest smooth-WRR period that is precomputed (4 bytes per entry).
const MAX_SCHEDULE: u64 = 1 << 16;

/// The immutable load-balancing data of one cluster for one config generation.
#[derive(Debug)]
pub struct Balancer {
    name: Arc<str>,
    policy: LbPolicy,
    weights: Box<[u32]>,
    kind: Kind,
    hash_on: Option<HashOn>,
    /// Hash of the endpoint addresses in order: per-core state survives while it is unchanged.
    endpoints_id: u64,
    /// Hash of addresses, weights and policy: cursors survive while it is unchanged.
    layout_id: u64,
}

#[derive(Debug)]
enum Kind {
    RoundRobin,
    /// One period of the smooth WRR sequence.
    Schedule(Box<[u32]>),
    /// Smooth WRR run per core, for periods too long to precompute.
    SmoothWrr,
    LeastRequest {
        weighted: bool,
    },
    Ring(Ring),
    Maglev(Maglev),
    Random,
}

/// A cluster that cannot be balanced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    /// `ring_hash`/`maglev` without a usable hash policy (validation rejects this).
    #[error("cluster {0:?}: ring_hash and maglev need a hash_policy")]
    MissingHashPolicy(String),
}

impl Balancer {
    /// The balancer for a validated cluster. Endpoint indices are the config's, as in the
    /// snapshot's `Cluster::endpoints`.
    pub fn new(spec: &ClusterSpec) -> Result<Self, LbError> {
        let endpoints: Vec<(SocketAddr, u32)> = spec
            .endpoints
            .iter()
            .map(|e| (e.address, e.weight))
            .collect();
        let hash_on = spec.hash_policy.as_ref().and_then(HashOn::from_spec);
        Self::from_parts(&spec.name, spec.lb_policy, &endpoints, hash_on)
    }

    /// The balancer for `endpoints` (address, weight); weights below 1 count as 1.
    pub fn from_parts(
        name: &str,
        policy: LbPolicy,
        endpoints: &[(SocketAddr, u32)],
        hash_on: Option<HashOn>,
    ) -> Result<Self, LbError> {
        let endpoints: Vec<(SocketAddr, u32)> =
            endpoints.iter().map(|&(a, w)| (a, w.max(1))).collect();
        let weights: Box<[u32]> = endpoints.iter().map(|&(_, w)| w).collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let kind = match policy {
            LbPolicy::RoundRobin => Kind::RoundRobin,
            LbPolicy::WeightedRoundRobin if equal_weights => Kind::RoundRobin,
            LbPolicy::WeightedRoundRobin => {
                smooth_wrr_schedule(&weights).map_or(Kind::SmoothWrr, Kind::Schedule)
            }
            LbPolicy::LeastRequest => Kind::LeastRequest {
                weighted: !equal_weights,
            },
            LbPolicy::RingHash | LbPolicy::Maglev if hash_on.is_none() => {
                return Err(LbError::MissingHashPolicy(name.to_owned()));
            }
            LbPolicy::RingHash => Kind::Ring(Ring::new(&endpoints)),
            LbPolicy::Maglev => Kind::Maglev(Maglev::new(&endpoints)),
            LbPolicy::Random => Kind::Random,
        };
        let mut key = Vec::new();
        for (address, _) in &endpoints {
            key.extend_from_slice(address.to_string().as_bytes());
            key.push(b',');
        }
        let endpoints_id = xxh64(&key, 0);
        for &w in &weights {
            key.extend_from_slice(&w.to_le_bytes());
        }
        key.extend_from_slice(format!("{policy:?}").as_bytes());
        Ok(Self {
            name: name.into(),
            policy,
            weights,
            kind,
            hash_on,
            endpoints_id,
            layout_id: xxh64(&key, 0),
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy.
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether the cluster has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Ring points or Maglev table entries (0 for other policies), for `/clusters`.
    pub fn table_len(&self) -> usize {
        match &self.kind {
            Kind::Ring(ring) => ring.len(),
            Kind::Maglev(maglev) => maglev.len(),
            _ => 0,
        }
    }

    /// The request's hash for consistent-hash policies; `None` for other policies, or when the
    /// header or cookie is absent. `source` is the client's address.
    #[inline]
    pub fn request_hash<R: RequestView + ?Sized>(&self, req: &R, source: IpAddr) -> Option<u64> {
        self.hash_on.as_ref()?.hash(req, source)
    }

    /// The hash of an L4 connection for consistent-hash policies: only `source_ip` applies (there
    /// are no headers or cookies); `None` otherwise.
    #[inline]
    pub fn connection_hash(&self, source: IpAddr) -> Option<u64> {
        match self.hash_on {
            Some(HashOn::SourceIp) => Some(super::hash::hash_ip(source)),
            _ => None,
        }
    }

    /// The endpoint (index) for the next request; `None` only if the cluster has no endpoints.
    /// `state` is this core's state for this cluster; `hash` comes from [`Self::request_hash`].
    #[inline]
    pub fn pick(&self, state: &LbState, hash: Option<u64>) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        let picked = match &self.kind {
            Kind::RoundRobin => state.next_cursor() as usize % n,
            Kind::Schedule(schedule) => {
                schedule[state.next_cursor() as usize % schedule.len()] as usize
            }
            Kind::SmoothWrr => state.smooth_wrr(&self.weights),
            Kind::LeastRequest { weighted } => self.least_request(state, *weighted),
            Kind::Ring(ring) => match hash {
                Some(h) => ring.pick(h)?,
                None => state.rng.below(n),
            },
            Kind::Maglev(maglev) => match hash {
                Some(h) => maglev.pick(h)?,
                None => state.rng.below(n),
            },
            Kind::Random => state.rng.below(n),
        };
        Some(picked)
    }

    /// Power of two choices: two distinct random endpoints, the less loaded one wins (the first
    /// on a tie). Weighted: compare `(in_flight + 1) / weight`, cross-multiplied.
    #[inline]
    fn least_request(&self, state: &LbState, weighted: bool) -> usize {
        let n = self.weights.len();
        if n == 1 {
            return 0;
        }
        let a = state.rng.below(n);
        let mut b = state.rng.below(n - 1);
        if b >= a {
            b += 1;
        }
        let (load_a, load_b) = (state.in_flight(a), state.in_flight(b));
        let a_wins = if weighted {
            (u64::from(load_a) + 1) * u64::from(self.weights[b])
                <= (u64::from(load_b) + 1) * u64::from(self.weights[a])
        } else {
            load_a <= load_b
        };
        if a_wins { a } else { b }
    }
}

/// One period of nginx's smooth weighted round robin (each pick: every endpoint gains its weight,
/// the largest current value wins and loses the total). After `sum(weights)` picks every current
/// value is back to zero, so the sequence repeats with that period. Weights are divided by their
/// gcd first. `None` if the period exceeds `MAX_SCHEDULE`.
fn smooth_wrr_schedule(weights: &[u32]) -> Option<Box<[u32]>> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total > MAX_SCHEDULE {
        return None;
    }
    let mut current = vec![0i64; weights.len()];
    let schedule = (0..total)
        .map(|_| smooth_wrr_step(&weights, total as i64, &mut current) as u32)
        .collect();
    Some(schedule)
}

/// One smooth-WRR pick; ties go to the lower index.
#[inline]
fn smooth_wrr_step(weights: &[u32], total: i64, current: &mut [i64]) -> usize {
    let mut best = 0;
    let mut best_value = i64::MIN;
    for (i, (c, &w)) in current.iter_mut().zip(weights).enumerate() {
        *c += i64::from(w);
        if *c > best_value {
            best = i;
            best_value = *c;
        }
    }
    if let Some(c) = current.get_mut(best) {
        *c -= total;
    }
    best
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The per-core, mutable load-balancing state of one cluster. Lives on one worker thread.
#[derive(Debug)]
pub struct LbState {
    cluster: Arc<str>,
    endpoints_id: u64,
    layout_id: u64,
    cursor: Cell<u32>,
    /// Smooth WRR current weights, for schedules too long to precompute.
    current: RefCell<Box<[i64]>>,
    in_flight: Rc<[Cell<u32>]>,
    rng: FastRng,
}

impl LbState {
    /// Fresh state for `balancer`, with a random seed (each core starts round robin elsewhere).
    pub fn new(balancer: &Balancer) -> Self {
        Self::with_rng(balancer, FastRng::new())
    }

    /// Fresh state with a fixed seed (tests, benchmarks).
    pub fn with_seed(balancer: &Balancer, seed: u64) -> Self {
        Self::with_rng(balancer, FastRng::with_seed(seed))
    }

    fn with_rng(balancer: &Balancer, rng: FastRng) -> Self {
        let n = balancer.len();
        let start = rng.next_u64() as u32;
        Self {
            cluster: Arc::clone(&balancer.name),
            endpoints_id: balancer.endpoints_id,
            layout_id: balancer.layout_id,
            cursor: Cell::new(start),
            current: RefCell::new(vec![0; n].into()),
            in_flight: (0..n).map(|_| Cell::new(0)).collect(),
            rng,
        }
    }

    /// The state for `new` (the same cluster in the next config generation). If the cluster kept
    /// its name and endpoint addresses, in-flight counts are shared with this state (requests
    /// started before the reload still count, and their guards still decrement) and cursors
    /// continue (if weights and policy are also unchanged); otherwise the state starts fresh.
    pub fn carry_over(&self, new: &Balancer) -> LbState {
        let rng = FastRng::with_seed(self.rng.next_u64());
        if *self.cluster != *new.name || self.endpoints_id != new.endpoints_id {
            return Self::with_rng(new, rng);
        }
        let same_layout = self.layout_id == new.layout_id;
        LbState {
            cluster: Arc::clone(&new.name),
            endpoints_id: new.endpoints_id,
            layout_id: new.layout_id,
            cursor: Cell::new(if same_layout {
                self.cursor.get()
            } else {
                rng.next_u64() as u32
            }),
            current: RefCell::new(if same_layout {
                self.current.borrow().clone()
            } else {
                vec![0; new.len()].into()
            }),
            in_flight: Rc::clone(&self.in_flight),
            rng,
        }
    }

    /// Marks a request (or connection) as started on `endpoint`; it counts as in flight until the
    /// guard is dropped. Call it for every policy: least request reads the counts, and they are
    /// also this core's active-request gauge per endpoint.
    #[inline]
    pub fn start(&self, endpoint: usize) -> InFlightGuard {
        if let Some(count) = self.in_flight.get(endpoint) {
            count.set(count.get().saturating_add(1));
        }
        InFlightGuard {
            counts: Rc::clone(&self.in_flight),
            endpoint,
        }
    }

    /// Requests in flight on `endpoint` from this core.
    #[inline]
    pub fn in_flight(&self, endpoint: usize) -> u32 {
        self.in_flight.get(endpoint).map_or(0, Cell::get)
    }

    /// This core's random generator (also usable for weighted route splits and mirroring).
    pub fn rng(&self) -> &FastRng {
        &self.rng
    }

    #[inline]
    fn next_cursor(&self) -> u32 {
        let c = self.cursor.get();
        self.cursor.set(c.wrapping_add(1));
        c
    }

    fn smooth_wrr(&self, weights: &[u32]) -> usize {
        let mut current = self.current.borrow_mut();
        if current.len() != weights.len() {
            *current = vec![0; weights.len()].into();
        }
        let total = weights.iter().map(|&w| i64::from(w)).sum();
        smooth_wrr_step(weights, total, &mut current)
    }
}

/// An in-flight request on an endpoint; dropping it ends the request. Holds the core-local
/// counts by `Rc`, so it may outlive a reload (`!Send`: drop it on the core that started it).
#[derive(Debug)]
pub struct InFlightGuard {
    counts: Rc<[Cell<u32>]>,
    endpoint: usize,
}

impl InFlightGuard {
    /// The endpoint this request went to.
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }
}

impl Drop for InFlightGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(count) = self.counts.get(self.endpoint) {
            count.set(count.get().saturating_sub(1));
        }
    }
}

/// Per-core states for every cluster of a generation, indexed like the snapshot's clusters.
#[derive(Debug, Default)]
pub struct LbStates {
    states: Vec<LbState>,
}

impl LbStates {
    /// Fresh states for `balancers` (in snapshot cluster order).
    pub fn new<'a>(balancers: impl IntoIterator<Item = &'a Balancer>) -> Self {
        Self {
            states: balancers.into_iter().map(LbState::new).collect(),
        }
    }

    /// States for the next generation's `balancers`: each cluster whose name survives carries
    /// its state over (see [`LbState::carry_over`]); new clusters start fresh.
    pub fn carry_over<'a>(&self, balancers: impl IntoIterator<Item = &'a Balancer>) -> Self {
        let by_name: std::collections::HashMap<&str, &LbState> =
            self.states.iter().map(|s| (&*s.cluster, s)).collect();
        Self {
            states: balancers
                .into_iter()
                .map(|b| match by_name.get(b.name()) {
                    Some(old) => old.carry_over(b),
                    None => LbState::new(b),
                })
                .collect(),
        }
    }

    /// The state of cluster `index`.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&LbState> {
        self.states.get(index)
    }
}
