//! Tests of the identity module with certificates made here: `rcgen` for a CA per trust domain
//! and its leaves, the `openssl` CLI for what rcgen with ring cannot make (an RSA-1024 key, a
//! SHA-1 signature). Verifiers are exercised both directly and inside real rustls handshakes
//! (a `ClientConnection` and a `ServerConnection` exchanging bytes in memory).

// Test fixtures made here, not values from a peer or a config file: unwrap states the test's
// assumption.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::*;

const GOOD: &str = "spiffe://cluster.local/ns/default/sa/web";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/api";

/// A CA of one trust domain.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
            key_pem,
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// An intermediate CA signed by this one.
    fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::signed_by(params, key, &self.issuer).unwrap(),
            key_pem,
        }
    }

    /// Signs `params` for a new key: the leaf and its key.
    fn sign(&self, params: &CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key_pem: key.serialize_pem(),
        }
    }
}

/// A leaf (with its chain, leaf first) and the PEM of its key.
#[derive(Clone)]
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| pem_of("CERTIFICATE", der.as_ref()))
            .collect()
    }

    fn serial(&self) -> String {
        CertInfo::parse(&self.chain[0]).unwrap().serial
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    // A tiny base64 encoder: the test needs PEM of DER that rcgen hands over as DER.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Leaf parameters as an SVID should have them: the URI SANs given, digitalSignature, both EKUs,
/// not a CA.
fn svid(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

fn bundles(domains: &[(&str, &[&Ca])]) -> Arc<TrustBundles> {
    let mut bundles = TrustBundles::new();
    for (domain, cas) in domains {
        let pem: String = cas.iter().map(|ca| ca.pem()).collect();
        bundles.insert(
            domain,
            DomainBundle::from_pem(domain, pem.as_bytes()).unwrap(),
        );
    }
    Arc::new(bundles)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    leaf: &Leaf,
) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.chain.clone(), leaf.key())
            .unwrap(),
    )
}

fn client_config(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    leaf: &Leaf,
) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(leaf.chain.clone(), leaf.key())
            .unwrap(),
    )
}

/// Which side ended a failed handshake.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Runs a handshake in memory; the connections when both sides finished, else the side that
/// failed first and its error.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), (Side, rustls::Error)> {
    let name = ServerName::try_from("node.cluster.local").unwrap();
    let mut client = ClientConnection::new(client, name).unwrap();
    let mut server = ServerConnection::new(server).unwrap();
    for _ in 0..20 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        let mut read = &bytes[..];
        while !read.is_empty() {
            server.read_tls(&mut read).unwrap();
            server
                .process_new_packets()
                .map_err(|e| (Side::Server, e))?;
        }
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        let mut read = &bytes[..];
        while !read.is_empty() {
            client.read_tls(&mut read).unwrap();
            client
                .process_new_packets()
                .map_err(|e| (Side::Client, e))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

/// The PEM chain and key of a leaf made by the `openssl` CLI: `newkey` is openssl's `-newkey`
/// argument, `digest` its signing digest.
fn openssl_leaf(ca: &Ca, newkey: &[&str], digest: &str, uri: &str) -> Leaf {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    std::fs::write(at("ca.pem"), ca.pem()).unwrap();
    std::fs::write(at("ca.key"), &ca.key_pem).unwrap();
    std::fs::write(
        at("ext"),
        format!(
            "subjectAltName=URI:{uri}\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("the openssl CLI is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut req = vec![
        "req",
        "-new",
        "-nodes",
        "-subj",
        "/O=ringmesh-test",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-newkey",
    ];
    req.extend_from_slice(newkey);
    run(&req);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "4242",
        "-days",
        "2",
        &format!("-{digest}"),
        "-extfile",
        "ext",
        "-out",
        "leaf.pem",
    ]);
    let chain = CertificateDer::pem_file_iter(at("leaf.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    Leaf {
        chain,
        key_pem: std::fs::read_to_string(at("leaf.key")).unwrap(),
    }
}

/// The world of the tests: two federated trust domains and a CA nobody trusts.
struct World {
    local: Ca,
    partner: Ca,
    rogue: Ca,
    bundles: Arc<TrustBundles>,
}

impl World {
    fn new() -> Self {
        let local = Ca::new("cluster.local root");
        let partner = Ca::new("partner.example root");
        let rogue = Ca::new("rogue root");
        let bundles = bundles(&[
            ("cluster.local", &[&local]),
            ("partner.example", &[&partner]),
        ]);
        Self {
            local,
            partner,
            rogue,
            bundles,
        }
    }

    fn trust(&self) -> Arc<dyn TrustSource> {
        Arc::new(FixedTrust(Arc::clone(&self.bundles)))
    }
}

fn now() -> UnixTime {
    UnixTime::now()
}

/// One bad peer certificate: its name, the leaf, and the reason it must be refused with.
struct Bad {
    name: &'static str,
    leaf: Leaf,
    reason: Reason,
    /// Whether a rustls handshake can present it (ring cannot sign with an RSA-1024 key).
    presentable: bool,
}

fn negative_matrix(world: &World) -> Vec<Bad> {
    let local = &world.local;
    let bad = |name, leaf, reason| Bad {
        name,
        leaf,
        reason,
        presentable: true,
    };
    let with = |uris: &[&str], change: &dyn Fn(&mut CertificateParams)| {
        let mut params = svid(uris);
        change(&mut params);
        local.sign(&params)
    };
    let keep = |_: &mut CertificateParams| {};
    let mut matrix = vec![
        bad(
            "wrong trust domain",
            with(&["spiffe://evil.example/ns/default/sa/web"], &keep),
            Reason::WrongTrustDomain,
        ),
        bad(
            "a federated domain's ID signed by our CA",
            with(&["spiffe://partner.example/ns/default/sa/web"], &keep),
            Reason::WrongTrustDomain,
        ),
        bad(
            "two URI SANs",
            with(&[GOOD, "spiffe://cluster.local/ns/default/sa/db"], &keep),
            Reason::MultipleUriSans,
        ),
        bad(
            "no URI SAN",
            with(&[], &|p| {
                p.subject_alt_names = vec![SanType::DnsName("web.default.svc".try_into().unwrap())]
            }),
            Reason::NoUriSan,
        ),
        bad(
            "a non-SPIFFE URI",
            with(&["https://cluster.local/ns/default/sa/web"], &keep),
            Reason::NotSpiffe,
        ),
        bad(
            "expired",
            with(&[GOOD], &|p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            Reason::Expired,
        ),
        bad(
            "not yet valid",
            with(&[GOOD], &|p| {
                p.not_before = rcgen::date_time_ymd(2100, 1, 1);
                p.not_after = rcgen::date_time_ymd(2101, 1, 1);
            }),
            Reason::NotYetValid,
        ),
        bad(
            "a CA as leaf",
            with(&[GOOD], &|p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }),
            Reason::CaAsLeaf,
        ),
        bad(
            "keyUsage without digitalSignature",
            with(&[GOOD], &|p| {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
            }),
            Reason::NoDigitalSignature,
        ),
        bad(
            "no keyUsage",
            with(&[GOOD], &|p| p.key_usages = Vec::new()),
            Reason::NoDigitalSignature,
        ),
        bad(
            "a leaf with keyCertSign",
            with(&[GOOD], &|p| {
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            }),
            Reason::LeafCanSign,
        ),
        bad(
            "untrusted root",
            world.rogue.sign(&svid(&[GOOD])),
            Reason::UntrustedRoot,
        ),
        bad(
            "a path with a trailing /",
            with(&["spiffe://cluster.local/ns/default/sa/web/"], &keep),
            Reason::BadSpiffeId,
        ),
        bad(
            "upper-case scheme",
            with(&["SPIFFE://cluster.local/ns/default/sa/web"], &keep),
            Reason::BadSpiffeId,
        ),
        bad(
            "an ID with a query",
            with(&["spiffe://cluster.local/ns/default/sa/web?x=1"], &keep),
            Reason::BadSpiffeId,
        ),
        bad(
            "an ID with a dot segment",
            with(&["spiffe://cluster.local/ns/../sa/web"], &keep),
            Reason::BadSpiffeId,
        ),
        bad(
            "a trust domain's own ID as leaf",
            with(&["spiffe://cluster.local"], &keep),
            Reason::BadSpiffeId,
        ),
        bad(
            "an ID with a port",
            with(&["spiffe://cluster.local:443/ns/default/sa/web"], &keep),
            Reason::BadSpiffeId,
        ),
        bad(
            "SHA-1 signature",
            openssl_leaf(
                local,
                &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                "sha1",
                GOOD,
            ),
            Reason::WeakSignature,
        ),
    ];
    matrix.push(Bad {
        name: "RSA-1024 key",
        leaf: openssl_leaf(local, &["rsa:1024"], "sha256", GOOD),
        reason: Reason::WeakKey,
        presentable: false,
    });
    matrix
}

#[test]
fn the_good_svid_is_accepted_on_both_sides_and_federated_domains_too() {
    let world = World::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let client = SpiffeClientVerifier::new(world.trust(), true, Vec::new(), Arc::clone(&metrics));
    let server = SpiffeServerVerifier::new(world.trust(), Vec::new(), Arc::clone(&metrics));
    let good = world.local.sign(&svid(&[GOOD]));
    let partner = world
        .partner
        .sign(&svid(&["spiffe://partner.example/ns/p/sa/q"]));
    for leaf in [&good, &partner] {
        let id = client.check(&leaf.chain[0], &[], now()).unwrap();
        assert_eq!(Some(id.clone()), peer_spiffe_id(Some(&leaf.chain)));
        assert_eq!(server.check(&leaf.chain[0], &[], now()).unwrap(), id);
    }
    // Through an intermediate CA, which the peer sends after its leaf.
    let intermediate = world.local.intermediate("cluster.local intermediate");
    let leaf = intermediate.sign(&svid(&[GOOD]));
    let chain = [intermediate.issuer.der().clone()];
    assert_eq!(
        client
            .check(&leaf.chain[0], &chain, now())
            .unwrap()
            .as_str(),
        GOOD
    );
    assert_eq!(
        client.check(&leaf.chain[0], &[], now()).unwrap_err().reason,
        Reason::UntrustedRoot,
        "without the intermediate there is no path"
    );
    for reason in Reason::ALL {
        assert_eq!(
            metrics.handshake_failures(reason),
            0,
            "check() does not count"
        );
    }
}

#[test]
fn the_negative_matrix_is_refused_with_its_reason_and_counted_on_both_sides() {
    let world = World::new();
    let matrix = negative_matrix(&world);
    assert!(matrix.len() >= 15);
    let metrics = Arc::new(IdentityMetrics::new());
    let client_side =
        SpiffeClientVerifier::new(world.trust(), true, Vec::new(), Arc::clone(&metrics));
    let server_side = SpiffeServerVerifier::new(world.trust(), Vec::new(), Arc::clone(&metrics));
    let name = ServerName::try_from("node.cluster.local").unwrap();
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::server::danger::ClientCertVerifier as _;
    for bad in &matrix {
        let before = metrics.handshake_failures(bad.reason);
        let (leaf, rest) = (&bad.leaf.chain[0], &bad.leaf.chain[1..]);
        let error = client_side
            .verify_client_cert(leaf, rest, now())
            .unwrap_err();
        assert_eq!(
            refusal_reason(&error),
            Some(bad.reason),
            "{} (listener side): {error}",
            bad.name
        );
        let error = server_side
            .verify_server_cert(leaf, rest, &name, &[], now())
            .unwrap_err();
        assert_eq!(
            refusal_reason(&error),
            Some(bad.reason),
            "{} (upstream side): {error}",
            bad.name
        );
        assert_eq!(
            metrics.handshake_failures(bad.reason),
            before + 2,
            "{}",
            bad.name
        );
    }
    let mut rendered = String::new();
    metrics.render_prometheus(&mut rendered);
    assert!(
        rendered.contains("ringmesh_tls_handshake_failures_total{reason=\"weak_key\"} 2\n"),
        "{rendered}"
    );
    assert!(
        rendered
            .contains("ringmesh_tls_handshake_failures_total{reason=\"unexpected_identity\"} 0\n")
    );
}

#[test]
fn garbage_is_malformed_and_never_panics() {
    let world = World::new();
    let good = world.local.sign(&svid(&[GOOD]));
    let der = good.chain[0].as_ref();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0x30],
        vec![0x30, 0x82, 0xff, 0xff],
        b"hello".to_vec(),
    ];
    // Every truncation, and every single-byte corruption of the first 300 bytes.
    inputs.extend((0..der.len()).map(|n| der[..n].to_vec()));
    for i in 0..der.len().min(300) {
        let mut corrupt = der.to_vec();
        corrupt[i] ^= 0x5a;
        inputs.push(corrupt);
    }
    let mut malformed = 0;
    for input in &inputs {
        let cert = CertificateDer::from(input.clone());
        if let Err(e) = verify_svid(
            &world.bundles,
            &cert,
            &[],
            now(),
            webpki::KeyUsage::client_auth(),
        ) {
            malformed += usize::from(e.reason == Reason::Malformed);
        }
        let _ = peer_spiffe_id(Some(std::slice::from_ref(&cert)));
    }
    assert!(malformed > 0);
    assert_eq!(
        verify_svid(
            &world.bundles,
            &CertificateDer::from(vec![1, 2, 3]),
            &[],
            now(),
            webpki::KeyUsage::client_auth()
        )
        .unwrap_err()
        .reason,
        Reason::Malformed
    );
}

#[test]
fn webpki_alone_refuses_sha1_but_not_an_rsa_1024_leaf_so_the_key_size_is_checked_here() {
    let world = World::new();
    let anchors = world.bundles.get("cluster.local").unwrap().anchors();
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let webpki_verdict = |leaf: &Leaf| {
        webpki::EndEntityCert::try_from(&leaf.chain[0])
            .unwrap()
            .verify_for_usage(
                algs.all,
                anchors,
                &[],
                now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(drop)
    };
    let sha1 = openssl_leaf(
        &world.local,
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "sha1",
        GOOD,
    );
    assert!(
        webpki_verdict(&sha1).is_err(),
        "webpki with ring has no SHA-1"
    );
    let rsa1024 = openssl_leaf(&world.local, &["rsa:1024"], "sha256", GOOD);
    assert!(
        webpki_verdict(&rsa1024).is_ok(),
        "the CA's signature is P-256: webpki takes the chain"
    );
    let error = verify_svid(
        &world.bundles,
        &rsa1024.chain[0],
        &[],
        now(),
        webpki::KeyUsage::client_auth(),
    )
    .unwrap_err();
    assert_eq!(error.reason, Reason::WeakKey, "{error}");
    // An RSA-2048 leaf made the same way is fine: the refusal is about the size.
    let rsa2048 = openssl_leaf(&world.local, &["rsa:2048"], "sha256", GOOD);
    assert_eq!(
        verify_svid(
            &world.bundles,
            &rsa2048.chain[0],
            &[],
            now(),
            webpki::KeyUsage::client_auth()
        )
        .unwrap()
        .as_str(),
        GOOD
    );
}

#[test]
fn rsa_1024_cas_are_refused_in_bundles_and_as_intermediates() {
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    std::fs::write(at("root.pem"), world.local.pem()).unwrap();
    std::fs::write(at("root.key"), &world.local.key_pem).unwrap();
    std::fs::write(
        at("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    std::fs::write(
        at("leaf.ext"),
        format!("subjectAltName=URI:{GOOD}\nkeyUsage=critical,digitalSignature\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("the openssl CLI is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // An RSA-1024 intermediate signed by the good root, and a P-256 leaf signed by it.
    run(&[
        "req", "-new", "-nodes", "-newkey", "rsa:1024", "-subj", "/CN=weak", "-keyout", "weak.key",
        "-out", "weak.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "weak.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-set_serial",
        "7",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "ca.ext",
        "-out",
        "weak.pem",
    ]);
    run(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-subj",
        "/O=leaf",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "weak.pem",
        "-CAkey",
        "weak.key",
        "-set_serial",
        "8",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    let read = |name: &str| CertificateDer::from_pem_file(at(name)).unwrap();
    let error = verify_svid(
        &world.bundles,
        &read("leaf.pem"),
        &[read("weak.pem")],
        now(),
        webpki::KeyUsage::client_auth(),
    )
    .unwrap_err();
    assert_eq!(error.reason, Reason::WeakKey, "{error}");
    // The same CA as a trust anchor: the bundle is refused when read.
    let pem = std::fs::read(at("weak.pem")).unwrap();
    let error = DomainBundle::from_pem("weak.pem", &pem).unwrap_err();
    assert!(error.contains("RSA key of 1024 bits"), "{error}");
}

#[test]
fn identities_outside_the_allowed_or_expected_sets_are_refused() {
    let world = World::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let other = world
        .local
        .sign(&svid(&["spiffe://cluster.local/ns/other/sa/web"]));
    let good = world.local.sign(&svid(&[GOOD]));
    let allowed = vec![SpiffeIdPattern::parse("spiffe://cluster.local/ns/default/*").unwrap()];
    let listener = SpiffeClientVerifier::new(world.trust(), true, allowed, Arc::clone(&metrics));
    let expected = vec![SpiffeIdPattern::parse(GOOD).unwrap()];
    let upstream = SpiffeServerVerifier::new(world.trust(), expected, Arc::clone(&metrics));
    assert_eq!(
        listener.check(&good.chain[0], &[], now()).unwrap().as_str(),
        GOOD
    );
    assert_eq!(
        upstream.check(&good.chain[0], &[], now()).unwrap().as_str(),
        GOOD
    );
    assert_eq!(
        listener
            .check(&other.chain[0], &[], now())
            .unwrap_err()
            .reason,
        Reason::UnexpectedIdentity
    );
    assert_eq!(
        upstream
            .check(&other.chain[0], &[], now())
            .unwrap_err()
            .reason,
        Reason::UnexpectedIdentity
    );
}

#[test]
fn real_handshakes_accept_the_good_peer_and_read_its_identity() {
    let world = World::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let server_leaf = world.local.sign(&svid(&[SERVER]));
    let client_leaf = world.local.sign(&svid(&[GOOD]));
    let listener = Arc::new(SpiffeClientVerifier::new(
        world.trust(),
        true,
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let upstream = Arc::new(SpiffeServerVerifier::new(
        world.trust(),
        vec![SpiffeIdPattern::parse(SERVER).unwrap()],
        Arc::clone(&metrics),
    ));
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let server = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_client_cert_verifier(listener.clone())
                .with_single_cert(server_leaf.chain.clone(), server_leaf.key())
                .unwrap(),
        );
        let (client, server) = handshake(client_config(upstream.clone(), &client_leaf), server)
            .unwrap_or_else(|(side, e)| panic!("{versions:?}: {side:?} failed: {e}"));
        assert_eq!(
            peer_spiffe_id(server.peer_certificates()).unwrap().as_str(),
            GOOD
        );
        assert_eq!(
            peer_spiffe_id(client.peer_certificates()).unwrap().as_str(),
            SERVER
        );
        assert_eq!(
            peer_spiffe_id(server.peer_certificates())
                .unwrap()
                .principal(),
            "cluster.local/ns/default/sa/web"
        );
    }
    for reason in Reason::ALL {
        assert_eq!(metrics.handshake_failures(reason), 0);
    }
}

#[test]
fn real_handshakes_refuse_every_bad_peer_on_both_sides() {
    let world = World::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let good = world.local.sign(&svid(&[GOOD]));
    let listener = Arc::new(SpiffeClientVerifier::new(
        world.trust(),
        true,
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let upstream = Arc::new(SpiffeServerVerifier::new(
        world.trust(),
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let mut cases = 0;
    for bad in negative_matrix(&world).iter().filter(|b| b.presentable) {
        // A client presenting the bad certificate to an mTLS listener.
        let before = metrics.handshake_failures(bad.reason);
        let (side, error) = handshake(
            client_config(upstream.clone(), &bad.leaf),
            server_config(listener.clone(), &good),
        )
        .err()
        .unwrap_or_else(|| panic!("{}: accepted by the listener", bad.name));
        assert_eq!(side, Side::Server, "{}", bad.name);
        assert_eq!(
            refusal_reason(&error),
            Some(bad.reason),
            "{}: {error}",
            bad.name
        );
        // An upstream presenting it to a client.
        let (side, error) = handshake(
            client_config(upstream.clone(), &good),
            server_config(listener.clone(), &bad.leaf),
        )
        .err()
        .unwrap_or_else(|| panic!("{}: accepted by the client", bad.name));
        assert_eq!(side, Side::Client, "{}", bad.name);
        assert_eq!(
            refusal_reason(&error),
            Some(bad.reason),
            "{}: {error}",
            bad.name
        );
        assert_eq!(
            metrics.handshake_failures(bad.reason),
            before + 2,
            "{}",
            bad.name
        );
        cases += 1;
    }
    assert!(cases >= 15, "{cases}");

    // Identity sets, through handshakes: a listener that allows only ns/other refuses GOOD, and
    // a client that expects another server refuses the good server.
    let only_other = Arc::new(SpiffeClientVerifier::new(
        world.trust(),
        true,
        vec![SpiffeIdPattern::parse("spiffe://cluster.local/ns/other/*").unwrap()],
        Arc::clone(&metrics),
    ));
    let (side, error) = handshake(
        client_config(upstream.clone(), &good),
        server_config(only_other, &good),
    )
    .err()
    .unwrap();
    assert_eq!(
        (side, refusal_reason(&error)),
        (Side::Server, Some(Reason::UnexpectedIdentity))
    );
    let expects_db = Arc::new(SpiffeServerVerifier::new(
        world.trust(),
        vec![SpiffeIdPattern::parse("spiffe://cluster.local/ns/default/sa/db").unwrap()],
        Arc::clone(&metrics),
    ));
    let (side, error) = handshake(
        client_config(expects_db, &good),
        server_config(listener.clone(), &good),
    )
    .err()
    .unwrap();
    assert_eq!(
        (side, refusal_reason(&error)),
        (Side::Client, Some(Reason::UnexpectedIdentity))
    );
    assert_eq!(metrics.handshake_failures(Reason::UnexpectedIdentity), 2);

    // A listener that requires a certificate refuses a client without one (rustls's own check).
    let anonymous = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(upstream.clone())
            .with_no_client_auth(),
    );
    let (side, error) = handshake(anonymous.clone(), server_config(listener.clone(), &good))
        .err()
        .unwrap();
    assert_eq!(
        (side, refusal_reason(&error)),
        (Side::Server, Some(Reason::NoCertificate))
    );
    // One that does not require it lets it through, with no peer identity.
    let optional = Arc::new(SpiffeClientVerifier::new(
        world.trust(),
        false,
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let (_, server) = handshake(anonymous, server_config(optional, &good))
        .unwrap_or_else(|(s, e)| panic!("{s:?}: {e}"));
    assert_eq!(peer_spiffe_id(server.peer_certificates()), None);
}

#[test]
fn a_bundle_with_old_and_new_roots_verifies_leaves_of_either() {
    let old = Ca::new("cluster.local root 1");
    let new = Ca::new("cluster.local root 2");
    let old_leaf = old.sign(&svid(&[GOOD]));
    let new_leaf = new.sign(&svid(&[GOOD]));
    let both = bundles(&[("cluster.local", &[&old, &new])]);
    let only_new = bundles(&[("cluster.local", &[&new])]);
    let usage = webpki::KeyUsage::client_auth();
    for leaf in [&old_leaf, &new_leaf] {
        assert_eq!(
            verify_svid(&both, &leaf.chain[0], &[], now(), usage)
                .unwrap()
                .as_str(),
            GOOD
        );
    }
    assert!(verify_svid(&only_new, &new_leaf.chain[0], &[], now(), usage).is_ok());
    assert_eq!(
        verify_svid(&only_new, &old_leaf.chain[0], &[], now(), usage)
            .unwrap_err()
            .reason,
        Reason::UntrustedRoot
    );
}

// === the store: loading, rotation, /certs ===

/// Writes `text` to `path` as rotation tools do: a temporary file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// Polls `condition` every 10 ms until it holds, for at most `limit`.
fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

struct Node {
    dir: tempfile::TempDir,
    files: IdentityFiles,
}

impl Node {
    fn new(leaf: &Leaf, bundle: &str, partner: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles {
            trust_domain: "cluster.local".into(),
            cert: dir.path().join("svid.pem"),
            key: dir.path().join("svid-key.pem"),
            ca_bundle: dir.path().join("bundle.pem"),
            trust_bundles: partner
                .map(|_| vec![("partner.example".to_owned(), dir.path().join("partner.pem"))])
                .unwrap_or_default(),
            service_accounts: Vec::new(),
        };
        let node = Self { dir, files };
        node.write(leaf);
        std::fs::write(&node.files.ca_bundle, bundle).unwrap();
        if let Some(partner) = partner {
            std::fs::write(node.dir.path().join("partner.pem"), partner).unwrap();
        }
        node
    }

    fn write(&self, leaf: &Leaf) {
        write_atomically(&self.files.cert, &leaf.chain_pem());
        write_atomically(&self.files.key, &leaf.key_pem);
    }
}

#[test]
fn the_store_serves_its_svid_and_rotates_on_reload() {
    let world = World::new();
    let first = world.local.sign(&svid(&[SERVER]));
    let node = Node::new(&first, &world.local.pem(), Some(&world.partner.pem()));
    let metrics = Arc::new(IdentityMetrics::new());
    let store = Store::open(node.files.clone(), Arc::clone(&metrics)).unwrap();
    assert_eq!(store.current().id.as_str(), SERVER);
    assert_eq!(store.reload(), Ok(Reloaded::Unchanged));

    // Handshakes through the store: the resolver presents the SVID, the verifier uses its bundles.
    let listener = Arc::new(SpiffeClientVerifier::new(
        store.clone(),
        true,
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let server = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(listener)
            .with_cert_resolver(store.clone()),
    );
    let upstream = Arc::new(SpiffeServerVerifier::new(
        world.trust(),
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let client_leaf = world
        .partner
        .sign(&svid(&["spiffe://partner.example/ns/p/sa/q"]));
    let serial_seen = |server: &Arc<ServerConfig>| {
        let (client, _) = handshake(
            client_config(upstream.clone(), &client_leaf),
            server.clone(),
        )
        .unwrap_or_else(|(s, e)| panic!("{s:?}: {e}"));
        CertInfo::parse(&client.peer_certificates().unwrap()[0])
            .unwrap()
            .serial
    };
    assert_eq!(serial_seen(&server), first.serial());

    let second = world.local.sign(&svid(&[SERVER]));
    node.write(&second);
    assert_eq!(store.reload(), Ok(Reloaded::Swapped));
    assert_eq!(
        serial_seen(&server),
        second.serial(),
        "the same ServerConfig presents the new SVID"
    );

    // The client side resolves from the store as well.
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(upstream.clone())
            .with_client_cert_resolver(store.clone()),
    );
    let good = world.local.sign(&svid(&[GOOD]));
    let plain_listener = Arc::new(SpiffeClientVerifier::new(
        world.trust(),
        true,
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let (_, server_conn) = handshake(client, server_config(plain_listener, &good))
        .unwrap_or_else(|(s, e)| panic!("{s:?}: {e}"));
    assert_eq!(
        peer_spiffe_id(server_conn.peer_certificates())
            .unwrap()
            .as_str(),
        SERVER
    );
    assert_eq!(metrics.reloads(), 2);
    assert_eq!(metrics.reload_errors(), 0);
}

/// A way to break the identity files: its name, how, the file to blame, words of the reason.
type BreakFiles<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a Path, &'a str);

#[test]
fn bad_new_files_keep_the_old_material_and_count_an_error() {
    let world = World::new();
    let first = world.local.sign(&svid(&[SERVER]));
    let node = Node::new(&first, &world.local.pem(), None);
    let metrics = Arc::new(IdentityMetrics::new());
    let store = Store::open(node.files.clone(), Arc::clone(&metrics)).unwrap();
    let serial = first.serial();

    let other = world.local.sign(&svid(&[SERVER]));
    let expired = world.local.sign(&{
        let mut p = svid(&[SERVER]);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        p
    });
    let foreign = world
        .partner
        .sign(&svid(&["spiffe://partner.example/ns/default/sa/api"]));
    let unlisted_root = Ca::new("cluster.local root 2").sign(&svid(&[SERVER]));
    let can_sign = world.local.sign(&{
        let mut p = svid(&[SERVER]);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        p
    });
    let cert = node.files.cert.clone();
    let key = node.files.key.clone();
    let bundle = node.files.ca_bundle.clone();
    let cases: Vec<BreakFiles<'_>> = vec![
        (
            "garbage certificate",
            Box::new(|| write_atomically(&cert, "garbage")),
            &cert,
            "no PEM certificate",
        ),
        (
            "a key that is not the certificate's",
            Box::new(|| {
                write_atomically(&cert, &first.chain_pem());
                write_atomically(&key, &other.key_pem);
            }),
            &key,
            "does not match",
        ),
        (
            "an expired leaf",
            Box::new(|| node.write(&expired)),
            &cert,
            "expired",
        ),
        (
            "a leaf of another trust domain",
            Box::new(|| node.write(&foreign)),
            &cert,
            "not in trust domain",
        ),
        (
            "a leaf of a root the bundle does not list",
            Box::new(|| node.write(&unlisted_root)),
            &cert,
            "untrusted_root",
        ),
        (
            "a leaf that could sign certificates",
            Box::new(|| node.write(&can_sign)),
            &cert,
            "leaf_can_sign",
        ),
        (
            "an empty bundle",
            Box::new(|| {
                node.write(&first);
                write_atomically(&bundle, "");
            }),
            &bundle,
            "no PEM certificate",
        ),
        (
            "a missing key file",
            Box::new(|| {
                write_atomically(&bundle, &world.local.pem());
                std::fs::remove_file(&key).unwrap();
            }),
            &key,
            "cannot be read",
        ),
    ];
    for (i, (name, break_it, file, words)) in cases.iter().enumerate() {
        break_it();
        let error = store.reload().unwrap_err();
        assert_eq!(error.file, *file, "{name}: {error}");
        assert!(error.reason.contains(words), "{name}: {error}");
        assert_eq!(
            store.current().leaf.serial,
            serial,
            "{name}: old material kept"
        );
        assert_eq!(metrics.reload_errors(), i as u64 + 1, "{name}");
        assert_eq!(store.last_error().as_deref(), Some(&error));
    }
    // Fixed files are taken again.
    node.write(&other);
    assert_eq!(store.reload(), Ok(Reloaded::Swapped));
    assert_eq!(store.current().leaf.serial, other.serial());
    assert_eq!(store.last_error(), None);
    assert!(
        Store::open(
            IdentityFiles {
                cert: node.dir.path().join("absent.pem"),
                ..node.files.clone()
            },
            Arc::clone(&metrics)
        )
        .is_err()
    );
}

#[test]
fn the_watcher_picks_up_rotated_files_and_keeps_old_material_for_bad_ones() {
    let world = World::new();
    let first = world.local.sign(&svid(&[SERVER]));
    let node = Node::new(&first, &world.local.pem(), None);
    let metrics = Arc::new(IdentityMetrics::new());
    let store = Store::open(node.files.clone(), Arc::clone(&metrics)).unwrap();
    let _watcher = store.watch(Duration::from_millis(50)).unwrap();

    // Leaf rotation.
    let second = world.local.sign(&svid(&[SERVER]));
    node.write(&second);
    assert!(wait_for(Duration::from_secs(5), || store
        .current()
        .leaf
        .serial
        == second.serial()));

    // Root rotation: first the bundle with both roots, then a leaf of the new root; a peer of the
    // old root still verifies against the store's bundles throughout.
    let new_root = Ca::new("cluster.local root 2");
    write_atomically(
        &node.files.ca_bundle,
        &(world.local.pem() + &new_root.pem()),
    );
    assert!(wait_for(Duration::from_secs(5), || {
        store
            .current()
            .bundles
            .get("cluster.local")
            .is_some_and(|b| b.cas.len() == 2)
    }));
    let third = new_root.sign(&svid(&[SERVER]));
    node.write(&third);
    assert!(wait_for(Duration::from_secs(5), || store
        .current()
        .leaf
        .serial
        == third.serial()));
    let usage = webpki::KeyUsage::client_auth();
    let bundles = store.bundles();
    for peer in [
        world.local.sign(&svid(&[GOOD])),
        new_root.sign(&svid(&[GOOD])),
    ] {
        assert!(verify_svid(&bundles, &peer.chain[0], &[], now(), usage).is_ok());
    }

    // A bad file: counted once, old material kept.
    write_atomically(
        &node.files.cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    assert!(wait_for(Duration::from_secs(5), || metrics.reload_errors() == 1));
    assert_eq!(store.current().leaf.serial, third.serial());
    // Later polls of the same bad content do not count it again (four polls at least).
    let seen = metrics.reload_errors();
    let settled = Instant::now() + Duration::from_millis(250);
    assert!(!wait_for(Duration::from_millis(250), || Instant::now()
        > settled
        && metrics.reload_errors() != seen));
    assert_eq!(metrics.reload_errors(), 1);
    // And the next good file is taken.
    let fourth = new_root.sign(&svid(&[SERVER]));
    node.write(&fourth);
    assert!(wait_for(Duration::from_secs(5), || store
        .current()
        .leaf
        .serial
        == fourth.serial()));
    assert_eq!(metrics.reload_errors(), 1);
}

#[test]
fn certs_json_and_the_expiry_gauge_show_the_identity_and_the_cas() {
    let world = World::new();
    let mut params = svid(&[SERVER]);
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let leaf = world.local.sign(&params);
    let node = Node::new(&leaf, &world.local.pem(), Some(&world.partner.pem()));
    let store = Store::open(node.files.clone(), Arc::new(IdentityMetrics::new())).unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(4_070_908_800 - 100); // 2099-01-01 minus 100 s
    let json = store.certs_json(at);
    let identity = &json["identities"][0];
    assert_eq!(identity["spiffe_id"], SERVER);
    assert_eq!(identity["trust_domain"], "cluster.local");
    assert_eq!(identity["serial_number"], leaf.serial());
    assert_eq!(identity["valid_from"], "2026-01-01T00:00:00Z");
    assert_eq!(identity["expiration_time"], "2099-01-01T00:00:00Z");
    assert_eq!(identity["seconds_until_expiration"], 100);
    let domains: Vec<_> = json["trust_bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["trust_domain"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(domains, ["cluster.local", "partner.example"]);
    assert_eq!(
        json["trust_bundles"][0]["ca_certs"][0]["subject"],
        "CN=cluster.local root"
    );
    assert_eq!(json["reload_errors"], 0);

    let mut text = String::new();
    store.render_prometheus(&mut text, at);
    let line = format!(
        "ringmesh_cert_expiry_seconds{{cert=\"identity\",trust_domain=\"cluster.local\",spiffe_id=\"{SERVER}\",serial=\"{}\"}} 100\n",
        leaf.serial()
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("ringmesh_cert_expiry_seconds{cert=\"ca\",trust_domain=\"partner.example\",subject=\"CN=partner.example root\""), "{text}");
    assert!(text.contains("ringmesh_cert_reload_errors_total 0\n"));
    assert!(text.contains("# TYPE ringmesh_cert_expiry_seconds gauge\n"));
}

/// A log sink for [`logs_of`].
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `run` logs on this thread, as text without colours.
fn logs_of(run: impl FnOnce()) -> String {
    let sink = Captured::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn refusals_and_refused_files_are_logged_with_their_reason() {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::server::danger::ClientCertVerifier as _;
    let world = World::new();
    let metrics = Arc::new(IdentityMetrics::new());
    let listener = SpiffeClientVerifier::new(world.trust(), true, Vec::new(), Arc::clone(&metrics));
    let rogue = world.rogue.sign(&svid(&[GOOD]));
    let logs = logs_of(|| {
        let _ = listener.verify_client_cert(&rogue.chain[0], &[], now());
    });
    // Client refusals are DEBUG here: the listener logs them at WARN, rate-limited.
    assert!(logs.contains("DEBUG"), "{logs}");
    assert!(logs.contains("reason=\"untrusted_root\""), "{logs}");
    assert!(logs.contains(GOOD), "{logs}");
    // Upstream refusals are WARN here: they are as many as the node's own connections.
    let upstream = SpiffeServerVerifier::new(world.trust(), Vec::new(), Arc::clone(&metrics));
    let logs = logs_of(|| {
        let _ = upstream.verify_server_cert(
            &rogue.chain[0],
            &[],
            &ServerName::try_from("api").unwrap(),
            &[],
            now(),
        );
    });
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("reason=\"untrusted_root\""), "{logs}");

    let first = world.local.sign(&svid(&[SERVER]));
    let node = Node::new(&first, &world.local.pem(), None);
    let store = Store::open(node.files.clone(), Arc::clone(&metrics)).unwrap();
    write_atomically(&node.files.key, "not a key");
    let logs = logs_of(|| {
        let _ = store.reload();
    });
    assert!(logs.contains("ERROR"), "{logs}");
    assert!(
        logs.contains(&node.files.key.display().to_string()),
        "{logs}"
    );
    assert!(logs.contains("not a PEM private key"), "{logs}");
}

const WEB_SA: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB_SA: &str = "spiffe://cluster.local/ns/shop/sa/db";

impl Node {
    /// Adds service account `sa` of namespace `shop` with `leaf` as its SVID.
    fn add_service_account(&mut self, sa: &str, leaf: &Leaf) {
        let account = ServiceAccountFiles {
            namespace: "shop".to_owned(),
            service_account: sa.to_owned(),
            cert: self.dir.path().join(format!("{sa}.pem")),
            key: self.dir.path().join(format!("{sa}-key.pem")),
        };
        write_atomically(&account.cert, &leaf.chain_pem());
        write_atomically(&account.key, &leaf.key_pem);
        self.files.service_accounts.push(account);
    }

    fn write_service_account(&self, index: usize, leaf: &Leaf) {
        let account = &self.files.service_accounts[index];
        write_atomically(&account.cert, &leaf.chain_pem());
        write_atomically(&account.key, &leaf.key_pem);
    }
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

#[test]
fn service_account_svids_load_with_the_node_svid_and_are_found_by_id() {
    let world = World::new();
    let mut node = Node::new(
        &world.local.sign(&svid(&[SERVER])),
        &world.local.pem(),
        None,
    );
    let web = world.local.sign(&svid(&[WEB_SA]));
    let db = world.local.sign(&svid(&[DB_SA]));
    node.add_service_account("web", &web);
    node.add_service_account("db", &db);
    let store = Store::open(node.files.clone(), Arc::new(IdentityMetrics::new())).unwrap();
    let material = store.current();
    assert_eq!(material.service_accounts.len(), 2);
    let found = material.service_account(&id(WEB_SA)).unwrap();
    assert_eq!(found.id.as_str(), WEB_SA);
    assert_eq!(found.certified.cert[0], web.chain[0]);
    assert_eq!(
        store.service_account(&id(DB_SA)).unwrap().cert[0],
        db.chain[0]
    );
    assert!(store.service_account(&id(GOOD)).is_none(), "not held");

    let json = store.certs_json(SystemTime::now());
    let listed: Vec<_> = json["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str(),
                i["spiffe_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (None, SERVER.to_owned()),
            (Some("service_account"), DB_SA.to_owned()),
            (Some("service_account"), WEB_SA.to_owned()),
        ]
    );
    let mut text = String::new();
    store.render_prometheus(&mut text, SystemTime::now());
    let prefix = format!(
        "ringmesh_cert_expiry_seconds{{cert=\"service_account\",trust_domain=\"cluster.local\",spiffe_id=\"{WEB_SA}\",serial=\"{}\"}} ",
        web.serial()
    );
    assert!(text.contains(&prefix), "{text}");
}

#[test]
fn a_service_account_certificate_of_another_identity_is_a_load_error_naming_the_file() {
    let world = World::new();
    let mut node = Node::new(
        &world.local.sign(&svid(&[SERVER])),
        &world.local.pem(),
        None,
    );
    node.add_service_account("web", &world.local.sign(&svid(&[DB_SA])));
    let error = Store::open(node.files.clone(), Arc::new(IdentityMetrics::new())).unwrap_err();
    assert_eq!(error.file, node.files.service_accounts[0].cert);
    assert!(
        error
            .reason
            .contains(&format!("is the certificate of {DB_SA}, not of {WEB_SA}")),
        "{error}"
    );

    // Other refusals name the service account's files too: a rogue CA, a key of another leaf.
    let mut node = Node::new(
        &world.local.sign(&svid(&[SERVER])),
        &world.local.pem(),
        None,
    );
    node.add_service_account("web", &world.rogue.sign(&svid(&[WEB_SA])));
    let error = Store::open(node.files.clone(), Arc::new(IdentityMetrics::new())).unwrap_err();
    assert_eq!(error.file, node.files.service_accounts[0].cert);
    assert!(error.reason.contains("not a valid SVID"), "{error}");
    let mut node = Node::new(
        &world.local.sign(&svid(&[SERVER])),
        &world.local.pem(),
        None,
    );
    node.add_service_account("web", &world.local.sign(&svid(&[WEB_SA])));
    let other = world.local.sign(&svid(&[WEB_SA]));
    write_atomically(&node.files.service_accounts[0].key, &other.key_pem);
    let error = Store::open(node.files.clone(), Arc::new(IdentityMetrics::new())).unwrap_err();
    assert_eq!(error.file, node.files.service_accounts[0].key);
}

#[test]
fn service_account_files_rotate_on_reload_and_bad_ones_keep_the_old_material() {
    let world = World::new();
    let mut node = Node::new(
        &world.local.sign(&svid(&[SERVER])),
        &world.local.pem(),
        None,
    );
    let first = world.local.sign(&svid(&[WEB_SA]));
    node.add_service_account("web", &first);
    let metrics = Arc::new(IdentityMetrics::new());
    let store = Store::open(node.files.clone(), Arc::clone(&metrics)).unwrap();
    let serial = |store: &Store| {
        CertInfo::parse(&store.service_account(&id(WEB_SA)).unwrap().cert[0])
            .unwrap()
            .serial
    };
    assert_eq!(serial(&store), first.serial());

    let second = world.local.sign(&svid(&[WEB_SA]));
    node.write_service_account(0, &second);
    assert_eq!(store.reload(), Ok(Reloaded::Swapped));
    assert_eq!(serial(&store), second.serial());

    // A certificate for another identity: refused, counted, the old one keeps serving.
    node.write_service_account(0, &world.local.sign(&svid(&[DB_SA])));
    let error = store.reload().unwrap_err();
    assert_eq!(error.file, node.files.service_accounts[0].cert);
    assert_eq!(metrics.reload_errors(), 1);
    assert_eq!(serial(&store), second.serial());
    assert_eq!(store.last_error().as_deref(), Some(&error));
}
