//! A test certificate authority: a CA (`ca.pem`) in a temporary directory and the leaf
//! certificates it signs (`NAME.crt`, `NAME.key`), each with DNS names and, for a workload, a
//! SPIFFE ID as its URI SAN. Every key is generated when the test runs.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A CA and the files of the certificates it signed.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Pki {
    /// A new CA named `name` (its common name), written to `ca.pem`.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ringmesh-pki-")
            .tempdir()
            .expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("self-sign the CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Self { dir, ca }
    }

    /// Signs `NAME.crt` (with `NAME.key`) for `dns` names and, when given, the SPIFFE ID
    /// `spiffe_id`; usable by servers and clients alike.
    pub fn leaf(&self, name: &str, dns: &[&str], spiffe_id: Option<&str>) -> &Self {
        let mut params =
            CertificateParams::new(dns.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        if let Some(id) = spiffe_id {
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().expect("a URI")));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name}-leaf"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign the leaf");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
        self
    }

    /// The path of `file` in the PKI's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// [`Pki::path`] as a string, for configs and command lines.
    pub fn p(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}
