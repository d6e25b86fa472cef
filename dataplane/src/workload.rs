//! The workload table (`[[workloads]]`): which workload an IP address belongs to, for the labels
//! of Istio's standard metrics.
//!
//! Compiled once per config generation into the snapshot: a list of [`Workload`]s and a sorted
//! address index. A lookup is a binary search over that index (a few comparisons, no hashing, no
//! allocation); with no `[[workloads]]` it is one length check. Upstream endpoints are resolved
//! when the snapshot is built ([`EndpointWorkloads`] on each cluster), so the request path only
//! looks up the downstream peer.
//!
//! A workload's [`Workload::id`] is a hash of everything it puts in a label: metric series key on
//! it, so a series outlives a reload that keeps the workload as it was, and a workload whose
//! labels change gets new series instead of renaming old ones. Node mode (issue 13) adds node,
//! protocol hints and services to the same table; the lookup stays.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use config_schema::WorkloadSpec;

/// One workload's labels.
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
}

impl Workload {
    fn new(spec: &WorkloadSpec) -> Self {
        let text = format!(
            "{}\0{}\0{:?}\0{:?}",
            spec.name, spec.namespace, spec.app, spec.version
        );
        Self {
            name: spec.name.as_str().into(),
            namespace: spec.namespace.as_str().into(),
            app: spec.app.as_deref().map(Into::into),
            version: spec.version.as_deref().map(Into::into),
            id: xxhash_rust::xxh3::xxh3_64(text.as_bytes()).max(1),
        }
    }
}

/// The compiled `[[workloads]]` table.
#[derive(Debug, Default)]
pub struct Workloads {
    /// Every address with its workload, sorted by address.
    by_address: Box<[(IpAddr, Arc<Workload>)]>,
}

impl Workloads {
    /// Compiles the table. Validation guarantees that an address names one workload.
    pub fn compile(specs: &[WorkloadSpec]) -> Self {
        let mut by_address = Vec::new();
        for spec in specs {
            let workload = Arc::new(Workload::new(spec));
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
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
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
        let table = Workloads::compile(&[
            spec("web", &["10.0.0.2", "10.0.0.1"]),
            spec("api", &["10.0.0.9", "fd00::1"]),
        ]);
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
        let a = Workload::new(&spec("web", &["10.0.0.1"]));
        let b = Workload::new(&spec("web", &["10.0.0.2"]));
        let mut other = spec("web", &["10.0.0.1"]);
        other.version = Some("v2".to_owned());
        assert_eq!(a.id, b.id, "addresses are not labels");
        assert_ne!(a.id, Workload::new(&other).id);
        assert_ne!(a.id, 0);
    }

    #[test]
    fn endpoints_resolve_at_build_time() {
        let table = Workloads::compile(&[spec("api", &["127.0.0.1"])]);
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
