use std::net::SocketAddr;

use config_schema::LbPolicy;

use super::hash::hash_bytes;
use super::*;

fn endpoints(n: usize) -> Vec<(SocketAddr, u32)> {
    (0..n)
        .map(|i| {
            let address = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1);
            (address.parse().expect("address"), 1)
        })
        .collect()
}

fn balancer(policy: LbPolicy, endpoints: &[(SocketAddr, u32)]) -> Balancer {
    let hash_on = matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev)
        .then(|| HashOn::Header("x-user".into()));
    Balancer::from_parts("c", policy, endpoints, hash_on).expect("balancer")
}

fn counts(
    b: &Balancer,
    state: &LbState,
    picks: usize,
    hash: impl Fn(usize) -> Option<u64>,
) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    for i in 0..picks {
        counts[b.pick(state, hash(i)).expect("endpoint")] += 1;
    }
    counts
}

#[test]
fn round_robin_is_even_and_cycles() {
    let b = balancer(LbPolicy::RoundRobin, &endpoints(3));
    let state = LbState::with_seed(&b, 1);
    assert_eq!(counts(&b, &state, 3000, |_| None), vec![1000; 3]);
    let first = b.pick(&state, None).expect("endpoint");
    let next: Vec<usize> = (0..5)
        .map(|_| b.pick(&state, None).expect("endpoint"))
        .collect();
    assert_eq!(next, (1..6).map(|i| (first + i) % 3).collect::<Vec<_>>());
    // Two cores start at different places, so they do not all hit endpoint 0 first.
    let starts: std::collections::HashSet<usize> = (0..20)
        .map(|seed| {
            b.pick(&LbState::with_seed(&b, seed), None)
                .expect("endpoint")
        })
        .collect();
    assert!(starts.len() > 1);
}

#[test]
fn weighted_round_robin_is_smooth_and_proportional() {
    let mut eps = endpoints(3);
    eps[0].1 = 5;
    let b = balancer(LbPolicy::WeightedRoundRobin, &eps);
    let state = LbState::with_seed(&b, 0);
    // nginx's documented sequence for weights 5, 1, 1 is a a b a c a a; each core starts
    // somewhere in it.
    let nginx = [0, 0, 1, 0, 2, 0, 0];
    let sequence: Vec<usize> = (0..7)
        .map(|_| b.pick(&state, None).expect("endpoint"))
        .collect();
    assert!(
        (0..7).any(|k| (0..7).all(|i| sequence[i] == nginx[(k + i) % 7])),
        "{sequence:?} is not a rotation of {nginx:?}"
    );
    assert_eq!(counts(&b, &state, 7000, |_| None), vec![5000, 1000, 1000]);

    // Weights whose period is too long to precompute run the algorithm per core, same result.
    let mut eps = endpoints(3);
    eps[0].1 = 50_000;
    eps[1].1 = 30_001;
    eps[2].1 = 20_000;
    let b = balancer(LbPolicy::WeightedRoundRobin, &eps);
    let state = LbState::with_seed(&b, 0);
    assert_eq!(
        counts(&b, &state, 100_001, |_| None),
        vec![50_000, 30_001, 20_000]
    );

    // Equal weights are plain round robin.
    let b = balancer(LbPolicy::WeightedRoundRobin, &endpoints(4));
    assert_eq!(
        counts(&b, &LbState::with_seed(&b, 3), 400, |_| None),
        vec![100; 4]
    );
}

#[test]
fn least_request_avoids_a_loaded_endpoint() {
    let b = balancer(LbPolicy::LeastRequest, &endpoints(4));
    let state = LbState::with_seed(&b, 9);
    let busy: Vec<InFlightGuard> = (0..100).map(|_| state.start(2)).collect();
    assert_eq!(state.in_flight(2), 100);
    let picks = counts(&b, &state, 10_000, |_| None);
    assert_eq!(
        picks[2], 0,
        "two distinct choices: the loaded one always loses"
    );
    drop(busy);
    assert_eq!(state.in_flight(2), 0);

    // Requests that stay in flight spread the load evenly.
    let mut held = Vec::new();
    for _ in 0..400 {
        let e = b.pick(&state, None).expect("endpoint");
        held.push(state.start(e));
    }
    let loads: Vec<u32> = (0..4).map(|e| state.in_flight(e)).collect();
    assert!(loads.iter().all(|&l| (90..=110).contains(&l)), "{loads:?}");
    drop(held);

    // Weighted: with equal loads, the heavier endpoint wins the comparison.
    let mut eps = endpoints(2);
    eps[0].1 = 3;
    let b = balancer(LbPolicy::LeastRequest, &eps);
    let state = LbState::with_seed(&b, 1);
    let guards: Vec<_> = [0, 1].iter().map(|&e| state.start(e)).collect();
    assert_eq!(counts(&b, &state, 100, |_| None), vec![100, 0]);
    drop(guards);
    assert_eq!(
        b.pick(&LbState::with_seed(&b, 1), None).map(|_| ()),
        Some(())
    );
    let one = balancer(LbPolicy::LeastRequest, &endpoints(1));
    assert_eq!(one.pick(&LbState::with_seed(&one, 1), None), Some(0));
}

#[test]
fn random_is_roughly_uniform() {
    let b = balancer(LbPolicy::Random, &endpoints(10));
    let state = LbState::with_seed(&b, 5);
    let picks = counts(&b, &state, 100_000, |_| None);
    assert!(
        picks.iter().all(|&c| (9_500..10_500).contains(&c)),
        "{picks:?}"
    );
}

fn key_hashes(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| hash_bytes(format!("user-{i}").as_bytes()))
        .collect()
}

/// Endpoint per key for `policy` over `eps`, as addresses (indices shift when one is removed).
fn assignment(policy: LbPolicy, eps: &[(SocketAddr, u32)], keys: &[u64]) -> Vec<SocketAddr> {
    let b = balancer(policy, eps);
    let state = LbState::with_seed(&b, 0);
    keys.iter()
        .map(|&k| eps[b.pick(&state, Some(k)).expect("endpoint")].0)
        .collect()
}

#[test]
fn ring_hash_is_sticky_and_moves_only_the_removed_endpoints_keys() {
    let eps = endpoints(10);
    let keys = key_hashes(20_000);
    let before = assignment(LbPolicy::RingHash, &eps, &keys);
    assert_eq!(
        before,
        assignment(LbPolicy::RingHash, &eps, &keys),
        "same key, same endpoint"
    );
    for ep in &eps {
        let share = before.iter().filter(|a| *a == &ep.0).count();
        assert!(
            (1_200..2_800).contains(&share),
            "{}: {share} of 20000",
            ep.0
        );
    }
    let removed = eps[3].0;
    let survivors: Vec<_> = eps.iter().copied().filter(|e| e.0 != removed).collect();
    let after = assignment(LbPolicy::RingHash, &survivors, &keys);
    let moved_from_survivors = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != removed && b != a)
        .count();
    assert_eq!(moved_from_survivors, 0);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let fraction = moved as f64 / keys.len() as f64;
    assert!(
        (0.06..0.14).contains(&fraction),
        "moved {fraction:.3}, ideal 0.1"
    );
}

#[test]
fn maglev_is_balanced_sticky_and_disrupts_little() {
    let eps = endpoints(10);
    let b = balancer(LbPolicy::Maglev, &eps);
    assert_eq!(b.table_len(), 65_537);
    let keys = key_hashes(20_000);
    let before = assignment(LbPolicy::Maglev, &eps, &keys);
    assert_eq!(before, assignment(LbPolicy::Maglev, &eps, &keys));
    for ep in &eps {
        let share = before.iter().filter(|a| *a == &ep.0).count();
        assert!(
            (1_700..2_300).contains(&share),
            "{}: {share} of 20000",
            ep.0
        );
    }
    let removed = eps[3].0;
    let survivors: Vec<_> = eps.iter().copied().filter(|e| e.0 != removed).collect();
    let after = assignment(LbPolicy::Maglev, &survivors, &keys);
    let on_survivors = before.iter().filter(|b| **b != removed).count();
    let moved_from_survivors = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != removed && b != a)
        .count();
    let disruption = moved_from_survivors as f64 / on_survivors as f64;
    // Maglev trades a little disruption for perfect balance; the paper reports a few percent.
    assert!(
        disruption < 0.01,
        "{:.4} of survivors' keys moved",
        disruption
    );
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64;
    assert!(
        (0.08..0.14).contains(&(moved / keys.len() as f64)),
        "moved {moved}"
    );
    eprintln!(
        "maglev 10 -> 9 endpoints: {:.2}% of keys moved, {:.2}% of survivors' keys",
        moved / keys.len() as f64 * 100.0,
        disruption * 100.0
    );

    // Large clusters get a table of at least 100 entries per endpoint, prime.
    let big = balancer(LbPolicy::Maglev, &endpoints(1000));
    assert_eq!(big.table_len(), 100_003);
}

#[test]
fn consistent_hashing_honours_weights() {
    let mut eps = endpoints(2);
    eps[0].1 = 2;
    let keys = key_hashes(30_000);
    for policy in [LbPolicy::Maglev, LbPolicy::RingHash] {
        let picks = assignment(policy, &eps, &keys);
        let heavy = picks.iter().filter(|a| **a == eps[0].0).count() as f64 / keys.len() as f64;
        assert!((0.60..0.73).contains(&heavy), "{policy:?}: {heavy:.3}");
    }
}

#[test]
fn hashing_without_a_key_falls_back_to_random() {
    let b = balancer(LbPolicy::RingHash, &endpoints(5));
    let state = LbState::with_seed(&b, 2);
    let picks = counts(&b, &state, 5_000, |_| None);
    assert!(picks.iter().all(|&c| c > 800), "{picks:?}");
    let headers = [httparse::Header {
        name: "X-User",
        value: b"alice",
    }];
    let req = crate::routing::H1Request::new("GET", "/", &headers);
    let ip = "127.0.0.1".parse().expect("ip");
    let h = b.request_hash(&req, ip);
    assert_eq!(h, Some(hash_bytes(b"alice")));
    let first = b.pick(&state, h);
    assert!((0..100).all(|_| b.pick(&state, h) == first));
    let rr = balancer(LbPolicy::RoundRobin, &endpoints(2));
    assert_eq!(rr.request_hash(&req, ip), None);
}

#[test]
fn empty_clusters_and_missing_hash_policies() {
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::WeightedRoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
        LbPolicy::Random,
    ] {
        let b = balancer(policy, &[]);
        assert!(b.is_empty());
        assert_eq!(
            b.pick(&LbState::with_seed(&b, 0), Some(1)),
            None,
            "{policy:?}"
        );
    }
    assert_eq!(
        Balancer::from_parts("c", LbPolicy::Maglev, &endpoints(2), None).map(|_| ()),
        Err(LbError::MissingHashPolicy("c".into()))
    );
    let spec: config_schema::ClusterSpec = toml_cluster();
    let b = Balancer::new(&spec).expect("balancer");
    assert_eq!(
        (b.name(), b.len(), b.policy()),
        ("web", 2, LbPolicy::Maglev)
    );
}

fn toml_cluster() -> config_schema::ClusterSpec {
    let config = config_schema::parse(
        r#"
        [[clusters]]
        name = "web"
        endpoints = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]
        lb_policy = "maglev"
        hash_policy = { cookie = "sid" }
    "#,
    )
    .expect("valid");
    config.spec.clusters[0].clone()
}

#[test]
fn state_carries_over_when_endpoints_survive() {
    let eps = endpoints(3);
    let old = balancer(LbPolicy::LeastRequest, &eps);
    let old_state = LbState::with_seed(&old, 1);
    let guard = old_state.start(1);
    // Same cluster, new generation (here: a new policy): in-flight counts are shared.
    let new = balancer(LbPolicy::RoundRobin, &eps);
    let new_state = old_state.carry_over(&new);
    assert_eq!(new_state.in_flight(1), 1);
    drop(guard);
    assert_eq!(
        new_state.in_flight(1),
        0,
        "an old request's guard ends it in the new state"
    );

    // Same layout: the round-robin cursor continues.
    let rr = balancer(LbPolicy::RoundRobin, &eps);
    let rr_state = LbState::with_seed(&rr, 4);
    let a = rr.pick(&rr_state, None).expect("endpoint");
    let carried = rr_state.carry_over(&balancer(LbPolicy::RoundRobin, &eps));
    assert_eq!(rr.pick(&carried, None), Some((a + 1) % 3));

    // Changed endpoints or a different cluster name: fresh state.
    let guard = old_state.start(0);
    let changed = balancer(LbPolicy::LeastRequest, &endpoints(4));
    assert_eq!(old_state.carry_over(&changed).in_flight(0), 0);
    let renamed = Balancer::from_parts("other", LbPolicy::LeastRequest, &eps, None).expect("ok");
    assert_eq!(old_state.carry_over(&renamed).in_flight(0), 0);
    drop(guard);

    // All clusters of a generation, matched by name.
    let gen1 = [balancer(LbPolicy::LeastRequest, &eps)];
    let states = LbStates::new(&gen1);
    let held = states.get(0).expect("state").start(2);
    let other = Balancer::from_parts("new", LbPolicy::Random, &eps, None).expect("ok");
    let gen2 = [other, balancer(LbPolicy::LeastRequest, &eps)];
    let next = states.carry_over(&gen2);
    assert_eq!(next.get(1).expect("c").in_flight(2), 1);
    assert_eq!(next.get(0).expect("new").in_flight(2), 0);
    assert!(next.get(2).is_none());
    drop(held);
    assert_eq!(next.get(1).expect("c").in_flight(2), 0);
}
