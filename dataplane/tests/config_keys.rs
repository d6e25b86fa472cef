//! Every key of the config format is either acted on by the data plane or rejected as `not
//! supported yet` — shown by evidence, not by a claim, so that this test cannot rot.
//!
//! The test walks every leaf key of the JSON Schema (`config_schema::json_schema()`, `$ref`s
//! followed, keys inside lists and maps included) and, for each, writes the sample value from
//! [`SAMPLES`] into a small valid base config. Then exactly one of these must hold:
//!
//! - **rejected**: `config_schema::parse` fails with one error, `not supported yet`, at the line
//!   where the sample was written, and the key lies under an entry of
//!   `config_schema::support::NOT_SUPPORTED`;
//! - **compiled**: the config is valid, and `dataplane::snapshot::compile` gives a different
//!   snapshot (its listeners, clusters, routes, access log and tracer, compared through `Debug`; not
//!   `snapshot.spec`, which is a verbatim copy of the config) than the sample's baseline;
//! - **read outside the snapshot**: the config is valid, the snapshot is the same, and the key is
//!   in [`READ_OUTSIDE_THE_SNAPSHOT`] with the function that reads it (settings read at start,
//!   such as the worker count, or by the admin thread).
//!
//! A key added to the format fails this test until it has a sample and one of these holds.
//!
//! "Compiled" is necessary evidence, not sufficient: a field of the snapshot that the request path
//! never reads would pass. A feature compiled before the request path uses it stays in
//! `NOT_SUPPORTED` until the change that makes the path use it (with a test through the binary).

use std::collections::{BTreeMap, BTreeSet};

use config_schema::support::{NOT_SUPPORTED, NOT_SUPPORTED_YET};
use dataplane::snapshot::{self, Snapshot};
use serde_json::Value;

/// Keys that are accepted but not compiled into the snapshot, each with what reads it.
const READ_OUTSIDE_THE_SNAPSHOT: &[(&str, &str)] = &[
    (
        "admin.address",
        "server::run (AdminAddress::parse, start_admin), at start",
    ),
    (
        "admin.max_connections",
        "server::run (start_admin), at start",
    ),
    (
        "admin.token",
        "admin::auth::resolve_token, from Reloader::try_apply at every reload",
    ),
    (
        "admin.token_env",
        "admin::auth::resolve_token, from Reloader::try_apply at every reload",
    ),
    (
        "admin.token_file",
        "admin::auth::resolve_token and control::files::check, from Reloader::try_apply at every \
         reload",
    ),
    ("runtime.workers", "server::run, at start"),
    ("runtime.pin_workers", "server::run, at start"),
    ("runtime.io", "server::run (driver::choose), at start"),
    (
        "runtime.uring_setup",
        "server::run (driver::choose), at start",
    ),
    (
        "runtime.ring_entries",
        "server::run (driver::choose, worker::spawn), at start",
    ),
    (
        "runtime.upgrade_socket",
        "server::run (upgrade::serve), at start",
    ),
    (
        "runtime.drain_timeout",
        "server::run, when draining, from the snapshot's spec in force then",
    ),
    (
        "identity.trust_domain",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store then reaches the snapshot's TLS \
         configs through snapshot::compile_with",
    ),
    (
        "identity.cert",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store then reaches the snapshot's TLS \
         configs through snapshot::compile_with",
    ),
    (
        "identity.key",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store then reaches the snapshot's TLS \
         configs through snapshot::compile_with",
    ),
    (
        "identity.ca_bundle",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store then reaches the snapshot's TLS \
         configs through snapshot::compile_with",
    ),
    (
        "identity.trust_bundles[].trust_domain",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store then reaches the snapshot's TLS \
         configs through snapshot::compile_with",
    ),
    (
        "identity.trust_bundles[].ca",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store then reaches the snapshot's TLS \
         configs through snapshot::compile_with",
    ),
    (
        "identity.service_accounts[].namespace",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store's service-account SVIDs then reach \
         the node table's HBONE TLS configs through snapshot::compile_with",
    ),
    (
        "identity.service_accounts[].service_account",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store's service-account SVIDs then reach \
         the node table's HBONE TLS configs through snapshot::compile_with",
    ),
    (
        "identity.service_accounts[].cert",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store's service-account SVIDs then reach \
         the node table's HBONE TLS configs through snapshot::compile_with",
    ),
    (
        "identity.service_accounts[].key",
        "reload::Reloader::open_identity (identity::Store::open, IdentityFiles::from_spec), from \
         Reloader::try_apply when [identity] changed; the store's service-account SVIDs then reach \
         the node table's HBONE TLS configs through snapshot::compile_with",
    ),
    (
        "telemetry.source_workload",
        "admin::istio::series (the source_workload of series the workload table does not name), \
         from the snapshot's spec at every scrape",
    ),
];

/// The base config. Each `#@NAME` line is a slot where a sample's lines are written.
const BASE: &str = r#"#@TOP
[admin]
address = "127.0.0.1:15000"
#@ADMIN

[[listeners]]
name = "web"
address = "127.0.0.1:8080"
protocol = "auto"
#@WEB

[[listeners]]
name = "db"
address = "127.0.0.1:5432"
protocol = "tcp"
cluster = "db"
#@DB

[[clusters]]
name = "a"
endpoints = ["127.0.0.1:9000"]
#@CLUSTER

[[clusters]]
name = "b"
endpoints = ["127.0.0.1:9001"]

[[clusters]]
name = "db"
endpoints = ["127.0.0.1:9100"]

[[virtual_hosts]]
name = "w"
domains = ["w.example"]

[[virtual_hosts]]
name = "v"
domains = ["*"]
#@VHOST

[[virtual_hosts.routes]]
match.path_prefix = "/"
cluster = "a"
#@ROUTE
"#;

/// Where a sample goes.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Top level, before any table: dotted keys such as `runtime.io = "epoll"`.
    Top,
    /// In `[admin]`.
    Admin,
    /// In the `auto` listener "web".
    Web,
    /// In the `tcp` listener "db".
    Db,
    /// In cluster "a", which the route uses.
    Cluster,
    /// In virtual host "v".
    Vhost,
    /// In the route of virtual host "v".
    Route,
}

impl Slot {
    fn marker(self) -> &'static str {
        match self {
            Slot::Top => "#@TOP",
            Slot::Admin => "#@ADMIN",
            Slot::Web => "#@WEB",
            Slot::Db => "#@DB",
            Slot::Cluster => "#@CLUSTER",
            Slot::Vhost => "#@VHOST",
            Slot::Route => "#@ROUTE",
        }
    }
}

/// A change to [`BASE`].
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Lines written at a slot.
    Add(Slot, &'static str),
    /// Text of the base (which occurs once) replaced.
    Replace(&'static str, &'static str),
}

use Change::{Add, Replace};
use Slot::{Admin, Cluster, Db, Route, Top, Vhost, Web};

/// A sample: the key, the baseline to compare with (`None`: the base as it is), and the change
/// that sets the key to a valid value other than the baseline's. (A compiled regex prints its
/// automaton over byte classes, so two patterns of the same shape, `/a.*` and `/b.*`, print
/// alike: regex samples differ in shape.)
type Sample = (&'static str, Option<Change>, Change);

/// A whole `[identity]`: its keys are all required.
const IDENTITY: &str = "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", \
                        key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }";

/// An `[identity]` that also trusts a federated trust domain.
const IDENTITY_FEDERATED: &str = "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", \
                                  key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\", \
                                  trust_bundles = [{ trust_domain = \"partner.example\", ca = \"/etc/ringmesh/partner.pem\" }] }";

/// `[telemetry.tracing]` with its defaults: the baseline of its keys' samples.
const TRACING: &str = "telemetry.tracing.sample_percent = 1.0";

/// One sample per leaf key of the schema. Samples of rejected keys are complete (required keys
/// given), so that they are valid configs once the data plane acts on them; the change that makes
/// it act on one gives its samples the baselines that make the comparison specific to the key.
#[rustfmt::skip]
const SAMPLES: &[Sample] = &[
    // [admin], [runtime], [telemetry]
    ("admin.address", None, Replace("127.0.0.1:15000", "127.0.0.1:15001")),
    ("admin.max_connections", None, Add(Admin, "max_connections = 5")),
    ("admin.token", None, Add(Admin, "token = \"secret\"")),
    ("admin.token_env", None, Add(Admin, "token_env = \"RINGMESH_TOKEN\"")),
    ("admin.token_file", None, Add(Admin, "token_file = \"/etc/ringmesh/admin-token\"")),
    ("runtime.workers", None, Add(Top, "runtime.workers = 2")),
    ("runtime.pin_workers", None, Add(Top, "runtime.pin_workers = false")),
    ("runtime.io", None, Add(Top, "runtime.io = \"epoll\"")),
    ("runtime.uring_setup", None, Add(Top, "runtime.uring_setup = \"plain\"")),
    ("runtime.ring_entries", None, Add(Top, "runtime.ring_entries = 512")),
    ("runtime.upgrade_socket", None, Add(Top, "runtime.upgrade_socket = \"/run/ringmesh/upgrade.sock\"")),
    ("runtime.drain_timeout", None, Add(Top, "runtime.drain_timeout = \"5s\"")),
    ("runtime.l4_copy", None, Add(Top, "runtime.l4_copy = \"splice\"")),
    ("telemetry.source_workload", None, Add(Top, "telemetry.source_workload = \"node\"")),
    // [[workloads]] (baseline: one workload at the clusters' endpoint address)
    ("workloads[].name", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")), Add(Top, "workloads = [{ name = \"b\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")),
    ("workloads[].namespace", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")), Add(Top, "workloads = [{ name = \"a\", namespace = \"ops\", addresses = [\"127.0.0.1\"] }]")),
    ("workloads[].addresses", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.1\"] }]")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")),
    ("workloads[].app", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"], app = \"a\" }]")),
    ("workloads[].version", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"], version = \"v1\" }]")),
    ("telemetry.access_log.path", None, Add(Top, "telemetry.access_log.path = \"stderr\"")),
    ("telemetry.access_log.format", Some(Add(Top, "telemetry.access_log.path = \"stderr\"")), Add(Top, "telemetry.access_log = { path = \"stderr\", format = \"text\" }")),
    ("telemetry.access_log.text_format", Some(Add(Top, "telemetry.access_log = { path = \"stderr\", format = \"text\" }")), Add(Top, "telemetry.access_log = { path = \"stderr\", format = \"text\", text_format = \"%REQ(:PATH)% %RESPONSE_CODE%\" }")),
    ("telemetry.access_log.tcp", Some(Add(Top, "telemetry.access_log.path = \"stderr\"")), Add(Top, "telemetry.access_log = { path = \"stderr\", tcp = false }")),
    ("telemetry.access_log.sample_percent", Some(Add(Top, "telemetry.access_log.path = \"stderr\"")), Add(Top, "telemetry.access_log = { path = \"stderr\", sample_percent = 10.0 }")),
    ("telemetry.access_log.always_log_errors", Some(Add(Top, "telemetry.access_log.path = \"stderr\"")), Add(Top, "telemetry.access_log = { path = \"stderr\", always_log_errors = false }")),
    ("telemetry.access_log.filter.status", Some(Add(Top, "telemetry.access_log.path = \"stderr\"")), Add(Top, "telemetry.access_log = { path = \"stderr\", filter = { status = [\">=400\"] } }")),
    ("telemetry.tracing.sample_percent", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.sample_percent = 5.0")),
    ("telemetry.tracing.otlp_endpoint", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.otlp_endpoint = \"127.0.0.1:4318\"")),
    ("telemetry.tracing.service_name", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.service_name = \"node\"")),
    ("telemetry.tracing.batch_size", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.batch_size = 100")),
    ("telemetry.tracing.batch_timeout", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.batch_timeout = \"250ms\"")),
    ("telemetry.tracing.queue_size", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.queue_size = 1000")),
    ("telemetry.tracing.l4_spans", Some(Add(Top, TRACING)), Add(Top, "telemetry.tracing.l4_spans = true")),
    // [identity]
    ("identity.trust_domain", None, Add(Top, IDENTITY)),
    ("identity.cert", None, Add(Top, IDENTITY)),
    ("identity.key", None, Add(Top, IDENTITY)),
    ("identity.ca_bundle", None, Add(Top, IDENTITY)),
    ("identity.trust_bundles[].trust_domain", None, Add(Top, IDENTITY_FEDERATED)),
    ("identity.trust_bundles[].ca", None, Add(Top, IDENTITY_FEDERATED)),
    ("node.name", Some(Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "node = { name = \"n2\", outbound = \"0.0.0.0:15001\" }")),
    ("node.outbound", Some(Add(Top, "node = { name = \"n1\", inbound = \"0.0.0.0:15006\" }")), Add(Top, "node = { name = \"n1\", inbound = \"0.0.0.0:15006\", outbound = \"0.0.0.0:15001\" }")),
    ("node.inbound", Some(Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\", inbound = \"0.0.0.0:15006\" }")),
    ("node.hbone", Some(Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\", hbone = \"0.0.0.0:15008\" }")),
    ("node.capture", Some(Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\", capture = \"tproxy\" }")),
    ("node.hbone_port", Some(Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\", hbone_port = 15009 }")),
    ("node.mark", Some(Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\", mark = 7 }")),
    ("node.mode", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\", mode = \"strict\" }")),
    ("node.namespace_modes", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\", namespace_modes = { shop = \"strict\" } }")),
    ("node.connect_timeout", Some(Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "node = { name = \"n1\", outbound = \"0.0.0.0:15001\", connect_timeout = \"2s\" }")),
    ("services[].name", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("services[].namespace", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("services[].addresses", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("services[].ports[].port", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("services[].ports[].target_port", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("services[].workloads", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("services[].lb_policy", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }, { name = \"b\", namespace = \"shop\", addresses = [\"10.0.0.6\"], node = \"n2\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }\nservices = [{ name = \"s\", namespace = \"shop\", addresses = [\"10.96.0.1\"], ports = [{ port = 80, target_port = 8080 }], workloads = [\"a\", \"b\"], lb_policy = \"random\" }]")),
    ("identity.service_accounts[].namespace", Some(Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }")), Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\", service_accounts = [{ namespace = \"shop\", service_account = \"web\", cert = \"/etc/ringmesh/web.pem\", key = \"/etc/ringmesh/web-key.pem\" }] }")),
    ("identity.service_accounts[].service_account", Some(Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }")), Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\", service_accounts = [{ namespace = \"shop\", service_account = \"web\", cert = \"/etc/ringmesh/web.pem\", key = \"/etc/ringmesh/web-key.pem\" }] }")),
    ("identity.service_accounts[].cert", Some(Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }")), Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\", service_accounts = [{ namespace = \"shop\", service_account = \"web\", cert = \"/etc/ringmesh/web.pem\", key = \"/etc/ringmesh/web-key.pem\" }] }")),
    ("identity.service_accounts[].key", Some(Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }")), Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\", service_accounts = [{ namespace = \"shop\", service_account = \"web\", cert = \"/etc/ringmesh/web.pem\", key = \"/etc/ringmesh/web-key.pem\" }] }")),
    ("workloads[].node", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"], node = \"n1\" }]")),
    ("workloads[].service_account", Some(Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }\nworkloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"] }]")), Add(Top, "identity = { trust_domain = \"cluster.local\", cert = \"/etc/ringmesh/svid.pem\", key = \"/etc/ringmesh/svid-key.pem\", ca_bundle = \"/etc/ringmesh/bundle.pem\" }\nworkloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"], service_account = \"web\" }]")),
    ("workloads[].protocol", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"], node = \"n2\" }]")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"127.0.0.1\"], node = \"n2\", protocol = \"tcp\" }]")),
    ("workloads[].mode", Some(Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")), Add(Top, "workloads = [{ name = \"a\", namespace = \"shop\", addresses = [\"10.0.0.5\"], node = \"n1\", protocol = \"tcp\", mode = \"strict\" }]\nnode = { name = \"n1\", outbound = \"0.0.0.0:15001\" }")),
    // [[authorization_policies]] (baseline: a deny policy on one source block)
    ("authorization_policies[].name", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"q\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")),
    ("authorization_policies[].action", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"allow\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")),
    ("authorization_policies[].listeners", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", listeners = [\"web\"], rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")),
    ("authorization_policies[].rules[].from[].principals", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ principals = [\"cluster.local/ns/a/sa/b\"] }] }] }]")),
    ("authorization_policies[].rules[].from[].not_principals", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ not_principals = [\"cluster.local/ns/a/*\"] }] }] }]")),
    ("authorization_policies[].rules[].from[].namespaces", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ namespaces = [\"shop\"] }] }] }]")),
    ("authorization_policies[].rules[].from[].not_namespaces", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ not_namespaces = [\"shop\"] }] }] }]")),
    ("authorization_policies[].rules[].from[].ip_blocks", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/16\"] }] }] }]")),
    ("authorization_policies[].rules[].from[].not_ip_blocks", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ not_ip_blocks = [\"2001:db8::/32\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].hosts", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ hosts = [\"*.example.com\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].not_hosts", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ not_hosts = [\"a.example\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].ports", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ ports = [8080] }] }] }]")),
    ("authorization_policies[].rules[].to[].not_ports", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ not_ports = [5432] }] }] }]")),
    ("authorization_policies[].rules[].to[].methods", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ methods = [\"DELETE\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].not_methods", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ not_methods = [\"GET\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].paths", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ paths = [\"/admin*\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].not_paths", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ not_paths = [\"/public*\"] }] }] }]")),
    ("authorization_policies[].rules[].to[].paths_ignore_case", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ paths = [\"/admin\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ to = [{ paths = [\"/admin\"], paths_ignore_case = true }] }] }]")),
    ("authorization_policies[].rules[].when[].key", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ when = [{ key = \"request.headers[x-b]\", values = [\"b\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ when = [{ key = \"request.headers[x-a]\", values = [\"b\"] }] }] }]")),
    ("authorization_policies[].rules[].when[].values", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ when = [{ key = \"connection.sni\", values = [\"a.example\"] }] }] }]")),
    ("authorization_policies[].rules[].when[].not_values", Some(Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ from = [{ ip_blocks = [\"10.0.0.0/8\"] }] }] }]")), Add(Top, "authorization_policies = [{ name = \"p\", action = \"deny\", rules = [{ when = [{ key = \"source.ip\", not_values = [\"10.0.0.0/8\"] }] }] }]")),
    // [[listeners]]
    ("listeners[].name", None, Replace("name = \"web\"", "name = \"www\"")),
    ("listeners[].address", None, Replace("127.0.0.1:8080", "127.0.0.1:8081")),
    ("listeners[].protocol", None, Replace("protocol = \"auto\"", "protocol = \"http\"")),
    ("listeners[].cluster", None, Add(Web, "cluster = \"b\"")),
    ("listeners[].virtual_hosts", None, Add(Web, "virtual_hosts = [\"v\"]")),
    ("listeners[].max_connections", None, Add(Web, "max_connections = 10")),
    ("listeners[].idle_timeout", None, Add(Web, "idle_timeout = \"1m\"")),
    ("listeners[].request_header_timeout", None, Add(Web, "request_header_timeout = \"3s\"")),
    ("listeners[].stream_idle_timeout", None, Add(Web, "stream_idle_timeout = \"30s\"")),
    ("listeners[].xff_trusted_hops", None, Add(Web, "xff_trusted_hops = 1")),
    ("listeners[].reporter", None, Add(Web, "reporter = \"destination\"")),
    ("listeners[].normalize_path", None, Add(Web, "normalize_path = false")),
    ("listeners[].merge_slashes", None, Add(Web, "merge_slashes = false")),
    ("listeners[].path_with_escaped_slashes", None, Add(Web, "path_with_escaped_slashes = \"reject\"")),
    ("listeners[].limits.max_request_line", None, Add(Web, "limits.max_request_line = \"4KiB\"")),
    ("listeners[].limits.max_header_bytes", None, Add(Web, "limits.max_header_bytes = \"32KiB\"")),
    ("listeners[].limits.max_headers", None, Add(Web, "limits.max_headers = 50")),
    ("listeners[].limits.max_request_body", None, Add(Web, "limits.max_request_body = \"1MiB\"")),
    ("listeners[].http2.max_concurrent_streams", None, Add(Web, "http2.max_concurrent_streams = 50")),
    ("listeners[].http2.max_header_list_size", None, Add(Web, "http2.max_header_list_size = \"32KiB\"")),
    ("listeners[].http2.initial_stream_window", None, Add(Web, "http2.initial_stream_window = \"128KiB\"")),
    ("listeners[].http2.initial_connection_window", None, Add(Web, "http2.initial_connection_window = \"2MiB\"")),
    ("listeners[].http2.max_pending_accept_reset_streams", None, Add(Web, "http2.max_pending_accept_reset_streams = 50")),
    ("listeners[].http2.max_local_error_reset_streams", None, Add(Web, "http2.max_local_error_reset_streams = 50")),
    ("listeners[].http2.max_send_buffer", None, Add(Web, "http2.max_send_buffer = \"200KiB\"")),
    ("listeners[].http2.control_frames_per_second", None, Add(Web, "http2.control_frames_per_second = 50")),
    ("listeners[].http2.control_frame_burst", None, Add(Web, "http2.control_frame_burst = 50")),
    ("listeners[].http2.max_consecutive_empty_frames", None, Add(Web, "http2.max_consecutive_empty_frames = 5")),
    ("listeners[].rate_limit.requests_per_second", Some(Add(Web, "rate_limit = { requests_per_second = 10 }")), Add(Web, "rate_limit = { requests_per_second = 20 }")),
    ("listeners[].rate_limit.burst", Some(Add(Web, "rate_limit = { requests_per_second = 10 }")), Add(Web, "rate_limit = { requests_per_second = 10, burst = 5 }")),
    ("listeners[].rate_limit.key", Some(Add(Web, "rate_limit = { requests_per_second = 10 }")), Add(Web, "rate_limit = { requests_per_second = 10, key = \"client_ip\" }")),
    ("listeners[].tls.mode", None, Add(Web, "tls = { mode = \"terminate\", cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")),
    ("listeners[].tls.cert", None, Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")),
    ("listeners[].tls.key", None, Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")),
    ("listeners[].tls.client_ca", None, Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", client_ca = \"tests/fixtures/tls/ca.pem\" }")),
    ("listeners[].tls.require_client_cert", Some(Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", client_ca = \"tests/fixtures/tls/ca.pem\" }")), Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", client_ca = \"tests/fixtures/tls/ca.pem\", require_client_cert = true }")),
    ("listeners[].tls.allowed_spiffe_ids", Some(Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", client_ca = \"tests/fixtures/tls/ca.pem\" }")), Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", client_ca = \"tests/fixtures/tls/ca.pem\", allowed_spiffe_ids = [\"spiffe://cluster.local/ns/a/*\"] }")),
    ("listeners[].tls.alpn", None, Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", alpn = [\"h2\"] }")),
    ("listeners[].tls.sni_routes", Some(Add(Db, "tls = { mode = \"passthrough\" }")), Add(Db, "tls = { mode = \"passthrough\", sni_routes = { \"a.example\" = \"a\", \"*.b.example\" = \"b\" } }")),
    ("listeners[].tls.min_version", Some(Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")), Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", min_version = \"1.3\" }")),
    ("listeners[].tls.certificates[].server_names", Some(Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")), Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", certificates = [{ server_names = [\"a.example\", \"*.b.example\"], cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }] }")),
    ("listeners[].tls.certificates[].cert", Some(Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")), Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", certificates = [{ server_names = [\"a.example\"], cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }] }")),
    ("listeners[].tls.certificates[].key", Some(Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")), Add(Web, "tls = { cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\", certificates = [{ server_names = [\"a.example\"], cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }] }")),
    // [[clusters]]
    ("clusters[].name", None, Replace("name = \"b\"", "name = \"c\"")),
    ("clusters[].endpoints[].address", None, Replace("127.0.0.1:9001", "127.0.0.1:9002")),
    ("clusters[].endpoints[].weight", None, Replace("[\"127.0.0.1:9001\"]", "[{ address = \"127.0.0.1:9001\", weight = 5 }]")),
    ("clusters[].lb_policy", None, Add(Cluster, "lb_policy = \"random\"")),
    ("clusters[].hash_policy.header", Some(Add(Cluster, "lb_policy = \"ring_hash\"\nhash_policy.source_ip = true")), Add(Cluster, "lb_policy = \"ring_hash\"\nhash_policy.header = \"x-user\"")),
    ("clusters[].hash_policy.cookie", Some(Add(Cluster, "lb_policy = \"ring_hash\"\nhash_policy.source_ip = true")), Add(Cluster, "lb_policy = \"ring_hash\"\nhash_policy.cookie = \"session\"")),
    ("clusters[].hash_policy.source_ip", Some(Add(Cluster, "lb_policy = \"ring_hash\"\nhash_policy.header = \"x-user\"")), Add(Cluster, "lb_policy = \"ring_hash\"\nhash_policy.source_ip = true")),
    ("clusters[].protocol", None, Add(Cluster, "protocol = \"h2\"")),
    ("clusters[].connect_timeout", None, Add(Cluster, "connect_timeout = \"1s\"")),
    ("clusters[].pool.max_connections_per_endpoint", None, Add(Cluster, "pool.max_connections_per_endpoint = 2000")),
    ("clusters[].pool.max_idle_per_endpoint", None, Add(Cluster, "pool.max_idle_per_endpoint = 10")),
    ("clusters[].pool.idle_timeout", None, Add(Cluster, "pool.idle_timeout = \"5s\"")),
    ("clusters[].pool.max_streams_per_connection", None, Add(Cluster, "pool.max_streams_per_connection = 10")),
    ("clusters[].circuit_breaker.max_connections", Some(Add(Cluster, "circuit_breaker.max_retries = 2")), Add(Cluster, "circuit_breaker.max_connections = 10")),
    ("clusters[].circuit_breaker.max_pending_requests", Some(Add(Cluster, "circuit_breaker.max_retries = 2")), Add(Cluster, "circuit_breaker.max_pending_requests = 10")),
    ("clusters[].circuit_breaker.max_requests", Some(Add(Cluster, "circuit_breaker.max_retries = 2")), Add(Cluster, "circuit_breaker.max_requests = 10")),
    ("clusters[].circuit_breaker.max_retries", Some(Add(Cluster, "circuit_breaker.max_requests = 10")), Add(Cluster, "circuit_breaker.max_retries = 1")),
    ("clusters[].outlier_detection.consecutive_5xx", Some(Add(Cluster, "outlier_detection.consecutive_5xx = 4")), Add(Cluster, "outlier_detection.consecutive_5xx = 3")),
    ("clusters[].outlier_detection.consecutive_gateway_failure", Some(Add(Cluster, "outlier_detection.consecutive_gateway_failure = 4")), Add(Cluster, "outlier_detection.consecutive_gateway_failure = 3")),
    ("clusters[].outlier_detection.consecutive_local_origin_failure", Some(Add(Cluster, "outlier_detection.consecutive_local_origin_failure = 4")), Add(Cluster, "outlier_detection.consecutive_local_origin_failure = 3")),
    ("clusters[].outlier_detection.interval", Some(Add(Cluster, "outlier_detection.interval = \"4s\"")), Add(Cluster, "outlier_detection.interval = \"5s\"")),
    ("clusters[].outlier_detection.base_ejection_time", Some(Add(Cluster, "outlier_detection.base_ejection_time = \"4s\"")), Add(Cluster, "outlier_detection.base_ejection_time = \"10s\"")),
    ("clusters[].outlier_detection.max_ejection_time", Some(Add(Cluster, "outlier_detection.max_ejection_time = \"4s\"")), Add(Cluster, "outlier_detection.max_ejection_time = \"10s\"")),
    ("clusters[].outlier_detection.max_ejection_percent", Some(Add(Cluster, "outlier_detection.max_ejection_percent = 40")), Add(Cluster, "outlier_detection.max_ejection_percent = 50")),
    ("clusters[].health_check.kind", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { kind = \"tcp\" }")),
    ("clusters[].health_check.path", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { path = \"/healthz\" }")),
    ("clusters[].health_check.host", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { host = \"a.example\" }")),
    ("clusters[].health_check.expected_statuses", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { expected_statuses = [200, 204] }")),
    ("clusters[].health_check.interval", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { interval = \"2s\" }")),
    ("clusters[].health_check.timeout", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { timeout = \"2s\" }")),
    ("clusters[].health_check.healthy_threshold", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { healthy_threshold = 1 }")),
    ("clusters[].health_check.unhealthy_threshold", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { unhealthy_threshold = 1 }")),
    ("clusters[].health_check.jitter", Some(Add(Cluster, "health_check = { }")), Add(Cluster, "health_check = { jitter = \"1s\" }")),
    ("clusters[].panic_threshold", Some(Add(Cluster, "outlier_detection.consecutive_5xx = 3")), Add(Cluster, "outlier_detection.consecutive_5xx = 3\npanic_threshold = 20")),
    ("clusters[].retry_budget.ratio", None, Add(Cluster, "retry_budget.ratio = 0.5")),
    ("clusters[].retry_budget.min_retries_per_second", None, Add(Cluster, "retry_budget.min_retries_per_second = 1")),
    ("clusters[].retry_budget.ttl", None, Add(Cluster, "retry_budget.ttl = \"5s\"")),
    ("clusters[].tls.sni", None, Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\", sni = \"a.example\" }")),
    ("clusters[].tls.ca", None, Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\" }")),
    ("clusters[].tls.cert", None, Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\", cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")),
    ("clusters[].tls.key", None, Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\", cert = \"tests/fixtures/tls/cert.pem\", key = \"tests/fixtures/tls/key.pem\" }")),
    ("clusters[].tls.expected_spiffe_ids", Some(Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\" }")), Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\", expected_spiffe_ids = [\"spiffe://cluster.local/ns/a/sa/a\"] }")),
    ("clusters[].tls.alpn", None, Add(Cluster, "tls = { ca = \"tests/fixtures/tls/ca.pem\", alpn = [\"h2\"] }")),
    // [[virtual_hosts]]
    ("virtual_hosts[].name", None, Replace("name = \"w\"", "name = \"x\"")),
    ("virtual_hosts[].domains", None, Replace("[\"w.example\"]", "[\"x.example\"]")),
    ("virtual_hosts[].rate_limit.requests_per_second", Some(Add(Vhost, "rate_limit = { requests_per_second = 10 }")), Add(Vhost, "rate_limit = { requests_per_second = 20 }")),
    ("virtual_hosts[].rate_limit.burst", Some(Add(Vhost, "rate_limit = { requests_per_second = 10 }")), Add(Vhost, "rate_limit = { requests_per_second = 10, burst = 5 }")),
    ("virtual_hosts[].rate_limit.key", Some(Add(Vhost, "rate_limit = { requests_per_second = 10 }")), Add(Vhost, "rate_limit = { requests_per_second = 10, key = { header = \"x-user\" } }")),
    // [[virtual_hosts.routes]]
    ("virtual_hosts[].routes[].name", None, Add(Route, "name = \"everything\"")),
    ("virtual_hosts[].routes[].match.path_prefix", None, Replace("match.path_prefix = \"/\"", "match.path_prefix = \"/api\"")),
    ("virtual_hosts[].routes[].match.path_exact", Some(Replace("match.path_prefix = \"/\"", "match.path_exact = \"/a\"")), Replace("match.path_prefix = \"/\"", "match.path_exact = \"/b\"")),
    ("virtual_hosts[].routes[].match.path_regex", Some(Replace("match.path_prefix = \"/\"", "match.path_regex = \"/a.*\"")), Replace("match.path_prefix = \"/\"", "match.path_regex = \"/[0-9]+/reviews\"")),
    ("virtual_hosts[].routes[].match.methods", None, Add(Route, "match.methods = [\"GET\"]")),
    ("virtual_hosts[].routes[].match.source_principals", None, Add(Route, "match.source_principals = [\"cluster.local/ns/a/sa/b\"]")),
    ("virtual_hosts[].routes[].match.headers[].name", Some(Add(Route, "match.headers = [{ name = \"x-a\", present = true }]")), Add(Route, "match.headers = [{ name = \"x-b\", present = true }]")),
    ("virtual_hosts[].routes[].match.headers[].exact", Some(Add(Route, "match.headers = [{ name = \"x-a\", present = true }]")), Add(Route, "match.headers = [{ name = \"x-a\", exact = \"1\" }]")),
    ("virtual_hosts[].routes[].match.headers[].prefix", Some(Add(Route, "match.headers = [{ name = \"x-a\", present = true }]")), Add(Route, "match.headers = [{ name = \"x-a\", prefix = \"1\" }]")),
    ("virtual_hosts[].routes[].match.headers[].regex", Some(Add(Route, "match.headers = [{ name = \"x-a\", present = true }]")), Add(Route, "match.headers = [{ name = \"x-a\", regex = \"[0-9]+\" }]")),
    ("virtual_hosts[].routes[].match.headers[].present", Some(Add(Route, "match.headers = [{ name = \"x-a\", present = true }]")), Add(Route, "match.headers = [{ name = \"x-a\", present = false }]")),
    ("virtual_hosts[].routes[].match.query[].name", Some(Add(Route, "match.query = [{ name = \"a\", present = true }]")), Add(Route, "match.query = [{ name = \"b\", present = true }]")),
    ("virtual_hosts[].routes[].match.query[].exact", Some(Add(Route, "match.query = [{ name = \"a\", present = true }]")), Add(Route, "match.query = [{ name = \"a\", exact = \"1\" }]")),
    ("virtual_hosts[].routes[].match.query[].regex", Some(Add(Route, "match.query = [{ name = \"a\", present = true }]")), Add(Route, "match.query = [{ name = \"a\", regex = \"[0-9]+\" }]")),
    ("virtual_hosts[].routes[].match.query[].present", Some(Add(Route, "match.query = [{ name = \"a\", present = true }]")), Add(Route, "match.query = [{ name = \"a\", present = false }]")),
    ("virtual_hosts[].routes[].cluster", None, Replace("cluster = \"a\"", "cluster = \"b\"")),
    ("virtual_hosts[].routes[].weighted_clusters[].cluster", Some(Replace("cluster = \"a\"", "weighted_clusters = [{ cluster = \"a\", weight = 1 }]")), Replace("cluster = \"a\"", "weighted_clusters = [{ cluster = \"b\", weight = 1 }]")),
    ("virtual_hosts[].routes[].weighted_clusters[].weight", Some(Replace("cluster = \"a\"", "weighted_clusters = [{ cluster = \"a\", weight = 1 }, { cluster = \"b\", weight = 1 }]")), Replace("cluster = \"a\"", "weighted_clusters = [{ cluster = \"a\", weight = 1 }, { cluster = \"b\", weight = 3 }]")),
    ("virtual_hosts[].routes[].redirect.status", Some(Replace("cluster = \"a\"", "redirect = { path = \"/x\" }")), Replace("cluster = \"a\"", "redirect = { path = \"/x\", status = 302 }")),
    ("virtual_hosts[].routes[].redirect.scheme", Some(Replace("cluster = \"a\"", "redirect = { path = \"/x\" }")), Replace("cluster = \"a\"", "redirect = { path = \"/x\", scheme = \"https\" }")),
    ("virtual_hosts[].routes[].redirect.host", Some(Replace("cluster = \"a\"", "redirect = { path = \"/x\" }")), Replace("cluster = \"a\"", "redirect = { path = \"/x\", host = \"a.example\" }")),
    ("virtual_hosts[].routes[].redirect.port", Some(Replace("cluster = \"a\"", "redirect = { path = \"/x\" }")), Replace("cluster = \"a\"", "redirect = { path = \"/x\", port = 8443 }")),
    ("virtual_hosts[].routes[].redirect.path", Some(Replace("cluster = \"a\"", "redirect = { path = \"/x\" }")), Replace("cluster = \"a\"", "redirect = { path = \"/y\" }")),
    ("virtual_hosts[].routes[].direct_response.status", Some(Replace("cluster = \"a\"", "direct_response = { status = 200 }")), Replace("cluster = \"a\"", "direct_response = { status = 404 }")),
    ("virtual_hosts[].routes[].direct_response.body", Some(Replace("cluster = \"a\"", "direct_response = { status = 200 }")), Replace("cluster = \"a\"", "direct_response = { status = 200, body = \"ok\" }")),
    ("virtual_hosts[].routes[].direct_response.content_type", Some(Replace("cluster = \"a\"", "direct_response = { status = 200 }")), Replace("cluster = \"a\"", "direct_response = { status = 200, content_type = \"application/json\" }")),
    ("virtual_hosts[].routes[].rewrite.prefix", None, Add(Route, "rewrite.prefix = \"/v2\"")),
    ("virtual_hosts[].routes[].rewrite.full_path", None, Add(Route, "rewrite.full_path = \"/v2\"")),
    ("virtual_hosts[].routes[].request_headers.add", None, Add(Route, "request_headers.add = { \"x-a\" = \"1\" }")),
    ("virtual_hosts[].routes[].request_headers.set", None, Add(Route, "request_headers.set = { \"x-a\" = \"1\" }")),
    ("virtual_hosts[].routes[].request_headers.remove", None, Add(Route, "request_headers.remove = [\"x-a\"]")),
    ("virtual_hosts[].routes[].response_headers.add", None, Add(Route, "response_headers.add = { \"x-a\" = \"1\" }")),
    ("virtual_hosts[].routes[].response_headers.set", None, Add(Route, "response_headers.set = { \"x-a\" = \"1\" }")),
    ("virtual_hosts[].routes[].response_headers.remove", None, Add(Route, "response_headers.remove = [\"x-a\"]")),
    ("virtual_hosts[].routes[].mirror.cluster", Some(Add(Route, "mirror = { cluster = \"a\" }")), Add(Route, "mirror = { cluster = \"b\" }")),
    ("virtual_hosts[].routes[].mirror.percent", Some(Add(Route, "mirror = { cluster = \"b\" }")), Add(Route, "mirror = { cluster = \"b\", percent = 50.0 }")),
    ("virtual_hosts[].routes[].timeout", None, Add(Route, "timeout = \"2s\"")),
    ("virtual_hosts[].routes[].max_request_body", None, Add(Route, "max_request_body = \"1MiB\"")),
    ("virtual_hosts[].routes[].retries.attempts", None, Add(Route, "retries = { attempts = 2 }")),
    ("virtual_hosts[].routes[].retries.per_try_timeout", None, Add(Route, "retries = { attempts = 2, per_try_timeout = \"1s\" }")),
    ("virtual_hosts[].routes[].retries.retry_on", None, Add(Route, "retries = { attempts = 2, retry_on = [\"5xx\"] }")),
    ("virtual_hosts[].routes[].retries.backoff", None, Add(Route, "retries = { attempts = 2, backoff = \"10ms\" }")),
    ("virtual_hosts[].routes[].retries.max_backoff", None, Add(Route, "retries = { attempts = 2, max_backoff = \"1s\" }")),
    ("virtual_hosts[].routes[].retries.retriable_status_codes", Some(Add(Route, "retries = { attempts = 2, retry_on = [\"retriable-status-codes\"], retriable_status_codes = [503] }")), Add(Route, "retries = { attempts = 2, retry_on = [\"retriable-status-codes\"], retriable_status_codes = [418] }")),
    ("virtual_hosts[].routes[].fault.delay.percent", Some(Add(Route, "fault.delay = { percent = 10.0, fixed = \"1s\" }")), Add(Route, "fault.delay = { percent = 20.0, fixed = \"1s\" }")),
    ("virtual_hosts[].routes[].fault.delay.fixed", Some(Add(Route, "fault.delay = { percent = 10.0, fixed = \"1s\" }")), Add(Route, "fault.delay = { percent = 10.0, fixed = \"2s\" }")),
    ("virtual_hosts[].routes[].fault.abort.percent", Some(Add(Route, "fault.abort = { percent = 10.0, status = 503 }")), Add(Route, "fault.abort = { percent = 20.0, status = 503 }")),
    ("virtual_hosts[].routes[].fault.abort.status", Some(Add(Route, "fault.abort = { percent = 10.0, status = 503 }")), Add(Route, "fault.abort = { percent = 10.0, status = 429 }")),
    ("virtual_hosts[].routes[].fault.abort.grpc_status", Some(Add(Route, "fault.abort = { percent = 10.0, status = 503 }")), Add(Route, "fault.abort = { percent = 10.0, status = 503, grpc_status = 14 }")),
    ("virtual_hosts[].routes[].fault.headers[].name", Some(Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", present = true }] }")), Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-b\", present = true }] }")),
    ("virtual_hosts[].routes[].fault.headers[].exact", Some(Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", present = true }] }")), Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", exact = \"1\" }] }")),
    ("virtual_hosts[].routes[].fault.headers[].prefix", Some(Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", present = true }] }")), Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", prefix = \"1\" }] }")),
    ("virtual_hosts[].routes[].fault.headers[].regex", Some(Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", present = true }] }")), Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", regex = \"[0-9]+\" }] }")),
    ("virtual_hosts[].routes[].fault.headers[].present", Some(Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", present = true }] }")), Add(Route, "fault = { abort = { percent = 10.0, status = 503 }, headers = [{ name = \"x-a\", present = false }] }")),
    ("virtual_hosts[].routes[].rate_limit.requests_per_second", Some(Add(Route, "rate_limit = { requests_per_second = 10 }")), Add(Route, "rate_limit = { requests_per_second = 20 }")),
    ("virtual_hosts[].routes[].rate_limit.burst", Some(Add(Route, "rate_limit = { requests_per_second = 10 }")), Add(Route, "rate_limit = { requests_per_second = 10, burst = 5 }")),
    ("virtual_hosts[].routes[].rate_limit.key", Some(Add(Route, "rate_limit = { requests_per_second = 10 }")), Add(Route, "rate_limit = { requests_per_second = 10, key = \"client_ip\" }")),
];

/// How the evidence classified a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Rejected,
    Compiled,
    ReadOutsideTheSnapshot,
}

#[test]
fn every_config_key_is_acted_on_or_rejected() {
    let schema: Value =
        serde_json::from_str(&config_schema::json_schema()).expect("the schema is JSON");
    let keys = leaf_keys(&schema);
    assert!(keys.len() > 100, "the walk found only {} keys", keys.len());

    // The tables name schema keys, once each.
    let mut samples: BTreeMap<&str, &Sample> = BTreeMap::new();
    for sample in SAMPLES {
        assert!(
            keys.contains(sample.0),
            "SAMPLES has {:?}, which is not a key of the schema",
            sample.0
        );
        assert!(
            samples.insert(sample.0, sample).is_none(),
            "SAMPLES has {:?} twice",
            sample.0
        );
    }
    let outside: BTreeMap<&str, &str> = READ_OUTSIDE_THE_SNAPSHOT.iter().copied().collect();
    for key in outside.keys() {
        assert!(
            keys.contains(*key),
            "READ_OUTSIDE_THE_SNAPSHOT has {key:?}, which is not a key of the schema"
        );
    }
    for entry in NOT_SUPPORTED {
        assert!(
            keys.iter().any(|k| under(k, entry.path)),
            "support::NOT_SUPPORTED has {:?}, under which the schema has no key",
            entry.path
        );
    }

    let base = config_schema::parse(&apply(None).0).expect("the base config is valid");
    assert!(
        fingerprint(&base) == fingerprint(&base),
        "compiling the same config twice must give the same snapshot"
    );

    let mut failures = Vec::new();
    let mut classes: BTreeMap<Class, Vec<&str>> = BTreeMap::new();
    for key in &keys {
        let Some(sample) = samples.get(key.as_str()) else {
            failures.push(format!(
                "{key}: no sample in SAMPLES; add one, then make the data plane act on the key or \
                 add it to config_schema::support::NOT_SUPPORTED"
            ));
            continue;
        };
        match classify(key, sample, &outside) {
            Ok(class) => classes.entry(class).or_default().push(key),
            Err(why) => failures.push(format!("{key}: {why}")),
        }
    }
    let listed_outside: BTreeSet<&str> = outside.keys().copied().collect();
    let found_outside: BTreeSet<&str> = classes
        .get(&Class::ReadOutsideTheSnapshot)
        .into_iter()
        .flatten()
        .copied()
        .collect();
    if listed_outside != found_outside {
        failures.push(format!(
            "READ_OUTSIDE_THE_SNAPSHOT lists {:?}, but the keys that are accepted without changing \
             the snapshot are {:?}",
            listed_outside, found_outside
        ));
    }
    eprintln!(
        "{} keys: {} compiled into the snapshot, {} read outside it, {} rejected as not supported \
         yet",
        keys.len(),
        classes.get(&Class::Compiled).map_or(0, Vec::len),
        classes
            .get(&Class::ReadOutsideTheSnapshot)
            .map_or(0, Vec::len),
        classes.get(&Class::Rejected).map_or(0, Vec::len),
    );
    assert!(
        failures.is_empty(),
        "keys neither acted on nor rejected:\n  {}",
        failures.join("\n  ")
    );
}

/// Classifies `key` by what its sample does, or says why it fits no class.
fn classify(key: &str, sample: &Sample, outside: &BTreeMap<&str, &str>) -> Result<Class, String> {
    let (_, baseline, set) = *sample;
    let (text, line) = apply(Some(set));
    // A key that the data plane acts on in the accepted form of a listed subtree (passthrough
    // `listeners[].tls`) is not listed.
    let listed_unsupported = NOT_SUPPORTED
        .iter()
        .find(|entry| under(key, entry.path) && !entry.acted_on_in_accepted_form(key));
    let config = match config_schema::parse(&text) {
        Ok(config) => config,
        Err(errors) => {
            let rejected = errors.len() == 1
                && errors[0].line == line
                && errors[0].message.starts_with(NOT_SUPPORTED_YET);
            return match (rejected, listed_unsupported) {
                (true, Some(_)) => Ok(Class::Rejected),
                (true, None) => Err("rejected as not supported yet, but not listed in \
                                     config_schema::support::NOT_SUPPORTED"
                    .to_owned()),
                (false, _) => Err(format!(
                    "the sample should be valid, or rejected once as not supported yet at line \
                     {line}; got {errors:?}\n{text}"
                )),
            };
        }
    };
    if let Some(entry) = listed_unsupported {
        return Err(format!(
            "accepted, although config_schema::support::NOT_SUPPORTED lists {:?}",
            entry.path
        ));
    }
    let reference = match baseline {
        None => apply(None).0,
        Some(change) => apply(Some(change)).0,
    };
    let reference = config_schema::parse(&reference)
        .map_err(|errors| format!("the baseline is invalid: {errors:?}"))?;
    let before = fingerprint(&reference);
    if fingerprint(&reference) != before {
        return Err("the baseline does not compile to the same snapshot twice".to_owned());
    }
    let compiled_differently = fingerprint(&config) != before;
    match (compiled_differently, outside.get(key)) {
        (true, None) => Ok(Class::Compiled),
        (true, Some(_)) => Err("changes the compiled snapshot: take it out of \
                                READ_OUTSIDE_THE_SNAPSHOT"
            .to_owned()),
        (false, Some(_)) => Ok(Class::ReadOutsideTheSnapshot),
        (false, None) => Err(
            "accepted, but the compiled snapshot does not change: make the data \
                              plane act on it, reject it in config_schema::support::NOT_SUPPORTED, \
                              or, if it is read outside the snapshot, list it with its reader in \
                              READ_OUTSIDE_THE_SNAPSHOT"
                .to_owned(),
        ),
    }
}

/// The base config with `change` made, and the line where the change starts.
fn apply(change: Option<Change>) -> (String, usize) {
    let (mut text, line) = match change {
        None => (BASE.to_owned(), 0),
        Some(Add(slot, lines)) => {
            let at = BASE.find(slot.marker()).expect("every slot is in the base");
            let line = BASE[..at].matches('\n').count() + 1;
            (BASE.replacen(slot.marker(), lines, 1), line)
        }
        Some(Replace(from, to)) => {
            assert_eq!(
                BASE.matches(from).count(),
                1,
                "{from:?} occurs once in the base"
            );
            let at = BASE.find(from).expect("counted above");
            let line = BASE[..at].matches('\n').count() + 1;
            (BASE.replacen(from, to, 1), line)
        }
    };
    // The slots left empty.
    text = text
        .lines()
        .filter(|l| !l.starts_with("#@"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    // Taking out marker lines above the change moves it up.
    let markers_above = match change {
        None => 0,
        Some(_) => BASE
            .lines()
            .take(line.saturating_sub(1))
            .filter(|l| l.starts_with("#@"))
            .count(),
    };
    (text, line - markers_above)
}

/// What the data plane compiled from `config`: everything in the snapshot except the verbatim
/// copy of the config (`spec`) and the generation.
fn fingerprint(config: &config_schema::Config) -> String {
    let snapshot = snapshot::compile(config, 1, 1, &Snapshot::empty())
        .unwrap_or_else(|errors| panic!("a valid config compiles: {errors:?}"));
    let text = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        snapshot.listeners,
        snapshot.clusters,
        snapshot.routes,
        snapshot.access_log,
        snapshot.tracing,
        snapshot.node,
        snapshot.workloads
    );
    without_arena_ids(&text)
}

/// `text` with the ids of regex arenas blanked: each compile numbers its arena from a process-wide
/// counter (the per-worker regex caches key on it), which says nothing about the config.
fn without_arena_ids(text: &str) -> String {
    const ID: &str = "RegexArena { id: ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(ID) {
        out.push_str(&rest[..at + ID.len()]);
        rest = rest[at + ID.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('_');
    }
    out.push_str(rest);
    out
}

/// Every leaf key of the schema, as `section[].key.subkey` (`[]` for every element of a list,
/// `.*` for every entry of a map of tables).
fn leaf_keys(schema: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    walk(schema, schema, "", &mut keys, 0);
    keys
}

fn walk(root: &Value, schema: &Value, path: &str, keys: &mut BTreeSet<String>, depth: usize) {
    assert!(
        depth < 32,
        "the schema nests deeper than expected at {path}"
    );
    let schema = resolve(root, schema);
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, child) in properties {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            walk(root, child, &child_path, keys, depth + 1);
        }
        return;
    }
    if let Some(items) = schema.get("items")
        && is_table(root, items)
    {
        walk(root, items, &format!("{path}[]"), keys, depth + 1);
        return;
    }
    if let Some(values) = schema.get("additionalProperties")
        && values.is_object()
        && is_table(root, values)
    {
        walk(root, values, &format!("{path}.*"), keys, depth + 1);
        return;
    }
    keys.insert(path.to_owned());
}

fn is_table(root: &Value, schema: &Value) -> bool {
    resolve(root, schema).get("properties").is_some()
}

/// Follows `$ref`s, and an optional's `anyOf`/`oneOf` with one branch besides `null`.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..32 {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let pointer = reference.strip_prefix('#').expect("local references only");
            schema = root.pointer(pointer).expect("references resolve");
            continue;
        }
        let single = ["anyOf", "oneOf", "allOf"].iter().find_map(|combinator| {
            let branches = schema.get(*combinator)?.as_array()?;
            let mut others = branches
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"));
            let first = others.next()?;
            others.next().is_none().then_some(first)
        });
        match single {
            Some(branch) => schema = branch,
            None => return schema,
        }
    }
    panic!("the schema's references go round in circles");
}

/// Whether `key` is `prefix` or lies under it. `NOT_SUPPORTED` paths (`clusters[].tls`) have the
/// form of [`leaf_keys`].
fn under(key: &str, prefix: &str) -> bool {
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}
