//! How long does picking an endpoint take for each load-balancing policy, with 10, 100 and
//! 1 000 endpoints — the per-request call `Balancer::pick` on a core's `LbState`, plus the
//! in-flight guard the proxy holds for the request (`LbState::start`, dropped at the end)? And
//! how long does computing the request hash take (header, cookie, source IP) for the
//! consistent-hash policies? Run with `cargo bench -p perf --bench lb_pick`.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use config_schema::LbPolicy;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dataplane::routing::H1Request;
use dataplane::upstream::{Balancer, FastRng, HashOn, LbState};

fn endpoints(n: usize) -> Vec<(SocketAddr, u32)> {
    (0..n)
        .map(|i| {
            let address = format!("10.{}.{}.{}:8080", i / 62_500, i / 250 % 250, i % 250 + 1);
            // Uneven weights (1..=4) so the weighted policies do real work.
            (address.parse().expect("address"), (i % 4) as u32 + 1)
        })
        .collect()
}

fn policies() -> [(&'static str, LbPolicy); 6] {
    [
        ("round_robin", LbPolicy::RoundRobin),
        ("weighted_round_robin", LbPolicy::WeightedRoundRobin),
        ("least_request", LbPolicy::LeastRequest),
        ("ring_hash", LbPolicy::RingHash),
        ("maglev", LbPolicy::Maglev),
        ("random", LbPolicy::Random),
    ]
}

fn lb_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_pick");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for (name, policy) in policies() {
        for n in [10, 100, 1_000] {
            let hash_on = matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev)
                .then(|| HashOn::Header("x-user".into()));
            let balancer =
                Balancer::from_parts("bench", policy, &endpoints(n), hash_on).expect("balancer");
            let state = LbState::with_seed(&balancer, 7);
            // Keys vary per pick, so ring and table lookups do not hit one cache line.
            let keys = FastRng::with_seed(3);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    let endpoint = balancer
                        .pick(black_box(&state), Some(keys.next_u64()))
                        .expect("endpoint");
                    let guard = state.start(endpoint);
                    black_box(&guard);
                })
            });
        }
    }
    group.finish();
}

fn lb_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_hash");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"api.example.com",
        },
        httparse::Header {
            name: "User-Agent",
            value: b"curl/8.5.0",
        },
        httparse::Header {
            name: "Accept",
            value: b"*/*",
        },
        httparse::Header {
            name: "X-User",
            value: b"user-1234567",
        },
        httparse::Header {
            name: "Cookie",
            value: b"theme=dark; session=abcdef0123456789abcdef; lang=en",
        },
    ];
    let req = H1Request::new("GET", "/api/v1/items", &headers);
    let source: IpAddr = "192.0.2.17".parse().expect("ip");
    for (name, hash_on) in [
        ("header", HashOn::Header("x-user".into())),
        ("cookie", HashOn::Cookie((*b"session").into())),
        ("source_ip", HashOn::SourceIp),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(hash_on.hash(black_box(&req), black_box(source))))
        });
    }
    group.finish();
}

criterion_group!(benches, lb_pick, lb_hash);
criterion_main!(benches);
