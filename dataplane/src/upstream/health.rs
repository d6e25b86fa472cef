//! The health thread: one per process (never a worker), with a small monoio runtime of its own.
//! It follows the snapshot store, so it sees every reload, and for each cluster with outlier
//! detection runs the sweep (`outlier::ClusterHealth::sweep`) every `interval`: ejections whose
//! time has passed are cleared and logged, and multipliers decay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shared::Shared;

/// How often the thread looks at the snapshot: the resolution of sweeps (and of check times).
const TICK: Duration = Duration::from_millis(50);

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

async fn run(shared: Arc<Shared>) {
    // When each cluster (by name) was last swept.
    let mut swept: HashMap<Arc<str>, Instant> = HashMap::new();
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
        }
        swept.retain(|name, _| snapshot.clusters.iter().any(|c| c.name == *name));
        drop(snapshot);
        monoio::time::sleep(TICK).await;
    }
}
