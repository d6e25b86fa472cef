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

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::svid::{CertInfo, weak_key};

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
    /// certificate, or with one that is not a certificate webpki can take as an anchor or has an
    /// RSA key under 2048 bits (nothing it signs would verify), is an error.
    pub fn from_pem(source: &str, pem: &[u8]) -> Result<Self, String> {
        let mut anchors = Vec::new();
        let mut cas = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| format!("certificate {i}: {e}"))?;
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| format!("certificate {i} is not a usable CA: {e}"))?
                .to_owned();
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|e| format!("certificate {i}: {e}"))?;
            weak_key(&parsed, &format!("certificate {i}")).map_err(|e| e.detail)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_needs_a_certificate() {
        assert!(DomainBundle::from_pem("x", b"").is_err());
        assert!(DomainBundle::from_pem("x", b"not pem at all").is_err());
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(DomainBundle::from_pem("x", garbage).is_err());
    }
}
