//! Criterion micro-benchmarks of ringmesh's hot paths. The benchmarks live in `benches/`:
//! - `route_match`: the per-request route lookup at 10, 1 000 and 10 000 routes.
//! - `lb_pick`: each load-balancing policy's pick, and request hashing.
//!
//! Run one with `cargo bench -p perf --bench route_match`, never while something else compiles on
//! the same machine. `README.md` beside this crate's manifest records results.
