//! X.509-SVID verification: rustls verifiers that accept a peer only if its certificate is a
//! valid SVID of a trusted trust domain, and (optionally) one of the identities expected.
//!
//! What is checked, in this order, and why (section names of the X.509-SVID specification,
//! `standards/X509-SVID.md`; the same checks as go-spiffe's `x509svid` and Istio's ztunnel, which
//! also reads URI SANs with `x509-parser` after chain validation by webpki):
//!
//! 1. The leaf parses as X.509 ([`Reason::Malformed`] otherwise; x509-parser returns errors, it
//!    does not panic, on arbitrary DER).
//! 2. *2. SPIFFE ID*: exactly one URI SAN ([`Reason::NoUriSan`], [`Reason::MultipleUriSans`]),
//!    which is a SPIFFE ID ([`Reason::NotSpiffe`] for another scheme, [`Reason::BadSpiffeId`] for
//!    an invalid one, an upper-case `SPIFFE://` included); *3.1 Leaf Certificates* and *5.2 Leaf
//!    Validation*: with a non-root path.
//! 3. *4.1 Basic Constraints*, *5.2 Leaf Validation*: the leaf is not a CA
//!    ([`Reason::CaAsLeaf`]).
//! 4. *4.3 Key Usage*, *5.2 Leaf Validation*: the extension is present with `digitalSignature`
//!    ([`Reason::NoDigitalSignature`]) and without `keyCertSign`/`cRLSign`
//!    ([`Reason::LeafCanSign`]). (That the extension is marked critical is not enforced, as
//!    go-spiffe does not: it would refuse SVIDs of issuers that interoperate today.)
//! 5. Algorithms: an RSA key under 2048 bits ([`Reason::WeakKey`]; bundles refuse such CAs when
//!    read) or a SHA-1/MD5 signature on any certificate the peer sent ([`Reason::WeakSignature`]) is refused here explicitly, before
//!    webpki. webpki with ring's algorithms refuses SHA-1 itself, but it takes an RSA-1024 *leaf*
//!    signed by a strong CA (the leaf's key is only used in the handshake signature), so the key
//!    size must be checked here.
//! 6. Validity at the handshake's time ([`Reason::Expired`], [`Reason::NotYetValid`]).
//! 7. *5.1 Path Validation*, and SPIFFE ID specification *3. SPIFFE Verifiable Identity
//!    Document* ("an SVID is considered valid if it has been signed by an authority within the
//!    SPIFFE ID's trust domain"): the ID's trust domain has a bundle
//!    ([`Reason::WrongTrustDomain`]), and the chain validates with webpki against **that
//!    domain's** bundle only, with rustls's ring signature algorithms and the extended key usage
//!    of the side (serverAuth/clientAuth, when the extension is present; *4.4*)
//!    ([`Reason::UntrustedRoot`]; a chain that would validate against another domain's bundle is
//!    [`Reason::WrongTrustDomain`]: a CA of one domain minting IDs of another, which federation
//!    must not allow).
//! 8. Authorization of the ID (ztunnel's check of the URI SAN, not a DNS name): on the server
//!    side the client's ID is one of the listener's `allowed_spiffe_ids`; on the client side the
//!    server's ID is one of the cluster's `expected_spiffe_ids` (the server name rustls passes is
//!    ignored). An empty list allows any ID of a trusted domain ([`Reason::UnexpectedIdentity`]).
//!
//! Each refusal is counted in [`IdentityMetrics`] under its [`Reason`], logged once with the
//! reason and detail, and returned to rustls as
//! `Error::InvalidCertificate(CertificateError::Other(..))` wrapping a [`SvidError`];
//! [`super::refusal_reason`] gets the reason back from the error the handshake ends with. The transport
//! must not count these errors again.
//!
//! The handshake signatures (CertificateVerify) are checked with the ring provider's
//! `verify_tls12_signature`/`verify_tls13_signature` over the same algorithm list.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::{debug, warn};
use x509_parser::certificate::X509Certificate;

use super::bundle::{TrustBundles, TrustSource};
use super::metrics::IdentityMetrics;
use super::spiffe::{SpiffeId, SpiffeIdPattern, any_matches};
use super::svid::{Reason, SvidError, leaf_id, single_uri_san, weak_key};

/// Signature algorithms of rustls's ring provider: ECDSA P-256/P-384 with SHA-256/384, Ed25519,
/// RSA PKCS#1 and PSS with 2048–8192-bit keys and SHA-256/384/512. No SHA-1, no RSA-1024.
/// Taken once: building the provider allocates its cipher-suite and group lists.
fn algorithms() -> WebPkiSupportedAlgorithms {
    static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> = LazyLock::new(|| {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    });
    *ALGORITHMS
}

/// OIDs of signature algorithms refused by name: sha1WithRSAEncryption, md5WithRSAEncryption,
/// md2WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1, and RSASSA-PSS (whose hash is in its
/// parameters; webpki accepts PSS only with SHA-256 and up, so it is left to webpki).
const WEAK_SIGNATURE_OIDS: &[&str] = &[
    "1.2.840.113549.1.1.5",
    "1.2.840.113549.1.1.4",
    "1.2.840.113549.1.1.2",
    "1.2.840.10045.4.1",
    "1.2.840.10040.4.3",
];

/// Which side of a handshake a peer certificate comes from.
#[derive(Debug, Clone, Copy)]
enum PeerRole {
    /// A client presenting its certificate to a listener.
    Client,
    /// An upstream presenting its certificate to this proxy.
    Server,
}

/// An X.509-SVID check for one side ([`verify_svid`] with that side's key usage), then the
/// identity against the patterns that side accepts (empty = any identity of a trusted domain).
fn verify_peer(
    trust: &dyn TrustSource,
    accepted: &[SpiffeIdPattern],
    role: PeerRole,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, SvidError> {
    let (usage, refusal) = match role {
        PeerRole::Client => (webpki::KeyUsage::client_auth(), "an allowed client"),
        PeerRole::Server => (webpki::KeyUsage::server_auth(), "an expected server"),
    };
    let bundles = trust.bundles();
    let id = verify_svid(&bundles, end_entity, intermediates, now, usage)?;
    if !any_matches(accepted, &id) {
        return Err(SvidError::new(
            Reason::UnexpectedIdentity,
            format!("{id} is not {refusal} identity"),
        ));
    }
    Ok(id)
}

/// Verifies `end_entity` (+ `intermediates`) as an X.509-SVID at `now` against `bundles`, for
/// `usage` (webpki's extended key usage: server or client auth, required only if the extension
/// is present). Returns the peer's SPIFFE ID. Steps 1–7 of the module docs.
pub fn verify_svid(
    bundles: &TrustBundles,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, SvidError> {
    let (_, leaf) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|e| SvidError::new(Reason::Malformed, format!("leaf: {e}")))?;
    let id = leaf_id(single_uri_san(&leaf)?)?;
    let with_id = |e: SvidError| SvidError::new(e.reason, format!("{id}: {}", e.detail));

    let constraints = leaf
        .basic_constraints()
        .map_err(|e| SvidError::new(Reason::Malformed, format!("basicConstraints: {e}")))
        .map_err(with_id)?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(with_id(SvidError::new(
            Reason::CaAsLeaf,
            "basicConstraints cA is true",
        )));
    }
    let key_usage = leaf
        .key_usage()
        .map_err(|e| SvidError::new(Reason::Malformed, format!("keyUsage: {e}")))
        .map_err(with_id)?
        .ok_or_else(|| with_id(SvidError::new(Reason::NoDigitalSignature, "no keyUsage")))?;
    if !key_usage.value.digital_signature() {
        return Err(with_id(SvidError::new(
            Reason::NoDigitalSignature,
            "keyUsage without digitalSignature",
        )));
    }
    if key_usage.value.key_cert_sign() || key_usage.value.crl_sign() {
        return Err(with_id(SvidError::new(
            Reason::LeafCanSign,
            "keyUsage of a leaf has keyCertSign or cRLSign",
        )));
    }
    weak_key(&leaf, "leaf").map_err(with_id)?;
    weak_signature(&leaf, "leaf").map_err(with_id)?;
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    validity(&leaf, now_secs, "leaf").map_err(with_id)?;
    for (i, der) in intermediates.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            with_id(SvidError::new(
                Reason::Malformed,
                format!("intermediate {i}: {e}"),
            ))
        })?;
        let at = format!("intermediate {i}");
        weak_key(&cert, &at).map_err(with_id)?;
        weak_signature(&cert, &at).map_err(with_id)?;
        validity(&cert, now_secs, &at).map_err(with_id)?;
    }

    let domain = id.trust_domain();
    let bundle = bundles.get(domain).ok_or_else(|| {
        with_id(SvidError::new(
            Reason::WrongTrustDomain,
            format!("no trust bundle for trust domain {domain:?}"),
        ))
    })?;
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| with_id(SvidError::new(Reason::Malformed, format!("leaf: {e}"))))?;
    let algs = algorithms();
    let validate = |anchors| {
        cert.verify_for_usage(algs.all, anchors, intermediates, now, usage, None, None)
            .map(drop)
    };
    match validate(bundle.anchors()) {
        Ok(()) => Ok(id),
        Err(webpki::Error::UnknownIssuer) => {
            // Would another trusted domain's CA have signed it? Then it is a CA of that domain
            // issuing an ID of this one.
            let other = bundles
                .iter()
                .find(|(name, b)| *name != domain && validate(b.anchors()).is_ok());
            Err(with_id(match other {
                Some((name, _)) => SvidError::new(
                    Reason::WrongTrustDomain,
                    format!("issued by a CA of trust domain {name:?}, not of {domain:?}"),
                ),
                None => SvidError::new(
                    Reason::UntrustedRoot,
                    format!(
                        "does not chain to the bundle of {domain:?} ({})",
                        bundle.source
                    ),
                ),
            }))
        }
        Err(e) => Err(with_id(SvidError::new(webpki_reason(&e), e.to_string()))),
    }
}

/// The reason for a webpki refusal other than an unknown issuer. (The unit variants of the
/// signature-algorithm errors are deprecated in favour of the `Context` ones, but still exist.)
#[allow(deprecated)]
fn webpki_reason(error: &webpki::Error) -> Reason {
    use webpki::Error as E;
    match error {
        E::CertExpired { .. } => Reason::Expired,
        E::CertNotValidYet { .. } => Reason::NotYetValid,
        E::CaUsedAsEndEntity => Reason::CaAsLeaf,
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => Reason::WeakSignature,
        E::InvalidSignatureForPublicKey => Reason::BadSignature,
        E::BadDer | E::BadDerTime | E::TrailingData(_) | E::MalformedExtensions => {
            Reason::Malformed
        }
        _ => Reason::InvalidChain,
    }
}

fn weak_signature(cert: &X509Certificate<'_>, at: &str) -> Result<(), SvidError> {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    if WEAK_SIGNATURE_OIDS.contains(&oid.as_str()) {
        return Err(SvidError::new(
            Reason::WeakSignature,
            format!("{at} signed with {oid} (SHA-1 or MD5)"),
        ));
    }
    Ok(())
}

fn validity(cert: &X509Certificate<'_>, now: i64, at: &str) -> Result<(), SvidError> {
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(SvidError::new(
            Reason::NotYetValid,
            format!("{at} not valid before {}", validity.not_before),
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(SvidError::new(
            Reason::Expired,
            format!("{at} expired at {}", validity.not_after),
        ));
    }
    Ok(())
}

/// Counts and logs a refusal, then turns it into the rustls error.
///
/// A refused *server* certificate (an upstream this node dialled) is logged at WARN here: there
/// are only as many as the node's own connection attempts. A refused *client* certificate is
/// logged at DEBUG: any client can make as many as it likes, so the listener that accepted the
/// connection logs it at WARN with the listener and the peer, rate-limited
/// (`listener::handshake_refused`); the counter here is exact either way.
fn refuse(metrics: &IdentityMetrics, side: &'static str, error: SvidError) -> rustls::Error {
    metrics.handshake_failed(error.reason);
    if side == CLIENT_SIDE {
        debug!(side, reason = error.reason.as_str(), detail = %error.detail, "peer certificate refused");
    } else {
        warn!(side, reason = error.reason.as_str(), detail = %error.detail, "peer certificate refused");
    }
    error.into_rustls()
}

/// The `side` of a client certificate refusal.
const CLIENT_SIDE: &str = "client certificate";

/// Verifies the handshake signatures with the ring provider; a bad one is counted as
/// [`Reason::BadSignature`].
#[derive(Debug)]
struct Signatures {
    algs: WebPkiSupportedAlgorithms,
}

impl Signatures {
    fn new() -> Self {
        Self { algs: algorithms() }
    }

    fn tls12(
        &self,
        metrics: &IdentityMetrics,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
            .inspect_err(|e| Self::count(metrics, e))
    }

    fn tls13(
        &self,
        metrics: &IdentityMetrics,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
            .inspect_err(|e| Self::count(metrics, e))
    }

    fn count(metrics: &IdentityMetrics, error: &rustls::Error) {
        metrics.handshake_failed(Reason::BadSignature);
        warn!(reason = Reason::BadSignature.as_str(), %error, "peer handshake signature refused");
    }
}

/// The verifier of client certificates on an mTLS listener.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: Arc<dyn TrustSource>,
    require_client_cert: bool,
    allowed: Vec<SpiffeIdPattern>,
    metrics: Arc<IdentityMetrics>,
    signatures: Signatures,
}

impl SpiffeClientVerifier {
    /// A verifier that trusts `trust`'s bundles (read per handshake), asks every client for a
    /// certificate, refuses clients without one when `require_client_cert`, and accepts only
    /// IDs matching `allowed` (empty: any ID of a trusted domain).
    pub fn new(
        trust: Arc<dyn TrustSource>,
        require_client_cert: bool,
        allowed: Vec<SpiffeIdPattern>,
        metrics: Arc<IdentityMetrics>,
    ) -> Self {
        Self {
            trust,
            require_client_cert,
            allowed,
            metrics,
            signatures: Signatures::new(),
        }
    }

    /// The check itself, without counting: the client's SPIFFE ID or why not.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        verify_peer(
            self.trust.as_ref(),
            &self.allowed,
            PeerRole::Client,
            end_entity,
            intermediates,
            now,
        )
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.require_client_cert
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundles rotate and this borrows for the verifier's life; an empty hint list tells
        // the client to send whatever certificate it has, which is what a workload has one of.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|e| refuse(&self.metrics, CLIENT_SIDE, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(&self.metrics, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(&self.metrics, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.algs.supported_schemes()
    }
}

/// The verifier of an upstream's server certificate.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: Arc<dyn TrustSource>,
    expected: Vec<SpiffeIdPattern>,
    metrics: Arc<IdentityMetrics>,
    signatures: Signatures,
}

impl SpiffeServerVerifier {
    /// A verifier that trusts `trust`'s bundles (read per handshake) and accepts only servers
    /// whose ID matches `expected` (empty: any ID of a trusted domain).
    pub fn new(
        trust: Arc<dyn TrustSource>,
        expected: Vec<SpiffeIdPattern>,
        metrics: Arc<IdentityMetrics>,
    ) -> Self {
        Self {
            trust,
            expected,
            metrics,
            signatures: Signatures::new(),
        }
    }

    /// The check itself, without counting: the server's SPIFFE ID or why not.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        verify_peer(
            self.trust.as_ref(),
            &self.expected,
            PeerRole::Server,
            end_entity,
            intermediates,
            now,
        )
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
            .map_err(|e| refuse(&self.metrics, "server certificate", e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(&self.metrics, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(&self.metrics, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.algs.supported_schemes()
    }
}
