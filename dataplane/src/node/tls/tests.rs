//! HBONE TLS through the repository's own transport (`tls::accept` / `tls::connect`) over
//! loopback sockets, on both I/O drivers, with a CA and SVIDs made here by `rcgen`.

// Test fixtures made here, not values from a peer or a config file: unwrap states the test's
// assumption.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use config_schema::UringSetup;
use monoio::net::{TcpListener, TcpStream};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::NodeTls;
use crate::driver::{self, IoDriver};
use crate::identity::{
    CertInfo, IdentityFiles, IdentityMetrics, Reason, ServiceAccountFiles, SpiffeId, Store,
    refusal_reason,
};
use crate::tls::{self, Carries, ClientTls, HandshakeError, ServerTls, TlsInfo};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const TIMEOUT: Duration = Duration::from_secs(10);

const DRIVERS: [IoDriver; 2] = [IoDriver::Uring(UringSetup::Plain), IoDriver::Epoll];

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// Holds the files for the test's life.
    _dir: tempfile::TempDir,
    files: IdentityFiles,
}

impl Pki {
    /// A CA, the node's SVID, and service accounts `web`, `api` and `db` of namespace `shop`.
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let files = IdentityFiles {
            trust_domain: "cluster.local".into(),
            cert: at("node.pem"),
            key: at("node-key.pem"),
            ca_bundle: at("bundle.pem"),
            trust_bundles: Vec::new(),
            service_accounts: ["web", "api", "db"]
                .iter()
                .map(|sa| ServiceAccountFiles {
                    namespace: "shop".into(),
                    service_account: (*sa).into(),
                    cert: at(&format!("{sa}.pem")),
                    key: at(&format!("{sa}-key.pem")),
                })
                .collect(),
        };
        let pki = Self {
            ca,
            _dir: dir,
            files,
        };
        std::fs::write(&pki.files.ca_bundle, pki.ca.pem()).unwrap();
        pki.issue(
            "spiffe://cluster.local/ns/ringmesh/sa/node",
            &pki.files.cert,
            &pki.files.key,
        );
        for account in &pki.files.service_accounts {
            let id = format!(
                "spiffe://cluster.local/ns/shop/sa/{}",
                account.service_account
            );
            pki.issue(&id, &account.cert, &account.key);
        }
        pki
    }

    /// Writes a new SVID for `id` to `cert` and `key`; returns its serial.
    fn issue(&self, id: &str, cert: &Path, key: &Path) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let pair = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&pair, &self.ca).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, pair.serialize_pem()).unwrap();
        CertInfo::parse(leaf.der()).unwrap().serial
    }

    fn store(&self, metrics: &Arc<IdentityMetrics>) -> Arc<Store> {
        Store::open(self.files.clone(), Arc::clone(metrics)).unwrap()
    }
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

/// The configs of a node whose table reaches `api` and `db` over HBONE.
fn node_tls(store: &Arc<Store>, metrics: &Arc<IdentityMetrics>) -> NodeTls {
    NodeTls::new(store, metrics, [Arc::new(id(API)), Arc::new(id(DB))]).unwrap()
}

/// What each side of one handshake over loopback ended with: the server's `TlsInfo` (or its
/// error), and the client's `TlsInfo` with the serial of the server's leaf (or its error).
type Outcome = (
    Result<TlsInfo, HandshakeError>,
    Result<(TlsInfo, String), HandshakeError>,
);

/// One handshake over a loopback socket on `driver`.
fn handshake(driver: IoDriver, server: &ServerTls, client: &ClientTls) -> Outcome {
    driver::block_on(driver, 64, || async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let accept = async {
            let (stream, _) = listener.accept().await.unwrap();
            tls::accept(stream, server, TIMEOUT)
                .await
                .map(|(_, info)| info)
        };
        let connect = async {
            let stream = TcpStream::connect(address).await.unwrap();
            let result = tls::connect(stream, client, 0, Carries::Http2, address, TIMEOUT).await;
            result.map(|(stream, info)| {
                let leaf = &stream.connection().peer_certificates().unwrap()[0];
                (info, CertInfo::parse(leaf).unwrap().serial)
            })
        };
        monoio::join!(accept, connect)
    })
    .unwrap()
}

/// The refusal reason inside a failed handshake.
fn reason(error: &HandshakeError) -> Option<Reason> {
    match error {
        HandshakeError::Failed(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(refusal_reason),
        HandshakeError::TimedOut(_) => None,
    }
}

#[test]
fn the_expected_identity_is_accepted_and_each_side_sees_the_other() {
    let pki = Pki::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let store = pki.store(&metrics);
    let node = node_tls(&store, &metrics);
    let server = node.server_tls(&id(API)).unwrap();
    let client = node.client_tls(&id(WEB), &id(API)).unwrap();
    for driver in DRIVERS {
        let (server_side, client_side) = handshake(driver, server, client);
        let server_side = server_side.unwrap();
        assert_eq!(
            server_side.peer_id(),
            Some(WEB),
            "{driver:?}: the source identity"
        );
        assert!(server_side.peer_verified);
        assert!(server_side.is_h2(), "{driver:?}: ALPN h2");
        let (client_side, _) = client_side.unwrap();
        assert_eq!(client_side.peer_id(), Some(API), "{driver:?}");
        assert!(client_side.is_h2());
    }
    let server_config = node.server(&id(API)).unwrap();
    assert_eq!(server_config.alpn_protocols, [b"h2".to_vec()]);
    let client_config = node.client(&id(WEB), &id(API)).unwrap();
    assert_eq!(client_config.alpn_protocols, [b"h2".to_vec()]);
    assert!(
        Arc::ptr_eq(&client_config, &node.client(&id(WEB), &id(API)).unwrap()),
        "built once, not per connection"
    );
}

#[test]
fn a_server_of_another_identity_is_refused_as_unexpected() {
    let pki = Pki::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let store = pki.store(&metrics);
    let node = node_tls(&store, &metrics);
    // The client expects api; the server presents db.
    let server = node.server_tls(&id(DB)).unwrap();
    let client = node.client_tls(&id(WEB), &id(API)).unwrap();
    for (i, driver) in DRIVERS.into_iter().enumerate() {
        let (server_side, client_side) = handshake(driver, server, client);
        let error = client_side
            .err()
            .unwrap_or_else(|| panic!("{driver:?}: accepted"));
        assert_eq!(
            reason(&error),
            Some(Reason::UnexpectedIdentity),
            "{driver:?}: {error}"
        );
        assert!(server_side.is_err(), "{driver:?}");
        assert_eq!(
            metrics.handshake_failures(Reason::UnexpectedIdentity),
            i as u64 + 1
        );
    }
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let store = pki.store(&metrics);
    let node = node_tls(&store, &metrics);
    let server = node.server_tls(&id(API)).unwrap();
    // A client that verifies the server as HBONE does but presents nothing.
    let verifier = Arc::new(crate::identity::SpiffeServerVerifier::new(
        store.clone(),
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let client = ClientTls::from_configs(1, None, |_| config.clone());
    for driver in DRIVERS {
        let (server_side, _) = handshake(driver, server, &client);
        let error = server_side
            .err()
            .unwrap_or_else(|| panic!("{driver:?}: accepted"));
        assert_eq!(
            reason(&error),
            Some(Reason::NoCertificate),
            "{driver:?}: {error}"
        );
    }
}

#[test]
fn a_rotated_service_account_file_is_presented_by_the_next_handshake() {
    let pki = Pki::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let store = pki.store(&metrics);
    let node = node_tls(&store, &metrics);
    let server = node.server_tls(&id(API)).unwrap();
    let api = &pki.files.service_accounts[1];
    let mut serial = CertInfo::parse(&store.service_account(&id(API)).unwrap().cert[0])
        .unwrap()
        .serial;
    for driver in DRIVERS {
        // A fresh client each time (a resumed session would not show the certificate again);
        // the server's config is the same one throughout.
        let fresh = node_tls(&store, &metrics);
        let (_, client_side) = handshake(
            driver,
            server,
            fresh.client_tls(&id(WEB), &id(API)).unwrap(),
        );
        assert_eq!(
            client_side.unwrap().1,
            serial,
            "{driver:?}: before rotation"
        );

        serial = pki.issue(API, &api.cert, &api.key);
        assert_eq!(store.reload(), Ok(crate::identity::Reloaded::Swapped));
        let fresh = node_tls(&store, &metrics);
        let (server_side, client_side) = handshake(
            driver,
            server,
            fresh.client_tls(&id(WEB), &id(API)).unwrap(),
        );
        server_side.unwrap();
        assert_eq!(
            client_side.unwrap().1,
            serial,
            "{driver:?}: the new certificate"
        );
    }
}

#[test]
fn no_config_without_a_certificate_or_for_an_identity_the_table_does_not_reach() {
    let pki = Pki::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let store = pki.store(&metrics);
    let node = node_tls(&store, &metrics);
    let stranger = id("spiffe://cluster.local/ns/shop/sa/stranger");
    assert!(node.server(&stranger).is_none());
    assert!(node.client(&stranger, &id(API)).is_none());
    assert!(node.client(&id(WEB), &stranger).is_none());
    assert!(node.client(&id(WEB), &id(DB)).is_some());
}

#[test]
fn the_node_table_builds_clients_towards_its_hbone_workloads() {
    use config_schema::{ConfigSpec, WorkloadProtocol, WorkloadSpec};
    let pki = Pki::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let store = pki.store(&metrics);
    let workload = |name: &str, sa: &str, ip: &str, node: &str, protocol| WorkloadSpec {
        name: name.into(),
        namespace: "shop".into(),
        addresses: vec![ip.parse().unwrap()],
        app: None,
        version: None,
        node: Some(node.into()),
        service_account: sa.into(),
        protocol,
        mode: None,
    };
    let spec = ConfigSpec {
        node: Some(crate::workload::tests::node("n1")),
        workloads: vec![
            workload("web-1", "web", "10.0.1.2", "n1", None),
            workload("api-1", "api", "10.0.2.2", "n2", None),
            workload("db-1", "db", "10.0.2.3", "n2", Some(WorkloadProtocol::Tcp)),
        ],
        ..ConfigSpec::default()
    };
    let workloads = crate::workload::Workloads::compile(
        &spec.workloads,
        spec.node.as_ref(),
        Some("cluster.local"),
    );
    let table = crate::node::NodeTable::compile(&spec, &workloads)
        .unwrap()
        .with_tls(&store, &metrics)
        .unwrap();
    let tls = table.tls.as_ref().unwrap();
    assert!(
        tls.client(&id(WEB), &id(API)).is_some(),
        "api is reached over HBONE"
    );
    assert!(
        tls.client(&id(WEB), &id(WEB)).is_some(),
        "so is web (on its own node)"
    );
    assert!(
        tls.client(&id(WEB), &id(DB)).is_none(),
        "db is reached over plain TCP"
    );
    assert!(
        tls.server(&id(DB)).is_some(),
        "a server for every service account held"
    );
}
