//! The Prometheus text exposition format's one rule that both metric writers share: how a label
//! value is escaped (`prometheus.rs` for ringmesh's own families, `istio.rs` for Istio's).

/// Escapes a label value per the exposition format.
pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
