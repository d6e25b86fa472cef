//! Load-balancing properties seen from outside the proxy: round robin is even (exactly, per
//! connection; within one request per worker across connections), weighted round robin follows
//! the weights, consistent hashing (ring hash and Maglev) is sticky and moves few keys when an
//! endpoint is removed by a reload, and least-request (power of two choices) avoids a slow
//! endpoint. Every test runs on io_uring and on epoll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::Signal;
use tests::http::{Client, HttpUpstream, Request, Response, cluster, http_listener, request_bytes};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, both_drivers, wait_until};

both_drivers!(
    round_robin_is_even_and_weighted_round_robin_follows_weights,
    ring_hash_is_sticky_and_removing_an_endpoint_moves_only_its_keys,
    maglev_is_sticky_and_removing_an_endpoint_moves_few_other_keys,
    least_request_avoids_a_slow_endpoint,
);

/// Upstreams `e0`, `e1`, ... each answering with its own name.
fn named_upstreams(n: usize) -> Vec<HttpUpstream> {
    (0..n)
        .map(|i| HttpUpstream::named(&format!("e{i}")))
        .collect()
}

/// One listener and a catch-all virtual host whose routes send path prefixes to clusters.
fn config(routes: &[(&str, &str)], clusters: &str) -> String {
    let mut text = http_listener("web", "");
    text.push_str(clusters);
    text.push_str("\n[[virtual_hosts]]\nname = \"default\"\ndomains = [\"*\"]\n");
    for (prefix, cluster) in routes {
        text.push_str(&format!(
            "[[virtual_hosts.routes]]\nname = \"{cluster}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\ncluster = \"{cluster}\"\n"
        ));
    }
    text
}

/// Sends `count` GETs of `target` on `client`; returns how many each upstream answered.
fn tally(
    client: &mut Client,
    target: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> HashMap<String, usize> {
    let request = request_bytes("GET", target, "lb.test", headers, b"");
    let mut seen = HashMap::new();
    for _ in 0..count {
        let response = client.request(&request);
        assert_eq!(response.status, 200, "{}", response.text());
        *seen.entry(response.text()).or_default() += 1;
    }
    seen
}

/// Round robin over 4 endpoints: 400 requests on one connection (one worker) give exactly 100
/// each; 400 more over 8 concurrent connections give each endpoint the same count within the
/// number of workers (each worker has its own cursor). Weighted round robin with weights 3:1
/// gives exactly 300/100 on one connection.
fn round_robin_is_even_and_weighted_round_robin_follows_weights(driver: Driver) {
    let rr = named_upstreams(4);
    let heavy = HttpUpstream::named("heavy");
    let light = HttpUpstream::named("light");
    let rr_addresses: Vec<_> = rr.iter().map(HttpUpstream::address).collect();
    let clusters = [
        cluster("rr", &rr_addresses, "lb_policy = \"round_robin\""),
        format!(
            "\n[[clusters]]\nname = \"wrr\"\nlb_policy = \"weighted_round_robin\"\n\
             endpoints = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]\n",
            heavy.address(),
            light.address()
        ),
    ]
    .concat();
    let proxy = Proxy::start(
        &config(&[("/rr", "rr"), ("/wrr", "wrr")], &clusters),
        driver,
        2,
    );
    let address = proxy.listener("web");

    let mut client = Client::connect(address);
    let one_connection = tally(&mut client, "/rr", &[], 400);
    for i in 0..4 {
        assert_eq!(
            one_connection.get(&format!("e{i}")).copied(),
            Some(100),
            "round robin on one connection: {one_connection:?}"
        );
    }

    const CONNECTIONS: usize = 8;
    let per_connection: Vec<HashMap<String, usize>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                scope.spawn(move || {
                    let mut client = Client::connect(address);
                    tally(&mut client, "/rr", &[], 400 / CONNECTIONS)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    });
    let mut totals = [0usize; 4];
    for seen in &per_connection {
        for (name, count) in seen {
            let index: usize = name[1..].parse().expect("e<i>");
            totals[index] += count;
        }
    }
    assert_eq!(totals.iter().sum::<usize>(), 400);
    let spread = totals.iter().max().expect("4") - totals.iter().min().expect("4");
    assert!(
        spread <= proxy.workers(),
        "round robin across {CONNECTIONS} connections: {totals:?}"
    );
    let upstream_counts: Vec<usize> = rr.iter().map(HttpUpstream::request_count).collect();
    let expected: Vec<usize> = totals.iter().map(|t| t + 100).collect();
    assert_eq!(upstream_counts, expected, "what the upstreams saw");

    let weighted = tally(&mut client, "/wrr", &[], 400);
    assert_eq!(weighted.get("heavy").copied(), Some(300), "{weighted:?}");
    assert_eq!(weighted.get("light").copied(), Some(100), "{weighted:?}");
}

/// Where each of `keys` goes, as `x-user` values, sent over `connections` concurrent
/// connections (so both workers take part).
fn placement(
    address: std::net::SocketAddr,
    keys: &[String],
    connections: usize,
) -> HashMap<String, String> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = keys
            .chunks(keys.len().div_ceil(connections))
            .map(|part| {
                scope.spawn(move || {
                    let mut client = Client::connect(address);
                    part.iter()
                        .map(|key| {
                            let response = client.request(&request_bytes(
                                "GET",
                                "/sticky",
                                "lb.test",
                                &[("x-user", key)],
                                b"",
                            ));
                            assert_eq!(response.status, 200, "{}", response.text());
                            (key.clone(), response.text())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect()
    })
}

/// Rewrites the proxy's config file with `from` replaced by `to`, sends SIGHUP, and waits until
/// every worker runs the new generation.
fn reload(proxy: &Proxy, from: &str, to: &str) {
    let before = proxy.metrics().value("ringmesh_config_generation", &[]);
    let text = std::fs::read_to_string(proxy.config_path()).expect("read the config");
    assert!(text.contains(from), "the config has no {from:?}");
    std::fs::write(proxy.config_path(), text.replace(from, to)).expect("write the config");
    proxy.signal(Signal::SIGHUP);
    wait_until(
        PATIENCE,
        "every worker to apply the reloaded config",
        || {
            let workers = proxy.stats().workers();
            if workers.iter().all(|w| w.generation as f64 > before) {
                Ok(())
            } else {
                let failed = proxy
                    .metrics()
                    .value("ringmesh_config_reload_failed_total", &[]);
                Err(format!("workers {workers:?}, failed reloads {failed}"))
            }
        },
    );
}

/// What a consistent-hash test found.
struct Remapping {
    /// Keys that stayed on an endpoint that was not removed, and how many of those moved.
    kept_keys: usize,
    moved: usize,
}

/// 400 keys over 4 endpoints with `policy` hashing on `x-user`: each key lands on one endpoint
/// whichever connection and worker sends it, every endpoint gets a fair part, and after a
/// reload that removes one endpoint, its keys go elsewhere and nothing reaches it.
fn consistent_hash_run(driver: Driver, policy: &str) -> Remapping {
    const KEYS: usize = 400;
    let upstreams = named_upstreams(4);
    let addresses: Vec<_> = upstreams.iter().map(HttpUpstream::address).collect();
    let endpoint_list = |addresses: &[std::net::SocketAddr]| -> String {
        let quoted: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        format!("endpoints = [{}]", quoted.join(", "))
    };
    let clusters = format!(
        "\n[[clusters]]\nname = \"sticky\"\n{}\nlb_policy = \"{policy}\"\n\
         hash_policy = {{ header = \"x-user\" }}\n",
        endpoint_list(&addresses)
    );
    let proxy = Proxy::start(&config(&[("/", "sticky")], &clusters), driver, 2);
    let address = proxy.listener("web");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user-{i}")).collect();

    let first = placement(address, &keys, 1);
    let again = placement(address, &keys, 4);
    assert_eq!(
        first, again,
        "{policy}: every key goes to the same endpoint every time"
    );
    for i in 0..4 {
        let name = format!("e{i}");
        let share = first.values().filter(|e| **e == name).count();
        assert!(
            share >= KEYS / 10,
            "{policy}: {name} got {share} of {KEYS} keys; the hash should spread them"
        );
    }

    // Remove e1.
    let kept: Vec<_> = addresses
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, a)| *a)
        .collect();
    reload(&proxy, &endpoint_list(&addresses), &endpoint_list(&kept));
    let removed_before = upstreams[1].request_count();
    let after = placement(address, &keys, 4);
    assert_eq!(
        upstreams[1].request_count(),
        removed_before,
        "{policy}: a removed endpoint gets nothing"
    );
    let mut remapping = Remapping {
        kept_keys: 0,
        moved: 0,
    };
    for key in &keys {
        let (was, is) = (&first[key], &after[key]);
        assert_ne!(
            is, "e1",
            "{policy}: {key} still goes to the removed endpoint"
        );
        if was != "e1" {
            remapping.kept_keys += 1;
            if was != is {
                remapping.moved += 1;
            }
        }
    }
    remapping
}

/// Ring hash: an endpoint's points depend only on its own address, so removing one moves
/// exactly the keys it held and no other.
fn ring_hash_is_sticky_and_removing_an_endpoint_moves_only_its_keys(driver: Driver) {
    let remapping = consistent_hash_run(driver, "ring_hash");
    assert_eq!(
        remapping.moved, 0,
        "ring hash moved {} of the {} keys whose endpoint stayed",
        remapping.moved, remapping.kept_keys
    );
}

/// Maglev: removing one of four endpoints refills part of the table, so a few other keys may
/// move, but far fewer than a rehash would (which moves about three quarters). The bound (5 %)
/// is several times what Maglev's paper reports for this case.
fn maglev_is_sticky_and_removing_an_endpoint_moves_few_other_keys(driver: Driver) {
    let remapping = consistent_hash_run(driver, "maglev");
    eprintln!(
        "Maglev moved {} of {} keys whose endpoint stayed",
        remapping.moved, remapping.kept_keys
    );
    assert!(
        remapping.moved * 20 <= remapping.kept_keys,
        "Maglev moved {} of the {} keys whose endpoint stayed",
        remapping.moved,
        remapping.kept_keys
    );
}

/// Least request (power of two choices) with two fast endpoints and one that takes 500 ms per
/// answer, 8 concurrent clients sharing 320 requests (each takes the next until none is left, so
/// all stay busy to the end): the slow endpoint is picked only when it is no busier than the
/// other candidate, so it keeps about one request at a time per worker and gets a small part of
/// the traffic, far below the third that round robin would give it. The bound (one sixth) leaves
/// room for a loaded machine, where fast answers are slow too and the run lasts longer.
fn least_request_avoids_a_slow_endpoint(driver: Driver) {
    const CLIENTS: usize = 8;
    const TOTAL: usize = 320;
    let fast = named_upstreams(2);
    let slow = HttpUpstream::start(|_: &Request| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        Response::ok("slow").into()
    });
    let addresses = [fast[0].address(), slow.address(), fast[1].address()];
    let proxy = Proxy::start(
        &config(
            &[("/", "lr")],
            &cluster("lr", &addresses, "lb_policy = \"least_request\""),
        ),
        driver,
        2,
    );
    let address = proxy.listener("web");
    let left = AtomicUsize::new(TOTAL);
    let per_client: Vec<HashMap<String, usize>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let left = &left;
                scope.spawn(move || {
                    let mut client = Client::connect(address);
                    let mut seen = HashMap::new();
                    while left
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        for (name, count) in tally(&mut client, "/work", &[], 1) {
                            *seen.entry(name).or_default() += count;
                        }
                    }
                    seen
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    });
    let answered: usize = per_client.iter().flat_map(|seen| seen.values()).sum();
    assert_eq!(answered, TOTAL);
    let to_slow: usize = per_client.iter().filter_map(|seen| seen.get("slow")).sum();
    eprintln!("least request sent {to_slow} of {TOTAL} requests to the slow endpoint");
    assert_eq!(slow.request_count(), to_slow);
    assert!(
        to_slow * 6 <= TOTAL,
        "least request sent {to_slow} of {TOTAL} requests to the slow endpoint \
         (fast ones: {}, {})",
        fast[0].request_count(),
        fast[1].request_count()
    );
}
