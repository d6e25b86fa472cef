//! Workload identity for mTLS: SPIFFE IDs, X.509-SVID verification, and the node's identity
//! material with rotation.
//!
//! This module is self-contained: the TLS transport (`tls`) plugs it into its rustls configs.
//!
//! - [`spiffe`]: SPIFFE IDs (parse, validate, accessors, Istio's principal/namespace/service
//!   account) and the patterns that match them (`allowed_spiffe_ids`, Istio `principals`).
//! - [`verify`]: [`SpiffeClientVerifier`] (listeners) and [`SpiffeServerVerifier`] (upstreams),
//!   rustls verifiers that check a peer's X.509-SVID per the X.509-SVID specification; every
//!   refusal has a [`Reason`], counted in [`IdentityMetrics`]; [`peer_spiffe_id`] reads the
//!   peer's ID after the handshake.
//! - [`svid`]: what makes a certificate an X.509-SVID (one URI SAN, a leaf SPIFFE ID), the
//!   [`Reason`]s of refusal, and what `/certs` shows of a certificate.
//! - [`bundle`]: trust bundles per trust domain (federation).
//! - [`store`]: the node's SVID, key and bundles — and in node mode one SVID per local service
//!   account — behind one atomic pointer, reread when the files change; it is the rustls
//!   certificate resolver of both sides and the verifiers' trust source.
//! - [`metrics`]: handshake refusals by reason and reload errors, rendered for Prometheus.
//!
//! Wiring a listener (sketch):
//!
//! ```ignore
//! let store = Store::open(IdentityFiles::from_spec(&spec), metrics)?;
//! let _watcher = store.watch(store::POLL_INTERVAL)?;
//! let verifier = SpiffeClientVerifier::new(store.clone(), true, allowed, store.metrics().clone());
//! let config = rustls::ServerConfig::builder_with_provider(ring_provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_client_cert_verifier(Arc::new(verifier))
//!     .with_cert_resolver(store.clone());
//! ```

pub mod bundle;
pub mod metrics;
pub mod spiffe;
pub mod store;
pub mod svid;
pub mod verify;

#[cfg(test)]
mod tests;

pub use bundle::{DomainBundle, FixedTrust, TrustBundles, TrustSource};
pub use metrics::IdentityMetrics;
pub use spiffe::{PrincipalPattern, SpiffeId, SpiffeIdError, SpiffeIdPattern, parse_patterns};
pub use store::{
    IdentityFiles, LoadError, Material, Reloaded, ServiceAccountFiles, ServiceAccountSvid, Store,
    Watcher,
};
pub use svid::{CertInfo, Reason, SvidError, peer_spiffe_id, refusal_reason};
pub use verify::{SpiffeClientVerifier, SpiffeServerVerifier, verify_svid};
