//! X.509-SVID verification: rustls verifiers that accept a peer only if its certificate is a
//! valid SVID of a trusted trust domain, and (optionally) one of the identities expected.
//!
//! What is checked, in this order, and why (section names of the X.509-SVID specification; the
//! same checks as Istio's ztunnel, which also reads URI SANs with `x509-parser` after chain
//! validation by webpki):
//!
//! 1. The leaf parses as X.509 ([`Reason::Malformed`] otherwise; x509-parser returns errors, it
//!    does not panic, on arbitrary DER).
//! 2. *2. SPIFFE ID*: exactly one URI SAN ([`Reason::NoUriSan`], [`Reason::MultipleUriSans`]),
//!    which is a SPIFFE ID ([`Reason::NotSpiffe`] for another scheme, [`Reason::BadSpiffeId`] for
//!    an invalid one, an upper-case `SPIFFE://` included) with a non-root path ("the SPIFFE ID of
//!    a leaf SVID MUST have a non-root path component").
//! 3. *4.1 Basic Constraints*: the leaf is not a CA ([`Reason::CaAsLeaf`]).
//! 4. *4.3 Key Usage*: the extension is present with `digitalSignature`
//!    ([`Reason::NoDigitalSignature`]) and without `keyCertSign`/`cRLSign`
//!    ([`Reason::LeafCanSign`]).
//! 5. Algorithms: an RSA key under 2048 bits ([`Reason::WeakKey`]) or a SHA-1/MD5 signature on
//!    any certificate of the chain ([`Reason::WeakSignature`]) is refused here explicitly, before
//!    webpki (whose ring algorithms refuse both anyway) — so the reason is named, not inferred.
//! 6. Validity at the handshake's time ([`Reason::Expired`], [`Reason::NotYetValid`]).
//! 7. *5.1 Path Validation*: the ID's trust domain has a bundle ([`Reason::WrongTrustDomain`]),
//!    and the chain validates with webpki against **that domain's** bundle only, with rustls's
//!    ring signature algorithms ([`Reason::UntrustedRoot`]; a chain that would validate against
//!    another domain's bundle is [`Reason::WrongTrustDomain`]: a CA of one domain minting IDs of
//!    another, which federation must not allow).
//! 8. *5.2 Leaf Validation* (authorization of the ID): on the server side the client's ID is one
//!    of the listener's `allowed_spiffe_ids`; on the client side the server's ID is one of the
//!    cluster's `expected_spiffe_ids` (SPIFFE checks URI SANs, not DNS names, so the server name
//!    rustls passes is ignored). An empty list allows any ID of a trusted domain
//!    ([`Reason::UnexpectedIdentity`]).
//!
//! Each refusal is counted in [`IdentityMetrics`] under its [`Reason`], logged once with the
//! reason and detail, and returned to rustls as
//! `Error::InvalidCertificate(CertificateError::Other(..))` wrapping a [`SvidError`];
//! [`refusal_reason`] gets the reason back from the error the handshake ends with. The transport
//! must not count these errors again.
//!
//! The handshake signatures (CertificateVerify) are checked with the ring provider's
//! `verify_tls12_signature`/`verify_tls13_signature` over the same algorithm list.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::warn;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;

use super::bundle::{TrustBundles, TrustSource};
use super::metrics::IdentityMetrics;
use super::spiffe::{SpiffeId, SpiffeIdError, SpiffeIdPattern, any_matches};

/// Why a peer certificate was refused: the `reason` label of
/// `ringmesh_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The certificate (or one of the chain) does not parse.
    Malformed,
    /// The chain does not lead to a CA of the ID's trust-domain bundle.
    UntrustedRoot,
    /// No bundle for the ID's trust domain, or the chain leads to another domain's CA.
    WrongTrustDomain,
    /// No URI SAN.
    NoUriSan,
    /// More than one URI SAN.
    MultipleUriSans,
    /// The URI SAN is not a `spiffe:` URI.
    NotSpiffe,
    /// The URI SAN is a `spiffe:` URI but not a valid leaf SPIFFE ID.
    BadSpiffeId,
    /// A certificate of the chain is past its notAfter.
    Expired,
    /// A certificate of the chain is before its notBefore.
    NotYetValid,
    /// The leaf is a CA (basicConstraints cA true).
    CaAsLeaf,
    /// The leaf has no keyUsage, or keyUsage without digitalSignature.
    NoDigitalSignature,
    /// The leaf's keyUsage has keyCertSign or cRLSign.
    LeafCanSign,
    /// An RSA key under 2048 bits.
    WeakKey,
    /// A SHA-1 or MD5 signature, or an algorithm the ring provider does not accept.
    WeakSignature,
    /// A signature in the chain does not verify.
    BadSignature,
    /// The chain fails webpki for another reason (path length, name constraints, EKU, ...).
    InvalidChain,
    /// A valid SVID whose ID is not one of those allowed/expected.
    UnexpectedIdentity,
    /// The peer sent no certificate where one is required (rustls refuses this itself; the
    /// transport counts it through [`refusal_reason`]).
    NoCertificate,
}

impl Reason {
    /// Every reason, in label order of the metric.
    pub const ALL: [Reason; 18] = [
        Reason::Malformed,
        Reason::UntrustedRoot,
        Reason::WrongTrustDomain,
        Reason::NoUriSan,
        Reason::MultipleUriSans,
        Reason::NotSpiffe,
        Reason::BadSpiffeId,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::CaAsLeaf,
        Reason::NoDigitalSignature,
        Reason::LeafCanSign,
        Reason::WeakKey,
        Reason::WeakSignature,
        Reason::BadSignature,
        Reason::InvalidChain,
        Reason::UnexpectedIdentity,
        Reason::NoCertificate,
    ];

    /// The stable label: metrics and logs use it, dashboards depend on it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UntrustedRoot => "untrusted_root",
            Reason::WrongTrustDomain => "wrong_trust_domain",
            Reason::NoUriSan => "no_uri_san",
            Reason::MultipleUriSans => "multiple_uri_sans",
            Reason::NotSpiffe => "not_spiffe",
            Reason::BadSpiffeId => "bad_spiffe_id",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::CaAsLeaf => "ca_as_leaf",
            Reason::NoDigitalSignature => "no_digital_signature",
            Reason::LeafCanSign => "leaf_can_sign",
            Reason::WeakKey => "weak_key",
            Reason::WeakSignature => "weak_signature",
            Reason::BadSignature => "bad_signature",
            Reason::InvalidChain => "invalid_chain",
            Reason::UnexpectedIdentity => "unexpected_identity",
            Reason::NoCertificate => "no_certificate",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused peer certificate: the reason and a detail for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct SvidError {
    /// Why, as counted.
    pub reason: Reason,
    /// What exactly (the ID, the trust domain, the webpki error).
    pub detail: String,
}

impl SvidError {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// The rustls error a verifier returns for this refusal.
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The reason of a handshake error: the verifiers' [`SvidError`], or rustls's own refusal of a
/// missing client certificate. `None` for every other error (protocol, I/O).
pub fn refusal_reason(error: &rustls::Error) -> Option<Reason> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<SvidError>().map(|e| e.reason)
        }
        rustls::Error::NoCertificatesPresented => Some(Reason::NoCertificate),
        _ => None,
    }
}

/// Signature algorithms of rustls's ring provider: ECDSA P-256/P-384 with SHA-256/384, Ed25519,
/// RSA PKCS#1 and PSS with 2048–8192-bit keys and SHA-256/384/512. No SHA-1, no RSA-1024.
fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
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

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A; ring's verifier minimum too).
const MIN_RSA_BITS: usize = 2048;

/// The one URI SAN of `cert`: `Err` with [`Reason::NoUriSan`], [`Reason::MultipleUriSans`] or
/// [`Reason::Malformed`] otherwise.
pub(crate) fn single_uri_san<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::new(Reason::Malformed, format!("subjectAltName: {e}")))?
        .ok_or_else(|| SvidError::new(Reason::NoUriSan, "no subjectAltName"))?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (None, _) => Err(SvidError::new(Reason::NoUriSan, "no URI SAN")),
        (Some(uri), None) => Ok(uri),
        (Some(a), Some(b)) => Err(SvidError::new(
            Reason::MultipleUriSans,
            format!("URI SANs {a:?}, {b:?}, ..."),
        )),
    }
}

/// The leaf SPIFFE ID of `uri` (rule 2 of the module docs).
fn leaf_id(uri: &str) -> Result<SpiffeId, SvidError> {
    match SpiffeId::parse(uri) {
        Ok(id) if id.path().is_empty() => Err(SvidError::new(
            Reason::BadSpiffeId,
            format!("{uri:?}: a leaf SVID's ID needs a path"),
        )),
        Ok(id) => Ok(id),
        Err(SpiffeIdError::WrongScheme)
            if !uri
                .get(..7)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:")) =>
        {
            Err(SvidError::new(
                Reason::NotSpiffe,
                format!("URI SAN {uri:?} is not spiffe:"),
            ))
        }
        Err(e) => Err(SvidError::new(Reason::BadSpiffeId, format!("{uri:?}: {e}"))),
    }
}

/// The SPIFFE ID of a peer's certificate chain that a verifier of this module has accepted: the
/// transport calls it after the handshake (`conn.peer_certificates()`) to fill the connection's
/// peer principal. `None` when there is no certificate or its leaf has no single valid SPIFFE ID
/// (which a handshake verified here cannot have).
pub fn peer_spiffe_id(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let uri = single_uri_san(&cert).ok()?;
    leaf_id(uri).ok()
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
    if let Ok(PublicKey::RSA(rsa)) = leaf.public_key().parsed()
        && rsa.key_size() < MIN_RSA_BITS
    {
        return Err(with_id(SvidError::new(
            Reason::WeakKey,
            format!("RSA key of {} bits", rsa.key_size()),
        )));
    }
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
fn refuse(metrics: &IdentityMetrics, side: &'static str, error: SvidError) -> rustls::Error {
    metrics.handshake_failed(error.reason);
    warn!(side, reason = error.reason.as_str(), detail = %error.detail, "peer certificate refused");
    error.into_rustls()
}

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
        let bundles = self.trust.bundles();
        let id = verify_svid(
            &bundles,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        if !any_matches(&self.allowed, &id) {
            return Err(SvidError::new(
                Reason::UnexpectedIdentity,
                format!("{id} is not an allowed client identity"),
            ));
        }
        Ok(id)
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
            .map_err(|e| refuse(&self.metrics, "client certificate", e))
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
        let bundles = self.trust.bundles();
        let id = verify_svid(
            &bundles,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if !any_matches(&self.expected, &id) {
            return Err(SvidError::new(
                Reason::UnexpectedIdentity,
                format!("{id} is not an expected server identity"),
            ));
        }
        Ok(id)
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
