//! HBONE TLS configs: built from the identity store's service-account certificates.
