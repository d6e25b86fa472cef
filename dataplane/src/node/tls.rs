//! The rustls configs of HBONE tunnels (node mode): mutual TLS 1.3 with ALPN `h2` only, where
//! each side is a *workload's* identity, not the node's.
//!
//! - **Server** ([`NodeTls::server`], one config per local service account): presents that
//!   account's current certificate — the resolver reads the identity store per handshake, so a
//!   rotated file is presented by the next handshake without rebuilding anything — and requires
//!   a client certificate, verified by the SPIFFE client verifier against every trust domain the
//!   store holds a bundle for. The verified client ID ([`crate::tls::TlsInfo::peer_principal`])
//!   is the tunnel's source identity.
//! - **Client** ([`NodeTls::client`], one config per (source account, expected destination
//!   identity)): presents the source account's current certificate and accepts only a server
//!   whose SPIFFE ID is exactly `expected` (refused otherwise with `unexpected_identity`).
//!
//! **Caching.** Every config is built once, when the snapshot is compiled
//! ([`NodeTls::new`]), never per connection: servers for the store's service accounts, clients
//! for every pair of a local service account and an identity that the table reaches over
//! HBONE. Lookups are hash-map reads of shared, immutable maps.
//!
//! **Resumption.** A client config resumes sessions as the cluster TLS does (rustls's in-memory
//! cache, per config). Because a client config is per (source, expected) pair, a session is
//! never resumed as another identity. On the server side each account's config has its own
//! ticketer and session cache, so a ticket issued while presenting one identity never resumes
//! a handshake that presents another. (A reload that rebuilds the configs starts fresh
//! sessions; HBONE connections are pooled and long-lived, so that costs little.)

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::identity::{
    IdentityMetrics, SpiffeClientVerifier, SpiffeId, SpiffeIdPattern, SpiffeServerVerifier, Store,
    TrustSource,
};
use crate::tls::{ClientAuth, ClientTls, ServerTls};

/// ALPN of HBONE: HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The TLS 1.3-only protocol list.
static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

/// The HBONE TLS configs of one config generation.
#[derive(Debug)]
pub struct NodeTls {
    store: Arc<Store>,
    /// Per local service account.
    servers: HashMap<SpiffeId, ServerTls>,
    /// Per source account, then per expected server identity.
    clients: HashMap<SpiffeId, HashMap<SpiffeId, ClientTls>>,
}

impl NodeTls {
    /// Builds the configs: a server per service account of `store`'s files, a client per pair
    /// of such an account and an identity of `expected` (the destinations reached over HBONE).
    pub fn new(
        store: &Arc<Store>,
        metrics: &Arc<IdentityMetrics>,
        expected: impl IntoIterator<Item = Arc<SpiffeId>>,
    ) -> Result<Self, rustls::Error> {
        let files = store.files();
        let local: Vec<SpiffeId> = files
            .service_accounts
            .iter()
            .filter_map(|a| {
                let path = format!("/ns/{}/sa/{}", a.namespace, a.service_account);
                // The store refused to load an account without a valid ID: none is missing.
                SpiffeId::new(&files.trust_domain, &path).ok()
            })
            .collect();
        let mut expected: Vec<Arc<SpiffeId>> = expected.into_iter().collect();
        expected.sort();
        expected.dedup();
        let trust: Arc<dyn TrustSource> = store.clone();

        let mut servers = HashMap::with_capacity(local.len());
        let mut clients = HashMap::with_capacity(local.len());
        for id in &local {
            let account = Arc::new(AccountCert {
                store: Arc::clone(store),
                id: id.clone(),
            });
            let verifier = SpiffeClientVerifier::new(
                Arc::clone(&trust),
                true,
                Vec::new(),
                Arc::clone(metrics),
            );
            let mut server = ServerConfig::builder_with_provider(crate::tls::provider())
                .with_protocol_versions(&TLS13)?
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(account.clone());
            server.alpn_protocols = vec![ALPN_H2.to_vec()];
            // Its own ticketer (see the module docs): tickets do not cross identities.
            server.ticketer = rustls::crypto::ring::Ticketer::new()?;
            servers.insert(
                id.clone(),
                ServerTls {
                    config: Arc::new(server),
                    client_auth: Some(ClientAuth {
                        metrics: Arc::clone(metrics),
                        spiffe: true,
                    }),
                },
            );

            let mut by_expected = HashMap::with_capacity(expected.len());
            for server_id in &expected {
                let pattern = SpiffeIdPattern::parse(server_id.as_str())
                    .map_err(|e| rustls::Error::General(format!("{server_id}: {e}")))?;
                let verifier = Arc::new(SpiffeServerVerifier::new(
                    Arc::clone(&trust),
                    vec![pattern],
                    Arc::clone(metrics),
                ));
                let mut client = ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_protocol_versions(&TLS13)?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_cert_resolver(account.clone());
                client.alpn_protocols = vec![ALPN_H2.to_vec()];
                // One config for every worker and kind: the tunnel carries only HTTP/2, and a
                // shared session cache lets any worker resume a pair's session.
                let tls = ClientTls::from_configs(1, None, |_| client.clone());
                by_expected.insert(SpiffeId::clone(server_id), tls);
            }
            clients.insert(id.clone(), by_expected);
        }
        Ok(Self {
            store: Arc::clone(store),
            servers,
            clients,
        })
    }

    /// The server side of tunnels to local workloads of service account `local`, for
    /// [`crate::tls::accept`]. `None` when the store has no certificate for it.
    pub fn server_tls(&self, local: &SpiffeId) -> Option<&ServerTls> {
        self.store.service_account(local)?;
        self.servers.get(local)
    }

    /// The rustls config of [`Self::server_tls`].
    pub fn server(&self, local: &SpiffeId) -> Option<Arc<ServerConfig>> {
        self.server_tls(local).map(|tls| Arc::clone(&tls.config))
    }

    /// The client side of a tunnel from a local workload of service account `source` to a
    /// workload that must be `expected`, for [`crate::tls::connect`] (any worker index and
    /// `Carries`: one config serves all). `None` when the store has no certificate for
    /// `source`, or `expected` is not an identity the table reaches over HBONE.
    pub fn client_tls(&self, source: &SpiffeId, expected: &SpiffeId) -> Option<&ClientTls> {
        self.store.service_account(source)?;
        self.clients.get(source)?.get(expected)
    }

    /// The rustls config of [`Self::client_tls`].
    pub fn client(&self, source: &SpiffeId, expected: &SpiffeId) -> Option<Arc<ClientConfig>> {
        self.client_tls(source, expected)
            .map(|tls| tls.config(0, crate::tls::Carries::Http2))
    }
}

/// One service account's current certificate, read from the store per handshake.
#[derive(Debug)]
struct AccountCert {
    store: Arc<Store>,
    id: SpiffeId,
}

impl ResolvesServerCert for AccountCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.service_account(&self.id)
    }
}

impl ResolvesClientCert for AccountCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.store.service_account(&self.id)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
