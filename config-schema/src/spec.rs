//! The configuration types, exactly as written in TOML.
//!
//! Every struct rejects unknown keys, so a misspelt key is an error with its line rather than a
//! silently ignored setting. Doc comments here become the descriptions in the generated JSON
//! Schema (`ringmesh.schema.json`), so they are written for operators.
//!
//! The format covers the whole mission: some sections (workload identity, TLS, authorization,
//! retries, circuit breaking, outlier detection, fault injection, rate limiting, tracing) are
//! described here before the data plane acts on them. Until it does, [`crate::support`] rejects
//! them as `not supported yet`; their types stay here so that the change that makes the data
//! plane act on one only deletes its line there.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::units::{ByteSize, Duration};

/// A whole ringmesh configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// The admin API (health, stats, config dump, reload).
    #[serde(default)]
    pub admin: AdminSpec,
    /// Threads, I/O driver and shutdown.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// The node's workload identity for mTLS (SPIFFE X.509 SVID and trust bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// Access logs, metrics and tracing.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// Sockets the proxy accepts connections on.
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// HTTP virtual hosts with their routes, matched by the request's Host.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHostSpec>,
    /// Upstream services: endpoints, load balancing, connection pools and resilience.
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
    /// Authorization policies (allow/deny by identity, source, method and path).
    #[serde(default)]
    pub authorization_policies: Vec<AuthorizationPolicySpec>,
    /// The workloads this node knows by address: where the Istio metrics' `source_*` and
    /// `destination_*` workload labels come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadSpec>,
    /// Node mode: this node's name, its capture listeners and its HBONE tunnel (see
    /// `docs/NODE-MODE.md`). Absent: ringmesh is a plain proxy with only `[[listeners]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeSpec>,
    /// Services: virtual IPs and ports whose connections ringmesh balances over workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
}

// === workloads ===

/// A workload (a pod, a VM, a process) known by its addresses. The peer address of a downstream
/// connection names the source workload; an upstream endpoint's address names the destination
/// workload. Labels of Istio's standard metrics (`source_workload`, `source_app`, ...) come from
/// here; node mode (issue 13) extends this table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The workload's name (Kubernetes: the Deployment's, e.g. `reviews-v1`): the
    /// `*_workload` label. Unique within its namespace.
    pub name: String,
    /// Its namespace: the `*_workload_namespace` label.
    pub namespace: String,
    /// Its IP addresses (no port). An address belongs to at most one workload.
    pub addresses: Vec<std::net::IpAddr>,
    /// The `app` label: `source_app` / `destination_app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The `version` label: `source_version` / `destination_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Node mode: the node the workload runs on (a `[node] name`). A workload on this node is
    /// local: its traffic is captured here and this node holds its certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Node mode: its service account; with `namespace` and the trust domain it makes the
    /// workload's SPIFFE ID `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    #[serde(default = "WorkloadSpec::default_service_account")]
    pub service_account: String,
    /// Node mode: how its node's proxy is reached. `hbone` (the default for a workload with a
    /// `node`): through the node's HBONE tunnel, mTLS with the workload's identity. `tcp` (the
    /// default without a `node`): plaintext, straight to the address — a workload outside the
    /// mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<WorkloadProtocol>,
    /// Node mode: what a local workload accepts inbound; absent: its namespace's mode in
    /// `[node] namespace_modes`, else `[node] mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PeerAuthenticationMode>,
}

impl WorkloadSpec {
    fn default_service_account() -> String {
        "default".to_owned()
    }
}

/// How a workload is reached from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadProtocol {
    /// HTTP/2 CONNECT over mTLS to port `hbone_port` of the workload's address, which its node
    /// captures (Istio ambient's HBONE).
    Hbone,
    /// Plaintext TCP straight to the workload.
    Tcp,
}

/// What a local workload accepts inbound (Istio's PeerAuthentication mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerAuthenticationMode {
    /// Only HBONE: mutual TLS with a verified workload identity. Plaintext is refused.
    Strict,
    /// HBONE, and plaintext captured on the `inbound` listener (served without an identity,
    /// `connection_security_policy="none"`).
    #[default]
    Permissive,
}

// === node mode ===

/// This node in node mode: one ringmesh per machine captures its workloads' traffic and carries
/// it between nodes in HBONE tunnels (see `docs/NODE-MODE.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// This node's name: `[[workloads]]` whose `node` is this name are local.
    pub name: String,
    /// The outbound capture listener: connections that local workloads open to anywhere,
    /// redirected here by the capture rules (`ringmesh node rules`). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<SocketAddr>,
    /// The inbound plaintext capture listener: connections from outside the mesh to local
    /// workloads (accepted for PERMISSIVE workloads only). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<SocketAddr>,
    /// The HBONE listener: tunnels from other nodes to local workloads. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbone: Option<SocketAddr>,
    /// How captured connections reach the listeners and how their original destination is
    /// known: `redirect` (nftables REDIRECT, `SO_ORIGINAL_DST`) or `tproxy` (nftables TPROXY,
    /// the accepted socket's local address).
    #[serde(default)]
    pub capture: CaptureMode,
    /// The port of every node's HBONE tunnel, on the destination workload's address.
    #[serde(default = "NodeSpec::default_hbone_port")]
    pub hbone_port: u16,
    /// `SO_MARK` on every socket ringmesh opens in node mode; the capture rules let marked
    /// packets pass, so ringmesh never captures its own traffic.
    #[serde(default = "NodeSpec::default_mark")]
    pub mark: u32,
    /// What local workloads accept inbound unless their namespace or the workload says otherwise.
    #[serde(default)]
    pub mode: PeerAuthenticationMode,
    /// The mode of every local workload in a namespace (namespace → mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_modes: BTreeMap<String, PeerAuthenticationMode>,
    /// How long connecting to a workload or a peer node's tunnel may take.
    #[serde(default = "NodeSpec::default_connect_timeout")]
    pub connect_timeout: Duration,
}

impl NodeSpec {
    fn default_hbone_port() -> u16 {
        15008
    }
    fn default_mark() -> u32 {
        0x539
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// How captured connections are delivered to ringmesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    /// nftables REDIRECT (NAT); the original destination comes from `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// nftables TPROXY; listeners are `IP_TRANSPARENT` and the local address is the original
    /// destination.
    Tproxy,
}

/// A service: virtual IPs and ports that ringmesh balances over workloads, as a Kubernetes
/// Service's cluster IP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name (`destination_service_name`).
    pub name: String,
    /// Its namespace; `workloads` are names in this namespace.
    pub namespace: String,
    /// Its virtual IPs. An address is a service's or a workload's, never both.
    pub addresses: Vec<std::net::IpAddr>,
    /// The ports it serves.
    pub ports: Vec<ServicePortSpec>,
    /// Its endpoints: names of `[[workloads]]` in `namespace`.
    pub workloads: Vec<String>,
    /// How a connection picks an endpoint: `round_robin`, `random` or `least_request`.
    #[serde(default)]
    pub lb_policy: LbPolicy,
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePortSpec {
    /// The port on the virtual IP.
    pub port: u16,
    /// The workloads' port; absent: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

// === admin and runtime ===

/// The admin API. It listens on loopback by default and never runs on a worker core's runtime.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// `IP:port` or `unix:/path/to/socket`. Port 0 picks a free port (see `--admin-address-path`).
    #[serde(default = "AdminSpec::default_address")]
    pub address: String,
    /// Bearer token for mutating endpoints, inline. Prefer `token_file` or `token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Environment variable holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the bearer token (trailing whitespace is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Admin connections served at once; more are refused.
    #[serde(default = "AdminSpec::default_max_connections")]
    pub max_connections: u32,
}

impl AdminSpec {
    fn default_address() -> String {
        "127.0.0.1:15000".to_owned()
    }
    fn default_max_connections() -> u32 {
        32
    }
}

impl Default for AdminSpec {
    fn default() -> Self {
        Self {
            address: Self::default_address(),
            token: None,
            token_env: None,
            token_file: None,
            max_connections: Self::default_max_connections(),
        }
    }
}

/// Worker threads and the I/O driver. Command-line flags override these.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Worker threads, one per core; 0 means one per available core.
    #[serde(default)]
    pub workers: u32,
    /// `auto` tries io_uring and falls back to epoll; `uring` and `epoll` force one.
    #[serde(default)]
    pub io: IoMode,
    /// io_uring setup flags. `coop_taskrun` (COOP_TASKRUN + TASKRUN_FLAG) measured cheapest here.
    #[serde(default)]
    pub uring_setup: UringSetup,
    /// io_uring submission queue entries per worker.
    #[serde(default = "RuntimeSpec::default_ring_entries")]
    pub ring_entries: u32,
    /// Pin each worker thread to its own core.
    #[serde(default = "default_true")]
    pub pin_workers: bool,
    /// How long open connections may run after SIGTERM/SIGINT before they are closed.
    #[serde(default = "RuntimeSpec::default_drain_timeout")]
    pub drain_timeout: Duration,
    /// Unix socket on which this process hands its listening sockets to a new ringmesh started
    /// with `--upgrade-from` (binary upgrade without refusing connections). Unset: no upgrades.
    /// `--upgrade-socket` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<String>,
    /// How L4 connections move bytes: `buffer` (read/write through 16–256 KiB buffers) or
    /// `splice` (zero-copy through a kernel pipe). See BENCHMARKS.md for which wins where.
    #[serde(default)]
    pub l4_copy: L4Copy,
}

/// How L4 connections move bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum L4Copy {
    /// Read into a user-space buffer, write it out.
    #[default]
    Buffer,
    /// `splice(2)` socket → pipe → socket; the bytes never enter user space.
    Splice,
}

impl RuntimeSpec {
    fn default_ring_entries() -> u32 {
        1024
    }
    fn default_drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            workers: 0,
            io: IoMode::default(),
            uring_setup: UringSetup::default(),
            ring_entries: Self::default_ring_entries(),
            pin_workers: true,
            drain_timeout: Self::default_drain_timeout(),
            upgrade_socket: None,
            l4_copy: L4Copy::default(),
        }
    }
}

/// Which I/O driver the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// io_uring when the kernel and seccomp allow it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring only; start fails if it is unavailable.
    Uring,
    /// epoll only.
    Epoll,
}

/// io_uring ring setup flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UringSetup {
    /// IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG.
    #[default]
    CoopTaskrun,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    DeferTaskrun,
    /// No flags (slowest here; kept for comparison).
    Plain,
}

fn default_true() -> bool {
    true
}

// === identity and TLS ===

/// The node's SPIFFE workload identity, used for mTLS between proxies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Trust domain, such as `cluster.local`.
    pub trust_domain: String,
    /// PEM certificate chain whose leaf carries the SPIFFE ID in its URI SAN.
    pub cert: String,
    /// PEM private key for `cert`.
    pub key: String,
    /// PEM trust bundle (CA certificates) of `trust_domain`: peers of this trust domain must chain
    /// to it. It may hold the old and the new root together during a root rotation.
    pub ca_bundle: String,
    /// Federation: other trust domains whose peers are accepted, each with its own bundle. A
    /// peer's certificate must chain to the bundle of the trust domain in its SPIFFE ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_bundles: Vec<TrustBundleSpec>,
    /// Node mode: one X.509 SVID per local service account (as ztunnel holds them). HBONE
    /// tunnels present the source workload's, and a local workload's when it is the
    /// destination. Reread with the rest of the identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountSpec>,
}

/// The certificate of one service account's workloads.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountSpec {
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// PEM certificate chain whose leaf's URI SAN is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub cert: String,
    /// PEM private key for `cert`.
    pub key: String,
}

/// The trust bundle of a federated trust domain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleSpec {
    /// The trust domain, such as `partner.example`.
    pub trust_domain: String,
    /// PEM CA certificates that SVIDs of `trust_domain` chain to.
    pub ca: String,
}

/// TLS on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// `terminate` decrypts here; `passthrough` (tcp listeners only) routes on the ClientHello's
    /// SNI without decrypting: the proxy reads the ClientHello, picks the cluster from
    /// `sni_routes`, and forwards every byte untouched, those it read first.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM certificate chain (required for `terminate` unless `[identity]` is set): the default
    /// certificate, for clients whose SNI no entry of `certificates` names, or that send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM private key for `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Certificates chosen by the SNI the client sends (exact names and `*.suffix`); the first
    /// entry naming the SNI wins, exact names before wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<SniCertificateSpec>,
    /// Lowest TLS version accepted: `"1.2"` (TLS 1.2 and 1.3) or `"1.3"` (TLS 1.3 only).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// PEM CA bundle that client certificates must chain to (enables mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// Refuse clients that present no certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Client SPIFFE IDs accepted (exact, or a `spiffe://domain/prefix/*` pattern); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_spiffe_ids: Vec<String>,
    /// ALPN protocols offered, in order of preference. Empty (the default): `h2` and `http/1.1` on
    /// `http` and `auto` listeners; none on `tcp` listeners, whose clients' bytes are copied as
    /// they come and must not be told that the proxy speaks HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// TLS passthrough: SNI host name to cluster. Names match case-insensitively; an exact name
    /// wins over a wildcard, and among wildcards the longest suffix wins. `*.example.com` stands
    /// for one or more whole labels (it matches `a.example.com` and `a.b.example.com`, not
    /// `example.com`), as Envoy's and Istio's `server_names`. A connection whose ClientHello has
    /// no SNI, an SNI no route names, or is not a well-formed TLS ClientHello goes to the
    /// listener's `cluster` (the default), or is closed when the listener has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sni_routes: BTreeMap<String, String>,
}

/// A certificate a TLS listener presents to clients that ask for one of its names (SNI).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SniCertificateSpec {
    /// Host names this certificate serves: exact (`api.example`) or `*.suffix` (`*.example`,
    /// which matches `a.example` but not `example` or `a.b.example`).
    pub server_names: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key for `cert`.
    pub key: String,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersion {
    /// TLS 1.2 (and anything newer).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// How a TLS listener treats the TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Terminate TLS at the proxy.
    #[default]
    Terminate,
    /// Forward the encrypted stream, choosing the cluster by SNI.
    Passthrough,
}

/// TLS from the proxy to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// SNI sent to the upstream, and the name its certificate is verified for. Absent: no SNI is
    /// sent and the certificate must name the endpoint's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM CA bundle to verify the upstream (default: the `[identity]` trust bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Client certificate for mTLS (default: the `[identity]` certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Private key for `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// SPIFFE IDs the upstream must present; empty = any identity in the trust bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_spiffe_ids: Vec<String>,
    /// ALPN protocols offered to the upstream. Empty (the default): `http/1.1` on HTTP/1.1
    /// connections and tcp listeners' connections, `h2` on HTTP/2 connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
}

// === telemetry ===

/// Access logs, metrics and tracing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The access log (JSON lines or Envoy-style text); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
    /// Distributed tracing (W3C trace context and B3, OTLP/HTTP export); absent = trace headers
    /// pass through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    /// The `source_workload` label of Istio metrics whose source the `[[workloads]]` table does
    /// not name (absent: `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_workload: Option<String>,
}

/// Where access logs go, in which format, and which lines are written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// `stdout`, `stderr` or a file path.
    pub path: String,
    /// `json` (one JSON object per line, the default) or `text` (`text_format`).
    #[serde(default)]
    pub format: AccessLogFormat,
    /// The line of `format = "text"`, with Envoy's `%COMMAND%` operators
    /// (`crate::access_log`); absent = Envoy's default format. A newline is added when the
    /// format does not end with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// Log L4 connections (tcp listeners, TLS passthrough, the non-HTTP traffic of auto
    /// listeners): one line when each ends.
    #[serde(default = "default_true")]
    pub tcp: bool,
    /// Which lines are written; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
    /// Percentage (0–100) of the lines passing `filter` that are written, chosen at random.
    #[serde(default = "AccessLogSpec::default_sample_percent")]
    pub sample_percent: f64,
    /// Errors (a 5xx status, or any response flag) that pass `filter` are written whatever
    /// `sample_percent` says.
    #[serde(default = "default_true")]
    pub always_log_errors: bool,
}

impl AccessLogSpec {
    fn default_sample_percent() -> f64 {
        100.0
    }
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// `text_format`, Envoy-style.
    Text,
}

/// Which access-log lines are written (Envoy's `status_code_filter`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilter {
    /// Statuses to log: each entry `404`, `>=400`, `>400`, `<=299`, `<300` or `500-599`; a line
    /// is written when its status matches any. An L4 connection's status is 0 (Envoy's
    /// `%RESPONSE_CODE%` for TCP).
    pub status: Vec<String>,
}

/// Trace sampling and export.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// Percentage of requests without an incoming sampling decision to sample (0–100).
    #[serde(default = "TracingSpec::default_sample_percent")]
    pub sample_percent: f64,
    /// OTLP/HTTP collector address (`IP:port`); absent = no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Service name reported in spans.
    #[serde(default = "TracingSpec::default_service_name")]
    pub service_name: String,
    /// Spans per OTLP export request, at most (1–8192).
    #[serde(default = "TracingSpec::default_batch_size")]
    pub batch_size: usize,
    /// The longest a span waits for its batch to fill before it is sent anyway.
    #[serde(default = "TracingSpec::default_batch_timeout")]
    pub batch_timeout: Duration,
    /// Spans waiting for export before new ones are dropped (and counted); at least
    /// `batch_size`.
    #[serde(default = "TracingSpec::default_queue_size")]
    pub queue_size: usize,
    /// Also record each L4 (tcp listener) connection as a span.
    #[serde(default)]
    pub l4_spans: bool,
}

impl TracingSpec {
    fn default_sample_percent() -> f64 {
        1.0
    }
    fn default_service_name() -> String {
        "ringmesh".to_owned()
    }
    fn default_batch_size() -> usize {
        512
    }
    fn default_batch_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_queue_size() -> usize {
        8192
    }
}

// === listeners ===

/// A socket the proxy accepts connections on. Every worker binds its own `SO_REUSEPORT` socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Unique, stable name (metrics and reloads key on it).
    pub name: String,
    /// `IP:port` to bind. Port 0 picks a free port, shared by all workers.
    pub address: SocketAddr,
    /// `tcp` forwards bytes to `cluster`; `http` parses HTTP/1.1 and HTTP/2; `auto` detects HTTP and
    /// forwards anything else to `cluster` when set.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Destination cluster for `tcp` listeners, and for non-HTTP traffic on `auto` listeners. On a
    /// tcp listener with TLS passthrough, the default for connections that no SNI route takes
    /// (absent: such connections are closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Virtual hosts served on this HTTP listener; empty = all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<String>,
    /// Connections open at once across all workers; more are closed on accept. Absent = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Close a connection with no bytes in either direction for this long (0 = never).
    #[serde(default = "ListenerSpec::default_idle_timeout")]
    pub idle_timeout: Duration,
    /// HTTP: time allowed to receive a complete request head. TLS passthrough: time allowed to
    /// receive the whole ClientHello, counted from accept (then the connection is closed).
    #[serde(default = "ListenerSpec::default_request_header_timeout")]
    pub request_header_timeout: Duration,
    /// HTTP: end a request (HTTP/1.1 exchange or HTTP/2 stream) when no body byte moved in
    /// either direction for this long, waiting for the response head included (0 = never).
    /// Envoy's `stream_idle_timeout`, with its default.
    #[serde(default = "ListenerSpec::default_stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
    /// HTTP request size limits.
    #[serde(default)]
    pub limits: HttpLimitsSpec,
    /// HTTP: how many trusted proxies in front of this one append to `X-Forwarded-For`.
    #[serde(default)]
    pub xff_trusted_hops: u32,
    /// HTTP/2 server settings and abuse limits.
    #[serde(default)]
    pub http2: Http2Spec,
    /// HTTP: normalize request paths before routing, authorization and forwarding (Envoy's
    /// `normalize_path`): RFC 3986 dot-segment removal (`/a/../b` → `/b`, `..` above the root
    /// dropped), percent-escapes of unreserved characters decoded (`%61` → `a`), the other
    /// escapes' hex upper-cased. The upstream receives the normalized path. A path with an
    /// invalid escape or an escaped control character is refused with 400. On by default (Istio's
    /// default, `BASE`): a policy on `/admin` must not be bypassed by `/./admin`.
    #[serde(default = "default_true")]
    pub normalize_path: bool,
    /// HTTP: merge runs of slashes in the path into one (`//admin` → `/admin`), Envoy's
    /// `merge_slashes`. On by default (Istio's `MERGE_SLASHES`; Envoy and Istio's `BASE` leave
    /// it off): a policy on `/admin` must not be bypassed by `//admin`.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// HTTP: what to do with `%2F` and `%5C` (escaped `/` and `\`) in a path, Envoy's
    /// `path_with_escaped_slashes_action`: `keep` (forward unchanged, the default), `reject`
    /// (400), or `decode` (to `/`, then normalize and merge as configured).
    #[serde(default)]
    pub path_with_escaped_slashes: EscapedSlashes,
    /// TLS on this listener; absent = plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// Local rate limit for the whole listener, across all workers. `tcp` listeners: new
    /// connections per second (over the limit a connection is closed at accept and counted);
    /// `http` and `auto` listeners: HTTP requests per second (over the limit: 429, flag `RL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// The `reporter` label of this listener's Istio metrics: `destination` (the proxy in front
    /// of the called workload, Istio's inbound sidecar) or `source` (the caller's side: an
    /// outbound listener, a gateway). Absent: `destination` when the listener verifies client
    /// certificates (an inbound mesh listener), else `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter: Option<Reporter>,
}

/// Which side of a call a listener reports its Istio metrics as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reporter {
    /// The server side: `reporter="destination"`.
    Destination,
    /// The client side: `reporter="source"`.
    Source,
}

impl ListenerSpec {
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    fn default_request_header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_stream_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
}

/// What a listener does with escaped slashes (`%2F`, `%5C`) in request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Forward them unchanged (Envoy's `KEEP_UNCHANGED`): `/a%2Fb` is one segment.
    #[default]
    Keep,
    /// Refuse the request with 400 (`REJECT_REQUEST`).
    Reject,
    /// Decode them to `/` before normalizing (`UNESCAPE_AND_FORWARD`): `/a%2Fb` is `/a/b`.
    Decode,
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Opaque TCP to `cluster`.
    Tcp,
    /// HTTP/1.1 and HTTP/2.
    Http,
    /// Detect HTTP/2 preface, HTTP/1 or opaque bytes per connection.
    #[default]
    Auto,
}

/// HTTP request size limits, the same for HTTP/1.1 and HTTP/2 (an HTTP/2 head is measured as it
/// would be in HTTP/1.1). Exceeding one answers 414, 431 or 413 and closes the connection (HTTP/2:
/// the stream).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpLimitsSpec {
    /// Longest request line (414 beyond).
    #[serde(default = "HttpLimitsSpec::default_max_request_line")]
    pub max_request_line: ByteSize,
    /// Largest request head, request line included (431 beyond).
    #[serde(default = "HttpLimitsSpec::default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields in a request (431 beyond).
    #[serde(default = "HttpLimitsSpec::default_max_headers")]
    pub max_headers: u32,
    /// Largest request body unless a route sets its own (413 beyond). 0 = unlimited.
    #[serde(default)]
    pub max_request_body: ByteSize,
}

impl HttpLimitsSpec {
    fn default_max_request_line() -> ByteSize {
        ByteSize::kib(8)
    }
    fn default_max_header_bytes() -> ByteSize {
        ByteSize::kib(60)
    }
    fn default_max_headers() -> u32 {
        100
    }
}

impl Default for HttpLimitsSpec {
    fn default() -> Self {
        Self {
            max_request_line: Self::default_max_request_line(),
            max_header_bytes: Self::default_max_header_bytes(),
            max_headers: Self::default_max_headers(),
            max_request_body: ByteSize(0),
        }
    }
}

/// HTTP/2 server settings and abuse limits (defaults follow Envoy's edge recommendations).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2Spec {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    #[serde(default = "Http2Spec::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    #[serde(default = "Http2Spec::default_max_header_list_size")]
    pub max_header_list_size: ByteSize,
    /// Initial stream flow-control window.
    #[serde(default = "Http2Spec::default_initial_stream_window")]
    pub initial_stream_window: ByteSize,
    /// Initial connection flow-control window.
    #[serde(default = "Http2Spec::default_initial_connection_window")]
    pub initial_connection_window: ByteSize,
    /// Streams reset by the client before completion that a connection may accumulate before
    /// GOAWAY(ENHANCE_YOUR_CALM) (rapid reset).
    #[serde(default = "Http2Spec::default_max_pending_accept_reset_streams")]
    pub max_pending_accept_reset_streams: u32,
    /// Streams this proxy may reset because of client protocol errors before GOAWAY.
    #[serde(default = "Http2Spec::default_max_local_error_reset_streams")]
    pub max_local_error_reset_streams: u32,
    /// Bytes buffered per stream toward a slow peer before reads pause.
    #[serde(default = "Http2Spec::default_max_send_buffer")]
    pub max_send_buffer: ByteSize,
    /// Control frames (PING, SETTINGS, PRIORITY, their ACKs, unknown frame types, and
    /// WINDOW_UPDATEs beyond what the data sent explains) per second a client may send,
    /// sustained; beyond it (and the burst) the connection gets GOAWAY(ENHANCE_YOUR_CALM).
    #[serde(default = "Http2Spec::default_control_frames_per_second")]
    pub control_frames_per_second: u32,
    /// Control frames allowed in a burst above the sustained rate.
    #[serde(default = "Http2Spec::default_control_frame_burst")]
    pub control_frame_burst: u32,
    /// Consecutive frames carrying nothing (empty DATA, HEADERS or CONTINUATION without an end
    /// flag) before the connection is closed.
    #[serde(default = "Http2Spec::default_max_consecutive_empty_frames")]
    pub max_consecutive_empty_frames: u32,
}

impl Http2Spec {
    fn default_max_concurrent_streams() -> u32 {
        100
    }
    fn default_max_header_list_size() -> ByteSize {
        ByteSize::kib(64)
    }
    fn default_initial_stream_window() -> ByteSize {
        ByteSize::kib(64)
    }
    fn default_initial_connection_window() -> ByteSize {
        ByteSize::mib(1)
    }
    fn default_max_pending_accept_reset_streams() -> u32 {
        100
    }
    fn default_max_local_error_reset_streams() -> u32 {
        1024
    }
    fn default_max_send_buffer() -> ByteSize {
        ByteSize::kib(400)
    }
    fn default_control_frames_per_second() -> u32 {
        100
    }
    fn default_control_frame_burst() -> u32 {
        1000
    }
    fn default_max_consecutive_empty_frames() -> u32 {
        10
    }
}

impl Default for Http2Spec {
    fn default() -> Self {
        Self {
            max_concurrent_streams: Self::default_max_concurrent_streams(),
            max_header_list_size: Self::default_max_header_list_size(),
            initial_stream_window: Self::default_initial_stream_window(),
            initial_connection_window: Self::default_initial_connection_window(),
            max_pending_accept_reset_streams: Self::default_max_pending_accept_reset_streams(),
            max_local_error_reset_streams: Self::default_max_local_error_reset_streams(),
            max_send_buffer: Self::default_max_send_buffer(),
            control_frames_per_second: Self::default_control_frames_per_second(),
            control_frame_burst: Self::default_control_frame_burst(),
            max_consecutive_empty_frames: Self::default_max_consecutive_empty_frames(),
        }
    }
}

// === virtual hosts and routes ===

/// A set of routes served for the request hosts in `domains`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostSpec {
    /// Unique, stable name.
    pub name: String,
    /// Hosts served: exact (`api.example.com`), suffix wildcard (`*.example.com`) or `*` (default).
    /// A port in the request's Host is ignored.
    pub domains: Vec<String>,
    /// Routes. Precedence does not depend on order, except between routes that tie: path exact,
    /// then regex, then prefix (longest first, `/` last), then more header/query/method matchers,
    /// then file order.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Local rate limit for the whole virtual host, across all workers (429 over the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A route: what a request must look like, and what to do with it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Stable name for metrics and logs. Default: `<virtual host>#<index>`, which changes when routes
    /// are reordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The conditions; all must hold. Empty = every request.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatchSpec,

    /// Action: forward to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Action: split requests across clusters by weight (canary, blue/green).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<WeightedClusterSpec>,
    /// Action: answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectSpec>,
    /// Action: answer directly with a fixed status and body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseSpec>,

    /// Rewrite the path before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteSpec>,
    /// Header changes on the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderMutationSpec,
    /// Header changes on the response sent downstream.
    #[serde(default)]
    pub response_headers: HeaderMutationSpec,
    /// Copy a share of requests to a shadow cluster; its answers are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// Total time for the request, retries included (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    /// Fault injection for resilience testing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
    /// Local rate limit for this route, across all workers (429 over the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Largest request body for this route (413 beyond); overrides the listener limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
}

/// Request conditions. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchSpec {
    /// The whole path (query excluded) equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// The path starts with these segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The whole path matches this regular expression (RE2 syntax, anchored at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Request methods accepted; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// Query parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatchSpec>,
    /// The client's verified identity, in Istio's principal form (its SPIFFE ID without
    /// `spiffe://`: `td/ns/<ns>/sa/<sa>`; the scheme may be written), matches one of these:
    /// exact, `prefix*`, `*suffix`, or `*` (any verified identity). A request on a connection
    /// without one (plaintext, TLS without a client certificate, a certificate without a SPIFFE
    /// ID) matches none. Empty = any client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_principals: Vec<String>,
}

/// A condition on one request header (names are case-insensitive). Give exactly one of `exact`,
/// `prefix`, `regex` or `present`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    /// Header name.
    pub name: String,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A condition on one query parameter. Give exactly one of `exact`, `regex` or `present`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryMatchSpec {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// The (percent-decoded) value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the parameter is present; `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// One arm of a weighted split.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterSpec {
    /// Destination cluster.
    pub cluster: String,
    /// Relative weight; the share is weight / sum of weights.
    pub weight: u32,
}

/// A redirect answer. Unset parts keep the request's values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "RedirectSpec::default_status")]
    pub status: u16,
    /// New scheme (`http` or `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// New path (the query is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl RedirectSpec {
    fn default_status() -> u16 {
        301
    }
}

/// A fixed answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    /// HTTP status (100–599).
    pub status: u16,
    /// Response body.
    #[serde(default)]
    pub body: String,
    /// Content-Type of the body.
    #[serde(default = "DirectResponseSpec::default_content_type")]
    pub content_type: String,
}

impl DirectResponseSpec {
    fn default_content_type() -> String {
        "text/plain".to_owned()
    }
}

/// Path rewrite. Give exactly one of `prefix` and `full_path`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Replace the matched `path_prefix` with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Replace the whole path (the query is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_path: Option<String>,
}

/// Header changes, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutationSpec {
    /// Headers appended (existing values are kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Headers replaced (existing values are dropped).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Request mirroring to a shadow cluster (fire and forget; the Host gets a `-shadow` suffix).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// Shadow cluster.
    pub cluster: String,
    /// Share of requests mirrored, 0–100.
    #[serde(default = "MirrorSpec::default_percent")]
    pub percent: f64,
}

impl MirrorSpec {
    fn default_percent() -> f64 {
        100.0
    }
}

/// Retries with exponential backoff, bounded by the cluster's retry budget
/// (`clusters[].retry_budget`). Envoy's and Istio's semantics: see `docs/RESILIENCE.md`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first try (Istio's `attempts`): 2 means at most three tries. At most 10.
    pub attempts: u32,
    /// Time allowed per try, from its start until its response is complete; a try that runs out
    /// may be retried (conditions `5xx`, `gateway-error`, `reset`). Unset: only the route's
    /// `timeout`, which covers all tries together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Conditions that allow a retry (Envoy's `retry_on` names).
    #[serde(default = "RetrySpec::default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Response statuses retried under `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// First backoff interval. The n-th retry waits a random time between 0 and
    /// `backoff × 2^(n-1)`, capped at `max_backoff` (full jitter, as Envoy).
    #[serde(default = "RetrySpec::default_backoff")]
    pub backoff: Duration,
    /// Longest backoff interval (default: 10 × `backoff`, as Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
}

impl RetrySpec {
    fn default_retry_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure, RetryOn::RefusedStream]
    }
    fn default_backoff() -> Duration {
        Duration::from_millis(25)
    }
}

/// A condition under which a request may be retried (Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response, and no response at all: connect failure, reset, refused stream, per-try
    /// timeout.
    #[serde(rename = "5xx")]
    ServerError,
    /// A 502, 503 or 504 response, a connect failure, and a per-try timeout.
    GatewayError,
    /// The upstream connection could not be made.
    ConnectFailure,
    /// The upstream reset or closed the connection or stream before its response head, or the
    /// try ran out of its per-try timeout before the head.
    Reset,
    /// HTTP/2 REFUSED_STREAM or a GOAWAY that excludes the stream (never processed).
    RefusedStream,
    /// A 409 response.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// A response whose status is in `retriable_status_codes`.
    RetriableStatusCodes,
    /// gRPC status CANCELLED (1) in the response headers.
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED (4) in the response headers.
    DeadlineExceeded,
    /// gRPC status RESOURCE_EXHAUSTED (8) in the response headers.
    ResourceExhausted,
    /// gRPC status UNAVAILABLE (14) in the response headers.
    Unavailable,
}

/// How many retries a cluster takes, whatever its routes ask (Linkerd's retry budget): within
/// any `ttl`, retries to the cluster are at most `ratio` × the requests sent to it by routes that
/// retry, plus `min_retries_per_second` × `ttl`. Counted for the whole process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries allowed per request, 0–1 (0.2: one retry per five requests).
    #[serde(default = "RetryBudgetSpec::default_ratio")]
    pub ratio: f64,
    /// Retries allowed per second whatever the ratio, so that a cluster with little traffic can
    /// still retry.
    #[serde(default = "RetryBudgetSpec::default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    /// The window over which requests and retries are counted, 1–60 s.
    #[serde(default = "RetryBudgetSpec::default_ttl")]
    pub ttl: Duration,
}

impl RetryBudgetSpec {
    fn default_ratio() -> f64 {
        0.2
    }
    fn default_min_retries_per_second() -> u32 {
        10
    }
    fn default_ttl() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        Self {
            ratio: Self::default_ratio(),
            min_retries_per_second: Self::default_min_retries_per_second(),
            ttl: Self::default_ttl(),
        }
    }
}

/// Fault injection (Istio `HTTPFaultInjection`). Delays and aborts apply to a share of requests,
/// each drawn on its own: a request may be delayed, aborted, or delayed and then aborted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Only requests meeting all these header conditions are subject to the fault (to test in
    /// production on one caller); empty = every request of the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// Delay a share of requests before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelaySpec>,
    /// Answer a share of requests with an error instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortSpec>,
}

impl FaultSpec {
    fn all() -> f64 {
        100.0
    }
}

/// A fixed delay on a share of requests, before the request goes upstream. The delay does not
/// count against the route timeout or the stream idle timeout.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelaySpec {
    /// Share of requests delayed, 0–100 (default: all, as in Istio when no percentage is given).
    #[serde(default = "FaultSpec::all")]
    pub percent: f64,
    /// How long.
    pub fixed: Duration,
}

/// An error answer on a share of requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortSpec {
    /// Share of requests aborted, 0–100 (default: all, as in Istio when no percentage is given).
    #[serde(default = "FaultSpec::all")]
    pub percent: f64,
    /// HTTP status (200–599).
    pub status: u16,
    /// gRPC status for gRPC requests, answered trailers-only (default: derived from `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

/// A local rate limit: a token bucket shared by all workers of the process (exact whichever
/// worker the traffic lands on). Over the limit a request gets 429 with `x-ratelimit-*` headers
/// (gRPC: `RESOURCE_EXHAUSTED`) and the access-log flag `RL`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests (tcp listeners: connections) per second.
    pub requests_per_second: u32,
    /// Bucket size: how many may come at once after a quiet period (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per key instead of one for everyone: `"client_ip"` (the peer, or the trusted
    /// `x-forwarded-for` entry) or `{ header = "x-user" }` (the header's value; requests without
    /// it share one bucket). Keys hash into a fixed table of 16384 buckets per limit, so memory
    /// stays bounded; keys that collide share a bucket (stricter, never looser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKeySpec>,
}

/// What a keyed rate limit keeps one bucket per.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RateLimitKeySpec {
    /// The client's IP address.
    ClientIp,
    /// The value of this request header (HTTP only).
    Header(String),
}

// === clusters ===

/// An upstream service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Unique, stable name (pools, health and metrics survive reloads by name).
    pub name: String,
    /// Endpoints: `"IP:port"` or `{ address = "IP:port", weight = 2 }`.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// How a request or connection picks an endpoint.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// What `ring_hash` and `maglev` hash on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policy: Option<HashPolicySpec>,
    /// HTTP version spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time allowed for a TCP connect; on failure the next endpoint is tried. Default 5 s, as
    /// Envoy's: Linux retransmits a dropped SYN after 1 s and again 2 s later, so a shorter
    /// timeout turns one full accept queue into a failed request.
    #[serde(default = "ClusterSpec::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Per-core connection pool.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Limits that fail fast instead of queueing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Passive health checking: eject endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// The retry budget: retries to this cluster are bounded by it, whatever the routes ask
    /// (default: 20 % of requests plus 10 per second, over 10 s).
    #[serde(default)]
    pub retry_budget: RetryBudgetSpec,
    /// Active health checks: one checker per process probes every endpoint; an endpoint that
    /// fails `unhealthy_threshold` checks in a row gets no traffic until it passes
    /// `healthy_threshold` in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Panic threshold, in percent: when fewer than this share of the endpoints are usable (not
    /// ejected by outlier detection, not failing active health checks), requests and connections
    /// are balanced over all endpoints, as Envoy does, rather than overloading the few left. 0
    /// turns panic mode off: with no usable endpoint the answer is 503 `UH`. Default 50, as
    /// Envoy.
    #[serde(default = "ClusterSpec::default_panic_threshold")]
    pub panic_threshold: u32,
    /// TLS to the endpoints; absent = plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

impl ClusterSpec {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    fn default_panic_threshold() -> u32 {
        50
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// `IP:port`.
    pub address: SocketAddr,
    /// Relative weight for weighted policies.
    #[serde(default = "EndpointSpec::default_weight")]
    pub weight: u32,
}

impl EndpointSpec {
    fn default_weight() -> u32 {
        1
    }
}

/// The table form of an endpoint, so that `deny_unknown_fields` applies to it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: SocketAddr,
    #[serde(default = "EndpointSpec::default_weight")]
    weight: u32,
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"IP:port\" or { address = \"IP:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
                let address = v.parse().map_err(|_| {
                    E::custom(format!(
                        "invalid endpoint {v:?}: expected IP:port (host names are not resolved)"
                    ))
                })?;
                Ok(EndpointSpec {
                    address,
                    weight: EndpointSpec::default_weight(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EndpointSpec, A::Error> {
                let table =
                    EndpointTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec {
                    address: table.address,
                    weight: table.weight,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// In turn, in proportion to endpoint weights (smooth weighted round robin).
    WeightedRoundRobin,
    /// Power of two choices: the less loaded of two random endpoints.
    LeastRequest,
    /// Consistent hashing on a ring (Ketama); needs `hash_policy`.
    RingHash,
    /// Maglev consistent hashing; needs `hash_policy`.
    Maglev,
    /// Uniformly random.
    Random,
}

/// What consistent hashing hashes on. Give exactly one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashPolicySpec {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// HTTP version used toward a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    H1,
    /// HTTP/2 (prior knowledge over plaintext, ALPN over TLS).
    H2,
    /// The same version the client used.
    Auto,
}

/// Per-core upstream connection pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Connections per endpoint per core, busy and idle together.
    #[serde(default = "PoolSpec::default_max_connections_per_endpoint")]
    pub max_connections_per_endpoint: u32,
    /// Idle connections kept per endpoint per core. Default: as many as may be open, so that a
    /// burst of concurrent requests (an HTTP/2 client's streams fanned out over HTTP/1.1) does
    /// not close and reopen connections; `idle_timeout` retires the ones left over.
    #[serde(default = "PoolSpec::default_max_idle_per_endpoint")]
    pub max_idle_per_endpoint: u32,
    /// Close pooled connections idle for this long.
    #[serde(default = "PoolSpec::default_idle_timeout")]
    pub idle_timeout: Duration,
    /// HTTP/2: streams per upstream connection before another connection is opened.
    #[serde(default = "PoolSpec::default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
}

impl PoolSpec {
    fn default_max_connections_per_endpoint() -> u32 {
        1024
    }
    fn default_max_idle_per_endpoint() -> u32 {
        Self::default_max_connections_per_endpoint()
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_max_streams_per_connection() -> u32 {
        100
    }
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_connections_per_endpoint: Self::default_max_connections_per_endpoint(),
            max_idle_per_endpoint: Self::default_max_idle_per_endpoint(),
            idle_timeout: Self::default_idle_timeout(),
            max_streams_per_connection: Self::default_max_streams_per_connection(),
        }
    }
}

/// Circuit-breaker thresholds of a cluster, across all workers of the process. Exceeding one
/// answers 503 (`UO`, `x-envoy-overloaded: true`; gRPC `UNAVAILABLE`) at once instead of
/// queueing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Upstream connections open at once, across all workers (HTTP/1.1 and HTTP/2 pooled
    /// connections, and L4 connections of tcp listeners). Beyond it no new connection is opened:
    /// the request gets 503 with flag `UO` and `x-envoy-overloaded: true` (gRPC `UNAVAILABLE`); an
    /// L4 connection is closed. Default 1024, as Envoy.
    #[serde(default = "CircuitBreakerSpec::default_limit")]
    pub max_connections: u32,
    /// Requests waiting for a connection or stream (from checkout until one is at hand, the
    /// connect included), across all workers; beyond it, 503 `UO` at once. Default 1024.
    #[serde(default = "CircuitBreakerSpec::default_limit")]
    pub max_pending_requests: u32,
    /// Requests in flight to the cluster (each attempt, from checkout to the end of its
    /// response), across all workers; beyond it, 503 `UO` at once. Default 1024.
    #[serde(default = "CircuitBreakerSpec::default_limit")]
    pub max_requests: u32,
    /// Retries in flight to the cluster, across all workers; a retry beyond it is not made.
    /// Default 3, as Envoy.
    #[serde(default = "CircuitBreakerSpec::default_max_retries")]
    pub max_retries: u32,
}

impl CircuitBreakerSpec {
    fn default_limit() -> u32 {
        1024
    }
    fn default_max_retries() -> u32 {
        3
    }
}

/// Outlier detection (passive health checking): an endpoint that keeps failing is ejected — it
/// gets no traffic — for `base_ejection_time × times ejected` (at most `max_ejection_time`).
/// Observations from every worker count toward one set of counters per endpoint, and an ejection
/// applies to every worker. Local-origin failures (connect errors, resets, timeouts) have their
/// own counter, as Envoy's `split_external_local_origin_errors`. Each ejection and return is
/// logged.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx responses from an endpoint that eject it; 0 turns this check off.
    /// Default 5, as Envoy.
    #[serde(default = "OutlierDetectionSpec::default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway failures (responses 502, 503 and 504) that eject an endpoint; 0 turns
    /// this check off. Default 5, as Envoy (which, unlike ringmesh, enforces it only when
    /// `enforcing_consecutive_gateway_failure` is raised from its default 0).
    #[serde(default = "OutlierDetectionSpec::default_consecutive")]
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (connect refused or timed out, the connection reset or
    /// closed before or during the response, the route timeout) that eject an endpoint; 0 turns
    /// this check off. Default 5, as Envoy.
    #[serde(default = "OutlierDetectionSpec::default_consecutive")]
    pub consecutive_local_origin_failure: u32,
    /// How often ejections are re-evaluated: an endpoint whose ejection time has passed is
    /// returned (and logged) at the next sweep, and the ejection multiplier of an endpoint that
    /// stayed in decreases by one per interval. (Traffic returns to it as soon as its time has
    /// passed, whatever the interval.) Default 10 s, as Envoy.
    #[serde(default = "OutlierDetectionSpec::default_interval")]
    pub interval: Duration,
    /// Ejection time; multiplied by the number of times the endpoint was ejected. Default 30 s,
    /// as Envoy.
    #[serde(default = "OutlierDetectionSpec::default_base_ejection_time")]
    pub base_ejection_time: Duration,
    /// The longest ejection (if shorter than `base_ejection_time`, that is the longest).
    /// Default 300 s, as Envoy.
    #[serde(default = "OutlierDetectionSpec::default_max_ejection_time")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percentage of the cluster; at least one endpoint can
    /// always be ejected, as in Envoy. Default 10.
    #[serde(default = "OutlierDetectionSpec::default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl OutlierDetectionSpec {
    fn default_consecutive() -> u32 {
        5
    }
    fn default_interval() -> Duration {
        Duration::from_secs(10)
    }
    fn default_base_ejection_time() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_ejection_time() -> Duration {
        Duration::from_secs(300)
    }
    fn default_max_ejection_percent() -> u32 {
        10
    }
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP/1.1 `GET path` with `host` (`connection: close`); the check passes when the
    /// status is one of `expected_statuses`. Speak HTTP/1.1 on the endpoints' port (an
    /// HTTP/2-only endpoint fails it: use `tcp` there).
    #[default]
    Http,
    /// A TCP connect; the check passes when the connection is accepted.
    Tcp,
}

/// Active health checking of a cluster's endpoints. The checks run on one thread per process
/// (not once per worker); their verdict applies to every worker at once. Endpoints start healthy
/// (a proxy that started with every endpoint unhealthy would answer 503 until the first checks
/// passed) and are taken out after `unhealthy_threshold` failed checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// `http` (default) or `tcp`.
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// HTTP checks: the request path. Default `/`.
    #[serde(default = "HealthCheckSpec::default_path")]
    pub path: String,
    /// HTTP checks: the `Host` header. Default: the cluster's name, as Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP checks: statuses that pass. Default `[200]`, as Envoy.
    #[serde(default = "HealthCheckSpec::default_expected_statuses")]
    pub expected_statuses: Vec<u16>,
    /// Time between the end of one check of an endpoint and the start of the next. Default 5 s.
    #[serde(default = "HealthCheckSpec::default_interval")]
    pub interval: Duration,
    /// Time allowed for one check (connect, request and status line); longer is a failure.
    /// Default 1 s.
    #[serde(default = "HealthCheckSpec::default_timeout")]
    pub timeout: Duration,
    /// Checks that must pass in a row before an unhealthy endpoint gets traffic again.
    /// Default 2.
    #[serde(default = "HealthCheckSpec::default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Checks that must fail in a row before an endpoint gets no traffic. Default 3.
    #[serde(default = "HealthCheckSpec::default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Up to this much random time added to each interval, so that checks of many endpoints
    /// (and many proxies) spread out. Default 0 s.
    #[serde(default = "HealthCheckSpec::default_jitter")]
    pub jitter: Duration,
}

impl HealthCheckSpec {
    fn default_path() -> String {
        "/".to_owned()
    }
    fn default_expected_statuses() -> Vec<u16> {
        vec![200]
    }
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_healthy_threshold() -> u32 {
        2
    }
    fn default_unhealthy_threshold() -> u32 {
        3
    }
    fn default_jitter() -> Duration {
        Duration::from_secs(0)
    }
}

// === authorization ===

/// An authorization policy with Istio's AuthorizationPolicy semantics (as ztunnel evaluates
/// them): a request (or, on a tcp listener, a connection) is refused if any `deny` policy
/// matches; otherwise, if any `allow` policy applies to its listener, one of them must match;
/// `audit` policies only mark what they match in the access log and metrics. See
/// `docs/AUTHORIZATION.md`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Unique name: the policy named in access logs and the `policy` label of the
    /// `ringmesh_authz_*_total` metrics.
    pub name: String,
    /// `allow`, `deny` or `audit`.
    pub action: AuthorizationAction,
    /// Listeners the policy applies to; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
    /// The policy matches what matches any rule. No rules: the policy matches nothing (an
    /// `allow` policy without rules therefore denies everything on its listeners, as in Istio);
    /// `rules = [{}]` matches everything.
    #[serde(default)]
    pub rules: Vec<AuthorizationRuleSpec>,
}

/// What a policy does with what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationAction {
    /// Let matching requests through; once any allow policy applies to a listener, requests that
    /// match none are refused.
    Allow,
    /// Refuse matching requests (403, flag `RBAC`; gRPC `PERMISSION_DENIED`) and connections
    /// (closed). Checked before allow policies.
    Deny,
    /// Mark matching requests in the access log (`authz_audit`) and count them; no effect on the
    /// decision.
    Audit,
}

/// One rule: `from`, `to` and `when` must all match (an empty list matches anything). Within
/// `from` and `to` any one element must match; all `when` conditions must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRuleSpec {
    /// Sources; the rule matches a source that matches any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthorizationSourceSpec>,
    /// Operations; the rule matches a request that matches any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthorizationOperationSpec>,
    /// Further conditions, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<AuthorizationConditionSpec>,
}

/// Who sends: every field given must match. Strings match exactly, by prefix (`abc*`), by
/// suffix (`*abc`), or `*` (present).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSourceSpec {
    /// Peer identities in Istio's form `<trust-domain>/ns/<namespace>/sa/<service-account>`
    /// (a `spiffe://` prefix is accepted); `*` = any authenticated peer. A peer without an
    /// identity (plaintext) matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Matches a peer whose identity matches none of these (a peer without one included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces, taken from the identity's `/ns/<namespace>/` segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Matches a peer whose namespace matches none of these (a peer without one included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// The connection's source address, as CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single
    /// addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Matches a source address in none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// What is asked for: every field given must match. `hosts`, `methods` and `paths` (and their
/// `not_` forms) exist only in HTTP; on opaque TCP a rule using them never matches in an `allow`
/// or `audit` policy and matches (by its other fields) in a `deny` policy — fail closed, as Istio.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationOperationSpec {
    /// Request hosts (Host or `:authority`, the port ignored unless written), case-insensitive:
    /// exact, `*.example.com`, `api.*`, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Matches a host that matches none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports: the port of the listener the connection arrived on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Matches a destination port not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    /// Request methods (`GET`, ...), exactly as sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Matches a method not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths after normalization (see the listener's `normalize_path`), without the
    /// query: exact, prefix (`/api/*`), suffix (`*.png`) or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Matches a path that matches none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Compare `paths` and `not_paths` ignoring ASCII case (`/ADMIN` matches `/admin`). Off by
    /// default, as in Istio, whose paths are case-sensitive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paths_ignore_case: bool,
}

/// One condition on an attribute of the request or connection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConditionSpec {
    /// The attribute: `request.headers[<name>]` (HTTP only), `source.ip` and `remote.ip`
    /// (CIDRs; `remote.ip` is the client after `xff_trusted_hops`), `source.principal`,
    /// `source.namespace`, `destination.port`, or `connection.sni`.
    pub key: String,
    /// The condition holds when the attribute matches any of these (exact, `abc*`, `*abc`, `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The condition holds when the attribute matches none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}
