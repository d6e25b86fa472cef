//! rustls configs from the config file's TLS sections, and the builders underneath them that
//! take a certificate resolver or verifier from elsewhere.
//!
//! The builders are the seam for SPIFFE identities: [`server_config`] takes any
//! `ResolvesServerCert` (a rotating identity certificate) and an optional `ClientCertVerifier`;
//! [`client_config`] takes any `ServerCertVerifier` and an optional `ResolvesClientCert`.
//! [`ServerTls::build`] and [`ClientTls::build`] use them for a section and the node's identity
//! ([`Mesh`]: the `[identity]` store, which is the certificate of mesh listeners and clusters and
//! the trust of the SPIFFE verifiers); their docs say which verifier each combination of keys
//! gets. [`ServerTls::from_spec`] and [`ClientTls::from_spec`] are the same without an identity.
//!
//! Resumption: a listener issues stateless session tickets from one process-wide ticketer, so a
//! ticket from one worker resumes on another and across reloads (rustls's ticketer rotates its
//! key every 6 hours behind a lock taken per ticket, not per request). An upstream cluster keeps a
//! client session cache per worker (one `ClientConfig` per worker), so no cache is shared
//! between cores.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use config_schema::{
    ListenerProtocol, ListenerTlsSpec, TlsVersion, UpstreamProtocol, UpstreamTlsSpec,
};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::provider;
use crate::identity::{
    DomainBundle, FixedTrust, IdentityMetrics, SpiffeClientVerifier, SpiffeIdPattern,
    SpiffeServerVerifier, Store, TrustBundles, TrustSource,
};

/// A config fault found while loading TLS material: the TOML path below the section
/// (`cert`, `certificates[1].key`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError {
    /// Path relative to the TLS section.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl TlsConfigError {
    fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            message: message.into(),
        }
    }
}

/// What an upstream TLS connection carries, which decides the ALPN it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// HTTP/1.1 (pooled connections, health checks): ALPN `http/1.1`.
    Http1,
    /// HTTP/2: ALPN `h2`.
    Http2,
    /// A tcp listener's bytes: no ALPN.
    Opaque,
}

/// A listener's TLS termination.
#[derive(Debug)]
pub struct ServerTls {
    /// The rustls config every handshake on the listener uses.
    pub config: Arc<ServerConfig>,
    /// Where refused client certificates are counted, when the listener verifies clients; the
    /// transport counts what rustls refuses itself (no certificate) and what a plain `client_ca`
    /// verifier refuses here.
    pub client_auth: Option<ClientAuth>,
}

/// How a listener verifies client certificates.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The counters of `ringmesh_tls_handshake_failures_total`.
    pub metrics: Arc<IdentityMetrics>,
    /// Whether the SPIFFE verifier counts its own refusals (a plain `client_ca` verifier does
    /// not: the transport counts them).
    pub spiffe: bool,
}

/// The node's identity as the TLS sections see it: the store of `[identity]` (absent without
/// one) and the process's identity counters.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// The identity store: the certificate of mesh listeners and clusters, and the trust bundles
    /// that verify peers when no `client_ca` / `ca` is set.
    pub store: Option<Arc<Store>>,
    /// Where the SPIFFE verifiers count refusals.
    pub metrics: Arc<IdentityMetrics>,
}

/// Parses `allowed_spiffe_ids` / `expected_spiffe_ids`; the error names the element.
/// `"*"` (any identity) is the same as no pattern.
fn patterns(key: &str, texts: &[String]) -> Result<Vec<SpiffeIdPattern>, TlsConfigError> {
    if texts.iter().any(|text| text == "*") {
        return Ok(Vec::new());
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            SpiffeIdPattern::parse(text).map_err(|e| {
                TlsConfigError::new(
                    format!("{key}[{i}]"),
                    format!("invalid SPIFFE ID pattern {text:?}: {e}"),
                )
            })
        })
        .collect()
}

/// The trust domain a pattern is confined to.
fn pattern_domain(pattern: &SpiffeIdPattern) -> Option<&str> {
    match pattern {
        SpiffeIdPattern::Exact(id) => Some(id.trust_domain()),
        SpiffeIdPattern::Prefix(prefix) => prefix
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next()),
    }
}

/// A CA file as the bundle of every trust domain the patterns name (and the node's own, with an
/// identity): `client_ca` / `ca` together with SPIFFE ID patterns.
fn ca_as_bundles(
    key: &str,
    file: &str,
    patterns: &[SpiffeIdPattern],
    mesh: &Mesh,
) -> Result<Arc<dyn TrustSource>, TlsConfigError> {
    let text = std::fs::read(file)
        .map_err(|e| TlsConfigError::new(key, format!("cannot read {file:?}: {e}")))?;
    let mut domains: Vec<&str> = patterns.iter().filter_map(pattern_domain).collect();
    let own = mesh
        .store
        .as_ref()
        .map(|store| store.files().trust_domain.clone());
    domains.extend(own.as_deref());
    domains.sort_unstable();
    domains.dedup();
    if domains.is_empty() {
        return Err(TlsConfigError::new(
            key,
            "the SPIFFE ID patterns name no trust domain for this CA bundle",
        ));
    }
    let mut bundles = TrustBundles::new();
    for domain in domains {
        let bundle =
            DomainBundle::from_pem(file, &text).map_err(|e| TlsConfigError::new(key, e))?;
        bundles.insert(domain, bundle);
    }
    Ok(Arc::new(FixedTrust(Arc::new(bundles))))
}

/// A plain webpki root store from a CA file.
fn roots(key: &str, ca: &str) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca).map_err(|e| TlsConfigError::new(key, e))? {
        roots
            .add(cert)
            .map_err(|e| TlsConfigError::new(key, format!("bad CA certificate in {ca:?}: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A client certificate verifier and how its refusals are counted.
type ClientVerifier = (Arc<dyn ClientCertVerifier>, ClientAuth);

/// A listener's client certificate verifier (see [`ServerTls::build`] for the rules).
fn client_verifier(
    spec: &ListenerTlsSpec,
    mesh: &Mesh,
) -> Result<Option<ClientVerifier>, TlsConfigError> {
    let allowed = patterns("allowed_spiffe_ids", &spec.allowed_spiffe_ids)?;
    let mesh_listener = spec.cert.is_none() && mesh.store.is_some();
    let wants_client_auth = mesh_listener
        || spec.require_client_cert
        || !allowed.is_empty()
        || spec.client_ca.is_some();
    if !wants_client_auth {
        return Ok(None);
    }
    let trust: Arc<dyn TrustSource> = match (&spec.client_ca, &mesh.store) {
        (Some(ca), _) if allowed.is_empty() => {
            // Non-mesh clients: plain chain verification to `client_ca`, as Envoy's
            // `trusted_ca` and an Istio Gateway's `MUTUAL` mode.
            let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots("client_ca", ca)?,
                provider(),
            );
            let builder = if spec.require_client_cert {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            let verifier = builder
                .build()
                .map_err(|e| TlsConfigError::new("client_ca", e.to_string()))?;
            let auth = ClientAuth {
                metrics: Arc::clone(&mesh.metrics),
                spiffe: false,
            };
            return Ok(Some((verifier, auth)));
        }
        (Some(ca), _) => ca_as_bundles("client_ca", ca, &allowed, mesh)?,
        (None, Some(store)) => Arc::clone(store) as Arc<dyn TrustSource>,
        (None, None) => {
            return Err(TlsConfigError::new(
                "client_ca",
                "verifying client certificates needs `client_ca` or an [identity] trust bundle",
            ));
        }
    };
    let verifier = SpiffeClientVerifier::new(
        trust,
        spec.require_client_cert,
        allowed,
        Arc::clone(&mesh.metrics),
    );
    let auth = ClientAuth {
        metrics: Arc::clone(&mesh.metrics),
        spiffe: true,
    };
    Ok(Some((Arc::new(verifier), auth)))
}

/// TLS to one cluster's endpoints.
#[derive(Debug)]
pub struct ClientTls {
    /// One config per worker for HTTP/1.1 and L4 connections: each holds its own session cache.
    h1: Box<[Arc<ClientConfig>]>,
    /// The same for HTTP/2 connections (ALPN `h2`).
    h2: Box<[Arc<ClientConfig>]>,
    /// The same for opaque (L4) connections (no ALPN unless configured).
    opaque: Box<[Arc<ClientConfig>]>,
    /// The configured SNI; without it, the endpoint's IP address is verified and no SNI is sent.
    sni: Option<ServerName<'static>>,
}

/// Loads a PEM certificate chain, leaf first.
pub fn load_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read certificates from {file:?}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse certificates in {file:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {file:?}"));
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, checking that the key belongs to the leaf.
pub fn load_certified_key(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let chain = load_certs(cert).map_err(|e| TlsConfigError::new("cert", e))?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsConfigError::new(
            "key",
            format!("cannot load a private key from {key:?}: {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, der, &provider())
        .map(Arc::new)
        .map_err(|e| {
            TlsConfigError::new(
                "key",
                format!("private key {key:?} does not fit certificate {cert:?}: {e}"),
            )
        })
}

/// The process-wide session ticketer: tickets resume on any worker and across reloads.
fn ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(ticketer) = TICKETER.get() {
        return Ok(Arc::clone(ticketer));
    }
    let made = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::clone(TICKETER.get_or_init(|| made)))
}

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &BOTH,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// A server config with certificates from `resolver`, clients verified by `client_verifier`
/// (none: no client certificate is asked for), the versions from `min_version` up, and `alpn`
/// offered in order. Session tickets are on.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    min_version: TlsVersion,
    alpn: &[String],
) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min_version))?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.ticketer = ticketer()?;
    Ok(config)
}

/// A client config verifying servers with `verifier`, presenting `client_cert` when the server
/// asks, and offering `alpn`. Sessions are cached (in memory, per config) for resumption.
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[Vec<u8>],
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

impl ServerTls {
    /// Loads a listener's `[listeners.tls]` (mode `terminate`): the default certificate and the
    /// per-SNI ones. ALPN: as configured, else `h2` and `http/1.1` on HTTP listeners and none on
    /// tcp listeners.
    pub fn from_spec(
        spec: &ListenerTlsSpec,
        protocol: ListenerProtocol,
    ) -> Result<Self, TlsConfigError> {
        Self::build(spec, protocol, &Mesh::default())
    }

    /// Loads a listener's `[listeners.tls]` with the node's identity in `mesh`:
    ///
    /// - Certificate: `cert`/`key` and `certificates` as in [`ServerTls::from_spec`]; without
    ///   `cert`, the node's SVID from the identity store (a *mesh listener*), rotated in place.
    /// - Client certificates: a mesh listener always asks for one and verifies it as an
    ///   X.509-SVID against the identity's trust bundles (federation included);
    ///   `require_client_cert` decides whether a client without one is refused (Istio's STRICT)
    ///   or served without a peer identity (PERMISSIVE). A listener with its own `cert` asks only
    ///   when `client_ca`, `require_client_cert` or `allowed_spiffe_ids` is set.
    /// - `client_ca` alone is plain X.509 chain verification to that bundle (Envoy's
    ///   `trusted_ca`, an Istio Gateway's `MUTUAL` mode), for clients outside the mesh.
    ///   `client_ca` with `allowed_spiffe_ids` verifies SPIFFE rules with the file as the bundle
    ///   of every trust domain the patterns name (and the node's own).
    /// - `allowed_spiffe_ids` is checked against the client's one URI SAN, never a DNS name.
    pub fn build(
        spec: &ListenerTlsSpec,
        protocol: ListenerProtocol,
        mesh: &Mesh,
    ) -> Result<Self, TlsConfigError> {
        let default = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => Some(load_certified_key(cert, key)?),
            _ => None,
        };
        let mut resolver = SniResolver {
            exact: Vec::new(),
            wildcard: Vec::new(),
            default,
            fallback: None,
        };
        for (i, entry) in spec.certificates.iter().enumerate() {
            let key = load_certified_key(&entry.cert, &entry.key).map_err(|e| {
                TlsConfigError::new(format!("certificates[{i}].{}", e.at), e.message)
            })?;
            for name in &entry.server_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) => resolver.wildcard.push((suffix.into(), Arc::clone(&key))),
                    None => resolver.exact.push((name.into(), Arc::clone(&key))),
                }
            }
        }
        let default_alpn = [String::from("h2"), String::from("http/1.1")];
        let alpn: &[String] = match (spec.alpn.is_empty(), protocol) {
            (false, _) => &spec.alpn,
            (true, ListenerProtocol::Tcp) => &[],
            (true, ListenerProtocol::Http | ListenerProtocol::Auto) => &default_alpn,
        };
        if resolver.default.is_none() && spec.cert.is_none() {
            resolver.fallback = mesh
                .store
                .as_ref()
                .map(|store| Arc::clone(store) as Arc<dyn ResolvesServerCert>);
        }
        let (verifier, client_auth) = match client_verifier(spec, mesh)? {
            Some((verifier, auth)) => (Some(verifier), Some(auth)),
            None => (None, None),
        };
        let config = server_config(Arc::new(resolver), verifier, spec.min_version, alpn)
            .map_err(|e| TlsConfigError::new("", e.to_string()))?;
        Ok(Self {
            config: Arc::new(config),
            client_auth,
        })
    }
}

impl ClientTls {
    /// Loads a cluster's `[clusters.tls]`: the CA bundle, the client certificate, the SNI and
    /// ALPN (default: the cluster's protocol), with one session cache per worker.
    pub fn from_spec(
        spec: &UpstreamTlsSpec,
        protocol: UpstreamProtocol,
        workers: usize,
    ) -> Result<Self, TlsConfigError> {
        Self::build(spec, protocol, workers, &Mesh::default())
    }

    /// Loads a cluster's `[clusters.tls]` with the node's identity in `mesh`:
    ///
    /// - Server verification: `ca` alone is plain webpki verification of the SNI (or IP
    ///   address). `expected_spiffe_ids`, or no `ca` with an [identity], is X.509-SVID
    ///   verification: the upstream's one URI SAN (never a DNS name) must be a SPIFFE ID matching
    ///   the patterns (empty: any ID of a trusted domain), chaining to the identity's bundle of
    ///   its trust domain, or to `ca` as the bundle of the domains the patterns name.
    /// - Client certificate: `cert`/`key`, else the node's SVID from the identity store.
    pub fn build(
        spec: &UpstreamTlsSpec,
        protocol: UpstreamProtocol,
        workers: usize,
        mesh: &Mesh,
    ) -> Result<Self, TlsConfigError> {
        let expected = patterns("expected_spiffe_ids", &spec.expected_spiffe_ids)?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&spec.ca, &mesh.store) {
            (Some(ca), _) if expected.is_empty() => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots("ca", ca)?,
                    provider(),
                )
                .build()
                .map_err(|e| TlsConfigError::new("ca", e.to_string()))?
            }
            (Some(ca), _) => Arc::new(SpiffeServerVerifier::new(
                ca_as_bundles("ca", ca, &expected, mesh)?,
                expected,
                Arc::clone(&mesh.metrics),
            )),
            (None, Some(store)) => Arc::new(SpiffeServerVerifier::new(
                Arc::clone(store) as Arc<dyn TrustSource>,
                expected,
                Arc::clone(&mesh.metrics),
            )),
            (None, None) => {
                return Err(TlsConfigError::new(
                    "ca",
                    "upstream TLS needs `ca` (or an [identity] trust bundle)",
                ));
            }
        };
        let client_cert: Option<Arc<dyn ResolvesClientCert>> = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => {
                Some(Arc::new(FixedClientCert(load_certified_key(cert, key)?)))
            }
            _ => mesh
                .store
                .as_ref()
                .map(|store| Arc::clone(store) as Arc<dyn ResolvesClientCert>),
        };
        let offer = |protocol: &[u8]| -> Vec<Vec<u8>> {
            if spec.alpn.is_empty() {
                vec![protocol.to_vec()]
            } else {
                spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
            }
        };
        let sni =
            match &spec.sni {
                Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                    TlsConfigError::new("sni", format!("invalid SNI {name:?}: {e}"))
                })?),
                None => None,
            };
        let make = |alpn: &[Vec<u8>]| -> Result<Box<[Arc<ClientConfig>]>, TlsConfigError> {
            (0..workers.max(1))
                .map(|_| {
                    client_config(
                        Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>,
                        client_cert.clone(),
                        alpn,
                    )
                    .map(Arc::new)
                    .map_err(|e| TlsConfigError::new("", e.to_string()))
                })
                .collect()
        };
        // A cluster speaks one protocol per connection: HTTP/1.1 connections offer `http/1.1`,
        // HTTP/2 connections `h2` (an `auto` cluster opens both kinds), unless `alpn` is set.
        // Opaque (L4) connections offer no ALPN unless `alpn` is set: their bytes are the
        // client's, not HTTP the proxy speaks.
        let h1 = make(&offer(b"http/1.1"))?;
        let h2 = match protocol {
            UpstreamProtocol::H1 => h1.clone(),
            UpstreamProtocol::H2 | UpstreamProtocol::Auto => make(&offer(b"h2"))?,
        };
        let opaque = if spec.alpn.is_empty() {
            make(&[])?
        } else {
            h1.clone()
        };
        Ok(Self {
            h1,
            h2,
            opaque,
            sni,
        })
    }

    /// A cluster's TLS from configs built elsewhere (a SPIFFE verifier): `make` is called per
    /// worker and per kind of connection, so that each worker has its own session caches.
    pub fn from_configs(
        workers: usize,
        sni: Option<ServerName<'static>>,
        mut make: impl FnMut(Carries) -> ClientConfig,
    ) -> Self {
        let mut each = |carries| -> Box<[Arc<ClientConfig>]> {
            (0..workers.max(1))
                .map(|_| Arc::new(make(carries)))
                .collect()
        };
        Self {
            h1: each(Carries::Http1),
            h2: each(Carries::Http2),
            opaque: each(Carries::Opaque),
            sni,
        }
    }

    /// Worker `worker`'s config for a connection that carries `carries`.
    pub fn config(&self, worker: usize, carries: Carries) -> Arc<ClientConfig> {
        let configs = match carries {
            Carries::Http1 => &self.h1,
            Carries::Http2 => &self.h2,
            Carries::Opaque => &self.opaque,
        };
        // Never empty: built for at least one worker.
        Arc::clone(&configs[worker % configs.len().max(1)])
    }

    /// The name to send and verify for a connection to `address`: the configured SNI, else the
    /// address itself (no SNI sent; the certificate must carry the IP address).
    pub fn server_name(&self, address: SocketAddr) -> ServerName<'static> {
        match &self.sni {
            Some(name) => name.clone(),
            None => ServerName::IpAddress(address.ip().into()),
        }
    }
}

/// Chooses a listener's certificate by SNI: exact names first, then `*.suffix` names (one label),
/// then the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: Vec<(Box<str>, Arc<CertifiedKey>)>,
    /// Suffixes with their leading dot (`.example`).
    wildcard: Vec<(Box<str>, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
    /// Without a default certificate: the node's identity (a rotating store).
    fallback: Option<Arc<dyn ResolvesServerCert>>,
}

impl SniResolver {
    #[cfg(test)]
    pub(super) fn for_tests(
        exact: Vec<(Box<str>, Arc<CertifiedKey>)>,
        wildcard: Vec<(Box<str>, Arc<CertifiedKey>)>,
        default: Option<Arc<CertifiedKey>>,
    ) -> Self {
        Self {
            exact,
            wildcard,
            default,
            fallback: None,
        }
    }

    /// The certificate for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.strip_suffix('.').unwrap_or(sni);
            if let Some((_, key)) = self.exact.iter().find(|(n, _)| n.eq_ignore_ascii_case(sni)) {
                return Some(Arc::clone(key));
            }
            if let Some(dot) = sni.find('.') {
                let suffix = &sni[dot..];
                if let Some((_, key)) = self
                    .wildcard
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(suffix))
                {
                    return Some(Arc::clone(key));
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match (self.pick(client_hello.server_name()), &self.fallback) {
            (Some(key), _) => Some(key),
            (None, Some(fallback)) => fallback.resolve(client_hello),
            (None, None) => None,
        }
    }
}

/// Presents one client certificate whenever a server asks.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
