//! What makes a certificate an X.509-SVID, read without trusting it: its single URI SAN and
//! the leaf SPIFFE ID in it (X.509-SVID specification *2. SPIFFE ID*, *3.1 Leaf Certificates*),
//! the [`Reason`]s a peer certificate is refused for, and what `/certs` shows of a certificate
//! ([`CertInfo`]). Everything here takes arbitrary DER: x509-parser returns errors on bad input,
//! it does not panic.

use std::sync::Arc;

use rustls::{CertificateError, OtherError};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;

use super::spiffe::{SpiffeId, SpiffeIdError};

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
    /// A refusal for `reason`, `detail` saying what exactly.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
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

/// The one URI SAN of `cert`: `Err` with [`Reason::NoUriSan`], [`Reason::MultipleUriSans`] or
/// [`Reason::Malformed`] otherwise.
pub fn single_uri_san<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, SvidError> {
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

/// The leaf SPIFFE ID in URI SAN `uri`: a SPIFFE ID with a non-root path ([`Reason::NotSpiffe`]
/// for another scheme, [`Reason::BadSpiffeId`] otherwise).
pub fn leaf_id(uri: &str) -> Result<SpiffeId, SvidError> {
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

/// What `/certs` and `ringmesh_cert_expiry_seconds` show of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex with `:` between bytes (as Envoy and openssl print it).
    pub serial: String,
    /// Subject distinguished name (RFC 4514 form); empty for SVIDs that have none.
    pub subject: String,
    /// Its single SPIFFE URI SAN, when it has one.
    pub spiffe_id: Option<String>,
    /// Not valid before, seconds since the Unix epoch.
    pub not_before: i64,
    /// Not valid after, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Reads what is shown of `cert`; an error when it does not parse.
    pub fn parse(cert: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let spiffe_id = single_uri_san(&parsed)
            .ok()
            .and_then(|uri| SpiffeId::parse(uri).ok())
            .map(|id| id.as_str().to_owned());
        Ok(Self {
            serial: parsed.raw_serial_as_string(),
            subject: parsed.subject().to_string(),
            spiffe_id,
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
        })
    }

    /// Seconds from `now` (Unix seconds) to expiry; negative once expired.
    pub fn seconds_to_expiry(&self, now: i64) -> i64 {
        self.not_after.saturating_sub(now)
    }
}

/// `seconds` since the Unix epoch as RFC 3339 UTC (`2026-12-03T16:02:46Z`), for `/certs`.
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A; ring's verifier minimum too).
pub const MIN_RSA_BITS: usize = 2048;

/// [`Reason::WeakKey`] for an RSA key under [`MIN_RSA_BITS`]. (Also used on the CA certificates
/// of a bundle: a weak root would sign nothing that verifies, so it is refused where it is read.)
pub fn weak_key(cert: &X509Certificate<'_>, at: &str) -> Result<(), SvidError> {
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => Err(SvidError::new(
            Reason::WeakKey,
            format!("{at} has an RSA key of {} bits", rsa.key_size()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_civil_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_313_766), "2026-12-03T16:02:46Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: std::collections::BTreeSet<_> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(
                *reason as usize, i,
                "ALL is in declaration order (the metrics index by it)"
            );
        }
    }
}
