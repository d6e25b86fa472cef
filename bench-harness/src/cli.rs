//! The `ringmesh-bench` command line.
//!
//! ```text
//! ringmesh-bench compare [--quick]        # the side-by-side comparison (JSON, Markdown, HTML)
//! ringmesh-bench load --target ADDR ...   # one load run against anything
//! ringmesh-bench upstream ...             # the built-in upstream, standalone
//! ringmesh-bench crosscheck               # open-loop latency vs h2load --rps
//! ringmesh-bench flapping                 # one flapping endpoint, without and with resilience
//! ringmesh-bench report report.json       # re-render Markdown and HTML from a JSON report
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::compare::{self, CompareSpec, Scenario};
use crate::flapping::{self, FlappingSpec, Policies};
use crate::load::{self, LoadSpec, Mode, NoMonitor, Protocol};
use crate::report::{self, CompareReport};
use crate::runtime::{self, Io};
use crate::sys;
use crate::targets::{TargetKind, TargetSettings};
use crate::upstream::{self, Flap, FlapMode, UpstreamSpec, UpstreamTls};

/// ringmesh-bench: latency and throughput of ringmesh, nginx and HAProxy, side by side.
#[derive(Debug, Parser)]
#[command(name = "ringmesh-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare direct, ringmesh, nginx and HAProxy: throughput, latency at fixed rates, CPU per
    /// request, memory; JSON + Markdown + HTML report.
    Compare(CompareArgs),
    /// Run load against one address and print percentiles.
    Load(LoadArgs),
    /// Run the built-in upstream (HTTP/1.1, h2c, TCP echo) until killed.
    Upstream(UpstreamArgs),
    /// Compare the open-loop latency against `h2load --rps` on the built-in upstream.
    Crosscheck(CrosscheckArgs),
    /// ringmesh in front of 3 endpoints of which one flaps, without and with retries + outlier
    /// detection: success rate and latency over time; JSON + Markdown + HTML report.
    Flapping(FlappingArgs),
    /// Re-render report.md and report.html from a report.json.
    Report {
        /// The JSON report.
        json: PathBuf,
    },
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("invalid duration unit in {text:?} (ms, s, m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A core list flag (`0,2-3`); a newtype so clap takes it as one value.
#[derive(Debug, Clone, PartialEq)]
struct Cores(Vec<usize>);

fn parse_cores(text: &str) -> Result<Cores, String> {
    sys::parse_core_list(text).map(Cores)
}

/// Load fractions (`25,50,75`); a newtype so clap takes it as one value.
#[derive(Debug, Clone, PartialEq)]
struct Fractions(Vec<f64>);

fn parse_fractions(text: &str) -> Result<Fractions, String> {
    text.split(',')
        .map(|p| {
            let p = p.trim().trim_end_matches('%');
            let v: f64 = p
                .parse()
                .map_err(|_| format!("invalid load fraction {p:?}"))?;
            let f = if v > 1.0 { v / 100.0 } else { v };
            if f > 0.0 && f <= 1.0 {
                Ok(f)
            } else {
                Err(format!("load fraction {p:?} must be in (0, 100] %"))
            }
        })
        .collect::<Result<Vec<f64>, String>>()
        .map(Fractions)
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Smoke mode: short runs, 2 rounds, HTTP/1.1 + echo + iperf3; under 5 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Targets, in report order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,ringmesh,nginx,haproxy"
    )]
    targets: Vec<TargetKind>,
    /// Scenarios (default: http1,h2,echo,iperf3; with --quick: http1,echo,iperf3). `tls` and
    /// `mtls` (HTTPS/1.1 terminated by the proxy, keep-alive CPU per request and new handshakes
    /// per second) run only when named.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<Scenario>>,
    /// Rounds; targets alternate within each (default 3; --quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Measured time per fixed-rate run (default 5s; --quick 1.5s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Measured time per maximum-throughput run (default: --duration).
    #[arg(long, value_parser = parse_duration)]
    max_duration: Option<Duration>,
    /// Warm-up before each run (default 1s; --quick 0.5s).
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Connections for fixed-rate runs (Istio's method uses 16).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Connections for maximum-throughput runs.
    #[arg(long, default_value_t = 50)]
    max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Fixed rates as percentages of the slowest proxy's maximum.
    #[arg(long, value_parser = parse_fractions, default_value = "25,50,75")]
    load: Fractions,
    /// Response body (HTTP) / message (echo) bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Request body bytes (0 = GET).
    #[arg(long, default_value_t = 0)]
    request_body: usize,
    /// Worker processes/threads per proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Cores for the proxy under test (default: the first --workers cores).
    #[arg(long, value_parser = parse_cores)]
    proxy_cores: Option<Cores>,
    /// Cores for the generator and the upstream (default: the remaining cores).
    #[arg(long, value_parser = parse_cores)]
    load_cores: Option<Cores>,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    generator_threads: usize,
    /// Upstream threads.
    #[arg(long, default_value_t = 1)]
    upstream_threads: usize,
    /// I/O driver of ringmesh.
    #[arg(long, value_enum, default_value = "auto")]
    io: Io,
    /// I/O driver of the generator and the upstream. io_uring costs them less CPU; epoll takes
    /// the generator's timestamps right at its send/recv calls (see BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "auto")]
    load_io: Io,
    /// The ringmesh binary (default: next to this one, else target/release/ringmesh).
    #[arg(long)]
    ringmesh: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// The HAProxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
    /// Seconds per iperf3 run (default 5s; --quick 1s).
    #[arg(long, value_parser = parse_duration)]
    iperf_duration: Option<Duration>,
    /// iperf3 parallel stream counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    iperf_streams: Vec<usize>,
    /// Skip the h2load cross-check.
    #[arg(long)]
    no_crosscheck: bool,

    /// Exit non-zero when a requested target was skipped (CI uses it, so that a peer that stops
    /// starting is noticed). ringmesh-splice in an HTTP scenario does not count (it is L4 only),
    /// nor ringmesh-policies or ringmesh-traced in an L4 one (they are HTTP only).
    #[arg(long)]
    require_all: bool,
    /// Output directory (default: target/bench/compare-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Idle keep-alive connections opened per proxy to measure memory per connection
    /// (default 1000; --quick 200).
    #[arg(long)]
    idle_connections: Option<usize>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Target address (IP:port).
    #[arg(long)]
    target: SocketAddr,
    /// Protocol.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Open loop at this many requests per second; closed loop (max throughput) when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Measured time.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Warm-up before it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Response body bytes asked for (HTTP, as /payload/N) or message bytes (echo).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Request body bytes (0 = GET).
    #[arg(long, default_value_t = 0)]
    request_body: usize,
    /// Request path (default: /payload/<payload>).
    #[arg(long)]
    path: Option<String>,
    /// Host header / :authority.
    #[arg(long, default_value = "bench.local")]
    host: String,
    /// Generator threads.
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Pin generator threads to these cores.
    #[arg(long, value_parser = parse_cores)]
    cores: Option<Cores>,
    /// I/O driver.
    #[arg(long, value_enum, default_value = "auto")]
    io: Io,
    /// Time allowed per request.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct UpstreamArgs {
    /// HTTP/1.1 listener.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// h2c listener.
    #[arg(long)]
    h2: Option<SocketAddr>,
    /// TCP echo listener.
    #[arg(long)]
    echo: Option<SocketAddr>,
    /// HTTPS/1.1 listener (needs --tls-cert and --tls-key).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    https: Option<SocketAddr>,
    /// HTTPS/1.1 listener that requires a client certificate signed by --tls-client-ca.
    #[arg(long, requires_all = ["tls_cert", "tls_key", "tls_client_ca"])]
    https_mtls: Option<SocketAddr>,
    /// PEM certificate chain of the HTTPS listeners.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS listeners.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle client certificates must chain to (--https-mtls).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin threads to these cores.
    #[arg(long, value_parser = parse_cores)]
    cores: Option<Cores>,
    /// I/O driver.
    #[arg(long, value_enum, default_value = "auto")]
    io: Io,
    /// Response body bytes for paths that do not ask (/payload/N asks).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Print the bound addresses as one JSON line on stdout.
    #[arg(long)]
    print_addresses: bool,
    /// Make the HTTP/1.1 listener flap: one cycle every this long (anchored to the Unix epoch).
    #[arg(long, value_parser = parse_duration, requires = "flap_down")]
    flap_period: Option<Duration>,
    /// Down time at the start of each flapping cycle.
    #[arg(long, value_parser = parse_duration, requires = "flap_period")]
    flap_down: Option<Duration>,
    /// What a request gets while the upstream is down.
    #[arg(long, value_enum, default_value = "503")]
    flap_mode: FlapMode,
}

#[derive(Debug, Args)]
struct FlappingArgs {
    /// Requests per second (open loop, HTTP/1.1).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Generator connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    connections: usize,
    /// Measured time per variant.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "20s")]
    duration: Duration,
    /// Warm-up before it.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Time bucket of the curves.
    #[arg(long, value_parser = parse_duration, default_value = "250ms")]
    bucket: Duration,
    /// Time allowed per request.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    timeout: Duration,
    /// Response body bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Endpoints in the cluster; the first one flaps.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// One flapping cycle.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    flap_period: Duration,
    /// Down time at the start of each cycle.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    flap_down: Duration,
    /// What a request to the flapping endpoint gets while it is down.
    #[arg(long, value_enum, default_value = "503")]
    flap_mode: FlapMode,
    /// Resilient variant: `retries.attempts`.
    #[arg(long, default_value_t = 2)]
    attempts: u32,
    /// Resilient variant: `outlier_detection.consecutive_5xx`.
    #[arg(long, default_value_t = 3)]
    consecutive_5xx: u32,
    /// Resilient variant: `outlier_detection.base_ejection_time`.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    base_ejection_time: Duration,
    /// Resilient variant: `outlier_detection.max_ejection_time`.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    max_ejection_time: Duration,
    /// Resilient variant: `outlier_detection.interval`.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
    /// ringmesh workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Cores for ringmesh (default: the first --workers cores).
    #[arg(long, value_parser = parse_cores)]
    proxy_cores: Option<Cores>,
    /// Cores for the generator and the upstreams (default: the remaining cores).
    #[arg(long, value_parser = parse_cores)]
    load_cores: Option<Cores>,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// I/O driver of ringmesh.
    #[arg(long, value_enum, default_value = "auto")]
    io: Io,
    /// I/O driver of the generator and the upstreams.
    #[arg(long, value_enum, default_value = "auto")]
    load_io: Io,
    /// The ringmesh binary (default: next to this one, else target/release/ringmesh).
    #[arg(long)]
    ringmesh: Option<PathBuf>,
    /// Output directory (default: target/bench/flapping-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct CrosscheckArgs {
    /// Total requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per tool.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Cores for generator and h2load (the upstream gets the same).
    #[arg(long, value_parser = parse_cores)]
    cores: Option<Cores>,
    /// I/O driver.
    #[arg(long, value_enum, default_value = "auto")]
    io: Io,
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compare(args) => compare_cmd(args),
        Command::Load(args) => load_cmd(args),
        Command::Upstream(args) => upstream_cmd(args),
        Command::Crosscheck(args) => crosscheck_cmd(args),
        Command::Flapping(args) => flapping_cmd(args),
        Command::Report { json } => report_cmd(&json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringmesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

fn default_ringmesh() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join("ringmesh");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("target/release/ringmesh")
}

/// Proxy and load cores: as given, else the first `workers` available cores for the proxy and
/// the rest for the load; unpinned (both empty) when asked or when there is only one core.
fn split_cores(
    no_pin: bool,
    workers: usize,
    proxy: Option<Cores>,
    load: Option<Cores>,
) -> (Vec<usize>, Vec<usize>) {
    if no_pin {
        return (Vec::new(), Vec::new());
    }
    let available = runtime::available_cores();
    let proxy = proxy
        .map(|c| c.0)
        .unwrap_or_else(|| available.iter().copied().take(workers).collect());
    let load = load.map(|c| c.0).unwrap_or_else(|| {
        available
            .iter()
            .copied()
            .filter(|c| !proxy.contains(c))
            .collect()
    });
    if load.is_empty() {
        eprintln!(
            "ringmesh-bench: only {} core(s) available: running unpinned",
            available.len()
        );
        (Vec::new(), Vec::new())
    } else {
        (proxy, load)
    }
}

fn compare_cmd(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let quick = a.quick;
    let workers = a.workers.max(1);
    let (proxy_cores, load_cores) = split_cores(a.no_pin, workers, a.proxy_cores, a.load_cores);
    let duration = a.duration.unwrap_or(if quick {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(5)
    });
    let out_dir = a.out.unwrap_or_else(|| {
        let stamp = sys::utc_timestamp(SystemTime::now()).replace(':', "");
        PathBuf::from("target/bench").join(format!("compare-{stamp}"))
    });
    // Absolute, because the peers run with their own working directory (nginx's `-p` prefix
    // would otherwise be applied twice).
    let out_dir = std::path::absolute(&out_dir)
        .with_context(|| format!("cannot resolve {}", out_dir.display()))?;
    let spec = CompareSpec {
        targets: a.targets,
        scenarios: a.scenarios.unwrap_or_else(|| {
            if quick {
                vec![Scenario::Http1, Scenario::Echo, Scenario::Iperf3]
            } else {
                vec![
                    Scenario::Http1,
                    Scenario::H2,
                    Scenario::Echo,
                    Scenario::Iperf3,
                ]
            }
        }),
        rounds: a.rounds.unwrap_or(if quick { 2 } else { 3 }).max(1),
        duration,
        max_duration: a.max_duration.unwrap_or(duration),
        warmup: a.warmup.unwrap_or(if quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        }),
        connections: a.connections.max(1),
        max_connections: a.max_connections.max(1),
        streams: a.streams.max(1),
        headline_fraction: if a.load.0.contains(&0.5) {
            0.5
        } else {
            a.load.0.get(a.load.0.len() / 2).copied().unwrap_or(0.5)
        },
        load_fractions: a.load.0,
        payload: a.payload,
        request_body: a.request_body,
        proxy_cores: proxy_cores.clone(),
        load_cores,
        generator_threads: a.generator_threads.max(1),
        upstream_threads: a.upstream_threads.max(1),
        io: a.load_io,
        targets_settings: TargetSettings {
            ringmesh: a.ringmesh.unwrap_or_else(default_ringmesh),
            nginx: a.nginx,
            haproxy: a.haproxy,
            workers,
            cores: proxy_cores,
            io: a.io,
            dir: out_dir.join("targets"),
            tls: None,
        },
        out_dir: out_dir.clone(),
        quick,
        crosscheck: !a.no_crosscheck,
        iperf_duration: a.iperf_duration.unwrap_or(if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        }),
        iperf_streams: a.iperf_streams,
        command: command_line(),
        progress: !a.no_progress,
        idle_connections: a
            .idle_connections
            .unwrap_or(if quick { 200 } else { 1000 })
            .max(1),
    };
    let report = compare::run(&spec)?;
    let markdown = write_report(&report, &out_dir)?;
    println!("{markdown}");
    eprintln!(
        "ringmesh-bench: wrote {0}/report.json, {0}/report.md, {0}/report.html",
        out_dir.display()
    );
    let anything_ran = report
        .scenarios
        .iter()
        .any(|s| s.targets.iter().any(|t| t.skipped.is_none()));
    if !anything_ran {
        eprintln!("ringmesh-bench: no target ran");
        return Ok(ExitCode::FAILURE);
    }
    let skipped = unexpected_skips(&report);
    if a.require_all && !skipped.is_empty() {
        for line in &skipped {
            eprintln!("ringmesh-bench: skipped: {line}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every target skipped where it should have run, as "scenario: target: reason".
fn unexpected_skips(report: &CompareReport) -> Vec<String> {
    let scenarios = report
        .scenarios
        .iter()
        .map(|s| (s.name.as_str(), s.name == "echo", &s.targets));
    let iperf = report.iperf.iter().map(|i| ("iperf3", true, &i.targets));
    scenarios
        .chain(iperf)
        .flat_map(|(name, l4, targets)| {
            targets.iter().filter_map(move |t| {
                let reason = t.skipped.as_ref()?;
                // Variants that do not apply to a scenario are skipped by design.
                let not_here = (t.kind == TargetKind::RingmeshSplice && !l4)
                    || (l4
                        && matches!(
                            t.kind,
                            TargetKind::RingmeshPolicies | TargetKind::RingmeshTraced
                        ));
                (!not_here).then(|| format!("{name}: {}: {reason}", t.kind))
            })
        })
        .collect()
}

/// Writes report.json, report.md and report.html into `dir`; returns the Markdown.
pub fn write_report(report: &CompareReport, dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("report.json"), json)?;
    let markdown = report::markdown::render(report);
    std::fs::write(dir.join("report.md"), &markdown)?;
    std::fs::write(dir.join("report.html"), report::html::render(report))?;
    Ok(markdown)
}

fn flapping_cmd(a: FlappingArgs) -> anyhow::Result<ExitCode> {
    let workers = a.workers.max(1);
    let (proxy_cores, load_cores) = split_cores(a.no_pin, workers, a.proxy_cores, a.load_cores);
    if a.rate.is_nan() || a.rate <= 0.0 {
        anyhow::bail!("--rate must be positive");
    }
    let out_dir = a.out.unwrap_or_else(|| {
        let stamp = sys::utc_timestamp(SystemTime::now()).replace(':', "");
        PathBuf::from("target/bench").join(format!("flapping-{stamp}"))
    });
    let out_dir = std::path::absolute(&out_dir)
        .with_context(|| format!("cannot resolve {}", out_dir.display()))?;
    let spec = FlappingSpec {
        flap: Flap {
            period: a.flap_period,
            down: a.flap_down,
            mode: a.flap_mode,
        },
        endpoints: a.endpoints,
        rate: a.rate,
        connections: a.connections.max(1),
        duration: a.duration,
        warmup: a.warmup,
        bucket: a.bucket,
        timeout: a.timeout,
        payload: a.payload,
        policies: Policies {
            attempts: a.attempts,
            consecutive_5xx: a.consecutive_5xx,
            base_ejection_time: a.base_ejection_time,
            max_ejection_time: a.max_ejection_time,
            interval: a.interval,
        },
        load_cores,
        io: a.load_io,
        targets_settings: TargetSettings {
            ringmesh: a.ringmesh.unwrap_or_else(default_ringmesh),
            nginx: "nginx".into(),
            haproxy: "haproxy".into(),
            workers,
            cores: proxy_cores,
            io: a.io,
            dir: out_dir.join("targets"),
            tls: None,
        },
        out_dir: out_dir.clone(),
        command: command_line(),
        progress: !a.no_progress,
    };
    let report = flapping::run(&spec)?;
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = report::flapping::markdown(&report);
    std::fs::write(out_dir.join("report.md"), &markdown)?;
    std::fs::write(out_dir.join("report.html"), report::flapping::html(&report))?;
    println!("{}", report::flapping::summary(&report));
    eprintln!(
        "ringmesh-bench: wrote {0}/report.json, {0}/report.md (with the per-bucket table), {0}/report.html",
        out_dir.display()
    );
    Ok(if report.variants.iter().all(|v| v.skipped.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_cmd(json: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let report: CompareReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a report", json.display()))?;
    let dir = json.parent().unwrap_or(Path::new("."));
    let markdown = write_report(&report, dir)?;
    println!("{markdown}");
    Ok(ExitCode::SUCCESS)
}

fn load_cmd(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let spec = LoadSpec {
        protocol: a.protocol,
        address: a.target,
        host: a.host,
        path: a.path.unwrap_or_else(|| format!("/payload/{}", a.payload)),
        request_body: a.request_body,
        payload: a.payload,
        connections: a.connections.max(1),
        streams: a.streams.max(1),
        mode: match a.rate {
            Some(rate) if rate > 0.0 => Mode::Open { rate },
            Some(_) => anyhow::bail!("--rate must be positive"),
            None => Mode::Closed,
        },
        duration: a.duration,
        warmup: a.warmup,
        threads: a.threads.max(1),
        cores: a.cores.map(|c| c.0).unwrap_or_default(),
        io: a.io,
        timeout: a.timeout,
        label: format!("{} {}", a.protocol.name(), a.target),
        progress: true,
        align_lanes: false,
        tls: None,
        new_connection_per_request: false,
    };
    let run = load::run(&spec, &mut NoMonitor)?;
    let r = &run.report;
    if a.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print_load(r);
    }
    Ok(if r.verdict.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_load(r: &load::LoadReport) {
    let mode = match r.mode {
        Mode::Closed => "closed loop (max throughput)".to_owned(),
        Mode::Open { rate } => {
            format!("open loop at {rate:.0} req/s (corrected for coordinated omission)")
        }
    };
    println!(
        "{} {mode}, {} connections ({} in flight max), {:.1} s, io {}",
        r.protocol.name(),
        r.connections,
        r.lanes,
        r.duration_s,
        r.io.name()
    );
    println!(
        "  achieved {:.0} req/s ({} ok, {} failed{})",
        r.achieved_rate,
        r.completed,
        r.errors.total(),
        if r.errors.total() > 0 {
            format!(": {:?}", r.errors)
        } else {
            String::new()
        }
    );
    let line = |name: &str, p: &Option<crate::hist::Percentiles>| {
        if let Some(p) = p {
            println!(
                "  {name:<12} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
                report::fmt_us(p.p50_us),
                report::fmt_us(p.p90_us),
                report::fmt_us(p.p99_us),
                report::fmt_us(p.p999_us),
                report::fmt_us(p.max_us)
            );
        }
    };
    if r.verdict.is_valid() {
        line("latency", &r.latency);
        if matches!(r.mode, Mode::Open { .. }) {
            line("uncorrected", &r.uncorrected);
            line("gen. lag", &r.generator_lag);
        }
    } else {
        println!("  {}", r.verdict.describe());
    }
    println!("  generator CPU {:.2} s", r.generator_cpu_s);
}

fn upstream_cmd(a: UpstreamArgs) -> anyhow::Result<ExitCode> {
    let any = a.http.is_some()
        || a.h2.is_some()
        || a.echo.is_some()
        || a.https.is_some()
        || a.https_mtls.is_some();
    let loopback0: SocketAddr = ([127, 0, 0, 1], 0).into();
    let spec = UpstreamSpec {
        http: if any { a.http } else { Some(loopback0) },
        h2: a.h2,
        echo: a.echo,
        threads: a.threads.max(1),
        cores: a.cores.map(|c| c.0).unwrap_or_default(),
        io: a.io,
        payload: a.payload,
        flap: match (a.flap_period, a.flap_down) {
            (Some(period), Some(down)) => Some(Flap {
                period,
                down,
                mode: a.flap_mode,
            }),
            _ => None,
        },
        https: a.https,
        https_mtls: a.https_mtls,
        tls: match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(UpstreamTls {
                cert,
                key,
                client_ca: a.tls_client_ca.unwrap_or_default(),
            }),
            _ => None,
        },
    };
    let addrs = upstream::start(&spec)?;
    if a.print_addresses {
        println!("{}", serde_json::to_string(&addrs)?);
    } else {
        eprintln!(
            "upstream: http {:?}, h2 {:?}, echo {:?}, https {:?}, https-mtls {:?} ({} thread(s), io {})",
            addrs.http,
            addrs.h2,
            addrs.echo,
            addrs.https,
            addrs.https_mtls,
            spec.threads,
            spec.io.resolve().name()
        );
    }
    loop {
        std::thread::park();
    }
}

fn crosscheck_cmd(a: CrosscheckArgs) -> anyhow::Result<ExitCode> {
    let cores = a.cores.map(|c| c.0).unwrap_or_default();
    let addrs = upstream::start(&UpstreamSpec {
        http: Some(([127, 0, 0, 1], 0).into()),
        h2: None,
        echo: None,
        threads: 1,
        cores: cores.clone(),
        io: a.io,
        payload: 1024,
        flap: None,
        https: None,
        https_mtls: None,
        tls: None,
    })?;
    let addr = addrs.http.context("upstream did not bind")?;
    let check = crate::crosscheck::run(addr, a.rate, a.connections, a.duration, &cores, a.io);
    println!("{}", report::markdown::crosscheck_section(&check));
    Ok(match check.agrees {
        Some(false) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn fractions() {
        assert_eq!(
            parse_fractions("25,50,75"),
            Ok(Fractions(vec![0.25, 0.5, 0.75]))
        );
        assert_eq!(parse_fractions("0.5"), Ok(Fractions(vec![0.5])));
        assert_eq!(parse_fractions("50%"), Ok(Fractions(vec![0.5])));
        assert!(parse_fractions("0").is_err());
        assert!(parse_fractions("150").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ringmesh-bench",
            "compare",
            "--quick",
            "--targets",
            "direct,nginx",
            "--load",
            "10,20",
        ])
        .expect("parses");
        match cli.command {
            Command::Compare(a) => {
                assert!(a.quick);
                assert_eq!(a.targets, vec![TargetKind::Direct, TargetKind::Nginx]);
                assert_eq!(a.load, Fractions(vec![0.1, 0.2]));
            }
            other => panic!("{other:?}"),
        }
    }
}
