//! Trust bundles: the CA certificates each trust domain's SVIDs must chain to.
//!
//! The X.509-SVID specification (section 5 *Validation*, 5.1 *Path Validation*) validates an SVID
//! against the bundle of *its own* trust domain, never a pool of every CA: with federation a
//! node trusts several domains, and a CA of `a.example` must not be able to mint identities in
//! `b.example`. So bundles are kept per trust domain ([`TrustBundles`]), each with the webpki trust
//! anchors made from its certificates and, for `/certs`, what those certificates are
//! ([`CertInfo`]). A bundle may hold several roots at once — the old and the new one during a
//! root rotation — and an SVID that chains to any of them is valid.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;
use rustls_pki_types::pem::PemObject;

/// Which CA certificates each trust domain trusts.
#[derive(Debug, Default)]
pub struct TrustBundles {
    domains: BTreeMap<String, DomainBundle>,
}

/// One trust domain's bundle.
#[derive(Debug)]
pub struct DomainBundle {
    /// The file it was read from (for `/certs` and messages).
    pub source: String,
    /// What `/certs` shows of each CA certificate, in file order.
    pub cas: Vec<CertInfo>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl DomainBundle {
    /// Reads a PEM bundle: every `CERTIFICATE` block becomes a trust anchor. A bundle with no
    /// certificate, or one that is not a certificate webpki can take as an anchor, is an error.
    pub fn from_pem(source: &str, pem: &[u8]) -> Result<Self, String> {
        let mut anchors = Vec::new();
        let mut cas = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| format!("certificate {i}: {e}"))?;
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| format!("certificate {i} is not a usable CA: {e}"))?
                .to_owned();
            cas.push(CertInfo::parse(&cert).map_err(|e| format!("certificate {i}: {e}"))?);
            anchors.push(anchor);
        }
        if anchors.is_empty() {
            return Err("no PEM certificate in the bundle".into());
        }
        Ok(Self {
            source: source.to_owned(),
            cas,
            anchors,
        })
    }

    /// The trust anchors (webpki's form of the CA certificates).
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl TrustBundles {
    /// No trust domain at all: nothing verifies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the bundle of `trust_domain`.
    pub fn insert(&mut self, trust_domain: &str, bundle: DomainBundle) {
        self.domains.insert(trust_domain.to_owned(), bundle);
    }

    /// The bundle of `trust_domain`, if it is trusted.
    pub fn get(&self, trust_domain: &str) -> Option<&DomainBundle> {
        self.domains.get(trust_domain)
    }

    /// Every trusted domain and its bundle, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DomainBundle)> {
        self.domains.iter().map(|(name, b)| (name.as_str(), b))
    }
}

/// Where verifiers get the bundles in force: a fixed set, or the live [`super::Store`], read once
/// per handshake so a rotated bundle applies to the next handshake.
pub trait TrustSource: Send + Sync + std::fmt::Debug {
    /// The bundles in force now.
    fn bundles(&self) -> Arc<TrustBundles>;
}

/// Bundles that never change (tests, or a config without rotation).
#[derive(Debug, Clone)]
pub struct FixedTrust(pub Arc<TrustBundles>);

impl TrustSource for FixedTrust {
    fn bundles(&self) -> Arc<TrustBundles> {
        Arc::clone(&self.0)
    }
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
        let spiffe_id = super::verify::single_uri_san(&parsed)
            .ok()
            .and_then(|uri| super::SpiffeId::parse(uri).ok())
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
    fn a_bundle_needs_a_certificate() {
        assert!(DomainBundle::from_pem("x", b"").is_err());
        assert!(DomainBundle::from_pem("x", b"not pem at all").is_err());
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(DomainBundle::from_pem("x", garbage).is_err());
    }
}
