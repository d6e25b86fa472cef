//! Tests of the TLS adapter.
