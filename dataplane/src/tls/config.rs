//! rustls configs from the config file's TLS sections, and the builders underneath them that
//! take a certificate resolver or verifier from elsewhere.
//!
//! The builders are the seam for SPIFFE identities: [`server_config`] takes any
//! `ResolvesServerCert` (a rotating identity certificate) and an optional `ClientCertVerifier`;
//! [`client_config`] takes any `ServerCertVerifier` and an optional `ResolvesClientCert`. The
//! file-based sections are one use of them: [`ServerTls::from_spec`] and
//! [`ClientTls::from_spec`].
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
        let default = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => Some(load_certified_key(cert, key)?),
            _ => None,
        };
        let mut resolver = SniResolver {
            exact: Vec::new(),
            wildcard: Vec::new(),
            default,
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
        let config = server_config(Arc::new(resolver), None, spec.min_version, alpn)
            .map_err(|e| TlsConfigError::new("", e.to_string()))?;
        Ok(Self {
            config: Arc::new(config),
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
        let Some(ca) = &spec.ca else {
            return Err(TlsConfigError::new("ca", "upstream TLS needs `ca`"));
        };
        let mut roots = RootCertStore::empty();
        for cert in load_certs(ca).map_err(|e| TlsConfigError::new("ca", e))? {
            roots.add(cert).map_err(|e| {
                TlsConfigError::new("ca", format!("bad CA certificate in {ca:?}: {e}"))
            })?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| TlsConfigError::new("ca", e.to_string()))?;
        let client_cert: Option<Arc<dyn ResolvesClientCert>> = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => {
                Some(Arc::new(FixedClientCert(load_certified_key(cert, key)?)))
            }
            _ => None,
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
        self.pick(client_hello.server_name())
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
