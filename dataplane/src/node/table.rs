//! The node table: this node's `[node]` settings, the `[[services]]` and the workload table, as
//! the outbound capture listener reads them.
//!
//! [`NodeTable::resolve`] says where a captured connection goes, from its original destination:
//!
//! 1. a service VIP and one of its ports → an endpoint workload, picked by the service's
//!    `lb_policy`, at (the endpoint's address of the VIP's family, `target_port`);
//! 2. a workload's address → that workload, at the original destination;
//! 3. anything else (and a VIP on a port the service does not serve) → passthrough to the
//!    original destination.
//!
//! **Balancing** reuses the clusters' load balancer (`upstream::lb`): one immutable
//! [`Balancer`] per service lives in the table (in the snapshot, shared by every worker), and the
//! mutable state — round-robin cursor, in-flight counts for least request, random generator — is
//! an [`LbStates`] that each worker keeps for itself (`Cell`s, no lock, no atomic), made by
//! [`NodeTable::lb_states`] and carried over a reload by [`NodeTable::carry_over`] (a service
//! that keeps its name and endpoints keeps its counts). A pick is one binary search over the VIP
//! index plus the balancer's O(1) pick; nothing is allocated.
//!
//! An address is validated to be a service's or a workload's, never both, and IPv4-mapped IPv6
//! addresses (a dual-stack socket's view of an IPv4 peer) resolve as the IPv4 address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use config_schema::{CaptureMode, ConfigSpec, LbPolicy, NodeSpec, PeerAuthenticationMode};

use crate::identity::{IdentityMetrics, Store};
use crate::node::NodeTls;
use crate::upstream::lb::{Balancer, InFlightGuard, LbState, LbStates};
use crate::workload::{Workload, Workloads, canonical};

/// A compiled `[[services]]` entry.
#[derive(Debug)]
pub struct Service {
    /// `destination_service_name`.
    pub name: Box<str>,
    /// `destination_service_namespace`.
    pub namespace: Box<str>,
    /// Its VIPs (IPv4 as IPv4).
    pub addresses: Box<[IpAddr]>,
    /// Its endpoints, in config order (the balancer's endpoint indices). Names that name no
    /// workload are left out (validation refuses them).
    pub endpoints: Box<[Arc<Workload>]>,
    /// How a connection picks an endpoint.
    pub lb_policy: LbPolicy,
    /// Its index in the table: its balancer and its per-worker state.
    index: usize,
}

/// Where a captured outbound connection goes.
#[derive(Debug)]
pub enum Destination {
    /// A service VIP:port: `endpoint` was picked by the service's balancer; connect to `target`
    /// (the endpoint's address and the port's `target_port`). Hold `in_flight` for as long as
    /// the connection lasts: least request counts it.
    Service {
        /// The service.
        service: Arc<Service>,
        /// The workload picked.
        endpoint: Arc<Workload>,
        /// Its address and the target port.
        target: SocketAddr,
        /// This worker's count of connections to `endpoint`, released when dropped.
        in_flight: InFlightGuard,
    },
    /// A service VIP:port whose service has no endpoints: refuse the connection.
    NoEndpoint {
        /// The service.
        service: Arc<Service>,
    },
    /// A workload's address: connect to `target` (the original destination).
    Workload {
        /// The workload.
        workload: Arc<Workload>,
        /// The original destination.
        target: SocketAddr,
    },
    /// Neither: connect straight to the original destination.
    Passthrough(SocketAddr),
}

/// One entry of the VIP index: (VIP, port) and (service index, target port).
type VipPort = ((IpAddr, u16), (usize, u16));

/// This node's `[node]`, services and workloads, compiled once per config generation.
#[derive(Debug)]
pub struct NodeTable {
    /// `[node] name`.
    pub name: Box<str>,
    /// The outbound capture listener's address.
    pub outbound: Option<SocketAddr>,
    /// The inbound plaintext capture listener's address.
    pub inbound: Option<SocketAddr>,
    /// The HBONE listener's address.
    pub hbone: Option<SocketAddr>,
    /// How captured connections arrive (and their original destination is read).
    pub capture: CaptureMode,
    /// The port of every node's HBONE tunnel on the destination workload's address.
    pub hbone_port: u16,
    /// `SO_MARK` of every socket ringmesh opens in node mode.
    pub mark: u32,
    /// How long connecting to a workload or a peer node may take.
    pub connect_timeout: Duration,
    /// The workload table (the snapshot's, shared).
    pub workloads: Workloads,
    /// The HBONE TLS configs, when `[identity]` gives the node a store (see [`NodeTls`]).
    pub tls: Option<NodeTls>,
    services: Box<[Arc<Service>]>,
    /// One per service, indexed like `services`.
    balancers: Box<[Balancer]>,
    /// (VIP, port) → (service index, target port), sorted.
    by_vip: Box<[VipPort]>,
}

impl NodeTable {
    /// The table of `spec`'s `[node]` (`None` without one), with `workloads` compiled from the
    /// same spec. Validation guarantees unique VIP:ports and existing endpoint names.
    pub fn compile(spec: &ConfigSpec, workloads: &Workloads) -> Option<Self> {
        let node: &NodeSpec = spec.node.as_ref()?;
        let mut services = Vec::with_capacity(spec.services.len());
        let mut balancers = Vec::with_capacity(spec.services.len());
        let mut by_vip = Vec::new();
        for (index, s) in spec.services.iter().enumerate() {
            let endpoints: Box<[Arc<Workload>]> = s
                .workloads
                .iter()
                .filter_map(|name| workloads.find(&s.namespace, name).cloned())
                .collect();
            // The balancer keys its carried-over state on the endpoint list: the workloads'
            // first addresses stand for them (the port is not the balancer's concern here).
            let parts: Vec<(SocketAddr, u32)> = endpoints
                .iter()
                .map(|w| {
                    let ip = w.addresses.first().copied();
                    (
                        SocketAddr::new(ip.unwrap_or(IpAddr::from([0, 0, 0, 0])), 0),
                        1,
                    )
                })
                .collect();
            let name = format!("{}/{}", s.namespace, s.name);
            // Only round_robin, random and least_request pass validation, and none of them needs
            // a hash policy; a hash policy (refused by validation) would fall back to round robin.
            let balancer = Balancer::from_parts(&name, s.lb_policy, &parts, None)
                .or_else(|_| Balancer::from_parts(&name, LbPolicy::RoundRobin, &parts, None))
                .expect("round robin needs no hash policy");
            for address in &s.addresses {
                for port in &s.ports {
                    let target = port.target_port.unwrap_or(port.port);
                    by_vip.push(((canonical(*address), port.port), (index, target)));
                }
            }
            services.push(Arc::new(Service {
                name: s.name.as_str().into(),
                namespace: s.namespace.as_str().into(),
                addresses: s.addresses.iter().map(|a| canonical(*a)).collect(),
                endpoints,
                lb_policy: s.lb_policy,
                index,
            }));
            balancers.push(balancer);
        }
        by_vip.sort_by_key(|e| e.0);
        by_vip.dedup_by_key(|e| e.0);
        Some(Self {
            name: node.name.as_str().into(),
            outbound: node.outbound,
            inbound: node.inbound,
            hbone: node.hbone,
            capture: node.capture,
            hbone_port: node.hbone_port,
            mark: node.mark,
            connect_timeout: node.connect_timeout.get(),
            workloads: workloads.clone(),
            tls: None,
            services: services.into(),
            balancers: balancers.into(),
            by_vip: by_vip.into(),
        })
    }

    /// The table with its HBONE TLS configs built from the identity `store`: servers for its
    /// service accounts, clients towards every identity the table reaches over HBONE.
    pub fn with_tls(
        mut self,
        store: &Arc<Store>,
        metrics: &Arc<IdentityMetrics>,
    ) -> Result<Self, rustls::Error> {
        let mut seen = std::collections::HashSet::new();
        let expected: Vec<_> = self
            .workloads
            .iter()
            .filter(|w| w.protocol == config_schema::WorkloadProtocol::Hbone)
            .filter_map(|w| w.spiffe_id.clone())
            .filter(|id| seen.insert(Arc::clone(id)))
            .collect();
        self.tls = Some(NodeTls::new(store, metrics, expected)?);
        Ok(self)
    }

    /// The services, in config order.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Fresh per-worker balancing state for this table's services.
    pub fn lb_states(&self) -> LbStates {
        LbStates::new(self.balancers.iter())
    }

    /// Per-worker state for this table from the previous generation's `old`: services that keep
    /// their name (`namespace/name`) and endpoints keep their cursors and in-flight counts.
    pub fn carry_over(&self, old: &LbStates) -> LbStates {
        old.carry_over(self.balancers.iter())
    }

    /// The workload at `ip`, if the table names one.
    #[inline]
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(ip)
    }

    /// What a local workload at `ip` accepts inbound (`None`: not a local workload).
    pub fn local_mode(&self, ip: IpAddr) -> Option<PeerAuthenticationMode> {
        self.workloads
            .get(ip)
            .filter(|w| w.node_local)
            .and_then(|w| w.mode)
    }

    /// Where a connection captured with `original_destination` goes. `lb` is this worker's
    /// state from [`Self::lb_states`] / [`Self::carry_over`] for this table.
    pub fn resolve(&self, original_destination: SocketAddr, lb: &LbStates) -> Destination {
        let ip = canonical(original_destination.ip());
        let port = original_destination.port();
        if let Ok(at) = self
            .by_vip
            .binary_search_by(|(key, _)| key.cmp(&(ip, port)))
        {
            let (index, target_port) = self.by_vip[at].1;
            return self.pick(index, ip, target_port, lb);
        }
        match self.workloads.get(ip) {
            Some(workload) => Destination::Workload {
                workload: Arc::clone(workload),
                target: SocketAddr::new(ip, port),
            },
            None => Destination::Passthrough(SocketAddr::new(ip, port)),
        }
    }

    fn pick(&self, index: usize, vip: IpAddr, target_port: u16, lb: &LbStates) -> Destination {
        let (Some(service), Some(balancer)) = (self.services.get(index), self.balancers.get(index))
        else {
            return Destination::Passthrough(SocketAddr::new(vip, target_port));
        };
        debug_assert_eq!(service.index, index, "services are indexed in order");
        // No state for this service (a worker that has not carried its states over to this
        // table yet): a fresh one for this pick. A state from another generation is harmless
        // too: its counts are indexed defensively (`LbState::start`, `endpoints.get`).
        let fresh;
        let state = match lb.get(index) {
            Some(state) => state,
            None => {
                fresh = LbState::new(balancer);
                &fresh
            }
        };
        let endpoint = balancer
            .pick(state, None)
            .and_then(|i| Some((i, service.endpoints.get(i)?)));
        match endpoint.and_then(|(i, w)| Some((i, w, w.address_like(vip)?))) {
            Some((i, workload, ip)) => Destination::Service {
                service: Arc::clone(service),
                endpoint: Arc::clone(workload),
                target: SocketAddr::new(ip, target_port),
                in_flight: state.start(i),
            },
            None => Destination::NoEndpoint {
                service: Arc::clone(service),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_schema::{ServicePortSpec, ServiceSpec, WorkloadSpec};

    fn workload(name: &str, address: &str, node: &str) -> WorkloadSpec {
        WorkloadSpec {
            name: name.to_owned(),
            namespace: "shop".to_owned(),
            addresses: vec![address.parse().expect("ip")],
            app: None,
            version: None,
            node: Some(node.to_owned()),
            service_account: "default".to_owned(),
            protocol: None,
            mode: None,
        }
    }

    fn table(policy: LbPolicy) -> NodeTable {
        let mut spec = ConfigSpec {
            node: Some(crate::workload::tests::node("n1")),
            ..ConfigSpec::default()
        };
        spec.workloads = vec![
            workload("a", "10.0.1.2", "n1"),
            workload("b", "10.0.2.2", "n2"),
        ];
        spec.services = vec![ServiceSpec {
            name: "web".to_owned(),
            namespace: "shop".to_owned(),
            addresses: vec!["10.96.0.1".parse().expect("ip")],
            ports: vec![
                ServicePortSpec {
                    port: 80,
                    target_port: Some(8080),
                },
                ServicePortSpec {
                    port: 443,
                    target_port: None,
                },
            ],
            workloads: vec!["a".to_owned(), "b".to_owned()],
            lb_policy: policy,
        }];
        let workloads = Workloads::compile(&spec.workloads, spec.node.as_ref(), None);
        NodeTable::compile(&spec, &workloads).expect("node table")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    /// The endpoint name and target of a service destination.
    fn service_pick(d: Destination) -> (String, SocketAddr) {
        match d {
            Destination::Service {
                endpoint, target, ..
            } => (endpoint.name.to_string(), target),
            other => panic!("not a service destination: {other:?}"),
        }
    }

    #[test]
    fn round_robin_alternates_over_the_endpoints() {
        let table = table(LbPolicy::RoundRobin);
        let lb = table.lb_states();
        let picks: Vec<_> = (0..4)
            .map(|_| service_pick(table.resolve(addr("10.96.0.1:80"), &lb)))
            .collect();
        assert_ne!(picks[0].0, picks[1].0);
        assert_eq!(picks[0], picks[2]);
        assert_eq!(picks[1], picks[3]);
        for (name, target) in &picks {
            let expected = if name == "a" {
                "10.0.1.2:8080"
            } else {
                "10.0.2.2:8080"
            };
            assert_eq!(*target, addr(expected), "target_port");
        }
        let (_, target) = service_pick(table.resolve(addr("10.96.0.1:443"), &lb));
        assert_eq!(target.port(), 443, "no target_port: the port");
    }

    #[test]
    fn random_covers_both_endpoints() {
        let table = table(LbPolicy::Random);
        let lb = table.lb_states();
        let names: std::collections::BTreeSet<_> = (0..200)
            .map(|_| service_pick(table.resolve(addr("10.96.0.1:80"), &lb)).0)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let table = table(LbPolicy::LeastRequest);
        let lb = table.lb_states();
        let held = table.resolve(addr("10.96.0.1:80"), &lb);
        let (busy, _) = match &held {
            Destination::Service {
                endpoint, target, ..
            } => (endpoint.name.to_string(), *target),
            other => panic!("not a service destination: {other:?}"),
        };
        for _ in 0..20 {
            let (name, _) = service_pick(table.resolve(addr("10.96.0.1:80"), &lb));
            assert_ne!(name, busy, "the endpoint with a connection open loses");
        }
        drop(held);
    }

    #[test]
    fn workloads_and_passthrough() {
        let table = table(LbPolicy::RoundRobin);
        let lb = table.lb_states();
        match table.resolve(addr("10.0.2.2:9000"), &lb) {
            Destination::Workload { workload, target } => {
                assert_eq!(&*workload.name, "b");
                assert_eq!(target, addr("10.0.2.2:9000"));
            }
            other => panic!("{other:?}"),
        }
        match table.resolve(addr("192.0.2.7:443"), &lb) {
            Destination::Passthrough(target) => assert_eq!(target, addr("192.0.2.7:443")),
            other => panic!("{other:?}"),
        }
        match table.resolve(addr("10.96.0.1:81"), &lb) {
            Destination::Passthrough(target) => assert_eq!(target, addr("10.96.0.1:81")),
            other => panic!("a port the service does not serve: {other:?}"),
        }
    }

    #[test]
    fn ipv4_mapped_addresses_resolve_as_ipv4() {
        let table = table(LbPolicy::RoundRobin);
        let lb = table.lb_states();
        let (_, target) = service_pick(table.resolve(addr("[::ffff:10.96.0.1]:80"), &lb));
        assert!(target.is_ipv4(), "{target}");
        match table.resolve(addr("[::ffff:10.0.1.2]:7"), &lb) {
            Destination::Workload { workload, target } => {
                assert_eq!(&*workload.name, "a");
                assert_eq!(target, addr("10.0.1.2:7"));
            }
            other => panic!("{other:?}"),
        }
        match table.resolve(addr("[::ffff:192.0.2.7]:7"), &lb) {
            Destination::Passthrough(target) => assert_eq!(target, addr("192.0.2.7:7")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_and_modes_are_compiled() {
        let table = table(LbPolicy::RoundRobin);
        assert_eq!(&*table.name, "n1");
        assert_eq!((table.hbone_port, table.mark), (15008, 0x539));
        assert_eq!(
            table.local_mode("10.0.1.2".parse().expect("ip")),
            Some(PeerAuthenticationMode::Permissive)
        );
        assert_eq!(table.local_mode("10.0.2.2".parse().expect("ip")), None);
        assert_eq!(table.services().len(), 1);
        let carried = table.carry_over(&table.lb_states());
        assert!(matches!(
            table.resolve(addr("10.96.0.1:80"), &carried),
            Destination::Service { .. }
        ));
    }

    #[test]
    fn a_service_without_endpoints_refuses() {
        let mut spec = ConfigSpec {
            node: Some(crate::workload::tests::node("n1")),
            ..ConfigSpec::default()
        };
        spec.services = vec![ServiceSpec {
            name: "empty".to_owned(),
            namespace: "shop".to_owned(),
            addresses: vec!["10.96.0.2".parse().expect("ip")],
            ports: vec![ServicePortSpec {
                port: 80,
                target_port: None,
            }],
            workloads: Vec::new(),
            lb_policy: LbPolicy::RoundRobin,
        }];
        let table = NodeTable::compile(&spec, &Workloads::default()).expect("table");
        assert!(matches!(
            table.resolve(addr("10.96.0.2:80"), &table.lb_states()),
            Destination::NoEndpoint { .. }
        ));
    }
}
