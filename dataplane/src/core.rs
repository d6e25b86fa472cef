//! A worker's own state: everything the tasks on one worker thread share, and nothing that any
//! other thread touches. Per-core by construction (`Rc`, `Cell`, `RefCell`): the snapshot
//! reader, load-balancer state, upstream connection pools, the access-log and span buffers, and
//! the random number generator behind weighted splits, request ids and trace ids.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::access_log::AccessLogBuffer;
use crate::event::Event;
use crate::hbone::client::HbonePool;
use crate::http::h1::pool::Pool;
use crate::http::h2::client::H2Pool;
use crate::node::{Destination, NodeTable};
use crate::policy::authz::Registry;
use crate::routing::MatchScratch;
use crate::snapshot::{Cluster, Snapshot, SnapshotReader, SnapshotRef};
use crate::trace::buffer::{ConnectionSpan, SpanBuffer};
use crate::trace::{TraceId, Tracer};
use crate::upstream::{InFlightGuard, LbState, LbStates};

/// A worker's own state, shared by the tasks on its thread.
#[derive(Debug)]
pub struct Core {
    /// Worker index: selects this worker's counter slots.
    pub id: usize,
    reader: RefCell<SnapshotReader>,
    open_connections: Cell<usize>,
    /// Accept loops still running, including stopped ones still emptying their queues.
    pub(crate) accept_loops: Cell<usize>,
    /// Load-balancer state of every cluster, for the generation it was built for.
    lb: RefCell<(u64, LbStates)>,
    /// Fires when the worker starts draining: idle keep-alive connections close, busy ones finish
    /// their request and answer with `connection: close`.
    pub draining: Rc<Event>,
    /// Upstream HTTP/1.1 connections of this worker.
    pub pool: Pool,
    /// Upstream HTTP/2 connections of this worker.
    pub h2_pool: H2Pool,
    /// Access-log lines waiting to be handed to the writer thread.
    pub access_log: RefCell<AccessLogBuffer>,
    /// Sampled spans waiting to be handed to the trace exporter.
    pub spans: RefCell<SpanBuffer>,
    /// Per-worker regex caches for route matching.
    pub match_scratch: RefCell<MatchScratch>,
    /// wyrand state: weighted splits, mirror sampling, request ids.
    rng: Cell<u64>,
    /// Open L4 connections, for the live re-check of authorization policies after a reload.
    pub l4_connections: Registry,
    /// HBONE tunnels to other nodes (node mode), made on first use with this worker's counters.
    hbone_pool: RefCell<Option<HbonePool>>,
    /// Balancer state of the node table's services, for the generation it was built for.
    node_lb: RefCell<(u64, LbStates)>,
}

impl Core {
    pub(crate) fn new(id: usize, reader: SnapshotReader) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((id as u64) << 32)
            ^ u64::from(std::process::id());
        Self {
            id,
            reader: RefCell::new(reader),
            open_connections: Cell::new(0),
            accept_loops: Cell::new(0),
            lb: RefCell::new((0, LbStates::default())),
            draining: Event::new(),
            pool: Pool::new(),
            h2_pool: H2Pool::new(),
            access_log: RefCell::new(AccessLogBuffer::default()),
            spans: RefCell::new(SpanBuffer::new(id)),
            match_scratch: RefCell::new(MatchScratch::new()),
            rng: Cell::new(seed),
            l4_connections: Registry::default(),
            hbone_pool: RefCell::new(None),
            node_lb: RefCell::new((0, LbStates::default())),
        }
    }

    /// The current snapshot (see [`SnapshotReader::current`]).
    #[inline]
    pub fn snapshot(&self) -> SnapshotRef {
        self.reader.borrow_mut().current()
    }

    /// Whether the worker is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.is_fired()
    }

    /// A uniformly random `u64` (wyrand: fast, statistically sound, not cryptographic).
    #[inline]
    pub fn random(&self) -> u64 {
        let state = self.rng.get().wrapping_add(0xa076_1d64_78bd_642f);
        self.rng.set(state);
        let product = u128::from(state) * u128::from(state ^ 0xe703_7ed1_a0b4_28db);
        ((product >> 64) as u64) ^ (product as u64)
    }

    /// Appends a random (version 4) UUID in its text form.
    pub fn write_uuid(&self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let high = (self.random() & !0xf000) | 0x4000; // version 4
        let low = (self.random() & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
        let bytes = (u128::from(high) << 64) | u128::from(low);
        for i in 0..32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                out.push(b'-');
            }
            out.push(HEX[((bytes >> (124 - 4 * i)) & 0xf) as usize]);
        }
    }

    /// The endpoint (index into `cluster.endpoints`) for the next request or connection to
    /// `cluster` of `snapshot`, as the cluster's load balancer picks it on this core.
    pub fn pick_endpoint(
        &self,
        snapshot: &Snapshot,
        cluster: &Cluster,
        hash: Option<u64>,
    ) -> Option<usize> {
        self.with_lb_state(snapshot, cluster, |state| {
            cluster.balancer.pick(state, hash)
        })
    }

    /// Where a request or connection to `cluster` starts its walk over the endpoints, and whether
    /// the walk skips unusable endpoints (ejected, failing health checks): the load balancer's
    /// pick, re-picked up to twice while it lands on an unusable endpoint (walking on from an
    /// unusable pick would hand its whole share to its neighbour). Without outlier detection or
    /// health checks this is [`Self::pick_endpoint`]. `None`: no endpoint may be used.
    pub fn pick_usable(
        &self,
        snapshot: &Snapshot,
        cluster: &Cluster,
        hash: Option<u64>,
    ) -> Option<(usize, bool)> {
        let mut first = self.pick_endpoint(snapshot, cluster, hash)?;
        let Some(health) = &cluster.health else {
            return Some((first, false));
        };
        for _ in 0..2 {
            if health.is_usable(first) {
                break;
            }
            first = self.pick_endpoint(snapshot, cluster, hash)?;
        }
        health.walk_mode(first).map(|skip| (first, skip))
    }

    /// Marks a request as in flight on `endpoint` until the guard drops (least-request reads it).
    pub fn start_request(
        &self,
        snapshot: &Snapshot,
        cluster: &Cluster,
        endpoint: usize,
    ) -> Option<InFlightGuard> {
        self.with_lb_state(snapshot, cluster, |state| Some(state.start(endpoint)))
    }

    /// Runs `f` with this core's state for `cluster`, first moving the states to `snapshot`'s
    /// generation if it is newer (state carries over by cluster name). A request still running on
    /// an older snapshot gets a throwaway state rather than rewinding everyone else's.
    fn with_lb_state<T>(
        &self,
        snapshot: &Snapshot,
        cluster: &Cluster,
        f: impl FnOnce(&LbState) -> Option<T>,
    ) -> Option<T> {
        let mut lb = self.lb.borrow_mut();
        if snapshot.generation > lb.0 {
            let next =
                lb.1.carry_over(snapshot.clusters.iter().map(|c| &c.balancer));
            *lb = (snapshot.generation, next);
        }
        if snapshot.generation == lb.0
            && let Some(state) = lb.1.get(cluster.index)
        {
            return f(state);
        }
        drop(lb);
        f(&LbState::new(&cluster.balancer))
    }

    /// This worker's HBONE tunnel pool (a handle on it: the pool is shared by its clones).
    pub fn hbone_pool(&self, snapshot: &Snapshot) -> HbonePool {
        let mut pool = self.hbone_pool.borrow_mut();
        pool.get_or_insert_with(|| {
            let counters = snapshot
                .node_stats
                .hbone
                .get(self.id)
                .cloned()
                .unwrap_or_default();
            HbonePool::new(counters)
        })
        .clone()
    }

    /// Resolves a captured connection's original destination with the node table of
    /// `snapshot`, balancing services with this worker's state (carried over on a new
    /// generation).
    pub fn resolve_node_destination(
        &self,
        snapshot: &Snapshot,
        table: &NodeTable,
        original: std::net::SocketAddr,
    ) -> Destination {
        let mut lb = self.node_lb.borrow_mut();
        if snapshot.generation > lb.0 {
            let next = table.carry_over(&lb.1);
            *lb = (snapshot.generation, next);
        }
        table.resolve(original, &lb.1)
    }

    /// The span of an L4 connection from `peer` on `listener` to `cluster`, when the snapshot's
    /// tracer records L4 connections and samples this one (it is recorded when dropped).
    pub fn connection_span<'a>(
        &'a self,
        snapshot: &Snapshot,
        listener: &'a str,
        cluster: &'a str,
        peer: std::net::SocketAddr,
    ) -> Option<ConnectionSpan<'a>> {
        let tracer = snapshot.tracing.as_ref().filter(|t| t.l4_spans)?;
        let counters = snapshot.trace_stats.workers.slot(self.id);
        counters.started.inc();
        if !tracer.sample_random(self.random()) {
            return None;
        }
        counters.sampled.inc();
        let trace_id =
            TraceId((u128::from(self.random()) << 64 | u128::from(self.random())).max(1));
        let span_id = Tracer::span_id(|| self.random());
        Some(ConnectionSpan::new(
            &self.spans,
            trace_id,
            span_id,
            peer,
            listener,
            cluster,
        ))
    }

    pub(crate) fn connection_opened(&self) {
        self.open_connections.set(self.open_connections.get() + 1);
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections
            .set(self.open_connections.get().saturating_sub(1));
    }

    /// Connections open on this worker.
    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
    }
}
