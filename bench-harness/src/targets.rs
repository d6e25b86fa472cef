//! The targets of a comparison: direct (no proxy), ringmesh, nginx and HAProxy — and, for the L4
//! scenarios, ringmesh with `l4_copy = "splice"` to weigh the zero-copy path against buffers.
//!
//! The harness writes every proxy's configuration itself, with equivalent settings, so nobody
//! hand-tunes one side (BENCH-METHOD.md, rule 3):
//!
//! | setting | ringmesh | nginx | HAProxy |
//! |---|---|---|---|
//! | workers | `--workers N` | `worker_processes N` | `nbthread N` |
//! | upstream keep-alive | per-core pool (default) | `keepalive 1024`, `proxy_http_version 1.1`, `proxy_set_header Connection ""` | `http-reuse always` |
//! | logs | access log off (default) | `access_log off`, errors only | no `log` lines |
//! | client keep-alive | unlimited | `keepalive_requests 1000000` | unlimited |
//! | TLS (`tls`, `mtls`) | `[listeners.tls]` `cert`, `key`, `min_version = "1.2"`, `alpn = ["http/1.1"]` | `listen … ssl`, `ssl_protocols TLSv1.2 TLSv1.3`, `ssl_session_cache shared:SSL:10m`, `ssl_session_tickets on` | `bind … ssl crt <pem> alpn http/1.1 ssl-min-ver TLSv1.2` (cache and tickets on by default) |
//! | client certificates (`mtls`) | `client_ca`, `require_client_cert = true` | `ssl_client_certificate`, `ssl_verify_client on` | `ca-file <ca> verify required` |
//!
//! Every proxy runs as a child process pinned with `taskset` to the proxy cores, in a scratch
//! directory that holds its config and log. A target that cannot start is *skipped* with the
//! reason (missing binary, config rejected, readiness timeout, log excerpt), never aborting the
//! comparison.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::load::{self, LoadSpec, Mode, NoMonitor, Protocol};
use crate::runtime::Io;
use crate::sys;
use crate::tls::{self, ClientTls, PkiFiles};

/// How long a proxy gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a proxy gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A target kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// The generator talks to the upstream with no proxy in between.
    Direct,
    /// ringmesh.
    Ringmesh,
    /// ringmesh with `runtime.l4_copy = "splice"`: L4 scenarios only, to measure the zero-copy
    /// path against the buffered copy in the same run.
    RingmeshSplice,
    /// ringmesh with every resilience policy configured on its route and cluster but none
    /// triggering (the upstream answers 200 at once): HTTP scenarios only, to measure what the
    /// policies cost against plain ringmesh in the same run.
    RingmeshPolicies,
    /// ringmesh with tracing on: every request sampled (`sample_percent = 100`) and its spans
    /// exported over OTLP/HTTP to the bench upstream (which answers the POSTs with 200): HTTP
    /// scenarios only, to measure what tracing costs against plain ringmesh in the same run.
    RingmeshTraced,
    /// nginx.
    Nginx,
    /// HAProxy.
    Haproxy,
}

impl TargetKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Ringmesh => "ringmesh",
            TargetKind::RingmeshSplice => "ringmesh-splice",
            TargetKind::RingmeshPolicies => "ringmesh-policies",
            TargetKind::RingmeshTraced => "ringmesh-traced",
            TargetKind::Nginx => "nginx",
            TargetKind::Haproxy => "haproxy",
        }
    }

    /// Display name.
    pub fn title(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Ringmesh => "ringmesh",
            TargetKind::RingmeshSplice => "ringmesh (splice)",
            TargetKind::RingmeshPolicies => "ringmesh (policies)",
            TargetKind::RingmeshTraced => "ringmesh (traced)",
            TargetKind::Nginx => "nginx",
            TargetKind::Haproxy => "HAProxy",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// What a proxy's listener speaks to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Front {
    /// HTTP/1.1 (to an HTTP/1.1 upstream).
    Http1,
    /// h2c with prior knowledge (to an HTTP/1.1 upstream).
    H2,
    /// Opaque TCP.
    Tcp,
    /// HTTPS/1.1: TLS terminated by the proxy, plaintext HTTP/1.1 to the upstream.
    Tls,
    /// [`Front::Tls`] with client certificates required and verified against the harness's CA.
    Mtls,
}

impl Front {
    /// The front a load protocol needs.
    pub fn for_protocol(p: Protocol) -> Front {
        match p {
            Protocol::Http1 => Front::Http1,
            Protocol::H2 => Front::H2,
            Protocol::Echo => Front::Tcp,
        }
    }

    /// Whether the listener terminates TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Front::Tls | Front::Mtls)
    }
}

/// One proxy configuration to generate.
#[derive(Debug, Clone)]
pub struct ProxyPlan {
    /// What the listener speaks.
    pub front: Front,
    /// Port to listen on (127.0.0.1); ringmesh binds port 0 and reports it instead.
    pub port: u16,
    /// Where to forward.
    pub upstream: SocketAddr,
    /// Worker processes / threads.
    pub workers: usize,
    /// ringmesh only: L4 copies with `splice(2)` instead of buffers.
    pub splice: bool,
    /// ringmesh only: every resilience policy configured, none triggering.
    pub policies: bool,
    /// ringmesh only: every request traced, spans exported to the upstream's OTLP/HTTP path.
    pub traced: bool,
    /// Certificates for [`Front::Tls`] and [`Front::Mtls`].
    pub tls: Option<PkiFiles>,
}

/// What the `tls` and `mtls` scenarios need: the PKI's files for the proxies and the generator's
/// client configs.
#[derive(Debug, Clone)]
pub struct BenchTls {
    /// Server certificate, key, CA.
    pub files: PkiFiles,
    /// Without a client certificate (`tls`).
    pub client: ClientTls,
    /// With the client certificate (`mtls`).
    pub mtls_client: ClientTls,
}

impl BenchTls {
    /// The client config for `front`.
    pub fn client_for(&self, front: Front) -> Option<&ClientTls> {
        match front {
            Front::Tls => Some(&self.client),
            Front::Mtls => Some(&self.mtls_client),
            _ => None,
        }
    }
}

/// nginx.conf for `plan`, with its pid, logs and temp files under `dir`.
pub fn nginx_config(plan: &ProxyPlan, dir: &Path, stream_module: Option<&Path>) -> String {
    let d = dir.display();
    let mut c = String::new();
    if let (Front::Tcp, Some(module)) = (plan.front, stream_module) {
        c.push_str(&format!("load_module {};\n", module.display()));
    }
    c.push_str(&format!(
        "worker_processes {workers};\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         worker_rlimit_nofile 16384;\n\
         events {{\n    worker_connections 4096;\n}}\n",
        workers = plan.workers
    ));
    match plan.front {
        Front::Tcp => c.push_str(&format!(
            "stream {{\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       proxy_pass {up};\n\
             \x20   }}\n\
             }}\n",
            port = plan.port,
            up = plan.upstream
        )),
        Front::Http1 | Front::H2 | Front::Tls | Front::Mtls => c.push_str(&format!(
            "http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy_temp;\n\
             \x20   fastcgi_temp_path {d}/fastcgi_temp;\n\
             \x20   uwsgi_temp_path {d}/uwsgi_temp;\n\
             \x20   scgi_temp_path {d}/scgi_temp;\n\
             \x20   keepalive_requests 1000000;\n\
             \x20   keepalive_timeout 300s;\n\
             \x20   upstream bench_upstream {{\n\
             \x20       server {up};\n\
             \x20       keepalive 1024;\n\
             \x20       keepalive_requests 1000000;\n\
             \x20       keepalive_timeout 300s;\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port}{h2};\n\
             {tls}\
             \x20       location / {{\n\
             \x20           proxy_pass http://bench_upstream;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            port = plan.port,
            up = plan.upstream,
            h2 = match plan.front {
                Front::H2 => " http2",
                Front::Tls | Front::Mtls => " ssl",
                _ => "",
            },
            tls = nginx_tls(plan),
        )),
    }
    c
}

/// The `server` block's TLS lines: TLS 1.2 and 1.3 (the client offers 1.3 only), a shared session
/// cache and tickets on like the other proxies, and for [`Front::Mtls`] a client certificate
/// required and verified against the CA. nginx offers ALPN `http/1.1` on an `ssl` listener by
/// itself.
fn nginx_tls(plan: &ProxyPlan) -> String {
    let Some(files) = plan.tls.as_ref().filter(|_| plan.front.is_tls()) else {
        return String::new();
    };
    let mut c = format!(
        "        ssl_certificate {};\n\
         \x20       ssl_certificate_key {};\n\
         \x20       ssl_protocols TLSv1.2 TLSv1.3;\n\
         \x20       ssl_session_cache shared:SSL:10m;\n\
         \x20       ssl_session_tickets on;\n",
        files.cert.display(),
        files.key.display()
    );
    if plan.front == Front::Mtls {
        c.push_str(&format!(
            "        ssl_client_certificate {};\n        ssl_verify_client on;\n",
            files.ca.display()
        ));
    }
    c
}

/// haproxy.cfg for `plan`.
pub fn haproxy_config(plan: &ProxyPlan) -> String {
    let mut c = format!(
        "global\n\
         \x20   nbthread {workers}\n\
         \x20   maxconn 4096\n\
         \n\
         defaults\n\
         \x20   mode {mode}\n\
         \x20   timeout connect 5s\n\
         \x20   timeout client 300s\n\
         \x20   timeout server 300s\n",
        workers = plan.workers,
        mode = if plan.front == Front::Tcp {
            "tcp"
        } else {
            "http"
        },
    );
    if plan.front != Front::Tcp {
        c.push_str("    timeout http-keep-alive 300s\n    http-reuse always\n");
    }
    c.push_str(&format!(
        "\n\
         frontend bench\n\
         \x20   bind 127.0.0.1:{port}{h2}\n\
         \x20   default_backend upstream\n\
         \n\
         backend upstream\n\
         \x20   server upstream {up}\n",
        port = plan.port,
        h2 = match (plan.front, &plan.tls) {
            (Front::H2, _) => " proto h2".to_owned(),
            // Session cache and tickets are on by default in HAProxy.
            (Front::Tls, Some(f)) => format!(
                " ssl crt {} alpn http/1.1 ssl-min-ver TLSv1.2",
                f.cert_and_key.display()
            ),
            (Front::Mtls, Some(f)) => format!(
                " ssl crt {} alpn http/1.1 ssl-min-ver TLSv1.2 ca-file {} verify required",
                f.cert_and_key.display(),
                f.ca.display()
            ),
            _ => String::new(),
        },
        up = plan.upstream,
    ));
    c
}

/// ringmesh TOML for `plan`. The listener binds port 0; the harness reads the bound address
/// from the admin API's `/listeners`.
pub fn ringmesh_config(plan: &ProxyPlan) -> String {
    let mut c = format!(
        "# Generated by ringmesh-bench.\n\
         [admin]\n\
         address = \"127.0.0.1:0\"\n\
         \n\
         [runtime]\n\
         workers = {workers}\n\
         drain_timeout = \"1s\"\n\
         l4_copy = \"{l4_copy}\"\n\
         \n\
         [[listeners]]\n\
         name = \"bench\"\n\
         address = \"127.0.0.1:0\"\n",
        workers = plan.workers,
        l4_copy = if plan.splice { "splice" } else { "buffer" },
    );
    match plan.front {
        Front::Tcp => c.push_str("protocol = \"tcp\"\ncluster = \"upstream\"\n"),
        Front::Http1 | Front::H2 | Front::Tls | Front::Mtls => c.push_str(&format!(
            "protocol = \"auto\"\n\
             {tls}\
             \n\
             [[virtual_hosts]]\n\
             name = \"bench\"\n\
             domains = [\"*\"]\n\
             \n\
             [[virtual_hosts.routes]]\n\
             match = {{ path_prefix = \"/\" }}\n\
             cluster = \"upstream\"\n",
            tls = ringmesh_tls(plan),
        )),
    }
    if plan.policies && plan.front != Front::Tcp {
        c.push_str(POLICIES_ROUTE);
    }
    c.push_str(&format!(
        "\n[[clusters]]\nname = \"upstream\"\nendpoints = [\"{}\"]\n",
        plan.upstream
    ));
    if plan.policies && plan.front != Front::Tcp {
        c.push_str(POLICIES_CLUSTER);
    }
    if plan.traced && plan.front != Front::Tcp {
        c.push_str(&format!(
            "\n[telemetry.tracing]\nsample_percent = 100.0\notlp_endpoint = \"{}\"\n",
            plan.upstream
        ));
    }
    c
}

/// The listener's `[listeners.tls]` table: the same certificate, versions and ALPN as the peers;
/// for [`Front::Mtls`] a required client certificate verified against the CA (`client_ca`,
/// `require_client_cert`: keys a build without mTLS rejects, and the target is then reported as
/// not able to run).
fn ringmesh_tls(plan: &ProxyPlan) -> String {
    let Some(files) = plan.tls.as_ref().filter(|_| plan.front.is_tls()) else {
        return String::new();
    };
    let mut c = format!(
        "\n[listeners.tls]\n\
         cert = \"{}\"\n\
         key = \"{}\"\n\
         min_version = \"1.2\"\n\
         alpn = [\"http/1.1\"]\n",
        files.cert.display(),
        files.key.display()
    );
    if plan.front == Front::Mtls {
        c.push_str(&format!(
            "client_ca = \"{}\"\nrequire_client_cert = true\n",
            files.ca.display()
        ));
    }
    c
}

/// The route lines of `ringmesh-policies`: every route policy on, none triggering against an
/// upstream that answers 200 at once — a timeout, retries, a rate limit far above any rate a
/// benchmark reaches (it still takes its bucket's compare-and-swap per request), and a fault
/// that only a header the generator never sends would trigger (its condition is checked per
/// request).
const POLICIES_ROUTE: &str = "timeout = \"30s\"\n\
    retries = { attempts = 2, retry_on = [\"5xx\", \"reset\", \"unavailable\"], per_try_timeout = \"10s\" }\n\
    rate_limit = { requests_per_second = 4000000000 }\n\
    fault = { abort = { status = 503 }, delay = { fixed = \"1s\" }, headers = [{ name = \"x-bench-fault\", present = true }] }\n";

/// The cluster lines of `ringmesh-policies`: a retry budget, breakers no benchmark reaches,
/// outlier detection, and a TCP health check of the upstream every 5 s.
const POLICIES_CLUSTER: &str = "retry_budget = { ratio = 0.2, min_retries_per_second = 10 }\n\
    circuit_breaker = { max_connections = 1000000, max_pending_requests = 1000000, max_requests = 1000000, max_retries = 1000 }\n\
    outlier_detection = { consecutive_5xx = 5 }\n\
    health_check = { kind = \"tcp\", interval = \"5s\" }\n";

/// Where the proxies' binaries are, and how they run.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// ringmesh binary.
    pub ringmesh: PathBuf,
    /// nginx binary name or path.
    pub nginx: String,
    /// HAProxy binary name or path.
    pub haproxy: String,
    /// Workers per proxy.
    pub workers: usize,
    /// Cores the proxy is pinned to.
    pub cores: Vec<usize>,
    /// ringmesh's I/O driver.
    pub io: Io,
    /// Scratch directory for configs and logs.
    pub dir: PathBuf,
    /// Certificates and client configs for the TLS fronts (set by `compare` when a `tls` or
    /// `mtls` scenario runs).
    pub tls: Option<BenchTls>,
}

/// A target ready to take load.
#[derive(Debug)]
pub struct RunningTarget {
    /// Which.
    pub kind: TargetKind,
    /// Where the generator connects.
    pub address: SocketAddr,
    /// The proxy process (none for direct).
    pub child: Option<Child>,
    /// Version string.
    pub version: String,
    /// Extra facts (ringmesh's I/O driver).
    pub detail: Option<String>,
    /// TLS fronts: what the harness's probe handshake negotiated.
    pub tls: Option<String>,
    /// ringmesh's admin API.
    pub admin: Option<SocketAddr>,
}

impl RunningTarget {
    /// The proxy's PID (whose process tree is measured).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the proxy (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sys::stop_tree(&mut child, STOP_GRACE);
        }
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `kind` in front of `upstream` and waits until it is ready: listening, and when
/// `probe_through`, passing a real request. `Err` is the reason the target is skipped.
pub fn start(
    kind: TargetKind,
    front: Front,
    upstream: SocketAddr,
    settings: &TargetSettings,
    tag: &str,
    probe_through: bool,
) -> Result<RunningTarget, String> {
    let dir = settings.dir.join(format!("{}-{tag}", kind.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tls = match (front.is_tls(), &settings.tls) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => return Err("no certificates for a TLS scenario (harness bug)".into()),
    };
    let mut target = match kind {
        TargetKind::Direct => RunningTarget {
            kind,
            address: upstream,
            child: None,
            version: String::new(),
            detail: None,
            tls: None,
            admin: None,
        },
        TargetKind::RingmeshSplice if front != Front::Tcp => {
            return Err(
                "splice copies L4 (tcp) traffic only; HTTP scenarios measure ringmesh".into(),
            );
        }
        TargetKind::RingmeshPolicies if front == Front::Tcp => {
            return Err(
                "the policies measured are HTTP ones; L4 scenarios measure ringmesh".into(),
            );
        }
        TargetKind::RingmeshTraced if front == Front::Tcp => {
            return Err("the spans measured are HTTP ones; L4 scenarios measure ringmesh".into());
        }
        TargetKind::Ringmesh
        | TargetKind::RingmeshSplice
        | TargetKind::RingmeshPolicies
        | TargetKind::RingmeshTraced => start_ringmesh(kind, front, upstream, settings, &dir)?,
        TargetKind::Nginx | TargetKind::Haproxy => {
            // A free port can be taken by someone else before the peer binds it: retry.
            let mut last = String::new();
            let mut started = None;
            for _ in 0..3 {
                match start_peer(kind, front, upstream, settings, &dir) {
                    Ok(t) => {
                        started = Some(t);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            started.ok_or(last)?
        }
    };
    if !probe_through {
        return Ok(target);
    }
    let client = tls.and_then(|t| t.client_for(front));
    probe(front, target.address, client).map_err(|e| {
        let log = log_tail(&dir);
        target.stop();
        format!("{kind} did not pass a request: {e}{log}")
    })?;
    if let (Some(t), Some(client)) = (tls, client) {
        // What the handshake negotiated, for the report; and in mTLS, that a client without a
        // certificate is really refused (else the target would not be doing the work measured).
        let mut facts = vec![tls::negotiated(target.address, client)?];
        facts.push(
            if tls::resumes(target.address, client) {
                "resumes sessions"
            } else {
                "does NOT resume sessions (its resumed handshakes are full ones)"
            }
            .to_owned(),
        );
        if front == Front::Mtls {
            if !tls::refuses_anonymous(target.address, &t.client) {
                target.stop();
                return Err(format!(
                    "{kind} served a client that presented no certificate: it does not verify \
                     client certificates, so it cannot run the mtls scenario"
                ));
            }
            facts.push("refuses clients without a certificate".to_owned());
        }
        target.tls = Some(facts.join("; "));
    }
    Ok(target)
}

fn start_peer(
    kind: TargetKind,
    front: Front,
    upstream: SocketAddr,
    settings: &TargetSettings,
    dir: &Path,
) -> Result<RunningTarget, String> {
    let port = sys::free_port().map_err(|e| format!("no free port: {e}"))?;
    let plan = ProxyPlan {
        front,
        port,
        upstream,
        workers: settings.workers,
        splice: false,
        policies: false,
        traced: false,
        tls: settings.tls.as_ref().map(|t| t.files.clone()),
    };
    let (binary, config_path, config, args) = match kind {
        TargetKind::Nginx => {
            let binary = sys::which(&settings.nginx).ok_or_else(|| {
                format!("{} not found (apt-get install nginx-light)", settings.nginx)
            })?;
            let module = stream_module();
            if front == Front::Tcp && module.is_none() {
                return Err(
                    "nginx has no stream module here (apt-get install libnginx-mod-stream)".into(),
                );
            }
            let path = dir.join("nginx.conf");
            let config = nginx_config(&plan, dir, module.as_deref());
            let args: Vec<String> = vec![
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
                "-c".into(),
                path.display().to_string(),
                "-g".into(),
                "daemon off;".into(),
            ];
            (binary, path, config, args)
        }
        _ => {
            let binary = sys::which(&settings.haproxy).ok_or_else(|| {
                format!("{} not found (apt-get install haproxy)", settings.haproxy)
            })?;
            let path = dir.join("haproxy.cfg");
            let args = vec!["-f".into(), path.display().to_string(), "-db".into()];
            (binary, path, haproxy_config(&plan), args)
        }
    };
    std::fs::write(&config_path, config).map_err(|e| format!("cannot write config: {e}"))?;
    let version = version_of(&binary, "-v");
    let log = std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
    let child = sys::pinned_command(&binary, &settings.cores)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let mut target = RunningTarget {
        kind,
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        child: Some(child),
        version,
        detail: None,
        tls: None,
        admin: None,
    };
    wait_listening(&mut target, dir)?;
    Ok(target)
}

fn start_ringmesh(
    kind: TargetKind,
    front: Front,
    upstream: SocketAddr,
    settings: &TargetSettings,
    dir: &Path,
) -> Result<RunningTarget, String> {
    let plan = ProxyPlan {
        front,
        port: 0,
        upstream,
        workers: settings.workers,
        splice: kind == TargetKind::RingmeshSplice,
        policies: kind == TargetKind::RingmeshPolicies,
        traced: kind == TargetKind::RingmeshTraced,
        tls: settings.tls.as_ref().map(|t| t.files.clone()),
    };
    launch_ringmesh(kind, &ringmesh_config(&plan), settings, dir).map_err(|reason| {
        if front.is_tls() && reason.contains("not supported yet") {
            format!(
                "target not able to run: this ringmesh build refuses the {} listener config \
                 ({}): {reason}",
                if front == Front::Mtls { "mtls" } else { "tls" },
                if front == Front::Mtls {
                    "client certificate verification, `client_ca` + `require_client_cert`, is not \
                     built in yet"
                } else {
                    "a TLS listener key is not supported"
                }
            )
        } else {
            reason
        }
    })
}

/// Starts ringmesh with `config` (written to `dir/ringmesh.toml`), pinned to the proxy cores, and
/// waits until its admin API says it is ready; the target's address is its first listener's.
pub fn launch_ringmesh(
    kind: TargetKind,
    config_text: &str,
    settings: &TargetSettings,
    dir: &Path,
) -> Result<RunningTarget, String> {
    if !settings.ringmesh.is_file() {
        return Err(format!(
            "{} not found (build it: cargo build --release -p dataplane)",
            settings.ringmesh.display()
        ));
    }
    let config = dir.join("ringmesh.toml");
    std::fs::write(&config, config_text).map_err(|e| e.to_string())?;
    let admin_file = dir.join("admin-address");
    let _ = std::fs::remove_file(&admin_file);
    let log = std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
    let child = sys::pinned_command(&settings.ringmesh, &settings.cores)
        .arg("--config")
        .arg(&config)
        .arg("--workers")
        .arg(settings.workers.to_string())
        .arg("--io")
        .arg(settings.io.name())
        .arg("--admin-address-path")
        .arg(&admin_file)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start ringmesh: {e}"))?;
    let mut target = RunningTarget {
        kind,
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        child: Some(child),
        version: version_of(&settings.ringmesh, "--version"),
        detail: None,
        tls: None,
        admin: None,
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    let admin = loop {
        check_alive(&mut target, dir)?;
        if let Some(addr) = std::fs::read_to_string(&admin_file)
            .ok()
            .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            && admin_get(addr, "/ready").is_ok_and(|(status, _)| status == 200)
        {
            break addr;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "ringmesh not ready in {READY_TIMEOUT:?}{}",
                log_tail(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    target.admin = Some(admin);
    let (_, listeners) =
        admin_get(admin, "/listeners").map_err(|e| format!("admin /listeners: {e}"))?;
    let listeners: serde_json::Value =
        serde_json::from_str(&listeners).map_err(|e| format!("admin /listeners: {e}"))?;
    target.address = listeners
        .as_array()
        .and_then(|a| a.first())
        .and_then(|l| l.get("local_address")?.as_str()?.parse().ok())
        .ok_or("admin /listeners did not report the bound address")?;
    if let Ok((_, stats)) = admin_get(admin, "/stats")
        && let Ok(stats) = serde_json::from_str::<serde_json::Value>(&stats)
    {
        target.detail = stats
            .get("driver_detail")
            .and_then(|d| d.as_str())
            .map(|d| format!("driver: {d}"));
    }
    Ok(target)
}

/// Fails when the proxy exited, with its log.
fn check_alive(target: &mut RunningTarget, dir: &Path) -> Result<(), String> {
    if let Some(child) = target.child.as_mut()
        && let Ok(Some(status)) = child.try_wait()
    {
        return Err(format!(
            "{} exited at start ({status}){}",
            target.kind,
            log_tail(dir)
        ));
    }
    Ok(())
}

/// Waits until the target accepts TCP connections.
fn wait_listening(target: &mut RunningTarget, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        check_alive(target, dir)?;
        if TcpStream::connect_timeout(&target.address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            target.stop();
            return Err(format!(
                "{} did not listen on {} in {READY_TIMEOUT:?}{}",
                target.kind,
                target.address,
                log_tail(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One short closed-loop run through the target: it must answer without errors.
pub fn probe(front: Front, address: SocketAddr, tls: Option<&ClientTls>) -> Result<(), String> {
    let protocol = match front {
        Front::Http1 | Front::Tls | Front::Mtls => Protocol::Http1,
        Front::H2 => Protocol::H2,
        Front::Tcp => Protocol::Echo,
    };
    let spec = LoadSpec {
        protocol,
        address,
        host: "bench".into(),
        path: "/payload/16".into(),
        request_body: 0,
        payload: 16,
        connections: 1,
        streams: 1,
        mode: Mode::Closed,
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
        threads: 1,
        cores: vec![],
        io: Io::Auto,
        timeout: Duration::from_secs(2),
        label: "probe".into(),
        progress: false,
        align_lanes: false,
        tls: tls.cloned(),
        new_connection_per_request: false,
    };
    // On a busy machine a 100 ms probe can end before its first request was even sent: retry
    // when nothing happened, fail at once when something failed.
    for _ in 0..5 {
        let run = load::run(&spec, &mut NoMonitor).map_err(|e| e.to_string())?;
        let r = &run.report;
        let e = &r.errors;
        if e.total() > 0 {
            return Err(format!(
                "probe: {} answers; failures: {} connect, {} i/o (connection reset or closed), \
                 {} malformed, {} bad status, {} timeout",
                r.completed, e.connect, e.io, e.protocol, e.status, e.timeout
            ));
        }
        if r.completed > 0 {
            return Ok(());
        }
    }
    Err("probe: no request completed in 5 attempts (machine too busy?)".to_owned())
}

/// The nginx stream module, when installed as a dynamic module.
fn stream_module() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/lib/nginx/modules/ngx_stream_module.so");
    p.is_file().then_some(p)
}

/// `program flag`'s first output line (nginx prints its version to stderr).
fn version_of(program: &Path, flag: &str) -> String {
    std::process::Command::new(program)
        .arg(flag)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The last lines of the target's logs, for skip reasons.
fn log_tail(dir: &Path) -> String {
    let mut tail = String::new();
    for name in ["stderr.log", "error.log"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for line in &lines[lines.len().saturating_sub(4)..] {
                tail.push_str("\n    ");
                tail.push_str(line.trim());
            }
        }
    }
    if tail.is_empty() {
        tail
    } else {
        format!("; log:{tail}")
    }
}

/// One GET to the ringmesh admin API (one request per connection): `(status, body)`.
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(front: Front) -> ProxyPlan {
        ProxyPlan {
            front,
            port: 18080,
            upstream: "127.0.0.1:9999".parse().expect("addr"),
            workers: 2,
            splice: false,
            policies: false,
            traced: false,
            tls: None,
        }
    }

    fn files() -> PkiFiles {
        PkiFiles {
            ca: "/pki/ca.pem".into(),
            cert: "/pki/server.pem".into(),
            key: "/pki/server.key".into(),
            cert_and_key: "/pki/server-with-key.pem".into(),
        }
    }

    fn tls_plan(front: Front) -> ProxyPlan {
        ProxyPlan {
            tls: Some(files()),
            ..plan(front)
        }
    }

    #[test]
    fn nginx_tls_configs_terminate_and_verify() {
        let dir = Path::new("/tmp/x");
        let tls = nginx_config(&tls_plan(Front::Tls), dir, None);
        for needle in [
            "listen 127.0.0.1:18080 ssl;",
            "ssl_certificate /pki/server.pem;",
            "ssl_certificate_key /pki/server.key;",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            "ssl_session_cache shared:SSL:10m;",
            "ssl_session_tickets on;",
            "proxy_pass http://bench_upstream;",
            "keepalive 1024;",
            "access_log off;",
        ] {
            assert!(tls.contains(needle), "missing {needle:?} in\n{tls}");
        }
        assert!(!tls.contains("ssl_verify_client"), "{tls}");
        let mtls = nginx_config(&tls_plan(Front::Mtls), dir, None);
        assert!(
            mtls.contains("ssl_client_certificate /pki/ca.pem;"),
            "{mtls}"
        );
        assert!(mtls.contains("ssl_verify_client on;"), "{mtls}");
        // Plaintext scenarios are untouched by the certificates being known.
        let plain = nginx_config(&tls_plan(Front::Http1), dir, None);
        assert!(!plain.contains("ssl"), "{plain}");
    }

    #[test]
    fn haproxy_tls_configs_terminate_and_verify() {
        let tls = haproxy_config(&tls_plan(Front::Tls));
        assert!(
            tls.contains(
                "bind 127.0.0.1:18080 ssl crt /pki/server-with-key.pem alpn http/1.1 \
                 ssl-min-ver TLSv1.2\n"
            ),
            "{tls}"
        );
        assert!(tls.contains("mode http") && tls.contains("http-reuse always"));
        assert!(!tls.contains("verify required"), "{tls}");
        let mtls = haproxy_config(&tls_plan(Front::Mtls));
        assert!(
            mtls.contains("ca-file /pki/ca.pem verify required\n"),
            "{mtls}"
        );
        assert!(!haproxy_config(&tls_plan(Front::Http1)).contains("ssl"));
    }

    #[test]
    fn ringmesh_tls_config_passes_the_schema() {
        let text = ringmesh_config(&tls_plan(Front::Tls));
        let config = match config_schema::parse(&text) {
            Ok(c) => c,
            Err(errors) => panic!("{errors:?}\n{text}"),
        };
        let tls = config.spec.listeners[0]
            .tls
            .as_ref()
            .expect("[listeners.tls]");
        assert_eq!(tls.cert.as_deref(), Some("/pki/server.pem"));
        assert_eq!(tls.key.as_deref(), Some("/pki/server.key"));
        assert_eq!(tls.alpn, vec!["http/1.1".to_owned()]);
        assert!(tls.client_ca.is_none() && !tls.require_client_cert);
        assert_eq!(
            config.spec.virtual_hosts[0].routes[0].cluster.as_deref(),
            Some("upstream")
        );
    }

    /// The mtls config asks for client certificates with the keys of `[listeners.tls]`; a build
    /// without mTLS rejects exactly those keys as not supported (and the target is reported as
    /// not able to run), a build with it accepts the config.
    #[test]
    fn ringmesh_mtls_config_requires_client_certificates() {
        let text = ringmesh_config(&tls_plan(Front::Mtls));
        assert!(text.contains("client_ca = \"/pki/ca.pem\"\nrequire_client_cert = true\n"));
        match config_schema::parse(&text) {
            Ok(config) => {
                let tls = config.spec.listeners[0].tls.as_ref().expect("tls");
                assert_eq!(tls.client_ca.as_deref(), Some("/pki/ca.pem"));
                assert!(tls.require_client_cert);
            }
            Err(errors) => {
                assert!(!errors.is_empty());
                for e in &errors {
                    let text = format!("{e:?}");
                    assert!(
                        text.contains("not supported yet")
                            && (text.contains("client_ca") || text.contains("require_client_cert")),
                        "{errors:?}"
                    );
                }
            }
        }
    }

    /// nginx and HAProxy accept the TLS configs with real certificates (skipped when not
    /// installed).
    #[test]
    fn peers_accept_generated_tls_configs() {
        let pki = crate::tls::Pki::generate(&std::env::temp_dir()).expect("pki");
        let dir = std::env::temp_dir().join(format!("rmb-tlscfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for front in [Front::Tls, Front::Mtls] {
            let p = ProxyPlan {
                tls: Some(pki.files.clone()),
                ..plan(front)
            };
            if let Some(nginx) = sys::which("nginx") {
                let path = dir.join("nginx.conf");
                std::fs::write(&path, nginx_config(&p, &dir, None)).expect("write");
                let out = std::process::Command::new(nginx)
                    .args(["-t", "-q", "-p"])
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(&path)
                    .output()
                    .expect("nginx -t");
                assert!(
                    out.status.success(),
                    "{front:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if let Some(haproxy) = sys::which("haproxy") {
                let path = dir.join("haproxy.cfg");
                std::fs::write(&path, haproxy_config(&p)).expect("write");
                let out = std::process::Command::new(haproxy)
                    .args(["-c", "-q", "-f"])
                    .arg(&path)
                    .output()
                    .expect("haproxy -c");
                assert!(
                    out.status.success(),
                    "{front:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The policies variant is a valid config with the policies on the route and the cluster.
    #[test]
    fn ringmesh_policies_config_passes_the_schema() {
        for front in [Front::Http1, Front::H2] {
            let text = ringmesh_config(&ProxyPlan {
                policies: true,
                ..plan(front)
            });
            let config = match config_schema::parse(&text) {
                Ok(c) => c,
                Err(errors) => panic!("{front:?}: {errors:?}\n{text}"),
            };
            let route = &config.spec.virtual_hosts[0].routes[0];
            assert!(route.retries.is_some(), "{text}");
            assert!(
                route.rate_limit.is_some() && route.fault.is_some(),
                "{text}"
            );
            let cluster = &config.spec.clusters[0];
            assert!(cluster.circuit_breaker.is_some(), "{text}");
            assert!(cluster.outlier_detection.is_some() && cluster.health_check.is_some());
        }
    }

    /// The traced variant samples every request and exports to the upstream's address.
    #[test]
    fn ringmesh_traced_config_passes_the_schema() {
        for front in [Front::Http1, Front::H2] {
            let text = ringmesh_config(&ProxyPlan {
                traced: true,
                ..plan(front)
            });
            let config = match config_schema::parse(&text) {
                Ok(c) => c,
                Err(errors) => panic!("{front:?}: {errors:?}\n{text}"),
            };
            let tracing = config.spec.telemetry.tracing.as_ref().expect("tracing");
            assert_eq!(tracing.sample_percent, 100.0, "{text}");
            assert_eq!(tracing.otlp_endpoint.as_deref(), Some("127.0.0.1:9999"));
        }
        let tcp = ringmesh_config(&ProxyPlan {
            traced: true,
            ..plan(Front::Tcp)
        });
        assert!(!tcp.contains("tracing"), "{tcp}");
    }

    #[test]
    fn nginx_config_is_fair() {
        let c = nginx_config(&plan(Front::Http1), Path::new("/tmp/x"), None);
        for needle in [
            "worker_processes 2;",
            "access_log off;",
            "keepalive 1024;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "listen 127.0.0.1:18080;",
            "server 127.0.0.1:9999;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(c.contains(needle), "missing {needle:?} in\n{c}");
        }
        let h2 = nginx_config(&plan(Front::H2), Path::new("/tmp/x"), None);
        assert!(h2.contains("listen 127.0.0.1:18080 http2;"), "{h2}");
        let tcp = nginx_config(
            &plan(Front::Tcp),
            Path::new("/tmp/x"),
            Some(Path::new("/m/stream.so")),
        );
        assert!(tcp.starts_with("load_module /m/stream.so;"), "{tcp}");
        assert!(tcp.contains("proxy_pass 127.0.0.1:9999;"), "{tcp}");
        assert!(!tcp.contains("http {"), "{tcp}");
    }

    #[test]
    fn haproxy_config_is_fair() {
        let c = haproxy_config(&plan(Front::Http1));
        for needle in [
            "nbthread 2",
            "mode http",
            "http-reuse always",
            "bind 127.0.0.1:18080\n",
            "server upstream 127.0.0.1:9999",
        ] {
            assert!(c.contains(needle), "missing {needle:?} in\n{c}");
        }
        assert!(!c.contains("log "), "logging must be off:\n{c}");
        assert!(haproxy_config(&plan(Front::H2)).contains("bind 127.0.0.1:18080 proto h2"));
        let tcp = haproxy_config(&plan(Front::Tcp));
        assert!(tcp.contains("mode tcp"), "{tcp}");
        assert!(!tcp.contains("http-reuse"), "{tcp}");
    }

    #[test]
    fn ringmesh_configs_pass_the_schema() {
        for front in [Front::Http1, Front::H2, Front::Tcp] {
            let text = ringmesh_config(&plan(front));
            let config = match config_schema::parse(&text) {
                Ok(c) => c,
                Err(errors) => panic!("{front:?}: {errors:?}\n{text}"),
            };
            let spec = &config.spec;
            assert_eq!(spec.runtime.workers, 2);
            assert_eq!(spec.listeners.len(), 1);
            assert_eq!(spec.clusters[0].endpoints[0].address.port(), 9999);
            match front {
                Front::Tcp => {
                    assert_eq!(spec.listeners[0].cluster.as_deref(), Some("upstream"));
                    assert!(spec.virtual_hosts.is_empty());
                }
                _ => {
                    let vh = &spec.virtual_hosts[0];
                    assert_eq!(vh.domains, vec!["*".to_owned()]);
                    assert_eq!(vh.routes[0].matcher.path_prefix.as_deref(), Some("/"));
                    assert_eq!(vh.routes[0].cluster.as_deref(), Some("upstream"));
                }
            }
        }
    }

    /// nginx and HAProxy accept the generated configs (skipped when not installed).
    #[test]
    fn peers_accept_generated_configs() {
        let dir = std::env::temp_dir().join(format!("rmb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for front in [Front::Http1, Front::H2, Front::Tcp] {
            let p = plan(front);
            if let Some(nginx) = sys::which("nginx") {
                if front == Front::Tcp && stream_module().is_none() {
                    eprintln!("skipped nginx stream config: no stream module");
                } else {
                    let path = dir.join("nginx.conf");
                    std::fs::write(&path, nginx_config(&p, &dir, stream_module().as_deref()))
                        .expect("write");
                    let out = std::process::Command::new(nginx)
                        .args(["-t", "-q", "-p"])
                        .arg(&dir)
                        .arg("-e")
                        .arg(dir.join("error.log"))
                        .arg("-c")
                        .arg(&path)
                        .output()
                        .expect("nginx -t");
                    assert!(
                        out.status.success(),
                        "{front:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            } else {
                eprintln!("skipped: nginx not installed");
            }
            if let Some(haproxy) = sys::which("haproxy") {
                let path = dir.join("haproxy.cfg");
                std::fs::write(&path, haproxy_config(&p)).expect("write");
                let out = std::process::Command::new(haproxy)
                    .args(["-c", "-q", "-f"])
                    .arg(&path)
                    .output()
                    .expect("haproxy -c");
                assert!(
                    out.status.success(),
                    "{front:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                eprintln!("skipped: haproxy not installed");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
