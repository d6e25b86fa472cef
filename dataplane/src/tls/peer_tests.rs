//! Tests of what [`TlsInfo::of`] reads from a finished handshake: the verified client's SPIFFE
//! ID, whether a client certificate was verified at all, and the security policy that follows.
//! Handshakes run in memory between a rustls client and server; certificates are made here with
//! `rcgen`.

// Test fixtures made here, not values from a peer or a config file: unwrap states the test's
// assumption.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::{SecurityPolicy, TlsInfo};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, dns: &[&str], uris: &[&str]) -> Leaf {
    let mut params =
        CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap();
    params
        .subject_alt_names
        .extend(uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

/// [`handshake`] with a client certificate from the server's CA with these SANs.
fn handshake_with_client(dns: &[&str], uris: &[&str]) -> (TlsInfo, TlsInfo) {
    let ca = ca();
    let client = leaf(&ca, dns, uris);
    handshake(&ca, Some(&client))
}

/// The server's and the client's [`TlsInfo`] after an in-memory handshake; the client presents
/// `client_leaf` if given. The server asks for, but does not require, a client certificate.
fn handshake(
    ca: &CertifiedIssuer<'static, KeyPair>,
    client_leaf: Option<&Leaf>,
) -> (TlsInfo, TlsInfo) {
    let server_leaf = leaf(
        ca,
        &["node.example"],
        &["spiffe://cluster.local/ns/shop/sa/api"],
    );
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let provider = super::provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_leaf.chain, server_leaf.key)
        .unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let client = match client_leaf {
        Some(leaf) => client
            .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
            .unwrap(),
        None => client.with_no_client_auth(),
    };
    let name = ServerName::try_from("node.example").unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..20 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        let mut read = &bytes[..];
        while !read.is_empty() {
            server.read_tls(&mut read).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        let mut read = &bytes[..];
        while !read.is_empty() {
            client.read_tls(&mut read).unwrap();
            client.process_new_packets().unwrap();
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return (
                TlsInfo::of(&rustls::Connection::Server(server)),
                TlsInfo::of(&rustls::Connection::Client(client)),
            );
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

#[test]
fn a_verified_svid_gives_the_peer_principal_and_mutual_tls() {
    let (server, client) = handshake_with_client(&[], &[WEB]);
    let id = server.peer_principal.as_ref().unwrap();
    assert_eq!(id.as_str(), WEB);
    assert_eq!(id.principal(), "cluster.local/ns/shop/sa/web");
    assert_eq!(id.namespace(), Some("shop"));
    assert_eq!(server.peer_id(), Some(WEB));
    assert!(server.peer_verified);
    assert_eq!(SecurityPolicy::of(Some(&server)), SecurityPolicy::MutualTls);
    assert_eq!(SecurityPolicy::of(Some(&server)).as_str(), "mutual_tls");
    // The client side reads the server's identity the same way.
    assert_eq!(
        client.peer_id(),
        Some("spiffe://cluster.local/ns/shop/sa/api")
    );
}

#[test]
fn a_verified_certificate_without_a_spiffe_id_is_mutual_tls_without_a_principal() {
    let (server, _) = handshake_with_client(&["client.example"], &[]);
    assert_eq!(server.peer_principal, None);
    assert!(server.peer_verified);
    assert_eq!(SecurityPolicy::of(Some(&server)), SecurityPolicy::MutualTls);
    // Two URI SANs: not an SVID, so no identity either.
    let (server, _) = handshake_with_client(&[], &[WEB, "spiffe://cluster.local/ns/x/sa/y"]);
    assert_eq!(server.peer_principal, None);
    assert!(server.peer_verified);
}

#[test]
fn no_client_certificate_is_one_way_tls_and_plaintext_is_none() {
    let (server, _) = handshake(&ca(), None);
    assert_eq!(server.peer_principal, None);
    assert!(!server.peer_verified);
    assert_eq!(server.sni.as_deref(), Some("node.example"));
    assert_eq!(SecurityPolicy::of(Some(&server)), SecurityPolicy::Tls);
    assert_eq!(SecurityPolicy::of(Some(&server)).as_str(), "tls");
    assert_eq!(SecurityPolicy::of(None).as_str(), "none");
}
