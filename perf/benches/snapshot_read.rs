//! What does a worker pay to look at the current config on every request? `SnapshotReader::current`
//! is one atomic load and a pointer compare when nothing was published, plus a non-atomic `Rc`
//! clone; this measures it steady-state, right after a publish (the one-time refresh), and — for
//! comparison — what a naive `ArcSwap::load_full` (a shared reference-count increment) costs.
//! Run with `cargo bench -p perf --bench snapshot_read`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dataplane::snapshot::{Snapshot, SnapshotStore};

fn bench(c: &mut Criterion) {
    let store = SnapshotStore::new(Snapshot::empty());
    let mut reader = store.reader();
    c.bench_function("snapshot_read/current (unchanged)", |b| {
        b.iter(|| black_box(reader.current().generation));
    });
    c.bench_function("snapshot_read/current after publish", |b| {
        b.iter(|| {
            store.publish(Arc::new(Snapshot::empty()));
            black_box(reader.current().generation)
        });
    });
    c.bench_function("snapshot_read/load_full (shared refcount)", |b| {
        b.iter(|| black_box(store.load().generation));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
