//! The health thread: one per process (never a worker), with a small monoio runtime of its own.
//! It follows the snapshot store, so it sees every reload, and every [`TICK`]:
//!
//! - for each cluster with outlier detection, runs the sweep (`outlier::ClusterHealth::sweep`)
//!   every `interval`: ejections whose time has passed are cleared and logged, multipliers decay;
//! - for each cluster with `health_check`, starts the checks that are due, each on a task of its
//!   own (a slow endpoint delays no other): a TCP connect, or an HTTP/1.1 `GET` whose status line
//!   must carry an expected status, all within `timeout`. `unhealthy_threshold` failures in a row
//!   clear the endpoint's `healthy` flag, `healthy_threshold` passes in a row set it again (each
//!   change logged). Workers read the flag at pick time (`outlier::ClusterHealth::is_usable`).
//!
//! Checks of one endpoint never overlap: the next starts `interval` (plus up to `jitter`) after
//! the previous one ended. The first check of an endpoint runs as soon as the thread sees it.
//! The thread's own bookkeeping (consecutive passes and failures, next check time) is keyed by
//! cluster name and endpoint address, so it survives reloads as the endpoints' flags do.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config_schema::HealthCheckKind;

use crate::shared::Shared;
use crate::upstream::outlier::{CheckPolicy, EndpointHealth};
use crate::upstream::rng::FastRng;

/// How often the thread looks at the snapshot: the resolution of sweeps and check times.
const TICK: Duration = Duration::from_millis(50);

/// The most bytes of a health-check response read while looking for its status line.
const MAX_STATUS_LINE: usize = 4096;

/// Starts the health thread.
pub fn spawn(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringmesh-health".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match runtime {
                Ok(mut runtime) => runtime.block_on(run(shared)),
                Err(e) => tracing::error!(error = %e, "cannot start the health thread's runtime"),
            }
        })?;
    Ok(())
}

/// The checker's bookkeeping for one endpoint of one cluster.
#[derive(Debug)]
struct CheckState {
    next: Instant,
    running: bool,
    passes: u32,
    failures: u32,
}

async fn run(shared: Arc<Shared>) {
    // When each cluster (by name) was last swept.
    let mut swept: HashMap<Arc<str>, Instant> = HashMap::new();
    let mut checks: HashMap<(Arc<str>, SocketAddr), Rc<RefCell<CheckState>>> = HashMap::new();
    let rng = FastRng::new();
    loop {
        let snapshot = shared.store.load();
        let now = Instant::now();
        for cluster in &snapshot.clusters {
            let Some(health) = &cluster.health else {
                continue;
            };
            if let Some(policy) = &health.outlier {
                let due = swept
                    .get(&cluster.name)
                    .is_none_or(|last| now.duration_since(*last) >= policy.interval);
                if due {
                    health.sweep();
                    swept.insert(Arc::clone(&cluster.name), now);
                }
            }
            let Some(policy) = &health.check else {
                continue;
            };
            for endpoint in health.endpoints.iter() {
                let state = checks
                    .entry((Arc::clone(&cluster.name), endpoint.address))
                    .or_insert_with(|| {
                        Rc::new(RefCell::new(CheckState {
                            next: now,
                            running: false,
                            passes: 0,
                            failures: 0,
                        }))
                    });
                {
                    let mut state = state.borrow_mut();
                    if state.running || now < state.next {
                        continue;
                    }
                    state.running = true;
                }
                let jitter_ms = u64::try_from(policy.jitter.as_millis()).unwrap_or(u64::MAX);
                let jitter = Duration::from_millis(match jitter_ms {
                    0 => 0,
                    max => rng.next_u64() % max.saturating_add(1),
                });
                monoio::spawn(check(
                    Arc::clone(&cluster.name),
                    cluster.tls.clone(),
                    policy.clone(),
                    Arc::clone(endpoint),
                    Rc::clone(state),
                    jitter,
                ));
            }
        }
        swept.retain(|name, _| snapshot.clusters.iter().any(|c| c.name == *name));
        checks.retain(|(name, address), _| {
            snapshot.clusters.iter().any(|c| {
                c.name == *name
                    && c.health.as_ref().is_some_and(|h| {
                        h.check.is_some() && h.endpoints.iter().any(|e| e.address == *address)
                    })
            })
        });
        drop(snapshot);
        monoio::time::sleep(TICK).await;
    }
}

/// One check of `endpoint`, and what it changes.
async fn check(
    cluster: Arc<str>,
    tls: Option<Arc<crate::tls::ClientTls>>,
    policy: CheckPolicy,
    endpoint: Arc<EndpointHealth>,
    state: Rc<RefCell<CheckState>>,
    jitter: Duration,
) {
    let outcome = monoio::time::timeout(
        policy.timeout,
        probe(&policy, tls.as_deref(), endpoint.address),
    )
    .await;
    let passed = matches!(outcome, Ok(Ok(true)));
    let mut state = state.borrow_mut();
    state.running = false;
    state.next = Instant::now() + policy.interval + jitter;
    if passed {
        state.failures = 0;
        state.passes = state.passes.saturating_add(1);
        if state.passes >= policy.healthy_threshold && !endpoint.set_healthy(true) {
            tracing::info!(%cluster, endpoint = %endpoint.address, passes = state.passes, "health check: endpoint healthy");
        }
    } else {
        endpoint.check_failed();
        state.passes = 0;
        state.failures = state.failures.saturating_add(1);
        let reason = match &outcome {
            Err(_) => "timed out".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(_)) => "unexpected status".to_owned(),
        };
        tracing::debug!(%cluster, endpoint = %endpoint.address, %reason, "health check failed");
        if state.failures >= policy.unhealthy_threshold && endpoint.set_healthy(false) {
            tracing::info!(%cluster, endpoint = %endpoint.address, failures = state.failures, %reason, "health check: endpoint unhealthy");
        }
    }
}

/// Whether `address` passes the check (an error: it does not).
///
/// On a cluster with TLS, a `tcp` check passes once the TLS handshake does, and an `http`
/// check is sent over TLS: the check tests what requests will meet.
async fn probe(
    policy: &CheckPolicy,
    tls: Option<&crate::tls::ClientTls>,
    address: SocketAddr,
) -> std::io::Result<bool> {
    let stream = monoio::net::TcpStream::connect(address).await?;
    let stream = match tls {
        None => crate::tls::transport::Transport::Plain(stream),
        Some(tls) => {
            // The health thread is no worker: it uses the last worker's session cache.
            let (stream, info) = crate::tls::connect(
                stream,
                tls,
                usize::MAX,
                crate::tls::Carries::Http1,
                address,
                policy.timeout,
            )
            .await
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
            crate::tls::transport::Transport::Tls(Box::new(stream), Box::new(info))
        }
    };
    if policy.kind == HealthCheckKind::Tcp {
        return Ok(true);
    }
    let (mut read, mut write) = stream.split();
    let mut request = policy.request.to_vec();
    write.write_vec(&mut request).await?;
    let mut head: Vec<u8> = Vec::with_capacity(256);
    let mut buffer = Vec::with_capacity(512);
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_STATUS_LINE {
        buffer.clear();
        let n = read.read_vec(&mut buffer, 512).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buffer.get(..n).unwrap_or_default());
    }
    Ok(status_of(&head).is_some_and(|status| policy.expected_statuses.contains(&status)))
}

/// The status code of an HTTP/1.x status line at the start of `head`.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn status_lines_are_read_strictly() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 X\r\n"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 20"), None);
        assert_eq!(status_of(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
