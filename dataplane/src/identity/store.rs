//! The node's identity material — its SVID chain and key, and the trust bundles — held behind one
//! atomic pointer and reread when the files change.
//!
//! A [`Store`] is what the TLS configs point at: it is the rustls certificate resolver for
//! both sides (`ResolvesServerCert`, `ResolvesClientCert`) and the [`TrustSource`] of the
//! verifiers, so a handshake reads the material in force with one `ArcSwap` load, and a rotation
//! is one pointer store: new handshakes use the new material, connections already up keep theirs,
//! and no config is rebuilt. Only handshakes read it, never the per-request path.
//!
//! **Rotation.** [`Store::watch`] polls the files from a thread of its own (every 500 ms by
//! default): when their content hash changes, the new material is loaded and swapped in, so new
//! handshakes use it within a second. [`Store::reload`] does the same on demand (SIGHUP, admin
//! reload). Material is checked before it is swapped in, and kept out when:
//! a file cannot be read or does not parse; the key does not match the leaf; the leaf is expired
//! or not yet valid; the leaf's SPIFFE ID (exactly one URI SAN, X.509-SVID section 2) is not in
//! the configured trust domain; a bundle holds no usable CA certificate; the chain is not a valid
//! SVID of its own domain's bundle by the checks its peers make (`verify`) — so a leaf from a new
//! root that the bundle does not list yet is held back until the bundle has the root. Then the old material
//! keeps serving, `ringmesh_cert_reload_errors_total` goes up, and an error line names the file
//! and the reason. Because the certificate and key are separate files written one after the
//! other, the watcher reports a refused content only once it has stayed the same for two polls
//! (a rotation caught half-written loads at the next poll instead of being counted as an error);
//! [`Store::reload`] reports at once.
//!
//! **Root rotation.** A bundle file may hold the old and new roots together; SVIDs chaining to
//! either verify (see [`super::bundle`]), which is how a root is rotated without an outage.
//!
//! **Visibility.** [`Store::certs_json`] is the admin API's `/certs` (as Envoy's: per identity
//! its serial, SPIFFE ID, validity and seconds to expiry; per CA of each bundle its subject,
//! serial and expiry), and [`Store::render_prometheus`] writes
//! `ringmesh_cert_expiry_seconds` with the label sets
//! `{cert="identity",trust_domain,spiffe_id,serial}` and `{cert="ca",trust_domain,subject,serial}`
//! (seconds from the scrape to notAfter, negative once expired), plus the counters of
//! [`IdentityMetrics`].
//!
//! **Service accounts** (node mode, `[[identity.service_accounts]]`). The node also holds one
//! SVID per local service account, as ztunnel does: HBONE tunnels present the source
//! workload's, and a local destination workload's. Each is part of the same [`Material`]: read
//! with the other files, checked like the node's SVID (key, validity, a valid SVID of its own
//! domain's bundle as both client and server) and, in addition, its one URI SAN must be exactly
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` of its entry — a certificate for
//! another identity is a load error naming the file. A bad file refuses the whole new material,
//! so the old keeps serving, as for the node's files. [`Material::service_account`] finds one by
//! SPIFFE ID with a binary search (per handshake, never per request). `/certs` lists them under
//! `identities` with `"kind": "service_account"`, and `ringmesh_cert_expiry_seconds` with
//! `{cert="service_account",trust_domain,spiffe_id,serial}`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use config_schema::IdentitySpec;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde_json::{Value, json};
use tracing::{error, info};

use super::bundle::{DomainBundle, TrustBundles, TrustSource};
use super::metrics::IdentityMetrics;
use super::spiffe::SpiffeId;
use super::svid::{CertInfo, rfc3339, single_uri_san};
use super::verify::verify_svid;

/// How often [`Store::watch`] looks at the files by default.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The files of the node's identity (`[identity]` of the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The trust domain the node's SVID must belong to; `ca_bundle` is its bundle.
    pub trust_domain: String,
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM bundle of `trust_domain`.
    pub ca_bundle: PathBuf,
    /// Federated trust domains and their PEM bundles.
    pub trust_bundles: Vec<(String, PathBuf)>,
    /// Node mode: the SVIDs of local service accounts.
    pub service_accounts: Vec<ServiceAccountFiles>,
}

/// The files of one service account's SVID (`[[identity.service_accounts]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountFiles {
    /// Its namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// PEM chain, leaf first; the leaf's URI SAN must be the account's SPIFFE ID.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

impl IdentityFiles {
    /// The files named by `[identity]`.
    pub fn from_spec(spec: &IdentitySpec) -> Self {
        Self {
            trust_domain: spec.trust_domain.clone(),
            cert: spec.cert.clone().into(),
            key: spec.key.clone().into(),
            ca_bundle: spec.ca_bundle.clone().into(),
            trust_bundles: spec
                .trust_bundles
                .iter()
                .map(|b| (b.trust_domain.clone(), b.ca.clone().into()))
                .collect(),
            service_accounts: spec
                .service_accounts
                .iter()
                .map(|a| ServiceAccountFiles {
                    namespace: a.namespace.clone(),
                    service_account: a.service_account.clone(),
                    cert: a.cert.clone().into(),
                    key: a.key.clone().into(),
                })
                .collect(),
        }
    }

    /// Every file, each with what it is.
    fn all(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.ca_bundle]
            .into_iter()
            .chain(self.trust_bundles.iter().map(|(_, f)| f))
            .chain(self.service_accounts.iter().flat_map(|a| [&a.cert, &a.key]))
            .map(PathBuf::as_path)
    }
}

/// Why new identity material was not taken: the file and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LoadError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl LoadError {
    fn new(file: &Path, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The identity material in force: one consistent set, swapped as a whole.
#[derive(Debug)]
pub struct Material {
    /// The node's SPIFFE ID (the leaf's URI SAN).
    pub id: SpiffeId,
    /// Chain and signing key, as rustls presents them.
    pub certified: Arc<CertifiedKey>,
    /// What `/certs` shows of the leaf.
    pub leaf: CertInfo,
    /// The trust bundles, the node's own domain included.
    pub bundles: Arc<TrustBundles>,
    /// Node mode: the local service accounts' SVIDs, sorted by SPIFFE ID.
    pub service_accounts: Box<[ServiceAccountSvid]>,
    /// Hash of the files' contents it was loaded from.
    fingerprint: u64,
}

/// One service account's SVID.
#[derive(Debug)]
pub struct ServiceAccountSvid {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub id: Arc<SpiffeId>,
    /// Chain and signing key, as rustls presents them.
    pub certified: Arc<CertifiedKey>,
    /// What `/certs` shows of the leaf.
    pub leaf: CertInfo,
    /// The certificate file.
    pub cert_file: PathBuf,
}

impl Material {
    /// The SVID of the local service account `id`, if the node holds one: a binary search, for
    /// a handshake (never per request).
    pub fn service_account(&self, id: &SpiffeId) -> Option<&ServiceAccountSvid> {
        self.service_accounts
            .binary_search_by(|svid| svid.id.as_str().cmp(id.as_str()))
            .ok()
            .map(|i| &self.service_accounts[i])
    }
}

/// The files' contents, read together.
struct Contents {
    texts: Vec<Result<Vec<u8>, LoadError>>,
    fingerprint: u64,
}

impl Contents {
    fn read(files: &IdentityFiles) -> Self {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let texts: Vec<_> = files
            .all()
            .map(|file| {
                let text = std::fs::read(file)
                    .map_err(|e| LoadError::new(file, format!("cannot be read: {e}")));
                match &text {
                    Ok(bytes) => {
                        hasher.update(&(bytes.len() as u64).to_le_bytes());
                        hasher.update(bytes);
                    }
                    Err(e) => {
                        hasher.update(b"\xffunreadable");
                        hasher.update(e.reason.as_bytes());
                    }
                }
                text
            })
            .collect();
        Self {
            texts,
            fingerprint: hasher.digest(),
        }
    }
}

/// Builds and checks material from `contents` of `files` at `now` (Unix seconds).
fn build(files: &IdentityFiles, contents: Contents, now: i64) -> Result<Material, LoadError> {
    let mut texts = contents.texts.into_iter();
    let mut next = || {
        texts
            .next()
            .unwrap_or_else(|| Err(LoadError::new(Path::new("?"), "missing file")))
    };
    let (cert_text, key_text, bundle_text) = (next()?, next()?, next()?);

    let (id, certified, leaf) =
        load_svid(&files.cert, &files.key, &cert_text, &key_text, now, |id| {
            if id.trust_domain() == files.trust_domain {
                Ok(())
            } else {
                Err(format!(
                    "{id} is not in trust domain {:?}",
                    files.trust_domain
                ))
            }
        })?;

    let mut bundles = TrustBundles::new();
    let own = DomainBundle::from_pem(&files.ca_bundle.display().to_string(), &bundle_text)
        .map_err(|e| LoadError::new(&files.ca_bundle, e))?;
    bundles.insert(&files.trust_domain, own);
    for (domain, file) in &files.trust_bundles {
        let text = next()?;
        let bundle = DomainBundle::from_pem(&file.display().to_string(), &text)
            .map_err(|e| LoadError::new(file, e))?;
        bundles.insert(domain, bundle);
    }
    // The node's own SVID must pass what its peers will check, against its own domain's bundle
    // (as either side: it serves and it connects). A leaf from a new root that the bundle does
    // not hold yet would fail every handshake; the old material keeps serving instead.
    valid_for_peers(&bundles, &certified, &files.cert, now)?;

    // The service accounts' SVIDs: each must be exactly its entry's identity, and pass the
    // same checks as the node's.
    let mut service_accounts = Vec::with_capacity(files.service_accounts.len());
    for account in &files.service_accounts {
        let (cert_text, key_text) = (next()?, next()?);
        let path = format!("/ns/{}/sa/{}", account.namespace, account.service_account);
        let expected = SpiffeId::new(&files.trust_domain, &path).map_err(|e| {
            LoadError::new(
                &account.cert,
                format!(
                    "no SPIFFE ID for namespace {:?}, service account {:?}: {e}",
                    account.namespace, account.service_account
                ),
            )
        })?;
        let (id, certified, leaf) = load_svid(
            &account.cert,
            &account.key,
            &cert_text,
            &key_text,
            now,
            |id| {
                if *id == expected {
                    Ok(())
                } else {
                    Err(format!("is the certificate of {id}, not of {expected}"))
                }
            },
        )?;
        valid_for_peers(&bundles, &certified, &account.cert, now)?;
        service_accounts.push(ServiceAccountSvid {
            id: Arc::new(id),
            certified: Arc::new(certified),
            leaf,
            cert_file: account.cert.clone(),
        });
    }
    service_accounts.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    Ok(Material {
        id,
        certified: Arc::new(certified),
        leaf,
        bundles: Arc::new(bundles),
        service_accounts: service_accounts.into(),
        fingerprint: contents.fingerprint,
    })
}

/// Parses an SVID (`cert_text` of `cert`, `key_text` of `key`) at `now`: its one URI SAN as a
/// SPIFFE ID, which `expect` must accept (the message goes into the error, naming `cert`), its
/// validity and the key matching the leaf.
fn load_svid(
    cert: &Path,
    key: &Path,
    cert_text: &[u8],
    key_text: &[u8],
    now: i64,
    expect: impl FnOnce(&SpiffeId) -> Result<(), String>,
) -> Result<(SpiffeId, CertifiedKey, CertInfo), LoadError> {
    let chain = CertificateDer::pem_slice_iter(cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::new(cert, format!("not a PEM certificate chain: {e}")))?;
    let leaf_der = chain
        .first()
        .ok_or_else(|| LoadError::new(cert, "no PEM certificate in the file"))?;
    let leaf = CertInfo::parse(leaf_der).map_err(|e| LoadError::new(cert, e))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
        .map_err(|e| LoadError::new(cert, format!("leaf: {e}")))?;
    let uri = single_uri_san(&parsed).map_err(|e| LoadError::new(cert, e.to_string()))?;
    let id =
        SpiffeId::parse(uri).map_err(|e| LoadError::new(cert, format!("URI SAN {uri:?}: {e}")))?;
    expect(&id).map_err(|reason| LoadError::new(cert, reason))?;
    if now > leaf.not_after {
        return Err(LoadError::new(
            cert,
            format!("{id} expired at {}", rfc3339(leaf.not_after)),
        ));
    }
    if now < leaf.not_before {
        return Err(LoadError::new(
            cert,
            format!("{id} is not valid before {}", rfc3339(leaf.not_before)),
        ));
    }

    let private = PrivateKeyDer::from_pem_slice(key_text)
        .map_err(|e| LoadError::new(key, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| LoadError::new(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(LoadError::new(
                key,
                format!("does not match the certificate {}: {e}", cert.display()),
            ));
        }
    }
    Ok((id, certified, leaf))
}

/// Whether `certified` (from `file`) is a valid SVID of its own domain's bundle in `bundles` at
/// `now`, as a server and as a client: what its peers will check.
fn valid_for_peers(
    bundles: &TrustBundles,
    certified: &CertifiedKey,
    file: &Path,
    now: i64,
) -> Result<(), LoadError> {
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    let (leaf_der, intermediates) = certified
        .cert
        .split_first()
        .ok_or_else(|| LoadError::new(file, "no PEM certificate in the file"))?;
    verify_svid(
        bundles,
        leaf_der,
        intermediates,
        at,
        webpki::KeyUsage::server_auth(),
    )
    .and_then(|_| {
        verify_svid(
            bundles,
            leaf_der,
            intermediates,
            at,
            webpki::KeyUsage::client_auth(),
        )
    })
    .map(|_| ())
    .map_err(|e| {
        LoadError::new(
            file,
            format!("is not a valid SVID of its own trust domain: {e}"),
        )
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a reread did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were loaded: nothing to do.
    Unchanged,
    /// New material is in force.
    Swapped,
}

/// The node's identity material, rotated in place.
#[derive(Debug)]
pub struct Store {
    files: IdentityFiles,
    current: ArcSwap<Material>,
    metrics: Arc<IdentityMetrics>,
    /// The last refusal, for `/certs`; cleared when new material is taken.
    last_error: ArcSwapOption<LoadError>,
    /// One reread at a time (the watcher and a SIGHUP may race); never taken by a handshake.
    reloading: Mutex<()>,
}

impl Store {
    /// Loads the material of `files`; an error (naming the file) if it is not usable, since a
    /// node must not start without its identity.
    pub fn open(
        files: IdentityFiles,
        metrics: Arc<IdentityMetrics>,
    ) -> Result<Arc<Self>, LoadError> {
        let material = build(&files, Contents::read(&files), unix_now())?;
        metrics.reloaded();
        info!(id = %material.id, serial = %material.leaf.serial, "identity loaded");
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(material),
            metrics,
            last_error: ArcSwapOption::empty(),
            reloading: Mutex::new(()),
        }))
    }

    /// The material in force.
    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// The current certificate of local service account `id` (node mode), if the node holds
    /// one: one `ArcSwap` load and a binary search, for a handshake.
    pub fn service_account(&self, id: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .service_account(id)
            .map(|svid| Arc::clone(&svid.certified))
    }

    /// The counters this store (and the verifiers built on it) write.
    pub fn metrics(&self) -> &Arc<IdentityMetrics> {
        &self.metrics
    }

    /// The files it reads.
    pub fn files(&self) -> &IdentityFiles {
        &self.files
    }

    /// The last refused reread, if any since the last successful one.
    pub fn last_error(&self) -> Option<Arc<LoadError>> {
        self.last_error.load_full()
    }

    /// Rereads the files now (SIGHUP, admin reload): swaps in new material if they changed and
    /// it passes the checks; otherwise keeps the old, counts and logs the error, and returns it.
    pub fn reload(&self) -> Result<Reloaded, LoadError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let contents = Contents::read(&self.files);
        if contents.fingerprint == self.current.load().fingerprint {
            return Ok(Reloaded::Unchanged);
        }
        self.take(contents)
            .map(|()| Reloaded::Swapped)
            .inspect_err(|e| self.refused(e))
    }

    /// Builds from `contents` and swaps it in, or says why not (without counting).
    fn take(&self, contents: Contents) -> Result<(), LoadError> {
        let material = build(&self.files, contents, unix_now())?;
        info!(id = %material.id, serial = %material.leaf.serial, not_after = %rfc3339(material.leaf.not_after), "identity rotated: new handshakes use the new material");
        self.current.store(Arc::new(material));
        self.last_error.store(None);
        self.metrics.reloaded();
        Ok(())
    }

    fn refused(&self, e: &LoadError) {
        self.metrics.reload_failed();
        error!(file = %e.file.display(), reason = %e.reason, "identity files refused; the old certificate, key and bundles keep serving");
        self.last_error.store(Some(Arc::new(e.clone())));
    }

    /// Polls the files every `interval` from a thread of its own, rotating as [`Store::reload`]
    /// does, until the returned [`Watcher`] (or the store) is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<Watcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let store = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("ringmesh-identity".into())
            .spawn(move || watch_loop(&store, interval, &stopped))?;
        Ok(Watcher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// One poll of the watcher: `pending` is the content seen refused once (reported if it is
    /// still there at the next poll), `reported` the content already counted.
    fn poll(&self, pending: &mut Option<u64>, reported: &mut Option<u64>) {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let contents = Contents::read(&self.files);
        let fingerprint = contents.fingerprint;
        if fingerprint == self.current.load().fingerprint || *reported == Some(fingerprint) {
            *pending = None;
            return;
        }
        match self.take(contents) {
            Ok(()) => {
                *pending = None;
                *reported = None;
            }
            Err(e) if *pending == Some(fingerprint) => {
                self.refused(&e);
                *pending = None;
                *reported = Some(fingerprint);
            }
            Err(_) => *pending = Some(fingerprint),
        }
    }

    /// The admin API's `/certs` document at `now`.
    pub fn certs_json(&self, now: SystemTime) -> Value {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let material = self.current();
        let leaf = &material.leaf;
        let bundles: Vec<Value> = material
            .bundles
            .iter()
            .map(|(domain, bundle)| {
                json!({
                    "trust_domain": domain,
                    "path": bundle.source,
                    "ca_certs": bundle.cas.iter().map(|ca| json!({
                        "subject": ca.subject,
                        "serial_number": ca.serial,
                        "valid_from": rfc3339(ca.not_before),
                        "expiration_time": rfc3339(ca.not_after),
                        "seconds_until_expiration": ca.seconds_to_expiry(now),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut identities = vec![json!({
            "spiffe_id": material.id.as_str(),
            "trust_domain": material.id.trust_domain(),
            "path": self.files.cert.display().to_string(),
            "serial_number": leaf.serial,
            "valid_from": rfc3339(leaf.not_before),
            "expiration_time": rfc3339(leaf.not_after),
            "seconds_until_expiration": leaf.seconds_to_expiry(now),
            "chain_length": material.certified.cert.len(),
        })];
        identities.extend(material.service_accounts.iter().map(|svid| {
            json!({
                "kind": "service_account",
                "spiffe_id": svid.id.as_str(),
                "trust_domain": svid.id.trust_domain(),
                "path": svid.cert_file.display().to_string(),
                "serial_number": svid.leaf.serial,
                "valid_from": rfc3339(svid.leaf.not_before),
                "expiration_time": rfc3339(svid.leaf.not_after),
                "seconds_until_expiration": svid.leaf.seconds_to_expiry(now),
                "chain_length": svid.certified.cert.len(),
            })
        }));
        json!({
            "identities": identities,
            "trust_bundles": bundles,
            "reload_errors": self.metrics.reload_errors(),
            "last_reload_error": self.last_error().map(|e| e.to_string()),
        })
    }

    /// Appends `ringmesh_cert_expiry_seconds` at `now` and the identity counters in the
    /// Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String, now: SystemTime) {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let material = self.current();
        let _ = writeln!(
            out,
            "# HELP ringmesh_cert_expiry_seconds Seconds until the certificate's notAfter (negative once expired)."
        );
        let _ = writeln!(out, "# TYPE ringmesh_cert_expiry_seconds gauge");
        let _ = writeln!(
            out,
            "ringmesh_cert_expiry_seconds{{cert=\"identity\",trust_domain=\"{}\",spiffe_id=\"{}\",serial=\"{}\"}} {}",
            escape(material.id.trust_domain()),
            escape(material.id.as_str()),
            escape(&material.leaf.serial),
            material.leaf.seconds_to_expiry(now)
        );
        for svid in material.service_accounts.iter() {
            let _ = writeln!(
                out,
                "ringmesh_cert_expiry_seconds{{cert=\"service_account\",trust_domain=\"{}\",spiffe_id=\"{}\",serial=\"{}\"}} {}",
                escape(svid.id.trust_domain()),
                escape(svid.id.as_str()),
                escape(&svid.leaf.serial),
                svid.leaf.seconds_to_expiry(now)
            );
        }
        for (domain, bundle) in material.bundles.iter() {
            for ca in &bundle.cas {
                let _ = writeln!(
                    out,
                    "ringmesh_cert_expiry_seconds{{cert=\"ca\",trust_domain=\"{}\",subject=\"{}\",serial=\"{}\"}} {}",
                    escape(domain),
                    escape(&ca.subject),
                    escape(&ca.serial),
                    ca.seconds_to_expiry(now)
                );
            }
        }
        self.metrics.render_prometheus(out);
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn watch_loop(store: &Weak<Store>, interval: Duration, stopped: &mpsc::Receiver<()>) {
    let (mut pending, mut reported) = (None, None);
    // Ends when the Watcher is dropped (the channel disconnects) or the store is gone.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        let Some(store) = store.upgrade() else {
            return;
        };
        store.poll(&mut pending, &mut reported);
    }
}

/// The polling thread of [`Store::watch`]; dropping it stops the thread.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("identity watcher thread panicked");
        }
    }
}

impl TrustSource for Store {
    fn bundles(&self) -> Arc<TrustBundles> {
        Arc::clone(&self.current.load().bundles)
    }
}

impl ResolvesServerCert for Store {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().certified))
    }
}

impl ResolvesClientCert for Store {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
