//! The workload table (`[[workloads]]`): which workload an IP address belongs to, for the labels
//! of Istio's standard metrics and, in node mode, for where its traffic goes.
//!
//! Compiled once per config generation into the snapshot: a list of [`Workload`]s and a sorted
//! address index. A lookup is a binary search over that index (a few comparisons, no hashing, no
//! allocation); with no `[[workloads]]` it is one length check. Upstream endpoints are resolved
//! when the snapshot is built ([`EndpointWorkloads`] on each cluster), so the request path only
//! looks up the downstream peer.
//!
//! A workload's [`Workload::id`] is a hash of everything it puts in a label: metric series key on
//! it, so a series outlives a reload that keeps the workload as it was, and a workload whose
//! labels change gets new series instead of renaming old ones.
//!
//! Node mode (issue 13, `docs/NODE-MODE.md`) reads the same entries: whether the workload runs on
//! this node ([`Workload::node_local`]), its SPIFFE ID (from its namespace and service account,
//! when `[identity]` names a trust domain), how its node is reached ([`Workload::protocol`]) and,
//! for a local workload, what it accepts inbound ([`Workload::mode`]). All of it is resolved when
//! the table is compiled, so a lookup is still one binary search. None of it is folded into
//! [`Workload::id`]: no metric label depends on it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use config_schema::{NodeSpec, PeerAuthenticationMode, WorkloadProtocol, WorkloadSpec};

use crate::identity::SpiffeId;

/// One workload: its labels and, in node mode, where it runs and who it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Workload {
    /// `*_workload`.
    pub name: Box<str>,
    /// `*_workload_namespace`.
    pub namespace: Box<str>,
    /// `*_app` (`unknown` when absent).
    pub app: Option<Box<str>>,
    /// `*_version` (`unknown` when absent).
    pub version: Option<Box<str>>,
    /// A hash of all of the above, never 0 (0 means "no workload" in series keys).
    pub id: u64,
    /// Its addresses, as written (IPv4 as IPv4).
    pub addresses: Box<[IpAddr]>,
    /// Its service account (`default` unless written).
    pub service_account: Box<str>,
    /// Whether it runs on this node: its `node` is `[node] name`. Always false without `[node]`.
    pub node_local: bool,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, when `[identity]` gives a
    /// trust domain (and the namespace and account make a valid ID; validation makes sure of
    /// that for every workload that needs one).
    pub spiffe_id: Option<Arc<SpiffeId>>,
    /// How its node is reached: as written, else `hbone` when it has a `node`, else `tcp`.
    pub protocol: WorkloadProtocol,
    /// What it accepts inbound, for a local workload: its `mode`, else its namespace's in
    /// `[node] namespace_modes`, else `[node] mode`. `None` for a workload of another node (its
    /// own node decides) or without `[node]`.
    pub mode: Option<PeerAuthenticationMode>,
}

impl Workload {
    /// The workload of `spec`, resolved against this node (`None`: no `[node]`) and the trust
    /// domain of `[identity]` (`None`: no identity).
    pub fn new(spec: &WorkloadSpec, node: Option<&NodeSpec>, trust_domain: Option<&str>) -> Self {
        let text = format!(
            "{}\0{}\0{:?}\0{:?}",
            spec.name, spec.namespace, spec.app, spec.version
        );
        let node_local = node.is_some_and(|n| spec.node.as_deref() == Some(n.name.as_str()));
        let protocol = spec.protocol.unwrap_or(if spec.node.is_some() {
            WorkloadProtocol::Hbone
        } else {
            WorkloadProtocol::Tcp
        });
        let mode = node.filter(|_| node_local).map(|n| {
            spec.mode
                .or_else(|| n.namespace_modes.get(&spec.namespace).copied())
                .unwrap_or(n.mode)
        });
        let spiffe_id = trust_domain.and_then(|td| {
            let path = format!("/ns/{}/sa/{}", spec.namespace, spec.service_account);
            SpiffeId::new(td, &path).ok().map(Arc::new)
        });
        Self {
            name: spec.name.as_str().into(),
            namespace: spec.namespace.as_str().into(),
            app: spec.app.as_deref().map(Into::into),
            version: spec.version.as_deref().map(Into::into),
            id: xxhash_rust::xxh3::xxh3_64(text.as_bytes()).max(1),
            addresses: spec.addresses.iter().map(|a| canonical(*a)).collect(),
            service_account: spec.service_account.as_str().into(),
            node_local,
            spiffe_id,
            protocol,
            mode,
        }
    }

    /// The address to reach it at for a destination of the family of `like`: the first of that
    /// family, else its first address (validation guarantees it has one).
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        let like = canonical(like);
        self.addresses
            .iter()
            .find(|a| a.is_ipv4() == like.is_ipv4())
            .or_else(|| self.addresses.first())
            .copied()
    }
}

/// The compiled `[[workloads]]` table. Cloning shares the workloads (an `Arc` each).
#[derive(Debug, Default, Clone)]
pub struct Workloads {
    /// Every address with its workload, sorted by address.
    by_address: Box<[(IpAddr, Arc<Workload>)]>,
}

impl Workloads {
    /// Compiles the table for this node (`None`: no `[node]`) and the trust domain of
    /// `[identity]` (`None`: none). Validation guarantees that an address names one workload.
    pub fn compile(
        specs: &[WorkloadSpec],
        node: Option<&NodeSpec>,
        trust_domain: Option<&str>,
    ) -> Self {
        let mut by_address = Vec::new();
        for spec in specs {
            let workload = Arc::new(Workload::new(spec, node, trust_domain));
            for address in &spec.addresses {
                by_address.push((canonical(*address), Arc::clone(&workload)));
            }
        }
        by_address.sort_by_key(|a| a.0);
        by_address.dedup_by(|a, b| a.0 == b.0);
        Self {
            by_address: by_address.into(),
        }
    }

    /// The workload at `ip`, if the table names one.
    #[inline]
    pub fn get(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        if self.by_address.is_empty() {
            return None;
        }
        let ip = canonical(ip);
        self.by_address
            .binary_search_by(|(address, _)| address.cmp(&ip))
            .ok()
            .map(|i| &self.by_address[i].1)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    /// The workloads in address order, each once per address it has (for compile-time scans;
    /// callers that need each workload once deduplicate).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.by_address.iter().map(|(_, w)| w)
    }

    /// The workload named `name` in `namespace`, if any (a scan: for compile time only).
    pub fn find(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.iter()
            .find(|w| &*w.namespace == namespace && &*w.name == name)
    }
}

/// The workloads of one cluster's endpoints, resolved when the snapshot is built: only the
/// endpoints the table names, sorted by address.
#[derive(Debug, Default)]
pub struct EndpointWorkloads {
    by_endpoint: Box<[(SocketAddr, Arc<Workload>)]>,
}

impl EndpointWorkloads {
    /// Resolves `endpoints` against `workloads`.
    pub fn resolve(workloads: &Workloads, endpoints: impl Iterator<Item = SocketAddr>) -> Self {
        let mut by_endpoint: Vec<(SocketAddr, Arc<Workload>)> = endpoints
            .filter_map(|address| Some((address, Arc::clone(workloads.get(address.ip())?))))
            .collect();
        by_endpoint.sort_by_key(|a| a.0);
        by_endpoint.dedup_by(|a, b| a.0 == b.0);
        Self {
            by_endpoint: by_endpoint.into(),
        }
    }

    /// The workload of the endpoint at `address`.
    #[inline]
    pub fn get(&self, address: SocketAddr) -> Option<&Arc<Workload>> {
        if self.by_endpoint.is_empty() {
            return None;
        }
        self.by_endpoint
            .binary_search_by(|(endpoint, _)| endpoint.cmp(&address))
            .ok()
            .map(|i| &self.by_endpoint[i].1)
    }
}

/// An IPv4-mapped IPv6 address (how a dual-stack socket shows an IPv4 peer) as the IPv4 address
/// the table is written with.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec(name: &str, addresses: &[&str]) -> WorkloadSpec {
        WorkloadSpec {
            name: name.to_owned(),
            namespace: "shop".to_owned(),
            addresses: addresses.iter().map(|a| a.parse().expect("ip")).collect(),
            app: Some(name.to_owned()),
            version: Some("v1".to_owned()),
            node: None,
            service_account: "default".to_owned(),
            protocol: None,
            mode: None,
        }
    }

    #[test]
    fn addresses_resolve_to_their_workload_and_mapped_ipv4_too() {
        let table = Workloads::compile(
            &[
                spec("web", &["10.0.0.2", "10.0.0.1"]),
                spec("api", &["10.0.0.9", "fd00::1"]),
            ],
            None,
            None,
        );
        let name = |ip: &str| table.get(ip.parse().expect("ip")).map(|w| &*w.name);
        assert_eq!(name("10.0.0.1"), Some("web"));
        assert_eq!(name("10.0.0.2"), Some("web"));
        assert_eq!(name("10.0.0.9"), Some("api"));
        assert_eq!(name("fd00::1"), Some("api"));
        assert_eq!(name("::ffff:10.0.0.9"), Some("api"));
        assert_eq!(name("10.0.0.3"), None);
        assert!(
            Workloads::default()
                .get("10.0.0.1".parse().expect("ip"))
                .is_none()
        );
    }

    #[test]
    fn ids_follow_the_labels() {
        let new = |spec: &WorkloadSpec| Workload::new(spec, None, None);
        let a = new(&spec("web", &["10.0.0.1"]));
        let b = new(&spec("web", &["10.0.0.2"]));
        let mut other = spec("web", &["10.0.0.1"]);
        other.version = Some("v2".to_owned());
        assert_eq!(a.id, b.id, "addresses are not labels");
        assert_ne!(a.id, new(&other).id);
        assert_ne!(a.id, 0);
        let mut placed = spec("web", &["10.0.0.1"]);
        placed.node = Some("n1".to_owned());
        placed.service_account = "web-sa".to_owned();
        assert_eq!(
            a.id,
            Workload::new(&placed, Some(&node("n1")), Some("td")).id,
            "node-mode fields are not labels"
        );
    }

    pub(crate) fn node(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_owned(),
            outbound: None,
            inbound: None,
            hbone: None,
            capture: config_schema::CaptureMode::Redirect,
            hbone_port: 15008,
            mark: 0x539,
            mode: PeerAuthenticationMode::Permissive,
            namespace_modes: Default::default(),
            connect_timeout: config_schema::Duration::from_secs(10),
        }
    }

    #[test]
    fn node_fields_resolve_at_compile_time() {
        let mut this = node("n1");
        this.mode = PeerAuthenticationMode::Permissive;
        this.namespace_modes
            .insert("shop".to_owned(), PeerAuthenticationMode::Strict);
        let mut local = spec("web", &["10.0.0.1"]);
        local.node = Some("n1".to_owned());
        local.service_account = "web-sa".to_owned();
        let mut local_override = spec("db", &["10.0.0.2"]);
        local_override.node = Some("n1".to_owned());
        local_override.mode = Some(PeerAuthenticationMode::Permissive);
        let mut local_other_ns = spec("ops", &["10.0.0.3"]);
        local_other_ns.namespace = "ops".to_owned();
        local_other_ns.node = Some("n1".to_owned());
        let mut remote = spec("api", &["10.0.1.1"]);
        remote.node = Some("n2".to_owned());
        let mut remote_tcp = spec("legacy", &["10.0.1.2"]);
        remote_tcp.node = Some("n2".to_owned());
        remote_tcp.protocol = Some(WorkloadProtocol::Tcp);
        let outside = spec("ext", &["192.0.2.1"]);
        let table = Workloads::compile(
            &[
                local,
                local_override,
                local_other_ns,
                remote,
                remote_tcp,
                outside,
            ],
            Some(&this),
            Some("cluster.local"),
        );
        let get = |ip: &str| Arc::clone(table.get(ip.parse().expect("ip")).expect("workload"));

        let web = get("10.0.0.1");
        assert!(web.node_local);
        assert_eq!(web.protocol, WorkloadProtocol::Hbone);
        assert_eq!(
            web.mode,
            Some(PeerAuthenticationMode::Strict),
            "namespace mode"
        );
        assert_eq!(
            web.spiffe_id.as_deref().map(SpiffeId::as_str),
            Some("spiffe://cluster.local/ns/shop/sa/web-sa")
        );
        assert_eq!(
            get("10.0.0.2").mode,
            Some(PeerAuthenticationMode::Permissive)
        );
        assert_eq!(
            get("10.0.0.3").mode,
            Some(PeerAuthenticationMode::Permissive)
        );
        let api = get("10.0.1.1");
        assert!(!api.node_local);
        assert_eq!(api.mode, None, "its own node decides");
        assert_eq!(api.protocol, WorkloadProtocol::Hbone);
        assert_eq!(
            api.spiffe_id.as_deref().map(SpiffeId::as_str),
            Some("spiffe://cluster.local/ns/shop/sa/default")
        );
        assert_eq!(get("10.0.1.2").protocol, WorkloadProtocol::Tcp);
        let ext = get("192.0.2.1");
        assert_eq!(ext.protocol, WorkloadProtocol::Tcp);
        assert!(!ext.node_local);

        let plain = Workloads::compile(&[spec("web", &["10.0.0.1"])], None, None);
        let web = plain
            .get("10.0.0.1".parse().expect("ip"))
            .expect("workload");
        assert!(!web.node_local);
        assert_eq!((web.mode, web.spiffe_id.is_none()), (None, true));
    }

    #[test]
    fn address_like_prefers_the_family() {
        let w = Workload::new(&spec("web", &["fd00::1", "10.0.0.1"]), None, None);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(w.address_like(ip("10.96.0.1")), Some(ip("10.0.0.1")));
        assert_eq!(w.address_like(ip("::ffff:10.96.0.1")), Some(ip("10.0.0.1")));
        assert_eq!(w.address_like(ip("fd00::96")), Some(ip("fd00::1")));
        let v4 = Workload::new(&spec("web", &["10.0.0.1"]), None, None);
        assert_eq!(v4.address_like(ip("fd00::96")), Some(ip("10.0.0.1")));
    }

    #[test]
    fn endpoints_resolve_at_build_time() {
        let table = Workloads::compile(&[spec("api", &["127.0.0.1"])], None, None);
        let endpoints = EndpointWorkloads::resolve(
            &table,
            ["127.0.0.1:80", "127.0.0.2:80"]
                .iter()
                .map(|a| a.parse().expect("addr")),
        );
        assert_eq!(
            endpoints
                .get("127.0.0.1:80".parse().expect("addr"))
                .map(|w| &*w.name),
            Some("api")
        );
        assert!(
            endpoints
                .get("127.0.0.2:80".parse().expect("addr"))
                .is_none()
        );
    }
}
